"""FitNet hint regression (Romero et al., ICLR 2015): the student's map, through a 1x1 regressor,
regressed onto the teacher's.
Registered in :data:`kaseg.losses.registry.LOSSES`, whose docstring states what every loss
shares (pure on tensors, the ``valid`` mask)."""

from __future__ import annotations

import torch
from torch import nn

from ..core.tensors import at_least_f32, full_precision, masked_mean, resize


@full_precision
def fitnet_loss(fs: torch.Tensor, ft: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """FitNet hint regression (Romero et al., ICLR 2015), as He et al. compare it:

        L_fit = 1/(|V| C) * sum_{i in V} || up(r(F_s))_i - F_t,i ||_2^2

    ``fs`` is the student's feature map *after* the regressor r (:class:`FitNetRegressor`, a 1x1
    conv to the teacher's channels), upsampled (bilinear) to the teacher's size: a mean squared
    error over channels and valid positions. Default weight 1 (CIRKD ``--lambda-fitnet 1``).
    """
    ft = at_least_f32(ft.detach())
    d = (resize(at_least_f32(fs), ft.shape[-2:]) - ft).pow(2).mean(1)
    return masked_mean(d, valid)


class FitNetRegressor(nn.Conv2d):
    """FitNet's regressor r: a 1x1 convolution, student channels -> teacher channels (no bias,
    as in CIRKD). Trained with the student and dropped after training."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__(student_channels, teacher_channels, kernel_size=1, bias=False)
