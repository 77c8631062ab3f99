"""The protocol every kaseg dataset follows, written once."""

from __future__ import annotations

import numpy as np


class SegmentationDataset:
    """A split of a segmentation dataset. Subclasses set ``class_names``, ``palette`` (one RGB
    per class), ``context_classes`` (indices reported separately; may be empty), ``flip_pairs`` (left/right
    classes that a mirror swaps; may be empty) and
    ``transform`` (``(image, mask) -> tensors``, or None for raw arrays), and implement
    ``__len__``, :meth:`raw` and :meth:`name`."""

    class_names: list[str] | tuple[str, ...] = ()
    palette: list | tuple = ()
    context_classes: tuple[int, ...] = ()
    flip_pairs: list[tuple[int, int]] | tuple = ()  # classes a horizontal flip swaps
    transform = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 HxWx3 image, uint8 HxW class indices, 255 = ignore), before any transform."""
        raise NotImplementedError

    def image(self, index: int) -> np.ndarray:
        """The image alone (uint8 HxWx3): what an unlabelled stream reads. Layouts override it
        so that masks are not read where they are not used."""
        return self.raw(index)[0]

    def name(self, index: int) -> str:
        """A short name of the sample (for reports and `kaseg predict`)."""
        raise NotImplementedError

    def __getitem__(self, index: int):
        image, mask = self.raw(index)
        return self.transform(image, mask) if self.transform else (image, mask)
