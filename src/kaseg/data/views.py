"""A fixed pool of augmented views per training image, and the dataset that trains on it.

Why: a teacher's outputs can be stored once per view and read by every run (a teacher cache),
but only for views that exist before training: each image gets ``V`` views drawn once by the
config's own augmentation (their parameters recorded, not their pixels), and a training sample
is one of them, re-cut from its parameters (bit-identical to the live augmentation that drew
them). Which view a sample takes is drawn from the sample's own seeded RNG
(:class:`kaseg.engine.train.SeededSamples`), so a seed fixes the order of (image, view) draws
in every arm.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import KasegError
from .base import SegmentationDataset
from .transforms import TrainTransform, View

POOL_SEED = 0x5EED_C0DE  # mixed with the pool's seed and the image index


def draw_views(transform: TrainTransform, height: int, width: int, count: int, seed: int,
               index: int) -> np.ndarray:
    """``count`` views of image ``index`` (of this size), a pure function of (seed, index):
    ``(count, View.FIELDS)`` float64 rows (exact: the draws are float32 values). The global
    RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((seed * 1_000_003 + index) ^ POOL_SEED)
        return np.array([transform.draw(height, width).to_row() for _ in range(count)],
                        dtype=np.float64)


class PoolViews(SegmentationDataset):
    """The training split seen through a pool of recorded views: ``views[i, v]`` is view v of
    sample i. ``outputs`` (optional): ``{entry: array of (n, V, ...)}``, e.g. a teacher cache's
    memory-mapped outputs, each sample then also yields ``{entry: tensor}`` of its view.
    ``sizes`` (optional): each image's recorded (height, width): an image of another size is an
    error naming it (the pool was drawn for other images)."""

    def __init__(self, dataset: SegmentationDataset, views: np.ndarray,
                 outputs: dict[str, np.ndarray] | None = None, sizes=None, source: str = "pool"):
        if not isinstance(dataset.transform, TrainTransform):
            raise KasegError(f"{source}: a pool of views needs the training augmentation")
        if len(views) != len(dataset):
            raise KasegError(f"{source}: has views of {len(views)} images, the training split "
                             f"has {len(dataset)}")
        self.dataset, self.views, self.outputs = dataset, views, outputs or {}
        self.sizes, self.source = sizes, source
        self.class_names, self.palette = dataset.class_names, dataset.palette
        self.context_classes = dataset.context_classes
        self.flip_pairs = getattr(dataset, "flip_pairs", ())

    @property
    def transform(self) -> TrainTransform:
        return self.dataset.transform

    @property
    def view_count(self) -> int:
        return self.views.shape[1]

    def __len__(self) -> int:
        return len(self.dataset)

    def raw(self, index: int):
        return self.dataset.raw(index)

    def name(self, index: int) -> str:
        return self.dataset.name(index)

    def view(self, index: int, v: int):
        """(image, mask[, {entry: tensor}]) of view ``v`` of sample ``index``."""
        image, mask = self.dataset.raw(index)
        if self.sizes is not None and tuple(mask.shape[:2]) != tuple(self.sizes[index]):
            raise KasegError(f"{self.source}: image '{self.dataset.name(index)}' is "
                             f"{mask.shape[0]} x {mask.shape[1]}, its views were drawn for "
                             f"{self.sizes[index][0]} x {self.sizes[index][1]}: rebuild the cache")
        img, m = self.transform.apply(image, mask, View.from_row(self.views[index, v]))
        if not self.outputs:
            return img, m
        return img, m, {k: torch.from_numpy(np.array(a[index, v])) for k, a in
                        self.outputs.items()}

    def __getitem__(self, index: int):
        """A view drawn from the global RNG (seeded per sample by the training loop)."""
        return self.view(index, int(torch.randint(0, self.view_count, (1,))))
