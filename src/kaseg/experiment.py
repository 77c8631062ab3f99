"""Reading an experiment: a YAML file and dotted overrides into a checked :class:`Config`.

Why a module of its own: the checks need the registries (datasets, losses, models, the method's
options), which themselves read configs; living above all of them, this module imports them
without an import circle.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from .config import Config, DistillConfig, _merge, check_ranges, from_dict, parse_overrides
from .data import DATASETS
from .distributed import check_global_batch
from .errors import KasegError
from .kd_losses import LOSSES, resolve_losses
from .method import check_distill_options
from .models import check_model_name

log = logging.getLogger(__name__)


def upgrade_legacy(data: dict, source: str = "config") -> dict:
    """A config written before the loss registry (``distill.kd_weight``, ``distill.kd_temperature``,
    ``distill.skd_pool``, ...) in today's form (``distill.loss_weights`` / ``loss_options``), so
    that old experiment files keep working and old runs resume. A value equal to the registry's
    default is dropped (it is what today's config means when it names nothing)."""
    distill = data.get("distill")
    if not isinstance(distill, dict):
        return data
    distill, moved = dict(distill), []
    own = {f.name for f in dataclasses.fields(DistillConfig)}  # today's keys are never "old"
    weights = dict(distill.get("loss_weights") or {})
    options = {k: dict(v) for k, v in (distill.get("loss_options") or {}).items()}
    for name, spec in LOSSES.items():
        for option, default in [("weight", spec.weight), *spec.options.items()]:
            old = f"{name}_{option}"
            if old not in distill or old in own:
                continue
            value = distill.pop(old)
            moved.append(old)
            if value == default:
                continue
            if option == "weight":
                weights.setdefault(name, value)
            else:
                options.setdefault(name, {}).setdefault(option, value)
    if not moved:
        return data
    log.warning("%s: read the old distillation keys %s as distill.loss_weights / loss_options",
                source, ", ".join(moved))
    distill["loss_weights"], distill["loss_options"] = weights, options
    return {**data, "distill": distill}


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = Config) -> Any:
    """Read a YAML experiment, apply dotted overrides, and validate every key and type."""
    data: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise KasegError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise KasegError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise KasegError(f"{path}: the top level must be a mapping of config keys")
        data.pop("compare", None)  # `kaseg compare`'s own section (read_section), not a run's
    if overrides:
        data = _merge(data, parse_overrides(list(overrides)))
    if cls is Config:
        data = upgrade_legacy(data, source)
    cfg = from_dict(cls, data, source)
    if isinstance(cfg, Config):
        check_config(cfg, source)
    return cfg


def read_section(path: str | Path | None, name: str) -> dict:
    """A top-level section of an experiment file that is not part of a run's config (e.g.
    ``compare:``); empty when absent."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return {}  # load_config reports it
    section = data.get(name) if isinstance(data, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise KasegError(f"{path}: '{name}' must be a mapping")
    return section


def check_config(cfg: Config, source: str = "config") -> None:
    """Every value that can be checked without data or weights, checked when the config is read
    (a pipeline must not train a teacher and then reject its distillation settings)."""
    if cfg.data.dataset not in DATASETS:
        raise KasegError(f"{source}: data.dataset '{cfg.data.dataset}' is unknown; known: "
                         f"{', '.join(DATASETS)}")
    d = cfg.distill
    try:
        resolve_losses(d.extra_losses, d.loss_weights, d.loss_options)
        check_distill_options(adapt_reduction=d.adapt_reduction,
                              affinity_reduction=d.affinity_reduction,
                              affinity_impl=d.affinity_impl, p=d.p, q=d.q,
                              warmup_iters=d.warmup_iters, control=d.control)
    except ValueError as e:
        raise KasegError(f"{source}: {e}") from None
    for key, name in (("model.name", cfg.model.name), ("teacher.name", cfg.teacher.name)):
        check_model_name(name, key)
    check_ranges(cfg, source)
    check_device(cfg.train.device, source)
    check_global_batch(cfg.train.batch_size, "train.batch_size", source)  # under torchrun
    if cfg.distill.unlabeled_batch_size:
        check_global_batch(cfg.distill.unlabeled_batch_size, "distill.unlabeled_batch_size",
                           source)
    check_unlabeled(cfg, source)


def check_device(device: str, source: str = "config") -> None:
    """``train.device``: "auto" or a device torch can name (whether it is present is checked
    where it is used)."""
    import torch

    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise KasegError(f"{source}: train.device '{device}' is not a device; use auto, cpu, "
                         "cuda, cuda:N or mps") from None


def check_unlabeled(cfg: Config, source: str = "config") -> None:
    """The few-labels and unlabelled-data keys, which must agree with each other."""
    data, d = cfg.data, cfg.distill
    if data.labeled_count is not None and data.labeled_fraction is not None:
        raise KasegError(f"{source}: set data.labeled_count or data.labeled_fraction, not both")
    if data.labeled_count is not None and data.labeled_count < 1:
        raise KasegError(f"{source}: data.labeled_count must be >= 1, got {data.labeled_count}")
    if data.labeled_fraction is not None and not 0 < data.labeled_fraction <= 1:
        raise KasegError(f"{source}: data.labeled_fraction must be in (0, 1], got "
                         f"{data.labeled_fraction}")
    sources = [k for k, v in (("data.unlabeled_root", data.unlabeled_root),
                              ("data.unlabeled_split", data.unlabeled_split),
                              ("data.unlabeled_count", data.unlabeled_count)) if v]
    if len(sources) > 1:
        raise KasegError(f"{source}: choose one source of unlabelled images, not {sources}")
    if data.unlabeled_count < 0:
        raise KasegError(f"{source}: data.unlabeled_count must be >= 0")
    if data.unlabeled_count and data.dataset != "synthetic":
        raise KasegError(f"{source}: data.unlabeled_count draws extra synthetic scenes; for "
                         f"'{data.dataset}' use data.unlabeled_root or data.unlabeled_split")
    if d.unlabeled_batch_size is not None and d.unlabeled_batch_size < 1:
        raise KasegError(f"{source}: distill.unlabeled_batch_size must be >= 1")
    if not 0.0 <= d.pseudo_threshold < 1.0:
        raise KasegError(f"{source}: distill.pseudo_threshold must be in [0, 1), got "
                         f"{d.pseudo_threshold}")
    if d.pseudo_labels and not sources:
        raise KasegError(f"{source}: distill.pseudo_labels needs unlabelled images "
                         "(data.unlabeled_root, data.unlabeled_split or data.unlabeled_count)")
