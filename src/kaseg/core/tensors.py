"""Tensor helpers shared by the method and the other losses (below both)."""

from __future__ import annotations

import functools

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


def _pixels(n: int, stride: int, corners: bool) -> tuple[float, float]:
    """(a, b): position i of an n-position map lies at pixel a * i + b (pixel k's centre is k)
    when its network upsamples it to n x stride pixels with ``align_corners=corners``."""
    size = n * stride
    if corners:
        return ((size - 1) / (n - 1) if n > 1 else 0.0), 0.0
    return float(stride), (stride - 1) / 2


def onto_grid(x: torch.Tensor, stride: int | None, size, to_stride: int | None,
              corners: bool = False, to_corners: bool = False) -> torch.Tensor:
    """A map of stride ``stride`` on the grid of a ``size`` map of stride ``to_stride``: each
    target position sampled (bilinear) where it lies in the image, by the geometry each network
    upsamples its own map with (``corners``: ``align_corners`` of that upsampling; SMP's heads
    align corners, torchvision's and kaseg's own resizing do not), beyond the map's edge its
    edge value. Each network pads the image to its own divisor, so the two maps may cover
    different extents. Unknown strides: resized to ``size``."""
    size = tuple(size)
    if stride is None or to_stride is None:
        return resize(x, size)
    if tuple(x.shape[-2:]) == size and stride == to_stride and corners == to_corners:
        return x
    axes = []
    for n, m in zip(x.shape[-2:], size):
        a_to, b_to = _pixels(m, to_stride, to_corners)
        a, b = _pixels(n, stride, corners)
        pixel = torch.arange(m, dtype=torch.float64) * a_to + b_to
        u = (pixel - b) / a if a else torch.zeros_like(pixel)  # position on x's own grid
        axes.append((2 * u / (n - 1) - 1 if n > 1 else torch.zeros_like(u)).to(x.dtype))
    gy, gx = torch.meshgrid(axes[0].to(x.device), axes[1].to(x.device), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(x.shape[0], *size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def full_precision(fn):
    """Run a loss with autocast off: under AMP its softmaxes and Gram products stay in float32
    (autocast of the device of the first tensor argument; a loss's module may come first)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def masked_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, H, W) over valid positions; 0 (with a gradient) when none is valid."""
    if valid is None:
        return x.mean()
    v = valid.to(x.dtype)
    return (x * v).sum() / v.sum().clamp(min=1.0)


def kl_from_logits(t: torch.Tensor, s: torch.Tensor, dim: int) -> torch.Tensor:
    """``KL(softmax(t) || softmax(s))`` along ``dim``: accurate when the two are close, invariant
    to a constant shift of either side, finite for any finite input.

    The textbook ``sum p_t (log p_t - log p_s)`` subtracts two log-normalisers of size log(n): over
    the 10^5 positions of a CWD map float32 leaves an error of ~1e-6 that can make the loss
    negative. With ``d = t - s`` and any constant c, exactly

        KL = sum p_t (d - c) - log(1 + sum p_s expm1(d - c)),

    and with ``c = sum p_t d`` (the teacher-weighted mean of d) no large terms cancel and
    ``d - c`` is small when the maps are close, whatever constant separates the two sides. Where
    the maps are far apart (``d - c`` would overflow exp, or the log1p argument nears -1) the
    textbook form on log-softmaxes is used: its rounding is small next to a large KL. Entries at
    -inf in both (masked) or in ``t`` (a one-hot teacher) add nothing.
    """
    pt, ps = t.softmax(dim), s.softmax(dim)
    d = t - s
    d = torch.where(torch.isnan(d), torch.zeros_like(d), d)  # -inf in both: a masked entry
    live = pt > 0  # entries with teacher mass (t = -inf has none); elsewhere no term, no NaN
    zero = torch.zeros_like(d)
    c = (pt * torch.where(live, d, zero)).sum(dim, keepdim=True)
    dc = d - c
    cross = (pt * torch.where(live, dc, zero)).sum(dim)
    near = (ps * torch.expm1(dc.clamp(max=30.0))).sum(dim)
    log_ratio = torch.where(live, t.log_softmax(dim) - s.log_softmax(dim), zero)
    textbook = (pt * log_ratio).sum(dim)
    use_near = (dc.amax(dim) < 30.0) & (near > -0.5)
    kl = torch.where(use_near, cross - torch.log1p(near.clamp(min=-0.5)), textbook)
    return kl.clamp(min=0.0)  # >= 0 exactly, not just up to rounding
