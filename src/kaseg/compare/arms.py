"""The arms of a comparison, as data: one record per arm, one registry.

An arm is what one student of a paired comparison changes from the comparison's config (the
method at its chosen weights): its distillation settings, its data (e.g. labelled images only)
and the autoencoder it needs (a variant trained once per comparison). Users name registered arms
or define their own in their YAML::

    compare:
      arms:
        baseline:                  # registered arms by name (null: as registered)
        kd_t2:
        ka:
        my_kd_t3:                  # a new arm: label, distill / data changes, autoencoder
          label: "CE + logit KD (T = 3)"
          distill: {losses: {kd: {temperature: 3.0}}}
          tuned: [kd]              # its KD weight tuned on the tuning seeds, like the method's

An arm's ``distill.losses`` names the terms it trains with (none: CE only); each term's settings
start from the comparison config's for that term (or the loss's defaults) and the arm's entry
changes them. An arm without ``losses`` trains the config's terms.

Every arm is built into a full config and checked before anything trains (:func:`arm_config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

from ..core.config import Config, DataConfig, DistillConfig
from ..engine.experiment import check_config, upgrade_distill
from ..core.errors import KasegError
from ..losses.registry import (canonical_losses, method_terms, needs_autoencoder, needs_masks,
                               resolve_losses)

BASELINE = "baseline"
_OFF = {"losses": {}}  # CE only
_METHOD = {"adapt": {}, "affinity": {}}  # the method's two terms, as the config sets them


def _with(**terms) -> dict:
    """An arm's distillation changes: these terms (and only these)."""
    return {"losses": terms}


_KD2 = _with(kd={"temperature": 2.0})
_NO_UNLABELED = {"unlabeled_split": None, "unlabeled_root": None, "unlabeled_count": 0}


@dataclass(frozen=True)
class Arm:
    """One arm: ``distill`` and ``data`` are changes to the comparison's config; ``ae`` names an
    autoencoder variant (:data:`AE_VARIANTS`) or None for the comparison's own."""

    name: str
    label: str
    distill: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    ae: str | None = None
    control: bool = False  # a negative control (``--controls`` adds these)
    # the compute-matched control: trained for as many iterations as the costliest distilling
    # arm of the comparison spends in training FLOPs (:func:`kaseg.compare.runner.matched_iters`)
    matched: bool = False
    # the losses whose weights a tuning comparison scales for this arm on the tuning seeds (x
    # each weight scale of their authors' default), as it tunes the method's two weights: every
    # method then meets CE only at its best weight, not only ours
    tuned: tuple[str, ...] = ()

    def losses(self, base: DistillConfig, scale: float = 1.0) -> dict[str, dict]:
        """The terms this arm trains with, written out in full (:func:`arm_losses`)."""
        return arm_losses(base.losses, self.distill.get("losses"), scale)

    def uses_method(self, base: DistillConfig) -> bool:
        """Whether the arm trains with the method's terms (and so needs an autoencoder)."""
        return needs_autoencoder(self.losses(base))

    def uses_masks(self, base: DistillConfig) -> bool:
        """Whether the arm reads MasKD's receptive tokens (and so needs the mask stage)."""
        return needs_masks(self.losses(base))

    def uses_teacher(self, base: DistillConfig) -> bool:
        return bool(self.losses(base)) or bool(self.distill.get("pseudo_labels",
                                                                base.pseudo_labels))


def arm_losses(base: dict, changes: dict | None, scale: float = 1.0) -> dict[str, dict]:
    """The terms of an arm: the config's ``base`` terms when the arm names none (``changes`` is
    None), else the arm's terms, each starting from the config's settings for it (or the
    loss's defaults). The method's terms are weighted x ``scale`` (the comparison's tuned
    weight scale), unless the arm fixes that term's weight itself."""
    if changes is None:
        chosen, fixed = canonical_losses(base), set()
    else:
        given = canonical_losses(base)
        chosen = canonical_losses({name: {**given.get(name, {}), **(entry or {})}
                                   for name, entry in changes.items()})
        fixed = {name for name, entry in changes.items() if entry and "weight" in entry}
    for name in method_terms(chosen):
        if name not in fixed:
            chosen[name]["weight"] = chosen[name]["weight"] * scale
    return chosen


# the autoencoder variants an arm may use besides the comparison's own
AE_VARIANTS: dict[str, dict] = {
    # until the val reconstruction error stops falling (checked every half epoch), at most 8 epochs
    "plateau": {"ae": {"epochs": 8.0, "val_every_epochs": 0.5, "patience": 2, "min_iters": 0}},
    # the teacher's encoder output instead of its decoder output
    "encoder": {"tap": "encoder"},
}

ARMS: dict[str, Arm] = {}


def _check_changes(arm: Arm, where: str) -> None:
    """Unknown keys in an arm's changes are the usual one-line error, with the known keys."""
    for section, cls in (("distill", DistillConfig), ("data", DataConfig)):
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(getattr(arm, section)) - known)
        if bad:
            raise KasegError(f"{where} '{arm.name}': unknown {section} key(s) {bad}; known: "
                             f"{', '.join(sorted(known))}")
    unknown = sorted(set(arm.tuned) - set(arm.distill.get("losses") or ()))
    if unknown:
        raise KasegError(f"{where} '{arm.name}': tuned loss(es) {unknown} are not among its "
                         f"distill.losses")
    if not isinstance(arm.distill.get("losses", {}), dict):
        raise KasegError(f"{where} '{arm.name}': distill.losses must be a mapping of terms")
    try:
        resolve_losses(arm.distill.get("losses"))
    except ValueError as e:
        raise KasegError(f"{where} '{arm.name}': {e}") from None
    if arm.ae is not None and arm.ae not in AE_VARIANTS:
        raise KasegError(f"{where} '{arm.name}': unknown autoencoder variant '{arm.ae}'; known: "
                         f"{', '.join(AE_VARIANTS)}")


def register_arm(arm: Arm) -> Arm:
    """Add an arm to :data:`ARMS` (a name already taken, or an unknown autoencoder variant or
    config key, is a one-line error)."""
    if arm.name in ARMS:
        raise KasegError(f"arm '{arm.name}' is already registered")
    _check_changes(arm, "arm")
    ARMS[arm.name] = arm
    return arm


for _arm in [
    Arm(BASELINE, "CE only", _OFF),
    Arm("kd", "CE + logit KD (T = 4)", _with(kd={"temperature": 4.0})),
    Arm("kd_t2", "CE + logit KD (T = 2)", _KD2),
    Arm("kd_t6", "CE + logit KD (T = 6)", _with(kd={"temperature": 6.0})),
    Arm("fitnet", "CE + FitNet (feature L2)", _with(fitnet={})),
    Arm("skd", "CE + SKD pair-wise", _with(skd={})),
    Arm("cwd", "CE + CWD (channel-wise logits)", _with(cwd={})),
    Arm("ifvd", "CE + IFVD (intra-class variation)", _with(ifvd={})),
    Arm("dist", "CE + DIST (class relations)", _with(dist={}), tuned=("dist",)),
    # Sun et al.'s defaults (--logit-stand --base-temp 2 --kd-weight 9)
    Arm("kd_ls", "CE + logit-standardised KD (T = 2)", _with(
        kd={"temperature": 2.0, "standardize": True, "weight": 9.0}), tuned=("kd",)),
    # MasKD as its authors' segmentation code: the masked logits alone beside CE (--lambda-kd 1)
    Arm("maskd", "CE + MasKD (logits under the teacher's receptive-token masks)",
        _with(maskd={}), tuned=("maskd",)),
    # CIRKD and Af-DCD as their authors train them: their terms beside logit KD at T = 1
    Arm("cirkd", "CE + CIRKD (cross-image relations) + KD (T = 1)", _with(
        kd={"temperature": 1.0}, cirkd_batch={}, cirkd_memory={}),
        tuned=("cirkd_batch", "cirkd_memory")),
    Arm("af_dcd", "CE + Af-DCD (dense contrastive) + KD (T = 1)", _with(
        kd={"temperature": 1.0}, af_dcd={}), tuned=("af_dcd",)),
    Arm("adapt", "CE + adaptation (the method's first term)", _with(adapt={})),
    Arm("affinity", "CE + affinity (the method's second term)", _with(affinity={})),
    Arm("ka", "CE + the method (adaptation + affinity)", _with(**_METHOD)),
    Arm("ka_kd", "CE + the method + KD (T = 2)", _with(**_METHOD, kd={"temperature": 2.0})),
    Arm("ka_warmup", "CE + the method, 50-iteration warm-up", {**_with(**_METHOD),
                                                               "warmup_iters": 50}),
    Arm("ka_student_encoder", "CE + the method on the student's encoder map",
        {**_with(**_METHOD), "student_tap": "encoder"}),
    Arm("ka_paper", "CE + the method, paper-literal reductions and weights", _with(
        adapt={"reduction": "paper"}, affinity={"reduction": "paper", "weight": 1.0})),
    Arm("ka_ae_plateau", "CE + the method, autoencoder trained to a plateau", _with(**_METHOD),
        ae="plateau"),
    Arm("ka_teacher_encoder", "CE + the method on the teacher's encoder map", _with(**_METHOD),
        ae="encoder"),
    Arm("ctrl_random_ae", "control: the method with an untrained encoder",
        {**_with(**_METHOD), "control": "random_encoder"}, control=True),
    Arm("ctrl_constant", "control: adapters fitted to a constant target",
        {**_with(**_METHOD), "control": "constant_target"}, control=True),
    Arm("ce_matched", "control: CE only, as much training compute as the costliest arm", _OFF,
        control=True, matched=True),
    # limited labels (data with labeled_count and an unlabelled source): the arms above use the
    # unlabelled images wherever a term can; these change the data
    Arm("pseudo", "CE + the teacher's pseudo-labels on unlabelled images",
        {**_OFF, "pseudo_labels": True}),
    Arm("kd_t2_labeled", "CE + logit KD (T = 2), labelled images only", _KD2,
        data=dict(_NO_UNLABELED)),
    Arm("ka_labeled", "CE + the method, labelled images only", _with(**_METHOD),
        data=dict(_NO_UNLABELED)),
    Arm("all_labels", "CE only, every image labelled", _OFF,
        data={"labeled_count": None, "labeled_fraction": None, **_NO_UNLABELED}),
]:
    register_arm(_arm)

DEFAULT_ARMS = [BASELINE, "kd_t2", "ka", "ka_kd"]
CONTROL_ARMS = [a.name for a in ARMS.values() if a.control]
MATCHED = "ce_matched"
# named groups of arms: one word for the comparison users want
ARM_GROUPS: dict[str, list[str]] = {
    # the field's methods a user would try first (each with its authors' segmentation defaults)
    "field": [BASELINE, "kd_t2", "kd_ls", "cwd", "dist", "cirkd", "af_dcd", "maskd", "ka", "ka_kd"],
}


def listing() -> str:
    """Every registered arm (name, label, what kind) and every group with its arms: what
    ``kaseg info --arms`` prints, so a user sees the one-word groups beside the arms."""
    width = max(len(n) for n in [*ARMS, *ARM_GROUPS])
    lines = ["arms:"]
    for arm in ARMS.values():
        kind = " [compute-matched control]" if arm.matched else (
            " [control]" if arm.control else "")
        lines.append(f"  {arm.name:<{width}}  {arm.label}{kind}")
    lines.append("groups (--arms NAME):")
    for name, members in ARM_GROUPS.items():
        lines.append(f"  {name:<{width}}  {' '.join(members)}")
    return "\n".join(lines)


def expand_groups(names: list[str]) -> list[str]:
    """Arm names with each group name replaced by its arms (in order, each arm once)."""
    out: list[str] = []
    for name in names:
        for arm in ARM_GROUPS.get(name, [name]):
            if arm not in out:
                out.append(arm)
    return out


def arm_from_yaml(name: str, spec, source: str) -> Arm:
    """An arm of a ``compare.arms`` mapping: null (a registered arm), or a new one."""
    if spec is None:
        return get_arm(name, source)
    if not isinstance(spec, dict):
        raise KasegError(f"{source}: compare.arms.{name} must be a mapping (label, distill, "
                         f"data, ae) or empty, got {spec!r}")
    bad = sorted(set(spec) - {"label", "distill", "data", "ae", "control", "tuned"})
    if bad:
        raise KasegError(f"{source}: compare.arms.{name}: unknown key(s) {bad}; an arm takes "
                         "label, distill, data, ae, control, tuned")
    for section in ("distill", "data"):
        if not isinstance(spec.get(section) or {}, dict):
            raise KasegError(f"{source}: compare.arms.{name}.{section} must be a mapping")
    tuned = spec.get("tuned") or []
    if not isinstance(tuned, list) or not all(isinstance(t, str) for t in tuned):
        raise KasegError(f"{source}: compare.arms.{name}.tuned must be a list of loss names")
    distill = upgrade_distill(dict(spec.get("distill") or {}), f"{source}: compare.arms.{name}")
    arm = Arm(name, str(spec.get("label") or name), distill,
              dict(spec.get("data") or {}), spec.get("ae"), bool(spec.get("control", False)),
              tuned=tuple(tuned))
    _check_changes(arm, f"{source}: compare.arms")
    return arm


def get_arm(name: str, source: str = "compare") -> Arm:
    if name not in ARMS:
        raise KasegError(f"{source}: unknown arm '{name}'; known: {', '.join(ARMS)} (or define "
                         "it in the config's compare.arms)")
    return ARMS[name]


def tune_weights(cfg: Config, arm: Arm, scale: float) -> Config:
    """``cfg`` (the arm's config) with the weights of the arm's tuned losses x ``scale`` (their
    default or the arm's own weight as the base); unchanged at x1, so the authors' setting is
    one run whether or not a comparison tunes."""
    if scale == 1.0 or not arm.tuned:
        return cfg
    losses = canonical_losses(cfg.distill.losses)
    for name in arm.tuned:
        losses[name]["weight"] = scale * losses[name]["weight"]
    return replace(cfg, distill=replace(cfg.distill, losses=losses))


def arm_config(cfg: Config, arm: Arm | str, seed: int, scale: float = 1.0) -> Config:
    """The full config of ``arm`` (an :class:`Arm` or a registered name) at ``seed``, the
    method's weights x ``scale``, checked like any config (a bad loss, key or value is a
    one-line error naming the arm)."""
    arm = get_arm(arm) if isinstance(arm, str) else arm
    try:
        changes = {**arm.distill, "losses": arm.losses(cfg.distill, scale)}
        data = replace(cfg.data, **arm.data)
        out = replace(cfg, seed=seed, data=data, distill=replace(cfg.distill, **changes))
    except (TypeError, ValueError) as e:
        raise KasegError(f"arm '{arm.name}': {e}") from None
    check_config(out, f"arm '{arm.name}'")
    return out


def method_weights(cfg: Config, scale: float = 1.0) -> dict[str, float]:
    """``{term: weight}`` of the method's terms at the weight ``scale`` (what the arm ``ka``
    trains with): what reports state as "the method's weights"."""
    return {name: entry["weight"] for name, entry in ARMS["ka"].losses(cfg.distill, scale).items()}


def with_method_weights(cfg: Config, scale: float) -> Config:
    """``cfg`` training the method's terms at the weight ``scale`` (the weights the arms
    trained with, for a report)."""
    return replace(cfg, distill=replace(cfg.distill, losses=ARMS["ka"].losses(cfg.distill, scale)))


def ae_variant_config(cfg: Config, variant: str | None) -> Config:
    """``cfg`` with the teacher tap and autoencoder settings of ``variant`` (weights unset)."""
    if variant is None:
        return cfg
    spec = AE_VARIANTS[variant]
    return replace(cfg, teacher=replace(cfg.teacher, tap=spec.get("tap", cfg.teacher.tap)),
                   ae=replace(cfg.ae, weights=None, **spec.get("ae", {})))
