"""Experiment configs: flat dataclasses, complete YAML files, dotted command-line overrides.

A YAML file is a whole experiment (no inheritance); the resolved config is saved beside every run
so the run can be understood and rebuilt without the file it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import KasegError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    # "synthetic" (built in), "folder" (images/ + masks/), or a public dataset in its standard
    # layout (kaseg.data.DATASETS lists them all)
    dataset: str = "synthetic"
    root: str | None = None  # the dataset's folder; unused by "synthetic"
    train_split: str = "train"
    val_split: str = "val"
    # synthetic scenes: image side, sample counts and the data seed (fixed, not the training seed,
    # so that every run and every seed of a comparison sees the same images)
    image_size: int = 64
    train_count: int = 1024
    val_count: int = 128
    data_seed: int = 0
    # training augmentation (validation images are only normalised)
    crop_size: int | tuple[int, int] = 64  # side, or [height, width] (e.g. [512, 1024])
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    jitter: float = 0.2  # photometric jitter strength (brightness/contrast/saturation); 0 = off
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = 0
    # limited labels: keep only N labelled training samples (or a fraction), the first N of a fixed
    # order seeded by data_seed, so the same subset is used by every run and every seed
    labeled_count: int | None = None
    labeled_fraction: float | None = None
    # unlabelled images for distillation (the teacher teaches on every picture): a folder of
    # images (searched recursively), a split of this dataset whose masks are not used (the
    # training split itself: the samples labeled_* left out), or for the synthetic scenes this
    # many extra scenes (their own stream, disjoint from train/val/test). Used by `kaseg distill`.
    unlabeled_root: str | None = None
    unlabeled_split: str | None = None
    unlabeled_count: int = 0


@dataclass
class ModelConfig:
    name: str = "tiny-student"  # an alias (kaseg info --list) or "arch:encoder", e.g. "unet:resnet34"
    output_stride: int | None = None  # None: the alias's or architecture's default
    decoder_channels: int | None = None  # None: the alias's or architecture's default
    pretrained: bool = False  # fetch ImageNet encoder weights from the hub (needs network)
    # start from these weights (a run folder or .safetensors of the same network), e.g. a student
    # trained with CE elsewhere: every arm of a comparison then starts from the same model
    init_weights: str | None = None


@dataclass
class TrainConfig:
    iters: int = 1000
    batch_size: int = 8  # the global batch: split over the processes under torchrun
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    amp: bool = False  # bf16 autocast on CPU, fp16 (+ GradScaler) on CUDA
    grad_clip: float | None = None  # max global grad norm; None = no clipping
    skip_nonfinite: bool = False  # a non-finite loss: skip that step and count it (default: stop)
    sync_bn: bool = False  # torchrun: SyncBatchNorm in the trained network (not the teacher)
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    val_every: int = 200  # validate (and checkpoint) every N iterations and at the end
    patience: int | None = None  # stop after N validations without improvement; None = never
    val_batch_size: int = 1  # >1 only when all validation images have one size
    log_every: int = 10
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...


@dataclass
class TeacherConfig:
    """The frozen teacher of the autoencoder and distillation stages (and the pipeline's first)."""

    name: str = "tiny-teacher"
    output_stride: int | None = None
    decoder_channels: int | None = None
    pretrained: bool = False
    # the trained teacher: a kaseg run folder or .safetensors (the pipeline sets it for you), or
    # a checkpoint of your own (.pth/.pt/.bin/.safetensors state dict of the network `name`
    # builds; every key checked). Unset with pretrained=true and a torchvision name: torchvision's
    # own weights are the teacher, as they are
    weights: str | None = None
    tap: str = "pre_logits"  # which feature map is distilled ([paper]: the last one)
    iters: int | None = None  # pipeline: the teacher's training iterations (None: train.iters)
    lr: float | None = None  # pipeline: the teacher's learning rate (None: train.lr)


@dataclass
class AEConfig:
    """Stage 1: the autoencoder that translates the teacher's features ([paper] values)."""

    weights: str | None = None  # trained autoencoder run folder, for distill (pipeline: set for you)
    latent_channels: int | None = None  # None: half the teacher's channels [ours]
    alpha: float = 1e-7  # L1 sparsity weight on the latent code [paper]
    epochs: float = 1.0  # passes over the training split [paper: one]
    lr: float = 0.1  # [paper]
    weight_decay: float = 1e-4  # [paper]
    grad_clip: float | None = 10.0  # [ours] guards lr 0.1 against large teacher activations
    # [ours] a floor in iterations: one epoch of a small dataset (112 images: 14 iterations)
    # leaves the autoencoder untrained, and "the method" silently becomes the untrained-encoder
    # control. The budget is max(min_iters, epochs x iterations per epoch).
    min_iters: int = 1000
    # [ours] validate every this many epochs (None: four times over the budget when `patience`
    # is set, else once at the end); with `patience`, stop once the val reconstruction error
    # has not improved for that many validations: trained until it stops falling
    val_every_epochs: float | None = None
    patience: int | None = 2


@dataclass
class MasksConfig:
    """MasKD's mask stage (``kaseg train-masks``): receptive tokens trained on the frozen
    teacher's logits before any MasKD distillation ([authors]: hunto/MasKD, 8 tokens, SGD lr 0.1,
    weight decay 1e-3, poly; their 10000 iterations of 16 Cityscapes crops are scaled to a
    floor here)."""

    weights: str | None = None  # the trained tokens' run folder (a comparison sets it for you)
    tokens: int | None = None  # None: the authors' 8, at most the teacher's classes
    iters: int = 1000  # [ours] at most; the stage stops once its val loss stops falling
    lr: float = 0.1  # [authors]
    weight_decay: float = 1e-3  # [authors]
    val_every: int = 100  # [ours] validations of the mask loss on the val images
    patience: int | None = 2  # [ours] validations without improvement before it stops


def _method_terms() -> dict[str, dict]:
    return {"adapt": {}, "affinity": {}}


@dataclass
class DistillConfig:
    """Stage 2: L = L_ce + sum of weight x term over ``losses``; a term absent or weighted 0 is off.

    ``losses`` maps each term of the loss registry (``kaseg info --losses``: the method's
    ``adapt`` and ``affinity``, and the field's ``kd``, ``cwd``, ``dist``, ...) to its weight and
    options, each defaulting to the loss's own (the method's: adapt 50, affinity 30, a balanced
    pair; the paper's 50 and 1 pair with ``reduction: paper``, docs/method.md "Magnitudes"), e.g.
    ``losses: {adapt: {}, affinity: {weight: 10}, kd: {temperature: 2.0}}``. When a config is read
    it is written out in full (every weight and option), as saved beside each run.
    """

    student_tap: str = "pre_logits"
    losses: dict[str, dict] = field(default_factory=_method_terms)
    # ramp every distillation weight linearly from 0 to its value over the first N iterations
    # (the adapters catch up with the targets before they steer the student); 0 = off
    warmup_iters: int = 0
    # negative controls for studies: "random_encoder" (an untrained E: no teacher knowledge in
    # the target), "constant_target" (the adapters are fitted to a constant map); "none" = the method
    control: str = "none"
    # the unlabelled stream (data.unlabeled_*): images per step, global like train.batch_size
    # (None: the same as train.batch_size); every label-free term is computed on them too
    unlabeled_batch_size: int | None = None
    # how the two batches share each label-free term: (1 - u) * term(labelled) + u *
    # term(unlabelled). None: u = the unlabelled batch's share of the step's images (the term's
    # mean over every image), so that turning unlabelled images on changes what the terms see,
    # not how much they weigh against CE. 1.0 = only the unlabelled batch; 0.0 = ignore it.
    unlabeled_weight: float | None = None
    # self-training: CE on the unlabelled images against the teacher's argmax, where the
    # teacher's softmax confidence is at least pseudo_threshold (0: everywhere)
    pseudo_labels: bool = False
    pseudo_threshold: float = 0.0
    # the teacher paid once: train on a fixed pool of augmented views whose teacher outputs are
    # stored on disk (kaseg cache-teacher), e.g. {views: 16, dtype: float16, path: DIR}; None:
    # the live teacher on live augmentation. Keys: kaseg.engine.teacher_cache.CacheOptions
    teacher_cache: dict | None = None


@dataclass
class Config:
    seed: int = 0
    deterministic: bool = False  # seed everything and use deterministic algorithms
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # the network trained (the student)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# ``kaseg compare``'s defaults, defined once (here, where the command line's help can read them
# without importing torch; the comparison, the demo and the study read them too)
COMPARE_SEEDS = 5  # paired seeds 0..N-1, the reported ones
QUICK_SEEDS = 2  # the same, for a quick look (``kaseg demo --quick``)
TUNE_SEEDS = (100, 101)  # the tuning seeds: weights are chosen here, never reported
WEIGHT_SCALES = (0.3, 1.0, 3.0)  # x each tuned weight (the method's, and a tuned arm's own)


# the range of every numeric key, checked when a config is read (before anything trains):
# ">= a", "> a", or an interval "[a, b]" / "[a, b)"; None (where a key allows it) is not checked
RANGES: dict[str, str] = {
    "data.image_size": ">= 1", "data.train_count": ">= 1", "data.val_count": ">= 1",
    "data.crop_size": ">= 1", "data.scale_min": "> 0", "data.scale_max": "> 0",
    "data.jitter": ">= 0", "data.std": "> 0", "data.num_workers": ">= 0",
    "model.output_stride": ">= 1", "model.decoder_channels": ">= 1",
    "train.iters": ">= 1", "train.batch_size": ">= 1", "train.lr": "> 0",
    "train.momentum": "[0, 1)", "train.weight_decay": ">= 0", "train.poly_power": ">= 0",
    "train.grad_clip": "> 0", "train.val_every": ">= 1", "train.patience": ">= 1",
    "train.val_batch_size": ">= 1", "train.log_every": ">= 1",
    "teacher.output_stride": ">= 1", "teacher.decoder_channels": ">= 1",
    "teacher.iters": ">= 1", "teacher.lr": "> 0",
    "ae.latent_channels": ">= 1", "ae.alpha": ">= 0", "ae.epochs": "> 0", "ae.lr": "> 0",
    "ae.weight_decay": ">= 0", "ae.grad_clip": "> 0", "ae.min_iters": ">= 0",
    "ae.val_every_epochs": "> 0", "ae.patience": ">= 1",
    "masks.tokens": ">= 1", "masks.iters": ">= 1", "masks.lr": "> 0", "masks.weight_decay": ">= 0",
    "masks.val_every": ">= 1", "masks.patience": ">= 1",
    "distill.warmup_iters": ">= 0", "distill.unlabeled_batch_size": ">= 1",
    "distill.unlabeled_weight": "[0, 1]", "distill.pseudo_threshold": "[0, 1)",
}


def _in_range(value: float, rule: str) -> bool:
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(v) for v in rule[1:-1].split(","))
    return low <= value and (value <= high if rule.endswith("]") else value < high)


def check_ranges(cfg: "Config", source: str = "config") -> None:
    """Every numeric key within its range (:data:`RANGES`): one line naming the first that is
    not."""
    for key, rule in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and not _in_range(v, rule):
                what = f"in {rule}" if rule[0] == "[" else rule
                raise KasegError(f"{source}: {key} must be {what}, got {value!r}")
    if cfg.data.scale_max < cfg.data.scale_min:
        raise KasegError(f"{source}: data.scale_max ({cfg.data.scale_max}) must be >= "
                         f"data.scale_min ({cfg.data.scale_min})")


@dataclass
class SlurmConfig:
    """``compare.slurm``: what each job of ``kaseg compare --executor slurm`` asks Slurm for
    (``sbatch`` options; ``setup``: shell lines run before the job, e.g. ``module load cuda``).
    With ``gpus_per_node`` > 1 (or ``nodes`` > 1) a job trains under ``torchrun`` (DDP)."""

    partition: str | None = None
    account: str | None = None
    time_min: int = 240
    cpus_per_task: int = 8
    mem_gb: float = 32.0
    gpus_per_node: int = 1
    nodes: int = 1
    array_parallelism: int = 16  # the most seed (or tuning-seed) jobs running at once
    setup: list[str] = field(default_factory=list)

    def __post_init__(self):
        for key, least in (("time_min", 1), ("cpus_per_task", 1), ("gpus_per_node", 0),
                           ("nodes", 1), ("array_parallelism", 1)):
            if getattr(self, key) < least:
                raise ValueError(f"slurm.{key} must be >= {least}, got "
                                 f"{getattr(self, key)}")
        if not self.mem_gb > 0:
            raise ValueError(f"slurm.mem_gb must be > 0, got {self.mem_gb}")


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, cls: type, source: str) -> KasegError:
    close = difflib.get_close_matches(key, _all_keys(cls), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return KasegError(f"{source}: unknown config key '{key}'{hint}")


def _check_value(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check (and gently coerce: int -> float, list -> tuple) one value against its type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key, source)
            except KasegError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise KasegError(f"{source}: '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_check_value(v, a, key, source) for v, a in zip(value, args))
    if origin is list:
        (arg,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise KasegError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_check_value(v, arg, key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise KasegError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if isinstance(value, bool) and hint is not bool:
            ok = False
        else:
            ok = isinstance(value, hint)
        if not ok:
            raise KasegError(
                f"{source}: '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    return value


def from_dict(
    cls: type, data: dict, source: str = "config", prefix: str = "", root: type | None = None
) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types.

    ``root`` is the top-level config class, used to suggest the closest valid dotted key.
    """
    root = root or cls
    if not isinstance(data, dict):
        raise KasegError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            raise _unknown_key(dotted, root, source)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, source, dotted + ".", root)
        else:
            kwargs[key] = _check_value(value, hint, dotted, source)
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.iters=100", "model.name=unet:resnet18"]`` -> nested dict (values parsed as YAML)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise KasegError(f"override '{item}' must look like key=value, e.g. train.iters=100")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KasegError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` laid over it, section by section (a nested dict merges into the
    one it meets; any other value replaces it): how a config file and its overrides combine."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict:
    """Plain, YAML-safe dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_configs(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys
