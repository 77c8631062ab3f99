"""A user's own dataset: ``images/`` + ``masks/`` (PNG of class indices, 255 = ignore).

Layout (ROOT)::

    images/<name>.jpg|png|...     masks/<name>.png       classes.yaml (or .json)

Splits, first found wins: ``splits/<split>.txt`` or ``<split>.txt`` (one name per line, relative
to images/, extension optional); ``images/<split>/`` + ``masks/<split>/`` subfolders; otherwise a
fixed split of the sorted names (every 10th image is ``val``, the rest ``train``).

``classes.yaml``: ``names: [background, road, ...]`` and optionally ``palette: [[r, g, b], ...]``
and ``flip_pairs: [[left, right], ...]`` (other accepted forms: :mod:`kaseg.data.classes`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..core.errors import KasegError
from ..core.labels import IGNORE_INDEX
from .base import SegmentationDataset
from .classes import read_class_file
from .io import IMAGE_EXTS, check_mask_size, read_image, read_label_file

log = logging.getLogger(__name__)


def read_mask(path: Path, num_classes: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG of class indices (mode L, P or I) -> uint8 HxW, with values checked."""
    arr = read_label_file(path)
    if image_shape is not None:
        check_mask_size(path, arr.shape, image_shape)
    bad = np.unique(arr[(arr >= num_classes) & (arr != IGNORE_INDEX)])
    if bad.size:
        raise KasegError(
            f"{path}: label values {bad[:8].tolist()} are outside 0..{num_classes - 1} "
            f"(and not {IGNORE_INDEX} = ignore)"
        )
    return arr.astype(np.uint8)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _find(images_dir: Path, name: str, listing: Path) -> Path:
    direct = images_dir / name
    if direct.suffix.lower() in IMAGE_EXTS and direct.is_file():
        return direct
    for ext in IMAGE_EXTS:
        if (p := images_dir / f"{name}{ext}").is_file():
            return p
    raise KasegError(f"{listing}: lists '{name}' but there is no such image in {images_dir}")


def split_images(root: Path, split: str) -> list[Path]:
    """The images of ``split`` under ``root/images`` by the rules in the module docstring."""
    images_dir = root / "images"
    for lst in (root / "splits" / f"{split}.txt", root / f"{split}.txt"):
        if lst.is_file():
            return [_find(images_dir, line.strip(), lst)
                    for line in lst.read_text().splitlines() if line.strip()]
    if (images_dir / split).is_dir():
        return _list_images(images_dir / split)
    everything = _list_images(images_dir)
    if split not in ("train", "val"):
        raise KasegError(f"{root}: no split list or folder for split '{split}'")
    log.warning("%s: no split lists; using every 10th image as val", root)
    return [p for i, p in enumerate(everything) if (i % 10 == 9) == (split == "val")]


class FolderDataset(SegmentationDataset):
    """A split of a user's folder dataset (layout in the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train", transform=None):
        root = Path(root)
        if not root.is_dir():
            raise KasegError(f"{root}: dataset folder not found (set data.root)")
        images_dir, masks_dir = root / "images", root / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise KasegError(f"{d}: folder not found; a folder dataset needs images/ and masks/")
        self.root, self.split, self.transform = root, split, transform
        info = read_class_file(root)
        self.class_names, self.palette, self.flip_pairs = info.names, info.palette, info.flip_pairs
        self.context_classes = ()
        self.images = split_images(root, split)
        if not self.images:
            raise KasegError(f"{root}: split '{split}' has no images")
        self.masks = []
        for img in self.images:
            mask = masks_dir / img.relative_to(images_dir).with_suffix(".png")
            if not mask.is_file():
                raise KasegError(f"{img}: has no mask (expected {mask})")
            self.masks.append(mask)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return str(self.images[index].relative_to(self.root / "images").with_suffix(""))

    def image(self, index: int) -> np.ndarray:
        return read_image(self.images[index])

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.images[index])
        return image, read_mask(self.masks[index], self.num_classes, image.shape[:2])
