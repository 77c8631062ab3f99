"""Joint image/mask transforms on tensors (torchvision v2 kernels underneath).

Geometry is applied to image and mask together (bilinear for the image, nearest for the mask);
padding uses 0 for the image and the ignore index for the mask, so padded pixels never count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ..core.labels import IGNORE_INDEX
from .classes import flip_label_lut


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor of ``a``'s values; read-only arrays (PIL's) are copied, as torch needs to own
    writable memory."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float CxHxW in [0, 1]."""
    return _tensor(image).permute(2, 0, 1).float().div_(255.0)


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 image and HxW mask -> float CxHxW in [0, 1] and int64 HxW."""
    return image_tensor(image), _tensor(mask).long()


def scaled_size(h: int, w: int, s: float) -> tuple[int, int]:
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def scale_by(img: torch.Tensor, mask: torch.Tensor, s: float):
    """Resize both by ``s`` (bilinear with antialiasing for the image, nearest for the mask)."""
    size = list(scaled_size(*mask.shape, s))
    img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    # NEAREST_EXACT samples pixel centres, as bilinear does: mask and image stay aligned
    mask = TF.resize(mask[None], size, interpolation=InterpolationMode.NEAREST_EXACT)[0]
    return img, mask


def random_scale(img: torch.Tensor, mask: torch.Tensor, lo: float, hi: float):
    return scale_by(img, mask, float(torch.empty(1).uniform_(lo, hi)))


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def pad_to(img: torch.Tensor, mask: torch.Tensor, size: int | tuple[int, int],
           ignore_index: int = IGNORE_INDEX):
    """Pad (image 0, mask ignore) at the bottom and right up to at least ``size``."""
    ch, cw = _pair(size)
    h, w = mask.shape
    ph, pw = max(0, ch - h), max(0, cw - w)
    if ph or pw:
        img = torch.nn.functional.pad(img, (0, pw, 0, ph), value=0.0)
        mask = torch.nn.functional.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return img, mask


def pad_crop(img: torch.Tensor, mask: torch.Tensor, size: int | tuple[int, int],
             ignore_index: int = IGNORE_INDEX):
    """Pad (image 0, mask ignore) up to ``size`` (side, or (height, width)), then take a random
    crop of that size."""
    ch, cw = _pair(size)
    img, mask = pad_to(img, mask, size, ignore_index)
    h, w = mask.shape
    y = int(torch.randint(0, h - ch + 1, (1,)))
    x = int(torch.randint(0, w - cw + 1, (1,)))
    return img[:, y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]


def random_flip(img: torch.Tensor, mask: torch.Tensor, p: float = 0.5,
                swap: torch.Tensor | None = None):
    """Mirror with probability ``p``; ``swap`` (a 256-entry label lookup table) turns each
    left/right class into its partner, as the mirror does."""
    if float(torch.rand(1)) < p:
        mask = mask.flip(-1)
        return img.flip(-1), (swap[mask] if swap is not None else mask)
    return img, mask


def photometric_jitter(img: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a factor in [1 - strength, 1 + strength]."""
    if strength <= 0:
        return img
    return jitter_by(img, torch.empty(3).uniform_(1 - strength, 1 + strength).tolist())


def jitter_by(img: torch.Tensor, factors) -> torch.Tensor:
    """Brightness, contrast and saturation by the three ``factors``."""
    img = TF.adjust_brightness(img, factors[0])
    img = TF.adjust_contrast(img, factors[1])
    return TF.adjust_saturation(img, factors[2])


def normalize(img: torch.Tensor, mean, std) -> torch.Tensor:
    return TF.normalize(img, list(mean), list(std))


@dataclass(frozen=True)
class View:
    """One augmented view's random parameters: what :class:`TrainTransform` draws, recorded so
    the same view can be cut again (a teacher cache stores them, not the pixels). ``jitter``:
    brightness, contrast and saturation factors (None: no jitter); ``scale``: the resize factor
    (1.0: none); ``y``, ``x``: the crop's corner on the scaled, padded image."""

    jitter: tuple[float, float, float] | None
    scale: float
    y: int
    x: int
    flip: bool

    FIELDS = 7  # its row in an array (:meth:`to_row`)

    def to_row(self) -> list[float]:
        j = self.jitter or (math.nan,) * 3
        return [*j, self.scale, float(self.y), float(self.x), float(self.flip)]

    @classmethod
    def from_row(cls, row) -> "View":
        j = tuple(float(v) for v in row[:3])
        return cls(None if math.isnan(j[0]) else j, float(row[3]), int(row[4]), int(row[5]),
                   bool(row[6]))


class TrainTransform:
    """jitter -> random scale -> pad/crop -> flip -> normalise (the DeepLab recipe).

    :meth:`draw` takes the random parameters from torch's global RNG (in the order the steps use
    them, so a seeded draw is the same view however it is cut); :meth:`apply` cuts a drawn view."""

    def __init__(self, crop_size: int | tuple[int, int], scale_min: float = 0.5, scale_max: float = 2.0,
                 flip: bool = True, jitter: float = 0.0, mean=(0.0,) * 3, std=(1.0,) * 3):
        self.crop_size, self.scale = crop_size, (scale_min, scale_max)
        self.flip, self.jitter, self.mean, self.std = flip, jitter, mean, std
        self.swap: torch.Tensor | None = None  # set_flip_pairs

    def set_flip_pairs(self, num_classes: int, pairs) -> None:
        lut = flip_label_lut(num_classes, pairs)
        self.swap = None if lut is None else torch.from_numpy(lut)

    def draw(self, height: int, width: int) -> View:
        """The random parameters of one view of an image of this size."""
        jitter = None
        if self.jitter > 0:
            jitter = tuple(torch.empty(3).uniform_(1 - self.jitter, 1 + self.jitter).tolist())
        s, (h, w) = 1.0, (height, width)
        if self.scale != (1.0, 1.0):
            s = float(torch.empty(1).uniform_(*self.scale))
            h, w = scaled_size(height, width, s)
        ch, cw = _pair(self.crop_size)
        h, w = max(h, ch), max(w, cw)
        y = int(torch.randint(0, h - ch + 1, (1,)))
        x = int(torch.randint(0, w - cw + 1, (1,)))
        flip = bool(self.flip and float(torch.rand(1)) < 0.5)
        return View(jitter, s, y, x, flip)

    def apply(self, image: np.ndarray, mask: np.ndarray, view: View):
        """The view ``view`` of ``(image, mask)``: no random number is drawn."""
        img, m = to_tensors(image, mask)
        if view.jitter is not None:
            img = jitter_by(img, view.jitter)
        if self.scale != (1.0, 1.0):
            img, m = scale_by(img, m, view.scale)
        img, m = pad_to(img, m, self.crop_size)
        ch, cw = _pair(self.crop_size)
        img, m = img[:, view.y : view.y + ch, view.x : view.x + cw], m[view.y : view.y + ch,
                                                                       view.x : view.x + cw]
        if view.flip:
            m = m.flip(-1)
            img, m = img.flip(-1), (self.swap[m] if self.swap is not None else m)
        return normalize(img, self.mean, self.std), m

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        return self.apply(image, mask, self.draw(*mask.shape[:2]))


class EvalTransform:
    """Validation: full resolution, only normalised."""

    def __init__(self, mean=(0.0,) * 3, std=(1.0,) * 3):
        self.mean, self.std = mean, std

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        img, m = to_tensors(image, mask)
        return normalize(img, self.mean, self.std), m
