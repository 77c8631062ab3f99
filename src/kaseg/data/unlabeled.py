"""Few labels and many pictures: a fixed labelled subset of a split, and the unlabelled images a
teacher can still teach on (a folder of images, a split whose masks are not used, or extra
synthetic scenes).

An unlabelled sample is ``(image, validity mask)``: the mask is 0 wherever the picture is and
the ignore index where augmentation padded it, so the label-free distillation terms see exactly
the positions they would see on a labelled image, and nothing is ever used as a class label.
Unlabelled images go through the same (seeded) augmentation as labelled ones: the teacher sees
exactly what the student sees.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import KasegError
from .base import SegmentationDataset
from .io import IMAGE_EXTS, read_image

log = logging.getLogger(__name__)


def labeled_indices(n: int, count: int | None = None, fraction: float | None = None,
                    seed: int = 0) -> list[int]:
    """The first ``count`` (or ``ceil(fraction * n)``) indices of a permutation of ``range(n)``
    seeded by ``seed``: a fixed subset, the same in every run, that grows by appending (the
    first 64 are among the first 128)."""
    if count is None and fraction is None:
        return list(range(n))
    keep = count if count is not None else int(np.ceil(fraction * n))
    if keep > n:
        raise KasegError(f"data.labeled_count={keep} but the training split has only {n} samples")
    order = np.random.default_rng([seed, 0x1AB]).permutation(n)
    return sorted(int(i) for i in order[:keep])


def unlabeled_rest(n: int, count: int | None, fraction: float | None, seed: int) -> list[int]:
    """The samples :func:`labeled_indices` leaves out (the rest of a split, labels unused)."""
    kept = set(labeled_indices(n, count, fraction, seed))
    return [i for i in range(n) if i not in kept]


class Subset(SegmentationDataset):
    """Some samples of a dataset, in the dataset's order, with its classes and transform."""

    def __init__(self, dataset: SegmentationDataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.class_names, self.palette = dataset.class_names, dataset.palette
        self.context_classes = dataset.context_classes
        self.flip_pairs = getattr(dataset, "flip_pairs", ())

    @property
    def transform(self):
        return self.dataset.transform

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, index: int):
        return self.dataset.raw(self.indices[index])

    def image(self, index: int) -> np.ndarray:
        return self.dataset.image(self.indices[index])

    def name(self, index: int) -> str:
        return self.dataset.name(self.indices[index])


class WithoutLabels(SegmentationDataset):
    """A dataset's images with their masks not read: ``(image, validity mask)`` samples."""

    def __init__(self, dataset: SegmentationDataset, transform=None):
        self.dataset, self.transform = dataset, transform
        self.class_names, self.palette = dataset.class_names, dataset.palette

    def __len__(self) -> int:
        return len(self.dataset)

    def raw(self, index: int):
        image = self.dataset.image(index)
        return image, np.zeros(image.shape[:2], np.uint8)

    def image(self, index: int) -> np.ndarray:
        return self.dataset.image(index)

    def name(self, index: int) -> str:
        return self.dataset.name(index)


def list_images(root: Path) -> tuple[list[Path], list[str]]:
    """(readable images under ``root``, one line per file that is not), checking each file's
    header only (cheap for thousands; a file truncated after its header fails, naming itself,
    when it is read)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    good, bad = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - parses the header
            good.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            bad.append(f"{path}: unreadable image ({type(e).__name__}: {e})")
    return good, bad


class UnlabeledImages(SegmentationDataset):
    """Every image in a folder and its subfolders (any format kaseg reads). Unreadable files are
    reported and skipped; a folder without one readable image is an error naming it."""

    def __init__(self, root: str | Path, class_names, palette, transform=None):
        root = Path(root)
        if not root.is_dir():
            raise KasegError(f"{root}: unlabelled image folder not found (data.unlabeled_root)")
        self.root, self.transform = root, transform
        self.class_names, self.palette = list(class_names), list(palette)
        self.images, self.unreadable = list_images(root)
        for line in self.unreadable:
            log.warning("%s (skipped)", line)
        if not self.images:
            what = f"only unreadable ones ({len(self.unreadable)})" if self.unreadable else "none"
            raise KasegError(f"{root}: no readable images in this folder or below ({what}; "
                             f"formats: {', '.join(IMAGE_EXTS)})")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        return read_image(self.images[index])

    def raw(self, index: int):
        image = self.image(index)
        return image, np.zeros(image.shape[:2], np.uint8)

    def name(self, index: int) -> str:
        return str(self.images[index].relative_to(self.root).with_suffix(""))
