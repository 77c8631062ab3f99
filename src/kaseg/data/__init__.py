"""Datasets and their loaders, built from a :class:`~kaseg.config.DataConfig`."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import KasegError
from .folder import FolderDataset
from .base import SegmentationDataset
from .standard import LAYOUTS, StandardDataset
from .synthetic import SyntheticScenes
from ..runtime import IGNORE_INDEX
from .transforms import EvalTransform, TrainTransform

DATASETS = ("synthetic", "folder", *LAYOUTS)


def build_dataset(cfg: DataConfig, split: str, train: bool):
    """The dataset for ``split`` with training augmentation or evaluation transforms."""
    if train:
        tf = TrainTransform(cfg.crop_size, cfg.scale_min, cfg.scale_max, cfg.flip, cfg.jitter,
                            cfg.mean, cfg.std)
    else:
        tf = EvalTransform(cfg.mean, cfg.std)
    if cfg.dataset == "synthetic":
        count = cfg.train_count if split == "train" else cfg.val_count
        return SyntheticScenes(split, count, cfg.image_size, cfg.data_seed, tf)
    if cfg.dataset == "folder":
        if not cfg.root:
            raise KasegError("data.root must be set for the folder dataset")
        return FolderDataset(cfg.root, split, tf)
    if cfg.dataset in LAYOUTS:
        if not cfg.root:
            raise KasegError(f"data.root must be set for the {cfg.dataset} dataset")
        return StandardDataset(cfg.dataset, cfg.root, split, tf)
    raise KasegError(f"unknown data.dataset '{cfg.dataset}'; known: {', '.join(DATASETS)}")


__all__ = ["build_dataset", "FolderDataset", "SegmentationDataset", "StandardDataset", "SyntheticScenes", "IGNORE_INDEX",
           "DATASETS"]
