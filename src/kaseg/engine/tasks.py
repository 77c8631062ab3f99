"""The training tasks :func:`kaseg.engine.train.fit` runs, side by side: the supervised CE task, the
autoencoder task (stage 1) and the distillation task (stage 2: CE + any terms of the loss
registry, the method's two among them, with unlabelled batches, pseudo-labels, warm-up and
controls).

A task is an ``nn.Module`` whose ``forward(images, targets, ...)`` returns a dict of scalar losses;
``"loss"`` is the one optimised, every other entry is logged.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import DistillConfig
from ..losses.registry import LOSSES, Outputs, build_loss_module, resolve_losses
from ..core.labels import IGNORE_INDEX
from ..losses.maskd import mask_stage_loss
from ..losses.method import FeatureAutoencoder, autoencoder_loss, check_distill_options

log = logging.getLogger(__name__)


class Frozen(nn.Module):
    """A frozen network (the teacher, the trained encoder E), held *outside* the module tree.

    Why: it must never train. Its weights are not in ``parameters()`` (no optimizer, no DDP, no
    gradients), not in ``state_dict()`` (checkpoints stay small), and it runs in eval mode without
    autograd, so BatchNorm statistics cannot drift even when a wrapper calls ``.train()``.
    ``.to(device)`` / ``.half()`` still reach it.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        module.eval().requires_grad_(False)
        self.__dict__["inner"] = module  # not registered as a submodule, on purpose
        self.__dict__["memo"] = None  # a ForwardMemo when arms share this network (lockstep)

    def _apply(self, fn, recurse=True):
        self.inner._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        self.inner.eval()
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        self.inner.eval()
        if self.memo is not None and len(args) == 1 and not kwargs:
            return self.memo(self.inner, args[0])
        return self.inner(*args, **kwargs)


class ForwardMemo:
    """The last inputs and outputs of one frozen network, shared by the arms of a lockstep run.

    Why: arms that step on the same batch would run the same teacher (and the same trained
    encoder) on it once each; the teacher is most of a distillation step's cost. A call whose
    input equals a remembered one (same values, shape, dtype, layout and autocast state) returns
    the same output, which is what running the network again would give: it is frozen, in eval
    mode and without autograd. It keeps ``size`` pairs (default 2) because one step may call a
    network on two inputs in turn: the encoder sees the labelled and then the unlabelled half
    of the teacher's map, and with one pair each arm would evict what the next arm needs. Inputs
    are kept as copies, so a caller that later writes into its tensor cannot make a stale
    output look current.
    """

    def __init__(self, size: int = 2):
        self.size = size
        self.entries: list[tuple] = []  # (key, input, output), most recent last
        self.calls = self.hits = 0

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        kind = x.device.type
        return (tuple(x.shape), x.dtype, x.device, x.stride(), torch.is_autocast_enabled(kind),
                torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None)

    def __call__(self, module: nn.Module, x: torch.Tensor):
        key = self._key(x)
        self.calls += 1
        for i, (k, kept, output) in enumerate(self.entries):
            if k == key and torch.equal(x, kept):
                self.hits += 1
                self.entries.append(self.entries.pop(i))
                return output
        if len(self.entries) >= self.size:  # free the oldest pair before computing
            self.entries.pop(0)
        output = module(x)
        self.entries.append((key, x.clone(memory_format=torch.preserve_format), output))
        return output


def same_network(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks compute the same function: one class, equal weights and buffers."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
        for k in sa)


def share_frozen(tasks: list[nn.Module]) -> int:
    """Point the frozen networks of ``tasks`` that are equal (same class and weights) at one
    instance with one :class:`ForwardMemo`, so a batch runs through each only once. -> the
    number of distinct frozen networks left. The encoder's memo holds two inputs (a step calls
    it on the labelled and the unlabelled half of the teacher's map), the teacher's one."""
    kept: list[Frozen] = []
    for task in tasks:
        for name, frozen in task.named_children():
            if not isinstance(frozen, Frozen):
                continue
            for other in kept:
                if same_network(other.inner, frozen.inner):
                    frozen.__dict__["inner"], frozen.__dict__["memo"] = other.inner, other.memo
                    break
            else:
                frozen.__dict__["memo"] = ForwardMemo(2 if name == "encoder" else 1)
                kept.append(frozen)
    return len(kept)


@contextlib.contextmanager
def memos_off(task: nn.Module):
    """The task's frozen networks without their lockstep memos inside the block (what the task
    costs alone), restored after it."""
    frozen = [m for m in task.children() if isinstance(m, Frozen)]
    kept = [m.memo for m in frozen]
    for m in frozen:
        m.__dict__["memo"] = None
    try:
        yield task
    finally:
        for m, memo in zip(frozen, kept):
            m.__dict__["memo"] = memo


def unshare_frozen(tasks: list[nn.Module]) -> None:
    """Drop the memos (and the batch and outputs they hold)."""
    for task in tasks:
        for frozen in (m for m in task.children() if isinstance(m, Frozen)):
            frozen.__dict__["memo"] = None


class SegmentationTask(nn.Module):
    """Pixel-wise cross-entropy on the model's logits; ignore pixels do not count (a batch with
    none counted is 0, not NaN)."""

    def __init__(self, model: nn.Module, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    def forward(self, images, targets, teacher_outputs=None) -> dict:
        """``teacher_outputs`` (a teacher cache's, shared by a lockstep group) is not read."""
        logits = self.model(images)["logits"]
        ce = ce_or_zero(logits, targets, self.ignore_index)
        return {"loss": ce, "ce": ce}


class AutoencoderTask(nn.Module):
    """Stage 1: reconstruct the frozen teacher's feature map ``tap`` through the autoencoder."""

    def __init__(self, teacher: nn.Module, autoencoder: FeatureAutoencoder, tap: str = "pre_logits",
                 alpha: float = 1e-7):
        super().__init__()
        self.teacher, self.autoencoder = Frozen(teacher), autoencoder
        self.tap, self.alpha = tap, alpha

    def forward(self, images, targets=None) -> dict:
        f = self.teacher(images)["features"][self.tap].float()
        z, r = self.autoencoder(f)
        total, rec, l1 = autoencoder_loss(f, r.float(), z.float(), self.alpha)
        return {"loss": total, "recon": rec, "l1": l1}


class MaskTask(nn.Module):
    """MasKD's mask stage: receptive tokens trained on the frozen teacher's logits (its own
    output grid): the masked map must still segment, the masks must differ
    (:func:`kaseg.losses.maskd.mask_stage_loss`)."""

    def __init__(self, teacher: nn.Module, tokens: nn.Module, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.teacher, self.tokens, self.ignore_index = Frozen(teacher), tokens, ignore_index
        self.corners = bool(getattr(teacher, "logit_corners", False))

    def forward(self, images, targets, teacher_outputs=None) -> dict:
        x = self.teacher(images)["head_logits"].float()
        total, ce, diversity = mask_stage_loss(self.tokens, x, targets, self.ignore_index,
                                               self.corners)
        return {"loss": total, "ce": ce, "diversity": diversity}


class DistillTask(nn.Module):
    """Stage 2: ``L = L_ce + sum_k w_k * L_k`` over the terms ``config.losses`` selects: the
    method's (``beta * L_adapt + gamma * L_aff`` [paper]) and any of the field's
    (:data:`kaseg.losses.registry.LOSSES`, one registry), so that every method and every combination
    trains in the same loop.

    Trained: the student and each term's module (the method's adapters C_f and C_a, FitNet's
    regressor, ...). Frozen, without autograd: the teacher and E. A term whose weight is 0 is
    neither built nor computed (ablations). Returns every term and, for each, its weighted ratio
    to CE (``*_ratio``), which the first iterations also log.

    Args:
        student: the network trained (a :class:`~kaseg.nets.models.SegModel`).
        teacher: the trained teacher; frozen here.
        encoder: the trained autoencoder's encoder E; frozen here (any module for a run whose
            terms do not read it).
        latent_channels: E's output channels (the adapters' output).
        config: the ``distill`` section (:class:`kaseg.core.config.DistillConfig`): the terms, the
            student's tapped map, warm-up, negative control, unlabelled images and
            pseudo-labels; its docstring says what each key does.
        teacher_tap: the teacher's distilled map (``teacher.tap``).
        ignore_index: the label that takes no part in CE and the masked losses.
    """

    def __init__(self, *, student: nn.Module, teacher: nn.Module, encoder: nn.Module,
                 latent_channels: int, config: DistillConfig | None = None,
                 teacher_tap: str = "pre_logits", ignore_index: int = IGNORE_INDEX,
                 masks: nn.Module | None = None):
        super().__init__()
        cfg = config if config is not None else DistillConfig()
        check_distill_options(warmup_iters=cfg.warmup_iters, control=cfg.control)
        if cfg.unlabeled_weight is not None and not 0.0 <= cfg.unlabeled_weight <= 1.0:
            raise ValueError(f"distill.unlabeled_weight must be in [0, 1] (or null), got "
                             f"{cfg.unlabeled_weight}")
        self.config, self.terms = cfg, resolve_losses(cfg.losses)
        self.student = student
        self.teacher, self.encoder = Frozen(teacher), Frozen(encoder)
        # MasKD's trained receptive tokens (None: no term reads them)
        self.masks = Frozen(masks) if masks is not None else None
        self.teacher_tap, self.student_tap, self.ignore_index = teacher_tap, cfg.student_tap, ignore_index
        s_info, t_info = student.feature_info[cfg.student_tap], teacher.feature_info[teacher_tap]
        self.student_stride, self.teacher_stride = s_info.stride, t_info.stride
        self.loss_modules = loss_modules(self.terms, s_info.channels, t_info.channels,
                                         student.num_classes, latent_channels)
        # training steps taken: in the state dict, so a resumed run continues the warm-up
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.calls = 0
        self._register_load_state_dict_pre_hook(_upgrade_task_state)

    @property
    def uses_teacher(self) -> bool:
        """Whether any term needs the teacher (and so can learn from unlabelled images)."""
        return bool(self.terms) or self.config.pseudo_labels

    def term_weights(self) -> dict[str, tuple[float, str]]:
        """``{term: (weight, the config key that sets it)}`` of every weighted term: what an
        error about a term that overflowed names."""
        return {name: (weight, f"distill.losses.{name}.weight")
                for name, (weight, _) in self.terms.items()}

    def warmup_factor(self) -> float:
        """The warm-up factor of every distillation weight at this step: ``min(1, step / N)``,
        the step counted from 1 (the first step already distils a little)."""
        n = self.config.warmup_iters
        return 1.0 if n <= 0 else min(1.0, int(self.step) / n)

    def _latent_target(self, teacher_map: torch.Tensor):
        """E(F_t) of one part of the batch, computed on first use (the method's target)."""
        kept: list[torch.Tensor] = []

        def latent() -> torch.Tensor:
            if not kept:
                zt = self.encoder(teacher_map)
                if self.config.control == "constant_target":  # one vector at every position
                    zt = torch.ones_like(zt)
                kept.append(zt)
            return kept[0]

        return latent

    def forward(self, images, targets, unlabeled=None, unlabeled_valid=None,
                teacher_outputs=None) -> dict:
        """Losses of one step. ``unlabeled`` (optional): images without labels, and their
        validity mask (0 = a real pixel, ignore = padding); both batches go through each network
        in one pass, and every label-free term is computed on each batch (``*_unlabeled``), the
        two mixed by ``distill.unlabeled_weight``. ``teacher_outputs`` (optional): the
        teacher's stored outputs on these images (``{entry: tensor}``, a teacher cache's):
        the teacher is then not run."""
        if self.training:
            self.step += 1
        scale, n = self.warmup_factor(), images.shape[0]
        both = images if unlabeled is None else torch.cat([images, unlabeled])
        out = self.student(both)
        ce = ce_or_zero(out["logits"][:n], targets, self.ignore_index)
        losses, total = {"ce": ce}, ce
        if teacher_outputs is not None and unlabeled is not None:
            raise ValueError("stored teacher outputs cover the labelled images only: an "
                             "unlabelled batch needs the live teacher")
        t_out = (teacher_outputs_dict(teacher_outputs) if teacher_outputs is not None else
                 self.teacher(both) if self.uses_teacher else None)
        parts = [("", slice(0, n), targets != self.ignore_index, targets)]
        share = 0.0
        if unlabeled is not None:
            labels, share, pseudo_ce = self._unlabeled_part(out, t_out, n, unlabeled,
                                                            unlabeled_valid)
            if pseudo_ce is not None:
                losses["ce_pseudo_unlabeled"] = pseudo_ce
                total = total + pseudo_ce
            parts.append(("_unlabeled", slice(n, None), unlabeled_valid != self.ignore_index,
                          labels))
        # a term that needs labels (without pseudo-labels) has no unlabelled counterpart to mix
        labelled_only = set() if self.config.pseudo_labels else {
            name for name in self.terms if LOSSES[name].needs_labels}
        for suffix, part, valid, labels in parts:
            for name, (weight, term) in self._distill_terms(out, t_out, part, valid, labels).items():
                losses[name + suffix] = term
                if not suffix:
                    losses[f"{name}_ratio"] = ratio(weight * term, ce)
                mix = 1.0 if len(parts) == 1 or name in labelled_only else (
                    share if suffix else 1.0 - share)
                total = total + scale * weight * mix * term
        if self.config.warmup_iters > 0:
            losses["warmup_factor"] = torch.tensor(scale)
        losses["loss"] = total
        self._log_first_steps(losses, ce)
        return losses

    def _unlabeled_part(self, out: dict, t_out: dict | None, n: int, unlabeled, valid):
        """(labels, share, pseudo-label CE or None) of the unlabelled half of a step: the
        teacher's confident argmax with ``pseudo_labels`` (else no labels), and the weight
        ``u`` of every label-free term's unlabelled half."""
        cfg, labels, pseudo_ce = self.config, None, None
        if cfg.pseudo_labels:
            labels = pseudo_labels(t_out["logits"][n:], valid, cfg.pseudo_threshold,
                                   self.ignore_index)
            pseudo_ce = ce_or_zero(out["logits"][n:], labels, self.ignore_index)
        m = unlabeled.shape[0]
        share = m / (n + m) if cfg.unlabeled_weight is None else cfg.unlabeled_weight
        return labels, share, pseudo_ce

    def _log_first_steps(self, losses: dict, ce: torch.Tensor) -> None:
        self.calls += 1
        if self.training and self.calls in (1, 10):
            log.info("distill iteration %d: CE %.4f%s", self.calls, float(ce.detach()), "".join(
                f", {k.replace('_ratio', '')} x weight / CE = {float(v):.3f}"
                for k, v in losses.items() if k.endswith("_ratio")))

    def _distill_terms(self, out: dict, t_out: dict | None, part: slice, valid: torch.Tensor,
                       labels: torch.Tensor | None) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, unweighted term)}`` on the samples ``part`` of the batch. ``valid``
        marks the real pixels (input size); ``labels`` (None: none) is what a term that needs
        classes (IFVD) uses; without it that term is left out of this batch."""
        weighted: dict[str, tuple[float, torch.Tensor]] = {}
        if t_out is None:
            return weighted
        fs = out["features"][self.student_tap][part]
        ft = _part(t_out["features"].get(self.teacher_tap), part)
        latent = self._latent_target(ft)
        for name, (weight, options) in self.terms.items():
            spec = LOSSES[name]
            if spec.needs_labels and labels is None:
                continue
            t_logits = t_out["logits"] if "logits" in t_out else t_out["head_logits"]
            given = Outputs(out["logits"][part], t_logits[part], fs, ft,
                            labels if spec.needs_labels else None, valid, self.ignore_index,
                            self.loss_modules[name] if name in self.loss_modules else None,
                            self.student_stride, self.teacher_stride, latent,
                            _part(out.get("head_logits"), part),
                            _part(t_out.get("head_logits"), part),
                            getattr(self.student, "logit_stride", None),
                            getattr(self.teacher.inner, "logit_stride", None),
                            getattr(self.student, "logit_corners", False),
                            getattr(self.teacher.inner, "logit_corners", False), self.masks)
            weighted[name] = (weight, spec.compute(given, **options))
        return weighted


def _part(x: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    return None if x is None else x[part]


def teacher_outputs_dict(cached: dict[str, torch.Tensor]) -> dict:
    """A network's output dict (``head_logits``, ``logits``, ``features``) from a teacher
    cache's entries (``features.TAP`` for a tapped map), in float32: float16 entries widened,
    float32 ones as they are (a run from a float32 cache equals one with the live teacher)."""
    out: dict = {"features": {}}
    for entry, value in cached.items():
        value = value.float()
        if entry.startswith("features."):
            out["features"][entry.split(".", 1)[1]] = value
        else:
            out[entry] = value
    return out


# where the method's adapters were kept before every term lived in ``loss_modules``
_OLD_MODULE_NAMES = {"adapter.": "loss_modules.adapt.", "affinity_adapter.": "loss_modules.affinity."}


def _upgrade_task_state(state_dict, prefix, *args) -> None:
    """A checkpoint written before the method's terms were registered losses (``adapter.*``,
    ``affinity_adapter.*``) loads into today's task: its keys are renamed in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in _OLD_MODULE_NAMES.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break


def loss_modules(terms: dict[str, tuple[float, dict]], cs: int, ct: int, num_classes: int,
                 latent_channels: int | None = None) -> nn.ModuleDict:
    """The trained (or stateful) modules of the selected terms, after each loss's check that
    it can run on a teacher map of ``ct`` channels (a ``ValueError`` naming the loss if not)."""
    for name, (_, options) in terms.items():
        problem = LOSSES[name].check and LOSSES[name].check(ct, **options)
        if problem:
            raise ValueError(f"distill.losses.{name}: {problem}")
    return nn.ModuleDict({name: build_loss_module(name, cs, ct, num_classes, options,
                                                  latent_channels)
                          for name, (_, options) in terms.items() if LOSSES[name].module})


def ratio(weighted_term: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """A diagnostic: ``weight * term / CE``, 0 where CE is 0 (a confident student on an easy
    batch), so that a diagnostic is never inf or NaN. Detached: nothing trains on it."""
    w, c = weighted_term.detach(), ce.detach()
    return torch.where(c > 0, w / torch.where(c > 0, c, torch.ones_like(c)), torch.zeros_like(w))


def pseudo_labels(teacher_logits: torch.Tensor, valid: torch.Tensor, threshold: float = 0.0,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The teacher's argmax as labels, ``ignore_index`` where its softmax confidence is below
    ``threshold`` or the position is not a real pixel (``valid == ignore_index``)."""
    prob = teacher_logits.detach().float().softmax(1)
    conf, labels = prob.max(1)
    labels[(conf < threshold) | (valid == ignore_index)] = ignore_index
    return labels


def ce_or_zero(logits: torch.Tensor, labels: torch.Tensor,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the labelled positions (float32); 0, with a finite (zero) gradient,
    when there is none: PyTorch's mean would be 0/0 = NaN and stop a healthy run. The same value
    as ``F.cross_entropy(..., ignore_index=...)`` otherwise, without a host sync."""
    x = logits.float()
    summed = F.cross_entropy(x, labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum()
    return summed / count.clamp(min=1).to(summed.dtype)
