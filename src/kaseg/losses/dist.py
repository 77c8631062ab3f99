"""DIST (Huang et al., NeurIPS 2022): relations of the class probabilities matched, not values.
Registered in :data:`kaseg.losses.registry.LOSSES`, whose docstring states what every loss
shares (pure on tensors, the ``valid`` mask)."""

from __future__ import annotations

import torch

from ..core.tensors import at_least_f32, full_precision, resize


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (rows: (N, K) ->
    (N,)), the form DIST's code uses: centred rows, their dot product over the product of their
    norms plus ``eps``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@full_precision
def dist_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0,
              inter_weight: float = 1.0, intra_weight: float = 1.0,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): match
    *relations* of the class probabilities, not their values. With ``P`` the softmax(z / T) of
    every pixel, a matrix of (pixels x classes):

        inter = 1 - mean over pixels of pearson(P^s_i, P^t_i)        (each pixel's class ranking)
        intra = 1 - mean over classes of pearson(P^s_:,c, P^t_:,c)   (each class over the pixels)
        L_dist = T^2 * (inter_weight * inter + intra_weight * intra)

    The pixels are every position of every image of the batch together (the authors' code
    reshapes (B, C, H, W) to (B*H*W, C)); their segmentation setting is T = 1, both weights 1 and
    a loss weight of 1 (``--lambda-kd 1``). The student's logits are upsampled to the teacher's
    size (both are at OS 8 in the authors' code). [ours] ``valid``: only valid pixels are rows.
    """
    s = resize(at_least_f32(s_logits), t_logits.shape[-2:]) / temperature
    t = at_least_f32(t_logits.detach()) / temperature
    k = s.shape[1]
    ps = s.softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    pt = t.softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    if valid is not None:
        keep = valid.reshape(-1)
        if not keep.any():
            return s.sum() * 0.0  # no valid pixel: nothing to match, a zero gradient
        ps, pt = ps[keep], pt[keep]
    inter = 1.0 - _pearson_rows(ps, pt).mean()
    intra = 1.0 - _pearson_rows(ps.t(), pt.t()).mean()
    return temperature**2 * (inter_weight * inter + intra_weight * intra)
