"""Tensor helpers shared by the method and the other losses (below both)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_f32(x: torch.Tensor) -> torch.Tensor:
    """Losses accumulate in float32 or better (half precision under AMP is upcast; float64 stays,
    for gradcheck)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """``x`` at ``size``, bilinear (student maps are upsampled to the teacher's size, the
    comparison in He et al.); unchanged when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
