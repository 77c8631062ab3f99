"""MasKD's mask stage (``kaseg train-masks``): the receptive tokens trained on the frozen teacher,
once, before any MasKD distillation; a run folder like every stage (resumable, ``best``/``last``
weights, ``metrics.json``). It has trained enough when its loss on the validation images stops
falling (``masks.patience`` validations without improvement), at most ``masks.iters``
iterations."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..core.config import Config, to_dict
from ..core.errors import KasegError
from ..core.files import atomic_write_text
from ..core.runtime import (autocast, eval_generator, inputs_for, on_device, resolve_device,
                            seeded)
from ..losses.maskd import ReceptiveTokens
from ..nets.checkpoint import load_state_strict, read_weights, resolve_weights, save_weights
from .runs import prepare_run
from .tasks import MaskTask
from .train import fit

log = logging.getLogger(__name__)
KIND = "mask_tokens"
TOKENS_SEED_OFFSET = 3  # the tokens' initial values: their own stream


@torch.no_grad()
def mask_loss(task: MaskTask, dataset, device, amp: bool = False) -> dict:
    """The mask stage's loss on ``dataset`` (one image at a time: sizes may differ), its mean
    over the images; ``score`` = -loss (higher is better, as ``fit`` keeps the best)."""
    was = task.training
    task.eval()
    on_device(task.teacher.inner, device)
    on_device(task.tokens, device)
    totals = {"loss": 0.0, "ce": 0.0, "diversity": 0.0}
    n = 0
    for images, targets in DataLoader(dataset, batch_size=1, generator=eval_generator()):
        with autocast(device, amp):
            out = task(inputs_for(task.teacher.inner, images), targets.to(device))
        for k in totals:
            totals[k] += float(out[k])
        n += 1
    task.train(was)
    mean = {k: v / max(1, n) for k, v in totals.items()}
    return {"score": -mean["loss"], **mean}


AUTHORS_TOKENS = 8  # hunto/MasKD's segmentation scripts (19 Cityscapes classes)


def token_count(tokens: int | None, channels: int, source: str = "masks") -> int:
    """``masks.tokens``, or None: the authors' 8, at most the teacher's classes. Each token is a
    vector in the teacher's logit space: more tokens than its channels cannot all point
    different ways (the diversity term cannot be met), a one-line error."""
    if tokens is None:
        return min(AUTHORS_TOKENS, channels)
    if tokens > channels:
        raise KasegError(f"{source}: masks.tokens={tokens} but the teacher's logits have "
                         f"{channels} channels (classes): at most {channels} tokens")
    return tokens


def fit_masks(cfg: Config, teacher, train_set, val_set, run: str | Path, force: bool = False,
              source: str = "") -> dict:
    """The mask stage on objects: ``cfg.masks.tokens`` tokens on ``teacher``'s logits, trained
    on ``train_set`` and validated on ``val_set``; their weights in ``run``."""
    run = Path(run)
    m = cfg.masks
    count = token_count(m.tokens, train_set.num_classes, "train-masks")
    with seeded(cfg.seed + TOKENS_SEED_OFFSET):
        tokens = ReceptiveTokens(train_set.num_classes, count)
    task = MaskTask(teacher, tokens)
    tcfg = replace(cfg.train, iters=m.iters, lr=m.lr, weight_decay=m.weight_decay,
                   val_every=min(m.val_every, m.iters), patience=m.patience, grad_clip=None)
    device = resolve_device(cfg.train.device)
    prepare_run(run, to_dict(cfg), force, "train-masks")
    meta = {"kind": KIND, "channels": train_set.num_classes, "tokens": count,
            "teacher": str(source), "teacher_model": cfg.teacher.name}

    def export(which: str) -> None:
        save_weights(tokens, run / which, meta)

    summary = fit(task, train_set, tcfg, run, seed=cfg.seed,
                  validate=lambda: mask_loss(task, val_set, device, cfg.train.amp),
                  export=export, score_key="score", num_workers=cfg.data.num_workers,
                  desc="train-masks")
    result = {"val": summary["best_metrics"], "iters": summary["iters"],
              "best_iter": summary["best_iter"], **meta}
    atomic_write_text(run / "metrics.json", json.dumps(result, indent=2))
    return result


def load_masks(path: str | Path, teacher_name: str, channels: int) -> ReceptiveTokens:
    """The trained tokens of ``path`` (a ``kaseg train-masks`` run folder or its weights),
    checked against the teacher they will mask: its name and its logits' channels."""
    path = resolve_weights(path)
    state, meta = read_weights(path)
    if meta.get("kind") != KIND:
        raise KasegError(f"{path}: not MasKD's receptive tokens (from `kaseg train-masks`)")
    if meta["channels"] != channels or meta.get("teacher_model") != teacher_name:
        raise KasegError(f"{path}: the tokens were trained on '{meta.get('teacher_model')}' "
                         f"({meta['channels']} classes); this run's teacher is '{teacher_name}' "
                         f"({channels} classes): train them for it with `kaseg train-masks`")
    tokens = ReceptiveTokens(meta["channels"], meta["tokens"])
    load_state_strict(tokens, state, path)
    return tokens.eval()
