"""Joint image/mask transforms on tensors (torchvision v2 kernels underneath).

Geometry is applied to image and mask together (bilinear for the image, nearest for the mask);
padding uses 0 for the image and the ignore index for the mask, so padded pixels never count.
"""

from __future__ import annotations

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


def random_scale(img: torch.Tensor, mask: torch.Tensor, lo: float, hi: float):
    s = float(torch.empty(1).uniform_(lo, hi))
    h, w = mask.shape
    size = [max(1, int(round(h * s))), max(1, int(round(w * s)))]
    img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    # NEAREST_EXACT samples pixel centres, as bilinear does: mask and image stay aligned
    mask = TF.resize(mask[None], size, interpolation=InterpolationMode.NEAREST_EXACT)[0]
    return img, mask


def pad_crop(img: torch.Tensor, mask: torch.Tensor, size: int | tuple[int, int],
             ignore_index: int = IGNORE_INDEX):
    """Pad (image 0, mask ignore) up to ``size`` (side, or (height, width)), then take a random
    crop of that size."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = mask.shape
    ph, pw = max(0, ch - h), max(0, cw - w)
    if ph or pw:
        img = torch.nn.functional.pad(img, (0, pw, 0, ph), value=0.0)
        mask = torch.nn.functional.pad(mask, (0, pw, 0, ph), value=ignore_index)
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
    f = torch.empty(3).uniform_(1 - strength, 1 + strength).tolist()
    img = TF.adjust_brightness(img, f[0])
    img = TF.adjust_contrast(img, f[1])
    return TF.adjust_saturation(img, f[2])


def normalize(img: torch.Tensor, mean, std) -> torch.Tensor:
    return TF.normalize(img, list(mean), list(std))


class TrainTransform:
    """jitter -> random scale -> pad/crop -> flip -> normalise (the DeepLab recipe)."""

    def __init__(self, crop_size: int | tuple[int, int], scale_min: float = 0.5, scale_max: float = 2.0,
                 flip: bool = True, jitter: float = 0.0, mean=(0.0,) * 3, std=(1.0,) * 3):
        self.crop_size, self.scale = crop_size, (scale_min, scale_max)
        self.flip, self.jitter, self.mean, self.std = flip, jitter, mean, std
        self.swap: torch.Tensor | None = None  # set_flip_pairs

    def set_flip_pairs(self, num_classes: int, pairs) -> None:
        lut = flip_label_lut(num_classes, pairs)
        self.swap = None if lut is None else torch.from_numpy(lut)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        img, m = to_tensors(image, mask)
        img = photometric_jitter(img, self.jitter)
        if self.scale != (1.0, 1.0):
            img, m = random_scale(img, m, *self.scale)
        img, m = pad_crop(img, m, self.crop_size)
        if self.flip:
            img, m = random_flip(img, m, swap=self.swap)
        return normalize(img, self.mean, self.std), m


class EvalTransform:
    """Validation: full resolution, only normalised."""

    def __init__(self, mean=(0.0,) * 3, std=(1.0,) * 3):
        self.mean, self.std = mean, std

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        img, m = to_tensors(image, mask)
        return normalize(img, self.mean, self.std), m
