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

from ..core.config import Config, check_ranges, from_dict, merge, parse_overrides
from ..data import DATASETS
from ..core.distributed import check_global_batch
from ..core.errors import KasegError
from ..losses.registry import LOSSES, canonical_losses, resolve_losses
from ..losses.method import check_distill_options
from ..nets.models import check_model_name

log = logging.getLogger(__name__)


# the method's keys before its terms were registered losses: old key -> (term, option)
_METHOD_KEYS = {"adapt_weight": ("adapt", "weight"), "adapt_reduction": ("adapt", "reduction"),
                "p": ("adapt", "p"), "q": ("adapt", "q"),
                "affinity_weight": ("affinity", "weight"),
                "affinity_reduction": ("affinity", "reduction"),
                "affinity_impl": ("affinity", "impl"),
                "dense_max_positions": ("affinity", "dense_max_positions")}
_LIST_KEYS = ("extra_losses", "loss_weights", "loss_options")


def _old_distill_keys(distill: dict) -> list[str]:
    """The keys of ``distill`` that name a loss's setting the old way."""
    old = [k for k in distill if k in _METHOD_KEYS or k in _LIST_KEYS]
    for name, spec in LOSSES.items():  # before the registry: kd_weight, kd_temperature, ...
        old += [f"{name}_{o}" for o in ("weight", *spec.options) if f"{name}_{o}" in distill
                and f"{name}_{o}" not in _METHOD_KEYS]
    return old


def _losses_from_old_keys(distill: dict, old: list[str]) -> dict:
    """``distill.losses`` of a config written with the old keys (``adapt_weight``, ``p``,
    ``extra_losses`` + ``loss_weights`` + ``loss_options``, ``kd_temperature``, ...), starting
    from its ``losses`` if it has them, else from the method's two terms (the old default)."""
    losses = {k: dict(v or {}) for k, v in (distill.get("losses") or
                                             {"adapt": {}, "affinity": {}}).items()}
    weights, options = distill.get("loss_weights") or {}, distill.get("loss_options") or {}
    for name in distill.get("extra_losses") or []:
        entry = losses.setdefault(name, {})
        if name in weights:
            entry["weight"] = weights[name]
        entry.update(options.get(name) or {})
    for key in old:
        if key in _METHOD_KEYS:
            term, option = _METHOD_KEYS[key]
            losses.setdefault(term, {})[option] = distill[key]
        elif key not in _LIST_KEYS:  # name_option of a loss the config selects
            name = next(n for n in LOSSES if key.startswith(n + "_")
                        and key[len(n) + 1:] in ("weight", *LOSSES[n].options))
            if name in losses:
                losses[name][key[len(name) + 1:]] = distill[key]
    return losses


def upgrade_distill(distill: dict, source: str = "config") -> dict:
    """A ``distill`` section (or an arm's changes to one) with the old loss keys read as
    ``losses``; unchanged when it has none."""
    old = _old_distill_keys(distill)
    if not old:
        return distill
    distill = dict(distill)
    distill["losses"] = _losses_from_old_keys(distill, old)
    for key in old:
        distill.pop(key)
    log.warning("%s: read the old distillation keys %s as distill.losses", source, ", ".join(old))
    return distill


def upgrade_config(data: dict, source: str = "config") -> dict:
    """A config's dict in today's form, so that old experiment files keep working and old runs
    resume: the loss settings of earlier releases (``distill.adapt_weight``, ``p``,
    ``affinity_impl``, ``extra_losses`` / ``loss_weights`` / ``loss_options``, ``kd_temperature``,
    ...) become ``distill.losses``, and ``distill.losses`` is written out in full
    (:func:`~kaseg.losses.registry.canonical_losses`), so that two configs that train the same terms
    read the same. A bad loss entry is left for the config check to name."""
    distill = data.get("distill")
    if not isinstance(distill, dict):
        return data
    distill = upgrade_distill(distill, source)
    if isinstance(distill.get("losses"), dict):
        try:
            distill["losses"] = canonical_losses(distill["losses"])
        except ValueError:
            pass  # check_config says what is wrong, naming the file
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
    if cls is Config:
        data = upgrade_config(data, source)
    for item in overrides:
        given = parse_overrides([item])
        if cls is Config and "losses" in (given.get("distill") or {}):
            distill = data.setdefault("distill", {})
            if item.split("=", 1)[0].strip() == "distill.losses":  # the whole set of terms
                distill.pop("losses", None)
            else:  # one term's setting: the other terms stay as the file has them
                distill.setdefault("losses", {"adapt": {}, "affinity": {}})
        data = merge(data, given)
    if cls is Config:
        data = upgrade_config(data, source)
    cfg = from_dict(cls, data, source)
    if isinstance(cfg, Config):
        check_config(cfg, source)
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(
            cfg.distill, losses=canonical_losses(cfg.distill.losses)))
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
        resolve_losses(d.losses)
        check_distill_options(warmup_iters=d.warmup_iters, control=d.control)
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
    from .teacher_cache import cache_options  # torch: imported when a config is checked

    cache_options(cfg, source)


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
    """The limited-labels and unlabelled-data keys, which must agree with each other."""
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
