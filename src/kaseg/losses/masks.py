"""Where a loss may look: the labels on a feature map's grid, and the mask of its valid
(non-ignore) positions. [ours]: every field loss takes this mask, so that a label the dataset
marks as "unknown" never steers training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.labels import IGNORE_INDEX


def labels_at(targets: torch.Tensor, size: tuple[int, int], stride: int | None = None,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(B, H, W)`` labels on the grid of a ``size`` map.

    With ``stride`` (the map's stride in input pixels): by the geometry the networks have. They pad
    the image on the bottom and right to their divisor, so position ``j`` of the map starts at pixel
    ``j * stride`` of the image; it takes that pixel's label, and ``ignore_index`` where the pixel
    lies in the padding. Without ``stride``: nearest sampling from H x W onto ``size`` (IFVD's rule;
    the same as the geometric one when H = h * stride, off by up to a stride otherwise).
    """
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    if stride is None:
        return F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()
    h, w = size
    grid = targets[:, : h * stride : stride, : w * stride : stride]  # pixels j * stride inside
    ph, pw = h - grid.shape[-2], w - grid.shape[-1]
    return F.pad(grid, (0, pw, 0, ph), value=ignore_index) if ph or pw else grid


def valid_mask(targets: torch.Tensor, size: tuple[int, int],
               ignore_index: int = IGNORE_INDEX, stride: int | None = None) -> torch.Tensor:
    """Bool mask of the non-ignore positions at ``size`` (``stride``: see :func:`labels_at`)."""
    return labels_at(targets, size, stride, ignore_index) != ignore_index
