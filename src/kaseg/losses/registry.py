"""Every distillation loss kaseg trains with, in one registry (:data:`LOSSES`): the method's two
terms (``adapt``, ``affinity``; their formulas are :mod:`kaseg.losses.method`) and the field's other
segmentation-distillation losses, one file each (``kd``, ``fitnet``, ``skd``, ``cwd``, ``dist``,
``ifvd``; CIRKD and Af-DCD in ``contrastive``), on the same footing: same networks, data, recipe
and loop, each term selected, weighted and configured the same way (``distill.losses: {name:
{weight, option: value}}``) and combinable with any other. Their functions are imported here too,
so ``from kaseg.losses.registry import kd_loss`` keeps working.

Every loss function is pure on tensors. Teacher tensors get no gradient (callers pass them from a
frozen teacher; the functions also detach them). ``valid`` is an optional ``(B, H, W)`` bool mask at
the loss's own resolution (:func:`~kaseg.losses.masks.valid_mask` makes it from the labels):
positions outside it (ignore pixels) take no part in the loss. With ``valid=None`` every function is
its source's formula exactly; the mask is [ours], so that a label the dataset marks as "unknown"
never steers training.

Default weights are those the methods' authors (or the CIRKD code base, CVPR 2022, which re-ran
them all on Cityscapes with one recipe) used; each is given with its source in its entry below.

**Adding a loss** is one function (a file of its own) and one entry in :data:`LOSSES` below: the
entry names what the term reads from the student and teacher outputs (:class:`Outputs`), its
default weight and options, and (if it trains a module of its own, like FitNet's regressor or the
method's adapters) how to build that module. The config then knows it (``distill.losses: {name:
{weight: 2.0, option: value}}``) and the distillation task computes it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable

import torch
from torch import nn

from ..core.labels import IGNORE_INDEX
from ..core.tensors import onto_grid
from .method import (ADAPT_REDUCTIONS, AFFINITY_IMPLS, AFFINITY_REDUCTIONS, Adapter,
                     adaptation_loss, affinity_loss, to_latent_size)
from .contrastive import (AfDcdHead, CirkdMemory, af_dcd_check, af_dcd_loss, cirkd_batch_bytes,
                          cirkd_batch_loss, cirkd_memory_loss)
from .cwd import cwd_loss
from .dist import dist_loss
from .fitnet import FitNetRegressor, fitnet_loss
from .ifvd import class_prototype_similarity, ifvd_loss
from .kd import kd_loss
from .maskd import maskd_loss
from .masks import labels_at, valid_mask
from .skd import skd_pairwise_loss

__all__ = [  # the registry, and the field's loss functions it holds (their own files' names too)
    "LOSSES", "RESERVED_NAMES", "LossRegistry", "LossSpec", "Outputs", "build_loss_module",
    "canonical_losses", "listing", "method_terms", "needs_autoencoder", "needs_masks",
    "register_loss",
    "resolve_losses", "FitNetRegressor", "class_prototype_similarity", "cwd_loss", "dist_loss",
    "fitnet_loss", "ifvd_loss", "kd_loss", "labels_at", "skd_pairwise_loss", "valid_mask"]


# --------------------------------------------------------------------------- the registry
@dataclasses.dataclass
class Outputs:
    """What one distillation step offers a loss: both networks' logits and tapped feature maps,
    the labels and the valid pixels, and the loss's own trained module (None if it has none).

    ``labels`` are class indices (``ignore_index`` where unknown), or None on images without
    labels (an unlabelled batch without pseudo-labels): a loss that reads them must say so
    (``LossSpec.needs_labels``) and is then left out of such a batch. ``valid`` marks the real
    pixels that count, on every batch. Both are at the input's size; :meth:`labels_on` and
    :meth:`valid_on` put them on the grid of any map the step offers, by its stride.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_features: torch.Tensor
    teacher_features: torch.Tensor
    labels: torch.Tensor | None
    valid: torch.Tensor
    ignore_index: int = IGNORE_INDEX
    module: nn.Module | None = None
    student_stride: int | None = None  # the tapped maps' strides in input pixels
    teacher_stride: int | None = None
    # E(F_t), the trained encoder's code of the teacher's map (the method's target): computed
    # on first use and shared by every term of the step that reads it
    teacher_latent: Callable[[], torch.Tensor] | None = None
    # the logits on each network's own output grid (its classifier's, before the upsampling to
    # the input) and that grid's stride; None: only the input-size logits are known
    student_head_logits: torch.Tensor | None = None
    teacher_head_logits: torch.Tensor | None = None
    student_logit_stride: int | None = None
    teacher_logit_stride: int | None = None
    # whether each network upsamples those logits with align_corners=True (SMP's heads): where
    # its positions lie in the image (core.tensors.onto_grid)
    student_logit_corners: bool = False
    teacher_logit_corners: bool = False
    # MasKD's trained receptive tokens: a teacher map -> its masks (None: no mask stage)
    teacher_masks: Callable[[torch.Tensor], torch.Tensor] | None = None

    def masks(self, teacher_map: torch.Tensor) -> torch.Tensor:
        """MasKD's masks of a teacher map, from the trained receptive tokens
        (``LossSpec.needs_masks``)."""
        if self.teacher_masks is None:
            raise ValueError("this step has no receptive tokens: a loss that reads them needs "
                             "LossSpec(needs_masks=True)")
        return self.teacher_masks(teacher_map)

    def latent(self) -> torch.Tensor:
        """The teacher's map in the autoencoder's latent space (``LossSpec.needs_autoencoder``)."""
        if self.teacher_latent is None:
            raise ValueError("this step has no autoencoder: a loss that reads its latent needs "
                             "LossSpec(needs_autoencoder=True)")
        return self.teacher_latent()

    def _stride(self, like: torch.Tensor) -> int | None:
        """The stride of a map of ``like``'s size: 1 at the input's size, else the tapped map's
        of the same size (None: unknown, nearest sampling)."""
        size = tuple(like.shape[-2:])
        if size == tuple(self.valid.shape[-2:]):
            return 1
        for f, stride in ((self.teacher_features, self.teacher_stride),
                          (self.student_features, self.student_stride),
                          (self.teacher_head_logits, self.teacher_logit_stride)):
            if f is not None and size == tuple(f.shape[-2:]) and stride is not None:
                return stride
        return None

    def logits_on(self, grid: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student logits, teacher logits, valid positions) on the grid ``grid`` names:
        ``"teacher"``, the teacher's output grid (its classifier's own, where the field's authors
        compute their logit terms), the student's logits sampled onto it where each position
        lies in the image (:func:`~kaseg.core.tensors.onto_grid`); ``"input"``, both at the
        input's size. A teacher that offers no logits on its own grid is read at the input's
        size."""
        if grid == "input" or self.teacher_head_logits is None:
            return self.student_logits, self.teacher_logits, self.valid_on(self.teacher_logits)
        t = self.teacher_head_logits
        if self.student_head_logits is None:  # input-size logits: stride 1, either geometry
            s, stride, corners = self.student_logits, 1, False
        else:
            s, stride = self.student_head_logits, self.student_logit_stride
            corners = self.student_logit_corners
        s = onto_grid(s, stride, tuple(t.shape[-2:]), self.teacher_logit_stride, corners,
                      self.teacher_logit_corners)
        return s, t, self.valid_on(t)

    def valid_on(self, like: torch.Tensor) -> torch.Tensor:
        """The valid-pixel mask on the grid of ``like`` (a map of this step)."""
        v = self.valid.to(torch.uint8)
        return labels_at(v, like.shape[-2:], self._stride(like), 0) > 0

    def labels_on(self, like: torch.Tensor) -> torch.Tensor:
        """The labels on the grid of ``like``; invalid pixels are ``ignore_index``."""
        if self.labels is None:
            raise ValueError("this batch has no labels: a loss that reads them needs "
                             "LossSpec(needs_labels=True)")
        labels = self.labels.masked_fill(~self.valid, self.ignore_index)
        return labels_at(labels, like.shape[-2:], self._stride(like), self.ignore_index)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One selectable distillation loss.

    Args:
        compute: ``compute(outputs: Outputs, **options) -> scalar tensor``.
        weight: the default weight (its source in the loss's docstring).
        options: the default options, passed to ``compute`` as keyword arguments.
        module: builds the module the loss trains (or keeps, like CIRKD's memory banks) with
            the student, from (student channels, teacher channels) of the tapped maps, and of
            ``num_classes`` and the loss's options those its signature names
            (:func:`build_loss_module`); dropped after training. None: no module.
        needs_labels: the loss uses class labels (not only the valid-position mask): on
            unlabelled images it runs only with pseudo-labels.
        check: ``check(teacher_channels, **options) -> message or None``: what keeps the loss
            from running on a teacher map of that many channels, asked before anything trains.
        validate: ``validate(**options) -> message or None``: what is wrong with the options'
            values, asked when a config is read.
        needs_autoencoder: the loss reads the trained autoencoder's latent code of the teacher's
            map (:meth:`Outputs.latent`; the method's terms): a run with it needs ``ae.weights``.
        needs_masks: the loss reads MasKD's trained receptive tokens (:meth:`Outputs.masks`):
            a run with it needs ``masks.weights`` (``kaseg train-masks``).
        memory: ``memory(batch, student_size, teacher_size, **options) -> bytes``: what the term
            alone needs on one process for ``batch`` images whose tapped maps have these (h, w)
            sizes, for a term whose memory can outgrow a device (CIRKD's relations grow as
            batch x group x positions^2); checked against the device before anything trains.
    """

    compute: Callable[..., torch.Tensor]
    weight: float
    options: dict = dataclasses.field(default_factory=dict)
    module: Callable[..., nn.Module] | None = None
    needs_labels: bool = False
    check: Callable[..., str | None] | None = None
    validate: Callable[..., str | None] | None = None
    needs_autoencoder: bool = False
    memory: Callable[..., int] | None = None
    needs_masks: bool = False


def build_loss_module(name: str, student_channels: int, teacher_channels: int, num_classes: int,
                      options: dict, latent_channels: int | None = None) -> nn.Module:
    """The module of loss ``name``, given what its factory's signature asks for (channels
    always; ``num_classes``, ``latent_channels`` and any of the loss's options by name)."""
    factory = LOSSES[name].module
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    context = {"num_classes": num_classes, "latent_channels": latent_channels, **options}
    kwargs = {k: v for k, v in context.items() if takes_all or k in params}
    return factory(student_channels, teacher_channels, **kwargs)


# names the distillation task gives its own logged entries: a loss may not take them (it would
# overwrite the entry, or swallow its config keys)
RESERVED_NAMES = frozenset({"loss", "ce", "pseudo", "distill", "warmup_factor", "skipped", "lr",
                            "iter", "weight"})


class LossRegistry(dict):
    """``{name: LossSpec}``; a name the task's own entries use is refused (``RESERVED_NAMES``)."""

    def __setitem__(self, name: str, spec: LossSpec) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a loss name must be an identifier, not {name!r}")
        if name in RESERVED_NAMES or name.startswith("ce_") or name.endswith(("_ratio", "_unlabeled")):
            raise ValueError(f"the loss name '{name}' is reserved for the task's own entries "
                             f"({', '.join(sorted(RESERVED_NAMES))}, ce_*, *_ratio, *_unlabeled)")
        if not isinstance(spec, LossSpec):
            raise ValueError(f"loss '{name}': expected a LossSpec, got {type(spec).__name__}")
        super().__setitem__(name, spec)

    def update(self, *args, **kwargs) -> None:
        for name, spec in dict(*args, **kwargs).items():
            self[name] = spec

    def setdefault(self, name, spec=None):
        if name not in self:
            self[name] = spec
        return self[name]


def register_loss(name: str, spec: LossSpec) -> LossSpec:
    """Add a loss to :data:`LOSSES` (a name already registered, reserved or not an identifier
    is a ``ValueError``)."""
    if name in LOSSES:
        raise ValueError(f"a loss named '{name}' is already registered")
    LOSSES[name] = spec
    return spec


def _adapter(student_channels: int, teacher_channels: int, latent_channels: int) -> Adapter:
    """C_f or C_a: the student's map to the autoencoder's latent channels."""
    return Adapter(student_channels, latent_channels)


def _adapt(o: Outputs, reduction: str, p: float, q: float) -> torch.Tensor:
    zt = o.latent()
    zs = to_latent_size(o.module(o.student_features), zt.shape[-2:])
    return adaptation_loss(zs, zt, p, q, reduction)


def _affinity(o: Outputs, reduction: str, impl: str, dense_max_positions: int) -> torch.Tensor:
    zt = o.latent()
    zs = to_latent_size(o.module(o.student_features), zt.shape[-2:])
    return affinity_loss(zs, zt, reduction, impl, dense_max_positions)


LOGIT_GRIDS = ("teacher", "input")


def _check_grid(grid: str, **_) -> str | None:
    return _one_of("grid", grid, LOGIT_GRIDS)


def _maskd(o: Outputs) -> torch.Tensor:
    s, t, valid = o.logits_on("teacher")
    return maskd_loss(s, t, o.masks(t), valid)


def _check_kd(grid: str, standardize, **_) -> str | None:
    if not isinstance(standardize, bool):
        return f"standardize must be true or false, got {standardize!r}"
    return _check_grid(grid)


def _on_grid(loss: Callable[..., torch.Tensor], o: Outputs, grid: str, *args) -> torch.Tensor:
    """A logit term ``loss(s, t, *args, valid)`` on the grid ``grid`` names."""
    s, t, valid = o.logits_on(grid)
    return loss(s, t, *args, valid)


def _one_of(key: str, value, allowed) -> str | None:
    return None if value in allowed else f"{key} must be one of {tuple(allowed)}, got {value!r}"


def _check_adapt(reduction: str, p: float, q: float) -> str | None:
    if p < 1 or q < 1:
        return f"p and q must be >= 1 (norms), got p={p}, q={q}"
    return _one_of("reduction", reduction, ADAPT_REDUCTIONS)


def _check_affinity(reduction: str, impl: str, dense_max_positions: int) -> str | None:
    if dense_max_positions < 1:
        return f"dense_max_positions must be >= 1, got {dense_max_positions}"
    return (_one_of("reduction", reduction, AFFINITY_REDUCTIONS)
            or _one_of("impl", impl, AFFINITY_IMPLS))


LOSSES: LossRegistry = LossRegistry()
LOSSES.update({
    # the method (He et al., CVPR 2019): the adapted student map matched to E(F_t), and the
    # pairwise affinity of the two; each term trains its own adapter. Weights: docs/method.md,
    # "Magnitudes" (the paper's 50 and 1 pair with reduction "paper")
    "adapt": LossSpec(_adapt, weight=50.0, module=_adapter, validate=_check_adapt,
                      needs_autoencoder=True,
                      options={"reduction": "element", "p": 2.0, "q": 2.0}),
    "affinity": LossSpec(_affinity, weight=30.0, module=_adapter, validate=_check_affinity,
                         needs_autoencoder=True,
                         options={"reduction": "mse", "impl": "auto",
                                  "dense_max_positions": 1024}),
    # the logit terms run on the teacher's output grid (``grid``; their authors', see
    # Outputs.logits_on) or, with grid "input", on logits upsampled to the input
    "kd": LossSpec(lambda o, temperature, grid, standardize: _on_grid(
        functools.partial(kd_loss, standardize=standardize), o, grid, temperature),
        weight=1.0, options={"temperature": 4.0, "grid": "teacher", "standardize": False},
        validate=_check_kd),
    # MasKD (Huang et al., ICLR 2023): the logits matched under the teacher's masks, on the
    # teacher's output grid as its authors' (both networks' OS-8 logits); weight 1 (their
    # --lambda-kd 1)
    "maskd": LossSpec(lambda o: _maskd(o), weight=1.0, needs_masks=True),
    "fitnet": LossSpec(lambda o: fitnet_loss(o.module(o.student_features), o.teacher_features,
                                             o.valid_on(o.teacher_features)),
                       weight=1.0, module=FitNetRegressor),
    "skd": LossSpec(lambda o, pool: skd_pairwise_loss(o.student_features, o.teacher_features, pool,
                                                      o.valid_on(o.teacher_features)),
                    weight=10.0, options={"pool": 2}),
    "cwd": LossSpec(lambda o, temperature, grid: _on_grid(cwd_loss, o, grid, temperature),
                    weight=3.0, options={"temperature": 4.0, "grid": "teacher"},
                    validate=_check_grid),
    "dist": LossSpec(lambda o, temperature, inter_weight, intra_weight, grid: _on_grid(
        dist_loss, o, grid, temperature, inter_weight, intra_weight),
        weight=1.0, options={"temperature": 1.0, "inter_weight": 1.0, "intra_weight": 1.0,
                             "grid": "teacher"}, validate=_check_grid),
    # CIRKD: its arm adds logit KD at T = 1 beside these two, as the authors combine them
    "cirkd_batch": LossSpec(lambda o, temperature, group: cirkd_batch_loss(
        o.student_features, o.teacher_features, temperature, _valid_on_common_grid(o), group),
        weight=1.0, options={"temperature": 0.1, "group": 2}, memory=cirkd_batch_bytes,
        validate=lambda group, **_: None if group >= 1 else f"group must be >= 1, got {group}"),
    "cirkd_memory": LossSpec(
        lambda o, pixel_memory_size, region_memory_size, pixel_update, **opts: cirkd_memory_loss(
            o.module, o.student_features, o.teacher_features, _labels_on_common_grid(o),
            ignore_index=o.ignore_index, update=o.module.training, **opts),
        weight=0.1, module=CirkdMemory, needs_labels=True,
        options={"pixel_memory_size": 20000, "region_memory_size": 2000, "pixel_update": 16,
                 "pixel_contrast_size": 4096, "region_contrast_size": 1024, "temperature": 0.1,
                 "kd_temperature": 1.0, "region_weight": 1.0}),
    # Af-DCD: its arm adds logit KD at T = 1, as the authors combine them
    "af_dcd": LossSpec(lambda o, **opts: af_dcd_loss(
        o.module, o.student_features, o.teacher_features, **opts,
        valid=o.valid_on(o.teacher_features)),
        weight=1.0, module=AfDcdHead, check=af_dcd_check,
        options={"fd_weight": 2e-6, "ctr_weight": 5e-3, "temperature": 0.07, "groups": 16,
                 "pool": 4, "patch": 4, "mask_ratio": 0.75, "mask": "random",
                 "projector": "enhanced"}),
    "ifvd": LossSpec(lambda o: ifvd_loss(o.student_features, o.teacher_features,
                                         o.labels_on(o.teacher_features),
                                         o.teacher_logits.shape[1], o.ignore_index),
                     weight=200.0, needs_labels=True),
})


def _common_grid_like(o: Outputs) -> torch.Tensor:
    """A tensor of the size :func:`~kaseg.losses.contrastive.common_grid` brings both maps to
    (the smaller map itself when it is smaller both ways)."""
    fs, ft = o.student_features, o.teacher_features
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
    for f in (fs, ft):
        if tuple(f.shape[-2:]) == size:
            return f
    return fs.new_empty((0, 0, *size))


def _valid_on_common_grid(o: Outputs) -> torch.Tensor:
    return o.valid_on(_common_grid_like(o))


def _labels_on_common_grid(o: Outputs) -> torch.Tensor:
    return o.labels_on(_common_grid_like(o))


def resolve_losses(losses: dict | None) -> dict[str, tuple[float, dict]]:
    """``{name: (weight, options)}`` of the terms ``distill.losses`` selects (``{name: {weight:
    w, option: value}}``, an empty entry: the loss's defaults), in the registry's order, those
    weighted 0 left out (switched off). An unknown name or option, or a bad value, is a
    ``ValueError`` naming the key and what it takes."""
    out = {}
    for name, entry in (losses or {}).items():
        where = f"distill.losses.{name}"
        if name not in LOSSES:
            raise ValueError(f"distill.losses: unknown loss '{name}'; known: {sorted(LOSSES)}")
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping (weight, options), got {entry!r}")
        spec = LOSSES[name]
        bad = sorted(set(entry) - {"weight", *spec.options})
        if bad:
            raise ValueError(f"{where}: unknown option {bad}; {name} takes weight and "
                             f"{', '.join(spec.options) or 'no options'}")
        weight = entry.get("weight", spec.weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{where}.weight must be a number >= 0, got {weight!r}")
        options = {**spec.options, **{k: _option(f"{where}.{k}", v, spec.options[k])
                                      for k, v in entry.items() if k != "weight"}}
        problem = spec.validate and spec.validate(**options)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if weight > 0:
            out[name] = (float(weight), options)
    return {name: out[name] for name in LOSSES if name in out}


def _option(key: str, value, default):
    """An option's value, of its default's type (an int where a float is expected is read as
    one); another type is a ``ValueError`` naming the key."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, float) and number:
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
            and value.is_integer():
        return int(value)
    if default is not None and not isinstance(value, type(default)) or (
            isinstance(value, bool) and not isinstance(default, bool)):
        raise ValueError(f"{key} must be {type(default).__name__}, got {value!r}")
    return value


def canonical_losses(losses: dict | None) -> dict[str, dict]:
    """``distill.losses`` written out in full: every selected term with its weight and every
    option, in the registry's order, those weighted 0 dropped. Two configs that train the same
    terms then read the same, whatever defaults either left unsaid."""
    return {name: {"weight": w, **o} for name, (w, o) in resolve_losses(losses).items()}


def needs_autoencoder(losses: dict | None) -> bool:
    """Whether ``distill.losses`` selects a term that reads the autoencoder's latent code (the
    method's): the one test of "this run needs a trained autoencoder"."""
    return any(LOSSES[name].needs_autoencoder for name in resolve_losses(losses))


def needs_masks(losses: dict | None) -> bool:
    """Whether ``distill.losses`` selects a term that reads MasKD's trained receptive tokens."""
    return any(LOSSES[name].needs_masks for name in resolve_losses(losses))


def method_terms(losses: dict | None) -> list[str]:
    """The selected terms that read the autoencoder's latent code: the method's, whose weights a
    comparison tunes together."""
    return [name for name in resolve_losses(losses) if LOSSES[name].needs_autoencoder]


def listing() -> str:
    """Every registered term with its default weight and options: what ``kaseg info --losses``
    prints, i.e. what ``distill.losses`` takes."""
    lines = ["distill.losses terms (weight, options; * reads the autoencoder, the method's):"]
    for name, spec in LOSSES.items():
        opts = ", ".join(f"{k}: {v}" for k, v in spec.options.items())
        mark = "*" if spec.needs_autoencoder else " "
        lines.append(f" {mark}{name:<13} weight {spec.weight:g}" + (f"; {opts}" if opts else ""))
    return "\n".join(lines)
