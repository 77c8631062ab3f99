"""Supervised training of one segmentation network (a teacher or an undistilled student)."""

from __future__ import annotations

import logging
from pathlib import Path


from ..nets.checkpoint import load_state_strict, read_weights, resolve_weights, save_model
from ..core.config import Config, to_dict
from .evaluate import evaluate
from ..nets.models import SegModel, build_model
from ..core.errors import KasegError
from ..core.runtime import resolve_device, seed_everything, seeded
from .runs import build_data, dataset_meta, prepare_run, write_result
from .tasks import SegmentationTask
from .train import fit

log = logging.getLogger(__name__)


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
    prepare_run(run, to_dict(cfg), force, "train")
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
