"""Logit distillation, pixel by pixel (Hinton et al., 2015; per pixel as in Liu et al., CVPR 2019).
Registered in :data:`kaseg.losses.registry.LOSSES`, whose docstring states what every loss
shares (pure on tensors, the ``valid`` mask)."""

from __future__ import annotations

import torch

from ..core.tensors import at_least_f32, full_precision, kl_from_logits, masked_mean, resize


@full_precision
def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0,
            valid: torch.Tensor | None = None, standardize: bool = False) -> torch.Tensor:
    """Pixel-wise logit distillation (Hinton et al., 2015; per pixel as in Liu et al., CVPR 2019):

        L_kd = T^2 * 1/|V| * sum_{i in V} KL( softmax(z_t,i / T) || softmax(z_s,i / T) )

    V: the valid pixels. The T^2 keeps the gradient's size independent of T (Hinton et al.).
    At T = 1 with a one-hot teacher this is exactly the cross-entropy with the teacher's labels.
    Student logits are upsampled to the teacher's size. Default weight 1 (Hinton et al.; CIRKD
    ``--lambda-kd 1``); He et al. compare T = 2, 4, 6.

    ``standardize`` (Sun et al., CVPR 2024, "Logit Standardization in Knowledge
    Distillation"): each position's logits, the student's and the teacher's separately, are
    z-scored over the classes before the temperature, ``(z - mean) / (1e-7 + std)`` with the
    unbiased std, as their code does: the student then matches the teacher's logit relations,
    not their range.
    """
    s = resize(at_least_f32(s_logits), t_logits.shape[-2:])
    t = at_least_f32(t_logits.detach())
    if standardize:
        s, t = zscore(s), zscore(t)
    return temperature**2 * masked_mean(kl_from_logits(t / temperature, s / temperature, dim=1),
                                        valid)


def zscore(logits: torch.Tensor, dim: int = 1, eps: float = 1e-7) -> torch.Tensor:
    """Each position's logits less their mean over the classes, over ``eps`` + their unbiased
    standard deviation (logit standardisation's ``normalize``, along the class dimension)."""
    mean = logits.mean(dim, keepdim=True)
    return (logits - mean) / (eps + logits.std(dim, keepdim=True))
