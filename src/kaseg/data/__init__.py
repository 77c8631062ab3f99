"""Datasets and their loaders, built from a :class:`~kaseg.core.config.DataConfig`."""

from __future__ import annotations

import logging

from ..core.config import DataConfig
from ..core.errors import KasegError
from .folder import FolderDataset
from .base import SegmentationDataset
from .classes import looks_paired
from .standard import LAYOUTS, StandardDataset
from .synthetic import SyntheticScenes
from .unlabeled import Subset, UnlabeledImages, WithoutLabels, labeled_indices, unlabeled_rest
from ..core.labels import IGNORE_INDEX
from .transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)
DATASETS = ("synthetic", "folder", *LAYOUTS)


def _transform(cfg: DataConfig, train: bool):
    if train:
        return TrainTransform(cfg.crop_size, cfg.scale_min, cfg.scale_max, cfg.flip, cfg.jitter,
                              cfg.mean, cfg.std)
    return EvalTransform(cfg.mean, cfg.std)


def build_dataset(cfg: DataConfig, split: str, train: bool):
    """The dataset for ``split`` with training augmentation or evaluation transforms; the
    training split keeps only its labelled subset (``data.labeled_count`` / ``_fraction``)."""
    dataset = _build(cfg, split, _transform(cfg, train))
    if train and cfg.flip:
        _wire_flip_pairs(dataset)
    if train and split == cfg.train_split and (cfg.labeled_count or cfg.labeled_fraction):
        dataset = Subset(dataset, labeled_indices(len(dataset), cfg.labeled_count,
                                                  cfg.labeled_fraction, cfg.data_seed))
    return dataset


def _wire_flip_pairs(dataset) -> None:
    """Training flips swap the dataset's left/right classes; a class list that looks paired
    without ``flip_pairs`` gets a warning (a flip would teach that left and right are one)."""
    pairs = getattr(dataset, "flip_pairs", ())
    if pairs:
        dataset.transform.set_flip_pairs(dataset.num_classes, pairs)
    elif suspects := looks_paired(list(dataset.class_names)):
        log.warning("classes %s look like left/right pairs but the dataset gives no flip_pairs: "
                    "training flips keep their labels as they are; add 'flip_pairs' to the "
                    "classes file or set data.flip=false", suspects[:4])


def build_unlabeled(cfg: DataConfig, labeled):
    """The unlabelled training images (``data.unlabeled_*``) with the training augmentation, or
    None. ``labeled``: the labelled training set, whose classes they share."""
    tf = _transform(cfg, True)
    if cfg.unlabeled_root:
        return UnlabeledImages(cfg.unlabeled_root, labeled.class_names, labeled.palette, tf)
    if cfg.unlabeled_count:
        scenes = SyntheticScenes("extra", cfg.unlabeled_count, cfg.image_size, cfg.data_seed)
        return WithoutLabels(scenes, tf)
    if cfg.unlabeled_split:
        split = _build(cfg, cfg.unlabeled_split, None)
        if cfg.unlabeled_split == cfg.train_split:  # the labels left out of the labelled subset
            rest = unlabeled_rest(len(split), cfg.labeled_count, cfg.labeled_fraction,
                                  cfg.data_seed)
            if not rest:
                raise KasegError(f"data.unlabeled_split '{cfg.unlabeled_split}' is the training "
                                 "split and every sample of it is labelled; set "
                                 "data.labeled_count or data.labeled_fraction")
            split = Subset(split, rest)
        return WithoutLabels(split, tf)
    return None


def _build(cfg: DataConfig, split: str, tf):
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


__all__ = ["build_dataset", "build_unlabeled", "Subset", "UnlabeledImages", "WithoutLabels", "FolderDataset", "SegmentationDataset", "StandardDataset", "SyntheticScenes", "IGNORE_INDEX",
           "DATASETS"]
