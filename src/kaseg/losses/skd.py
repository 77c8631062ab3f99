"""SKD's pair-wise distillation (Liu et al., CVPR 2019): node-to-node similarities matched.
Registered in :data:`kaseg.losses.registry.LOSSES`, whose docstring states what every loss
shares (pure on tensors, the ``valid`` mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.tensors import at_least_f32, full_precision


def _pool_nodes(f: torch.Tensor, valid: torch.Tensor | None, pool: int):
    """Max-pool positions into ``pool x pool`` nodes (ceil mode); a node is valid if any of its
    positions is. Invalid positions never win the max."""
    if valid is None:
        return F.max_pool2d(f, pool, pool, ceil_mode=True), None
    neg = torch.finfo(f.dtype).min
    f = f.masked_fill(~valid[:, None], neg)
    nodes = F.max_pool2d(f, pool, pool, ceil_mode=True)
    node_valid = F.max_pool2d(valid[:, None].float(), pool, pool, ceil_mode=True)[:, 0] > 0
    return nodes.masked_fill(~node_valid[:, None], 0.0), node_valid


def _max_pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at ``size`` by adaptive max pooling (unchanged when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_max_pool2d(x, size)


@full_precision
def skd_pairwise_loss(fs: torch.Tensor, ft: torch.Tensor, pool: int = 2,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """SKD pair-wise distillation (Liu et al., "Structured Knowledge Distillation for Semantic
    Segmentation", CVPR 2019): features are max-pooled into nodes (``pool x pool`` positions each),
    and the two networks' node-to-node cosine-similarity matrices are matched:

        a_ij = f_i . f_j / (||f_i|| ||f_j||),   L_pa = 1/N^2 * sum_{i,j} (a^s_ij - a^t_ij)^2

    averaged over the batch (N nodes; with a mask, the mean over valid node pairs). The channel
    counts of the two maps may differ. Pool 2 and weight 10 follow CIRKD's re-implementation
    (``--lambda-skd 10``); the SKD code pools a quarter of the map per node (a 2 x 2 node grid).

    Resolution [ours]: both maps are brought to the *smaller* of their two sizes, the larger one by
    max pooling (SKD's own node rule), before the nodes are formed. CIRKD distils SKD where
    teacher and student maps share OS 8; the paper pair's teacher map is at stride 4, and
    upsampling the student to it would make 9,409 nodes at a 769 crop (a 354 MB matrix per
    image). ``valid`` may be at either map's size: it is reduced the same way (a position is valid
    if any position it pools is).
    """
    ft = at_least_f32(ft.detach())
    fs = at_least_f32(fs)
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
    fs, ft = _max_pool_to(fs, size), _max_pool_to(ft, size)
    if valid is not None and tuple(valid.shape[-2:]) != size:
        valid = _max_pool_to(valid[:, None].float(), size)[:, 0] > 0
    ns, node_valid = _pool_nodes(fs, valid, pool)
    nt, _ = _pool_nodes(ft, valid, pool)
    s = F.normalize(ns.flatten(2), dim=1)  # (B, C, N), unit columns
    t = F.normalize(nt.flatten(2), dim=1)
    d = (s.transpose(1, 2) @ s - t.transpose(1, 2) @ t).pow(2)  # (B, N, N)
    if node_valid is None:
        return d.mean()
    v = node_valid.flatten(1).to(d.dtype)
    pairs = v[:, :, None] * v[:, None, :]
    return (d * pairs).sum() / pairs.sum().clamp(min=1.0)
