"""Channel-wise distillation (Shu et al., ICCV 2021): each channel a distribution over positions.
Registered in :data:`kaseg.losses.registry.LOSSES`, whose docstring states what every loss
shares (pure on tensors, the ``valid`` mask)."""

from __future__ import annotations

import torch

from ..core.tensors import at_least_f32, full_precision, kl_from_logits, resize


@full_precision
def cwd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021): each channel becomes a distribution over positions, and the
    student's is matched to the teacher's:

        phi(y_c)_i = exp(y_c,i / T) / sum_j exp(y_c,j / T)
        L_cwd = T^2 / (B C) * sum_{b,c} sum_i phi(y^t_c)_i log( phi(y^t_c)_i / phi(y^s_c)_i )

    On logits (C = classes), the student's upsampled to the teacher's size; with a mask the
    softmax runs over valid positions only. T = 4 and weight 3 on logits: the authors' setting
    for segmentation (also CIRKD ``--lambda-cwd-logit 3``, temperature 4).
    """
    s = resize(at_least_f32(s_logits), t_logits.shape[-2:]).flatten(2) / temperature
    t = at_least_f32(t_logits.detach()).flatten(2) / temperature
    if valid is not None:
        v = valid.flatten(1)
        some = v.any(1, keepdim=True)  # an image without a valid position is left out below
        out = (~v & some)[:, None]
        s, t = s.masked_fill(out, float("-inf")), t.masked_fill(out, float("-inf"))
    kl = kl_from_logits(t, s, dim=-1)  # (B, C)
    if valid is None:
        return temperature**2 * kl.mean()
    # mean over the (image, channel) pairs of the images that have a valid position
    some = some.to(kl.dtype)
    return temperature**2 * (kl * some).sum() / (some.sum() * kl.shape[1]).clamp(min=1.0)
