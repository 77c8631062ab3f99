"""MasKD (Huang et al., ICLR 2023, "Masked Distillation with Receptive Tokens"), segmentation:
learnable receptive tokens turn the frozen teacher's logit map into soft spatial masks, trained
first on the teacher alone (the masked map must still segment, and the masks must differ from
each other); the student then matches the teacher's map under each mask, each mask's error
normalised by its area.

Their code (hunto/MasKD, ``segmentation/losses/maskd.py``, ``train_mask_module.py``,
``train_maskd.py``) runs both stages on the networks' logits at their own grid (DeepLabV3, OS 8;
19 channels, 8 tokens). Pure functions and one module here; the mask stage and the registered
term are built on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.labels import IGNORE_INDEX
from ..core.tensors import at_least_f32


class ReceptiveTokens(nn.Module):
    """``tokens`` (T x C) learnable vectors; each gives a mask ``sigmoid(token . x)`` over the
    positions of a C-channel map (initialised N(0, 0.01), as the authors')."""

    def __init__(self, channels: int, num_tokens: int = 8):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.tokens = nn.Parameter(torch.randn(num_tokens, channels) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masks(x)

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, T, H, W) masks in (0, 1)."""
        n, c, h, w = x.shape
        return torch.einsum("tc,ncp->ntp", self.tokens.to(x.dtype),
                            x.reshape(n, c, h * w)).sigmoid().reshape(n, -1, h, w)


def mask_diversity(masks: torch.Tensor) -> torch.Tensor:
    """The mean Dice coefficient between every two different masks of each image (the mask
    stage's diversity term: minimised, the masks cover different parts). ``masks``: (N, T, ...)."""
    m = masks.flatten(2)
    inter = torch.einsum("ntp,nsp->nts", m, m)
    sq = (m * m).sum(-1) + 1e-12
    dice = 2 * inter / (sq[:, :, None] + sq[:, None, :])
    t = m.shape[1]
    off = ~torch.eye(t, dtype=torch.bool, device=m.device)
    return (dice * off).sum() / (off.sum() * m.shape[0]).clamp(min=1)


def mask_stage_loss(tokens: ReceptiveTokens, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    ignore_index: int = IGNORE_INDEX, align_corners: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mask stage: the teacher's map re-weighted by the sum of its masks must still segment
    (cross-entropy at the labels' size, upsampled bilinearly as the network does), and the
    masks must differ (:func:`mask_diversity`). -> (total, CE, diversity)."""
    x = teacher_logits.detach()
    masks = tokens.masks(x)
    masked = (x.unsqueeze(1) * masks.unsqueeze(2)).sum(1)
    up = F.interpolate(masked, labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    ce = F.cross_entropy(at_least_f32(up), labels, ignore_index=ignore_index)
    diversity = mask_diversity(masks)
    return ce + diversity, ce, diversity


def maskd_loss(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 x the mean over images, masks and channels of ``sum_p (m_p (s_p - t_p))^2 /
    (sum_p m_p + 1e-5)``: the two maps matched under each mask, each mask's error divided by its
    area. ``valid`` (N, H, W; optional): positions outside it take no part (the authors have no
    ignored positions: padding is kaseg's)."""
    m = masks.detach()
    if valid is not None:
        m = m * valid.unsqueeze(1).to(m.dtype)
    diff = (student.unsqueeze(1) - teacher.detach().unsqueeze(1)) * m.unsqueeze(2)
    per = (diff * diff).sum((3, 4)) / (m.sum((2, 3)).unsqueeze(-1) + 1e-5)
    return 0.5 * per.mean()
