"""The method of He et al., "Knowledge Adaptation for Efficient Semantic Segmentation" (CVPR 2019),
in one file: the feature autoencoder and its loss, the adapters, the adaptation loss and the
affinity loss. How they are combined into a training step is :class:`kaseg.engine.tasks.DistillTask`;
the memory-light form of the affinity loss is :mod:`kaseg.losses.gram`.

Notation: F_t teacher feature map, F_s student feature map, E / D the autoencoder's encoder /
decoder, C_f / C_a the feature and affinity adapters, m = h * w positions. [paper] marks what the
paper states, [ours] a documented choice where it is silent (docs/method.md in the repository).
"""

from __future__ import annotations

import torch
from torch import nn

from .gram import AFFINITY_REDUCTIONS, affinity_loss_gram
from ..core.tensors import at_least_f32, resize

ADAPT_REDUCTIONS = ("element", "paper")
AFFINITY_IMPLS = ("auto", "dense", "gram")
CONTROLS = ("none", "random_encoder", "constant_target")


# --------------------------------------------------------------------------- stage 1: autoencoder
def ae_strides(ratio: int) -> tuple[int, int, int]:
    """Encoder strides so that E(F_t) has the student's spatial size [ours].

    ``ratio`` = student feature stride / teacher feature stride: 4 -> (2, 2, 1), 2 -> (2, 1, 1),
    1 -> (1, 1, 1), 8 -> (2, 2, 2).
    """
    table = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2)}
    if ratio not in table:
        raise ValueError(
            f"the student's feature stride must be 1, 2, 4 or 8 times the teacher's, got {ratio}"
        )
    return table[ratio]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _deconv(cin: int, cout: int, stride: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 3, stride, 1, output_padding=stride - 1, bias=False)


class FeatureAutoencoder(nn.Module):
    """E: three 3x3 convolutions (strides from :func:`ae_strides`); D: three symmetric transposed
    convolutions [paper]. BN + ReLU between layers, the last decoder layer linear [ours]."""

    def __init__(self, in_channels: int, latent_channels: int, strides: tuple[int, int, int]):
        super().__init__()
        self.in_channels, self.latent_channels, self.strides = in_channels, latent_channels, tuple(strides)
        c, z = in_channels, latent_channels
        s0, s1, s2 = strides
        self.encoder = nn.Sequential(_conv_bn_relu(c, z, s0), _conv_bn_relu(z, z, s1),
                                     _conv_bn_relu(z, z, s2))
        self.decoder = nn.Sequential(
            _deconv(z, z, s2), nn.BatchNorm2d(z), nn.ReLU(inplace=True),
            _deconv(z, z, s1), nn.BatchNorm2d(z), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(z, c, 3, s0, 1, output_padding=s0 - 1),
        )

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (latent E(f), reconstruction D(E(f)) at f's size)."""
        z = self.encoder(f)
        r = self.decoder(z)
        # a side that is not a multiple of the total stride: the strided convs round up, so the
        # decoder's output is larger. Transposed-conv output 2j sits on input j, so the aligned
        # reconstruction is the top-left crop (a resize would shift it by up to a stride).
        h, w = f.shape[-2:]
        if r.shape[-2] < h or r.shape[-1] < w:
            raise ValueError(f"autoencoder: reconstruction {tuple(r.shape[-2:])} smaller than "
                             f"its input {(h, w)}")
        return z, r[..., :h, :w]


def autoencoder_loss(f: torch.Tensor, recon: torch.Tensor, z: torch.Tensor, alpha: float = 1e-7):
    """``L_ae = ||F_t - D(E(F_t))||_2^2 + alpha * ||E(F_t)||_1`` [paper], alpha = 1e-7.

    Reductions [ours]: mean over elements for both terms (so the loss does not grow with the
    feature map's size). Returns ``(total, reconstruction term, l1 term)``.
    """
    rec = (f - recon).pow(2).mean()
    l1 = z.abs().mean()
    return rec + alpha * l1, rec, l1


# --------------------------------------------------------------------------- stage 2: adapters
class Adapter(nn.Sequential):
    """C_f / C_a: 3x3 conv, stride 1, padding 1, BN, ReLU [paper for C_f; ours: C_a the same]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def to_latent_size(z: torch.Tensor, size) -> torch.Tensor:
    """An adapter's output at the latent's size. Only the rounding of odd input sizes may differ
    (the student's and the encoder's strided convolutions round differently): at most one
    position per side. More means the autoencoder was made for another pair."""
    if max(abs(a - b) for a, b in zip(z.shape[-2:], size)) > 1:
        raise ValueError(f"distill: the student's adapted map is {tuple(z.shape[-2:])} but the "
                         f"autoencoder's latent is {tuple(size)}: the autoencoder was trained "
                         "for a student of another feature stride")
    return resize(z, size)


def _safe_root(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``x ** (1/p)`` with zero gradient where x <= 0: the root's derivative is infinite at 0
    (two coinciding unit vectors, or two zero ones), and rounding can make x < 0."""
    pos = x > 0
    safe = torch.where(pos, x, torch.ones_like(x))
    root = torch.sqrt(safe) if p == 2 else safe.pow(1.0 / p)
    return torch.where(pos, root, torch.zeros_like(x))


def _unit(f: torch.Tensor, q: float, eps: float = 1e-12) -> torch.Tensor:
    """Normalise each position's channel vector (dim 1) to unit q-norm; zero vectors stay zero."""
    return f / f.norm(p=q, dim=1, keepdim=True).clamp_min(eps)


def adaptation_loss(zs: torch.Tensor, zt: torch.Tensor, p: float = 2.0, q: float = 2.0,
                    reduction: str = "element") -> torch.Tensor:
    """Knowledge-adaptation loss [paper]:

    ``L_adapt = 1/|I| sum_{j in I} || E(F_t)_j / ||E(F_t)_j||_q - C_f(F_s)_j / ||C_f(F_s)_j||_q ||_p``

    ``zs`` = C_f(F_s), ``zt`` = E(F_t), both N x C x h x w; j runs over positions and the batch.

    - ``reduction="paper"``: the literal reading above, the mean over positions of the p-norm.
    - ``reduction="element"`` (default, [ours]): the mean over all elements of |difference|^p,
      i.e. the paper's per-position sum of |d|^p divided by C and without the 1/p root. With
      weight 50 it starts at 0.1x to 1x the CE loss (docs/method.md, "Magnitudes"); "paper" starts at
      ~20x.
    """
    if zs.shape != zt.shape:
        raise ValueError(f"adaptation: student {tuple(zs.shape)} and teacher {tuple(zt.shape)} differ")
    with torch.autocast(zs.device.type, enabled=False):
        d = _unit(at_least_f32(zs), q) - _unit(at_least_f32(zt), q)
        if reduction == "element":
            return d.abs().pow(p).mean()
        if reduction == "paper":
            per_position = d.abs().pow(p).sum(1)
            return _safe_root(per_position, p).mean()
    raise ValueError(f"adaptation reduction must be one of {ADAPT_REDUCTIONS}, not '{reduction}'")


# --------------------------------------------------------------------------- affinity
def _positions(f: torch.Tensor) -> torch.Tensor:
    """N x C x h x w -> N x m x C unit vectors (at least float32, whatever autocast says)."""
    n, c = f.shape[:2]
    return _unit(at_least_f32(f).reshape(n, c, -1), 2.0).transpose(1, 2)


def affinity_matrix(f: torch.Tensor) -> torch.Tensor:
    """``A_ij = (F_i . F_j) / (||F_i|| ||F_j||) / m`` [paper]: cosine similarity, spatially
    normalised by the number of positions m. N x C x h x w -> N x m x m."""
    s = _positions(f)
    return s @ s.transpose(1, 2) / s.shape[1]


def affinity_loss_dense(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "mse") -> torch.Tensor:
    """Affinity distillation, the reference form: builds both m x m matrices (O(m^2) memory).

    - ``"paper"``: ``L_aff = 1/m sum_i ||A_s(i,:) - A_t(i,:)||_2`` [paper], A as in
      :func:`affinity_matrix`. Shrinks like 1/sqrt(m) for the same maps at a larger resolution.
    - ``"mse"`` (default, [ours]): ``1/m^2 sum_ij (cos_s(i,j) - cos_t(i,j))^2``; resolution-free.
    - ``"element"``: ``1/m^2 sum_ij (A_s(i,j) - A_t(i,j))^2`` = mse / m^2.

    Averaged over the batch.
    """
    with torch.autocast(fs.device.type, enabled=False):
        s, t = _positions(fs), _positions(ft)
        m = s.shape[1]
        d = s @ s.transpose(1, 2) - t @ t.transpose(1, 2)  # cos_s - cos_t
        if reduction == "mse":
            return d.pow(2).mean()
        if reduction == "element":
            return d.pow(2).mean() / m**2
        if reduction == "paper":
            return (_safe_root(d.pow(2).sum(-1)) / m).mean()
    raise ValueError(f"affinity reduction must be one of {AFFINITY_REDUCTIONS}, not '{reduction}'")


def affinity_loss(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "mse", impl: str = "auto",
                  dense_max_positions: int = 1024) -> torch.Tensor:
    """Affinity distillation loss; ``impl="auto"`` picks dense up to ``dense_max_positions``
    positions (faster for small maps) and the Gram form above (memory-light). Both maps must have
    the same shape (the adapted student map and the encoded teacher map do), whatever the impl
    and the size: the same inputs give the same answer, or the same error, at every size."""
    if impl not in AFFINITY_IMPLS:
        raise ValueError(f"affinity impl must be one of {AFFINITY_IMPLS}, not '{impl}'")
    if fs.shape != ft.shape:  # checked here, so that every impl and size answers alike
        raise ValueError(f"affinity: student {tuple(fs.shape)} and teacher {tuple(ft.shape)} "
                         "need the same shape")
    m = fs.shape[-2] * fs.shape[-1]
    if impl == "dense" or (impl == "auto" and m <= dense_max_positions):
        return affinity_loss_dense(fs, ft, reduction)
    return affinity_loss_gram(fs, ft, reduction)


def check_distill_options(*, warmup_iters: int, control: str) -> None:
    """The distillation task's own options (the terms' are their losses'), checked where a
    config is read and again where a task is built."""
    if warmup_iters < 0:
        raise ValueError(f"distill.warmup_iters must be >= 0, got {warmup_iters}")
    if control not in CONTROLS:
        raise ValueError(f"distill.control must be one of {CONTROLS}, not '{control}'")
