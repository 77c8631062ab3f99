"""Supervised training of one segmentation network (a teacher or an undistilled student)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from .checkpoint import (atomic_write_text, load_state_strict, read_weights, resolve_weights,
                         save_model)
from .config import Config, to_dict
from .data import IGNORE_INDEX, build_dataset
from .evaluate import evaluate
from .models import SegModel, build_model
from .errors import KasegError
from .train import fit, prepare_run, resolve_device, seed_everything, seeded

log = logging.getLogger(__name__)


class SegmentationTask(nn.Module):
    """Pixel-wise cross-entropy on the model's logits; ignore pixels do not count."""

    def __init__(self, model: SegModel, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    def forward(self, images, targets) -> dict:
        logits = self.model(images)["logits"]
        ce = F.cross_entropy(logits.float(), targets, ignore_index=self.ignore_index)
        return {"loss": ce, "ce": ce}


def dataset_meta(dataset) -> dict:
    """What a checkpoint records about its classes, so it can be used without the dataset."""
    meta = {"class_names": list(dataset.class_names),
            "palette": [list(c) for c in dataset.palette]}
    tf = getattr(dataset, "transform", None)
    if hasattr(tf, "mean") and hasattr(tf, "std"):  # the input normalisation, for `kaseg predict`
        meta.update(mean=list(tf.mean), std=list(tf.std))
    return meta


def build_data(cfg: Config):
    """(train set with augmentation, val set) - built first, so bad data fails before any write."""
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
    return train_set, val_set


def build_network(cfg: Config, num_classes: int) -> SegModel:
    """``cfg.model`` with its initial weights a function of ``cfg.seed`` alone (whatever was built
    before it), or loaded from ``model.init_weights``: every arm of a comparison starts from the
    same network."""
    m = cfg.model
    with seeded(cfg.seed):
        model = build_model(m.name, num_classes, m.output_stride, m.decoder_channels, m.pretrained)
    if m.init_weights:
        path = resolve_weights(m.init_weights)
        state, meta = read_weights(path)
        spec = meta.get("spec", {})
        if spec.get("name") != m.name or spec.get("num_classes") != num_classes:
            raise KasegError(f"{path}: model.init_weights holds '{spec.get('name')}' with "
                             f"{spec.get('num_classes')} classes, not '{m.name}' with {num_classes}")
        load_state_strict(model, state, path)
    return model


def train_segmenter(cfg: Config, run: str | Path, force: bool = False) -> dict:
    """``kaseg train``: train ``cfg.model`` on ``cfg.data``; resumable; returns the summary."""
    run = Path(run)
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_data(cfg)
    model = build_network(cfg, train_set.num_classes)
    device = resolve_device(cfg.train.device)
    prepare_run(run, to_dict(cfg), force)
    meta = dataset_meta(train_set)

    def validate() -> dict:
        return evaluate(model, val_set, cfg.train.val_batch_size, device, cfg.train.amp,
                        cfg.data.num_workers)

    def export(which: str) -> None:
        save_model(model, run / which, meta)

    summary = fit(SegmentationTask(model), train_set, cfg.train, run, seed=cfg.seed,
                  validate=validate, export=export, num_workers=cfg.data.num_workers,
                  desc=f"train {cfg.model.name}")
    return write_result(run, summary, cfg.model.name)


def write_result(run: Path, summary: dict, model_name: str) -> dict:
    """``RUN/metrics.json``: the best validation of a segmentation run (what ``kaseg eval`` of its
    best weights reproduces)."""
    result = {"best_miou": summary["best"], "best_iter": summary["best_iter"],
              "iters": summary["iters"], "model": model_name, "val": summary["best_metrics"]}
    atomic_write_text(run / "metrics.json", json.dumps(result, indent=2))
    return result
