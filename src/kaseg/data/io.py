"""Reading the files of any dataset: images in every format PIL reads, label PNGs, the default
colour palette. The dataset layouts (folder, the public ones, the checker, ``kaseg predict``) all
read through here, so a file is judged the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import KasegError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC bit-interleaved colour map, which gives distinct colours for any n."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def read_image(path: Path) -> np.ndarray:
    """Any image file -> uint8 HxWx3 RGB (grey, RGBA, palette and 16-bit are converted)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = arr / max(arr.max(), 1.0) * 255.0
                return np.repeat(arr.round().astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise KasegError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


def read_label_file(path: Path) -> np.ndarray:
    """A label PNG as stored (single channel: mode L, P, I or 1), values not yet checked."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise KasegError(
                    f"{path}: mask has mode {im.mode}; masks must be single-channel PNGs of class "
                    f"indices (mode L or P), not colour images"
                )
            return np.asarray(im)
    except KasegError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise KasegError(f"{path}: unreadable mask ({type(e).__name__}: {e})") from None


def check_mask_size(path: Path, mask_shape: tuple, image_shape: tuple) -> None:
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise KasegError(
            f"{path}: mask is {mask_shape[1]}x{mask_shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]} (width x height)"
        )
