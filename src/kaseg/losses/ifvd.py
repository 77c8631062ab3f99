"""Intra-class feature variation distillation (Wang et al., ECCV 2020): each position's
similarity to its class prototype matched.
Registered in :data:`kaseg.losses.registry.LOSSES`, whose docstring states what every loss
shares (pure on tensors, the ``valid`` mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.labels import IGNORE_INDEX
from ..core.tensors import at_least_f32, full_precision, masked_mean, resize
from .masks import labels_at


def class_prototype_similarity(f: torch.Tensor, labels: torch.Tensor, num_classes: int,
                               valid: torch.Tensor | None = None) -> torch.Tensor:
    """IFVD's intra-class feature variation map: the cosine similarity of each position's feature
    to its class prototype (the mean feature of that class in the same image). ``labels`` are at
    the feature's size; invalid positions get similarity 0 (and are left out by the loss)."""
    b, c = f.shape[:2]
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    lab = torch.where(valid, labels, torch.zeros_like(labels)).clamp(0, num_classes - 1)
    onehot = F.one_hot(lab.flatten(1), num_classes).to(f.dtype)
    onehot = onehot * valid.flatten(1)[..., None].to(f.dtype)  # (B, HW, K)
    flat = f.flatten(2)  # (B, C, HW)
    protos = (flat @ onehot) / onehot.sum(1, keepdim=True).clamp(min=1.0)  # (B, C, K)
    per_pixel = protos @ onehot.transpose(1, 2)  # (B, C, HW): each position's class prototype
    sim = F.cosine_similarity(flat, per_pixel, dim=1, eps=1e-8)
    return sim.view(b, *f.shape[-2:])


@full_precision
def ifvd_loss(fs: torch.Tensor, ft: torch.Tensor, targets: torch.Tensor, num_classes: int,
              ignore_index: int = IGNORE_INDEX, stride: int | None = None) -> torch.Tensor:
    """Intra-class feature variation distillation (Wang et al., ECCV 2020):

        p_k = mean of f_i over the positions i of class k (per image),
        M_i = cos(f_i, p_{y_i}),   L_ifv = 1/|V| * sum_{i in V} (M^s_i - M^t_i)^2

    Labels are brought to the teacher's feature grid (:func:`labels_at`: by the map's ``stride``
    when given, else nearest sampling as in IFVD's code), the student's features upsampled to it; ignore pixels join no prototype and no mean (the
    source keeps them at similarity 1 in both maps, so only its mean's denominator differs).
    Default weight 200 (IFVD's ``lambda_ifv``; also CIRKD).
    """
    ft = at_least_f32(ft.detach())
    fs = resize(at_least_f32(fs), ft.shape[-2:])
    targets = labels_at(targets, ft.shape[-2:], stride, ignore_index)
    valid = (targets != ignore_index) & (targets >= 0) & (targets < num_classes)
    ms = class_prototype_similarity(fs, targets, num_classes, valid)
    mt = class_prototype_similarity(ft, targets, num_classes, valid)
    return masked_mean((ms - mt).pow(2), valid)
