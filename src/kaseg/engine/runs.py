"""Run folders: what a run records, and how a folder becomes ready for a run (new, resumed or
restarted). Every stage writes its results through these helpers."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import yaml

from ..core.files import atomic_write_text
from ..core.config import Config, diff_configs, to_dict
from .experiment import upgrade_config
from ..data import build_dataset
from ..core.distributed import barrier, is_main
from ..core.errors import KasegError
from ..losses.registry import needs_autoencoder, needs_masks

log = logging.getLogger(__name__)


def build_data(cfg: Config):
    """(train set with augmentation, val set) - built first, so bad data fails before any write."""
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
    return train_set, val_set


def dataset_meta(dataset, num_classes: int | None = None) -> dict:
    """What a checkpoint records about its classes, so it can be used without the dataset (a
    user's own dataset without ``class_names``/``palette`` gets numbered names and VOC colours)."""
    from ..data.io import default_palette

    n = num_classes or len(getattr(dataset, "class_names", ()))
    names = getattr(dataset, "class_names", None) or [f"class_{i}" for i in range(n)]
    meta = {"class_names": list(names),
            "palette": [list(c) for c in (getattr(dataset, "palette", None)
                                          or default_palette(len(names)))],
            "flip_pairs": [list(p) for p in getattr(dataset, "flip_pairs", ())]}
    tf = getattr(dataset, "transform", None)
    if hasattr(tf, "mean") and hasattr(tf, "std"):  # the input normalisation, for `kaseg predict`
        meta.update(mean=list(tf.mean), std=list(tf.std))
    return meta


def write_result(run: Path, summary: dict, model_name: str) -> dict:
    """``RUN/metrics.json``: the best validation of a segmentation run (what ``kaseg eval`` of its
    best weights reproduces)."""
    result = {"best_miou": summary["best"], "best_iter": summary["best_iter"],
              "iters": summary["iters"], "model": model_name, "val": summary["best_metrics"]}
    atomic_write_text(run / "metrics.json", json.dumps(result, indent=2))
    return result


# settings that change how a run is executed, not what it computes: a run may resume with others
# (augmentation is seeded per sample, so the number of loader workers does not change results)
RUNTIME_KEYS = {"data.num_workers", "train.device", "train.log_every"}

RUN_ARTEFACTS = ("checkpoint.pt", "best.safetensors", "best.json", "last.safetensors", "last.json",
                 "history.jsonl", "metrics.json", "failed.json", "cost.json", "tb")


# config keys that hold a mapping of the user's own entries (terms), never filled key by key
MAPPINGS = frozenset({"losses"})

# keys whose default changed when they were added: a run written before them ran like this
LEGACY = {"ae": {"min_iters": 0}}


def with_defaults(old: dict, defaults: dict) -> dict:
    """``old`` with every key it lacks taken from ``defaults`` (recursively): a run written
    before a config key existed ran with that key's default."""
    out = dict(old)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif key in MAPPINGS:  # a mapping of user entries, not a section: kept as it is
            continue
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


# the config sections a command never reads: a finished or half-done run of it is the same run
# whatever they hold (a shared CE start stays reusable when another comparison needs no
# autoencoder, so ``ae.weights`` is unset there)
UNUSED = {"train": ("teacher", "ae", "masks", "distill"),
          # MasKD's mask stage reads the teacher, the data and its own section: the tokens of a
          # comparison with a feature arm (ae.weights set) are those of one without
          "train-masks": ("ae", "distill", "model")}


def unused_sections(config: dict, command: str | None) -> set[str]:
    """The config's sections a run of ``command`` never reads: :data:`UNUSED`; ``masks``
    (MasKD's tokens) for a run whose terms do not read them, the mask stage's own excepted (a
    comparison that adds a MasKD arm points every arm at its tokens); and ``ae`` for a
    distillation run whose terms do not read the autoencoder (a comparison without the method's
    arms has none: their runs are the same runs)."""
    unused = set(UNUSED.get(command, ()))
    losses = (config.get("distill") or {}).get("losses")
    try:
        if command != "train-masks" and not needs_masks(losses):
            unused.add("masks")
        if command in (None, "distill") and not needs_autoencoder(losses):
            unused.add("ae")
    except ValueError:  # an unknown term: the config's own check names it
        pass
    return unused


def config_changes(run: Path, config: dict, command: str | None = None) -> list[str]:
    """The keys (runtime settings aside, and the sections ``command`` never reads:
    :data:`UNUSED`) in which ``config`` differs from the one ``run`` was started with; [] when
    they agree or the folder records none."""
    cfg_path = Path(run) / "config.yaml"
    if not cfg_path.exists():
        return []
    old = upgrade_config(yaml.safe_load(cfg_path.read_text()) or {}, str(cfg_path))
    if "api" not in config:  # keys added since the run started mean what they meant then
        old = upgrade_config(with_defaults(with_defaults(old, LEGACY), to_dict(Config())))
    new = upgrade_config(config)
    unused = unused_sections(new, command)
    return [k for k in diff_configs(old, new) if k not in RUNTIME_KEYS
            and k.split(".")[0] not in unused
            and not moved_with_run(_value(old, k), _value(new, k), Path(run))]


def _value(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def moved_with_run(old, new, run: Path) -> bool:
    """Whether two path values are one place inside a folder that was moved or copied with the
    run (a comparison or pipeline folder taken elsewhere: its runs name each other by path).
    They are when they end alike and differ only in a root that holds ``run`` now, and, where
    the old place still exists (a copy), it holds the same bytes. A path outside the run's
    tree (a dataset, a teacher of the user's) is never matched this way."""
    if not (isinstance(old, str) and isinstance(new, str)) or old == new:
        return False
    o, n = Path(old).parts, Path(new).parts
    tail = 0
    while tail < min(len(o), len(n)) and o[-1 - tail] == n[-1 - tail]:
        tail += 1
    if tail == 0 or tail == len(n):
        return False
    root = Path(*n[: len(n) - tail]).resolve()
    if root not in Path(run).resolve().parents or not Path(new).exists():
        return False
    if Path(old).exists() and _digest(Path(old)) != _digest(Path(new)):
        return False
    if (str(run), old) not in _SAID:  # once per run and path, however often it is checked
        _SAID.add((str(run), old))
        log.info("%s: %s is %s now (moved or copied with the run)", run, old, new)
    return True


_SAID: set[tuple[str, str]] = set()


def _digest(path: Path) -> str:
    """What a weights path holds: a file's bytes, or a run folder's weight files."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def prepare_run(run: Path, config: dict, force: bool = False,
                command: str | None = None) -> None:
    """Make ``run`` ready for this config: new, resumable (same config), or restarted (``force``).

    Call it only after every input has been checked, so a run that fails on bad input never
    touches what an earlier run saved.
    """
    cfg_path = run / "config.yaml"
    if run.exists() and not run.is_dir():
        raise KasegError(f"{run}: exists and is not a folder")
    if run.is_dir() and any(run.iterdir()) and not cfg_path.exists() and not force:
        raise KasegError(f"{run}: folder is not empty and is not a kaseg run; choose another --out")
    if cfg_path.exists() and not force:
        changed = config_changes(run, config, command)
        if changed:
            raise KasegError(
                f"{run}: was started with a different config ({', '.join(changed[:5])}); "
                f"use --force to start over or choose another --out"
            )
    # the checks above run everywhere (same answer); every rank has made them before rank 0
    # writes anything, or another rank could see a half-made folder (a temporary file, no
    # config.yaml yet) and refuse it
    barrier()
    if not is_main():  # rank 0 alone writes
        barrier()
        return
    if force:
        for name in RUN_ARTEFACTS:
            p = run / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, yaml.safe_dump(config, sort_keys=False))
    barrier()
