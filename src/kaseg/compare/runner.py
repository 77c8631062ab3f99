"""``kaseg compare``: does distillation make *this* student better on *this* data, and which
method? The engine behind the command and its presets (``kaseg demo``, ``--limited-labels``,
``kaseg study``).

A comparison is a list of stages, each a resumable run folder under OUT:

1. shared, once: the teacher (unless given), the autoencoder (and any variant an arm needs),
   and optionally a shared CE-trained start (``init_iters``) for users without a pretrained
   student;
2. tuning: the method's two weights scaled by each of ``weight_scales`` on ``tune_seeds``, seeds
   that are never reported; the scale with the best mean mIoU is used by every arm of the
   method; each arm with losses of its own to tune (:attr:`kaseg.compare.arms.Arm.tuned`: DIST, CIRKD,
   Af-DCD) is tuned the same way, on the same seeds, and trains at its own best scale;
3. arms x seeds, seed-major (partial results stay paired): a seed fixes the student's initial
   weights, data order and augmentation in every arm. The folder of an arm whose config depends
   on the weight scale names the scale (``runs/ka-x0.3-s0``), so a re-tune that picks another
   scale trains only those arms; the others (``runs/baseline-s0``) are reused. With
   ``budgets`` every arm also trains at ``train.iters x b`` (``runs/kd_t2-b3-s0``; budget 1
   keeps its name) and CE only at the budgets that meet each distilling run's cost
   (:mod:`kaseg.compare.frontier`); a seed's runs of every budget train in one lockstep group.
   Tuning stays at budget 1; its chosen weights apply at every budget.

Faults: a run that diverges stops alone (its ``failed.json`` says why) while the other runs of
its seed train on; a re-run does not retry it unless asked (``retry_failed``). ``force``
restarts the tuning and arm runs, never a shared stage: every run is built on those, so a
shared stage whose config changed is an error naming its folder.

Each stage is exactly a ``kaseg train`` / ``train-ae`` / ``distill`` of a config written under
``OUT/configs``, so :func:`plan` can hand the remaining ones to any scheduler, and
:func:`collect` (``--report``) reads whatever has finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from tqdm import tqdm

from .arms import (BASELINE, CONTROL_ARMS, DEFAULT_ARMS, Arm, ae_variant_config, arm_config,
                   arm_from_yaml, expand_groups, get_arm, tune_weights)
from .frontier import COSTS, budget_schedule, budget_tag, ce_budgets, check_budgets
from ..core.files import atomic_write_text
from ..core.config import (COMPARE_SEEDS as SEEDS, TUNE_SEEDS, WEIGHT_SCALES, Config,
                           SlurmConfig, from_dict, to_dict)
from ..engine.experiment import check_config
from ..core.deprecation import renamed
from ..core.errors import KasegError
from ..engine.runs import config_changes
from ..engine.teacher_cache import cache_options, needed_entries
from ..data import build_dataset
from ..engine.mask_stage import token_count
from ..losses.registry import needs_masks
from ..engine.stages import (cache_teacher, check_losses_fit, check_memory_fits, distill,
                             distill_lockstep, train_masks,
                             estimate_step_flops, estimate_step_seconds, teacher_training_config,
                             train_autoencoder)
from ..engine.supervised import train_segmenter
from ..engine.train import Diverged, failure

log = logging.getLogger(__name__)

TUNE_ARM = "ka"
DONE = {"cache-teacher": "meta.json"}  # what a finished stage leaves (default metrics.json)
CACHE = "teacher-cache"  # the shared stage's folder




@dataclass
class CompareSpec:
    """What a comparison runs besides the config: arms, seeds, tuning and the shared start."""

    arms: list[Arm]
    seeds: list[int] = field(default_factory=lambda: list(range(SEEDS)))
    tune_seeds: list[int] = field(default_factory=lambda: list(TUNE_SEEDS))
    weight_scales: list[float] = field(default_factory=lambda: list(WEIGHT_SCALES))
    init_iters: int = 0  # > 0: a shared CE-trained start for every arm
    init_seed: int = 10_000  # its own seed, never one of the reported ones
    init_data_seed: int | None = None  # synthetic scenes only: train the start on other scenes
    shared_lr: float | None = None  # the shared stages' train.lr (None: the config's)
    shared_dir: Path | None = None  # where the shared stages live (None: OUT); presets share
    # DataConfig / TrainConfig changes of the arms and tuning runs only (e.g. limited labels, or a
    # longer fine-tuning): the shared stages keep the config's
    arms_data: dict = field(default_factory=dict)
    arms_train: dict = field(default_factory=dict)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # ``--executor slurm``'s jobs
    # training budgets (x train.iters) of every arm, CE only also at each run's cost; None: one
    # budget, as before budgets existed
    budgets: list[float] | None = None
    cost: str = "flops"  # the accounting the verdict is judged by (CE only meets both)
    # CE only's budgets stop here (None: wherever a run's cost needs them); a run beyond is
    # reported as not reached, never extrapolated
    max_ce_budget: float | None = None

    def __post_init__(self):
        if self.cost not in COSTS:
            raise KasegError(f"compare.cost: unknown accounting '{self.cost}'; known: "
                             f"{', '.join(COSTS)}")
        if self.budgets is not None:
            self.budgets = check_budgets(self.budgets, 10**9)  # iterations: all_stages
        m = self.max_ce_budget
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float))
                              or not m > 0):
            raise KasegError(f"compare.max_ce_budget must be a number > 0, got {m!r}")
        names = [a.name for a in self.arms]
        if BASELINE not in names:
            raise KasegError(f"a comparison needs the '{BASELINE}' arm (CE only): every other "
                             "arm is measured against it")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise KasegError(f"arm(s) {dup} named twice")
        if not self.seeds:
            raise KasegError("a comparison needs at least one seed")
        overlap = sorted(set(self.seeds) & set(self.tune_seeds))
        if overlap and self.tuning:
            raise KasegError(f"seeds {overlap} are both reported and tuning seeds: choose the "
                             "weights on seeds that are never reported")
        if any(k <= 0 for k in self.weight_scales) or not self.weight_scales:
            raise KasegError(f"weight scales must be > 0, got {self.weight_scales}")

    @property
    def tuning(self) -> bool:
        return len(self.weight_scales) > 1


@dataclass
class PlannedRun:
    """A run of a comparison's plan (a shared stage, a tuning run or an arm's run): ``command``
    (train, train-ae, distill) on ``cfg``, in its own folder."""

    name: str  # the folder, relative to OUT (or to the shared folder)
    command: str
    cfg: Config
    arm: str | None = None
    seed: int | None = None
    phase: str = "arms"
    root: Path | None = None  # the folder ``name`` is in, when not OUT
    budget: float = 1.0  # x train.iters (:mod:`kaseg.compare.frontier`)

    def folder(self, out: Path) -> Path:
        return (self.root or out) / self.name

    def done(self, out: Path) -> bool:
        return (self.folder(out) / DONE.get(self.command, "metrics.json")).exists()

    def failure(self, out: Path) -> dict | None:
        """Why the run diverged (its ``failed.json``), or None."""
        return None if self.done(out) else failure(self.folder(out))

    def run(self, out: Path, force: bool = False) -> dict:
        if self.command == "cache-teacher":  # a finished cache is kept, a killed one resumes
            return cache_teacher(self.cfg, self.folder(out))
        fn = {"train": train_segmenter, "train-ae": train_autoencoder, "distill": distill,
              "train-masks": train_masks}
        return fn[self.command](self.cfg, self.folder(out), force)


def lockstep_groups(stages: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Consecutive distillation runs of one seed form a group (trained in lockstep where their
    batches agree); every other stage is a group of its own."""
    groups: list[list[PlannedRun]] = []
    for s in stages:
        last = groups[-1] if groups else None
        if (last and s.command == "distill" and last[0].command == "distill"
                and last[0].seed == s.seed):
            last.append(s)
        else:
            groups.append([s])
    return groups


def run_group(out: Path, group: list[PlannedRun], force: bool, lockstep: bool, bar,
              retry_failed: bool = False) -> None:
    """One lockstep group (or one stage): a run that diverged earlier is not retried unless
    asked; a run that diverges now stops alone, unless it is a shared stage."""
    shared = group[0].phase == "shared"
    if shared:
        _check_shared(out, group[0])
    todo = []
    for s in group:
        why = s.failure(out)
        if why and not (retry_failed or force or shared):  # a shared stage always runs: its
            # error (again) is better than every later stage failing without it
            log.warning("%s diverged earlier (%s); not retried (--retry-failed retries it)",
                        s.folder(out), why.get("message", "?"))
        else:
            todo.append(s)
    bar.set_postfix_str(group[0].name if len(group) == 1 else
                        f"{len(group)} runs of seed {group[0].seed} in lockstep")
    if lockstep and len(todo) > 1:
        distill_lockstep([s.cfg for s in todo], [s.folder(out) for s in todo], force)
    else:
        for s in todo:
            try:
                s.run(out, force and not shared)
            except Diverged as e:
                if shared:  # every run is built on a shared stage: nothing can go on
                    raise
                log.error("%s", e)  # its failed.json is written; the seed's other runs go on
    bar.update(len(group))


def _check_shared(out: Path, stage: PlannedRun) -> None:
    """A shared stage is never restarted by ``--force``: a changed config is an error naming
    the folder to delete."""
    folder = stage.folder(out)
    changed = config_changes(folder, to_dict(stage.cfg), stage.command)
    if changed:
        raise KasegError(
            f"{folder}: this shared stage was trained with a different config "
            f"({', '.join(changed[:5])}); --force restarts tuning and arm runs, never a shared "
            f"stage (every run of the comparison is built on it): delete {folder} to retrain "
            "it, or choose another --out")


def shared_stages(out: Path, cfg: Config, spec: CompareSpec) -> tuple[list[PlannedRun], Config,
                                                                      dict[str, Config]]:
    """Teacher, autoencoder(s) and start -> (stages, ``cfg`` pointing at them, the config of
    each autoencoder variant the arms need)."""
    stages: list[PlannedRun] = []
    base = cfg
    root = spec.shared_dir or out
    here = None if spec.shared_dir is None else spec.shared_dir
    if spec.shared_lr is not None:
        cfg = replace(cfg, train=replace(cfg.train, lr=spec.shared_lr))
    t = cfg.teacher
    given = t.weights or (t.pretrained and t.name.startswith("torchvision:"))
    if not given:
        stages.append(PlannedRun("teacher", "train", teacher_training_config(cfg), phase="shared",
                            root=here))
        cfg = replace(cfg, teacher=replace(t, weights=str(root / "teacher")))
    needs_ae = any(a.uses_method(base.distill) for a in spec.arms)
    if needs_ae and not cfg.ae.weights:
        stages.append(PlannedRun("ae", "train-ae", cfg, phase="shared", root=here))
        cfg = replace(cfg, ae=replace(cfg.ae, weights=str(root / "ae")))
    if not cfg.masks.weights and any(a.uses_masks(base.distill) for a in spec.arms):
        # MasKD's mask stage, once
        stages.append(PlannedRun("masks", "train-masks", cfg, phase="shared", root=here))
        cfg = replace(cfg, masks=replace(cfg.masks, weights=str(root / "masks")))
    variants = {}
    for variant in sorted({a.ae for a in spec.arms if a.ae}):
        vcfg = ae_variant_config(cfg, variant)
        stages.append(PlannedRun(f"ae-{variant}", "train-ae", vcfg, phase="shared", root=here))
        variants[variant] = replace(vcfg, ae=replace(vcfg.ae,
                                                     weights=str(root / f"ae-{variant}")))
    if spec.init_iters > 0:
        data = cfg.data if spec.init_data_seed is None else replace(
            cfg.data, data_seed=spec.init_data_seed)
        init = replace(cfg, seed=spec.init_seed, data=data,
                       train=replace(cfg.train, iters=spec.init_iters, val_every=spec.init_iters))
        stages.append(PlannedRun("init", "train", init, phase="shared", root=here))
        cfg = replace(cfg, model=replace(cfg.model, init_weights=str(root / "init" /
                                                                    "last.safetensors")))
    armed = replace(base, teacher=cfg.teacher, ae=cfg.ae, model=cfg.model, masks=cfg.masks,
                    data=replace(base.data, **spec.arms_data),
                    train=replace(base.train, **spec.arms_train))
    if cache_options(armed, "compare") is not None:
        stage, armed = cache_stage(armed, spec, root, here)
        stages.append(stage)
    variants = {k: replace(armed, teacher=v.teacher, ae=v.ae) for k, v in variants.items()}
    return stages, armed, variants


def cache_stage(armed: Config, spec: CompareSpec, root: Path, here: Path | None):
    """The teacher cache as a shared stage (``distill.teacher_cache``): built once on the arms'
    data with every output any arm (or tuning run) reads, used by every run of the comparison,
    CE only's included (one pool of views for every arm: the pairing stays fair). -> (the
    stage, the arms' config pointing at it)."""
    opts = cache_options(armed, "compare")
    entries = sorted({e for arm in spec.arms
                      for e in needed_entries(arm_config(armed, arm, spec.seeds[0]))})
    path = str(root / CACHE)
    with_path = dict(to_dict(opts), path=path)
    stage_cfg = replace(armed, distill=replace(armed.distill, teacher_cache=dict(
        with_path, outputs=list(opts.outputs or entries))))
    armed = replace(armed, distill=replace(armed.distill, teacher_cache=with_path))
    return PlannedRun(CACHE, "cache-teacher", stage_cfg, phase="shared", root=here), armed


def tuned_arms(spec: CompareSpec) -> list[Arm]:
    """The arms whose own losses a tuning comparison tunes (:attr:`Arm.tuned`)."""
    return [a for a in spec.arms if a.tuned] if spec.tuning else []


def tuning_stages(cfg: Config, spec: CompareSpec) -> list[PlannedRun]:
    """The method's weights x each scale, and each tuned arm's losses x each scale, on the
    tuning seeds; seed-major, so the runs of one tuning seed train in lockstep."""
    if not spec.tuning:
        return []
    ka = get_arm(TUNE_ARM)
    method = any(a.uses_method(cfg.distill) for a in spec.arms)  # else nothing uses its weights
    stages = []
    for seed in spec.tune_seeds:
        stages += [PlannedRun(f"tuning/{TUNE_ARM}-x{k:g}-s{seed}", "distill",
                         arm_config(cfg, ka, seed, k), TUNE_ARM, seed, phase="tuning")
                   for k in (spec.weight_scales if method else [])]
        stages += [PlannedRun(f"tuning/{arm.name}-x{k:g}-s{seed}", "distill",
                         tune_weights(arm_config(cfg, arm, seed), arm, k), arm.name, seed,
                         phase="tuning")
                   for arm in tuned_arms(spec) for k in spec.weight_scales]
    return stages


def chosen_scale(out: Path, spec: CompareSpec, tuning: list[PlannedRun],
                 arm: str = TUNE_ARM) -> tuple[float | None, dict]:
    """The tuned scale of ``arm``'s weights (the method's by default; None while one of its
    tuning runs is unfinished) and every scale's tuning mIoU (None for a run that diverged: its
    scale is not chosen). Without tuning: the one weight scale for the method, x1 (the authors'
    default) for another arm."""
    if not spec.tuning:
        return (spec.weight_scales[0] if arm == TUNE_ARM else 1.0), {}
    mine = [s for s in tuning if s.name.startswith(f"tuning/{arm}-x")]
    if not mine:  # no arm of the comparison uses these weights
        return spec.weight_scales[0], {}
    if not all(s.done(out) or s.failure(out) for s in mine):
        return None, {}
    scores = {f"{k:g}": [_last_miou(s.folder(out)) if s.done(out) else None for s in mine
                         if s.name.startswith(f"tuning/{arm}-x{k:g}-s")]
              for k in spec.weight_scales}
    healthy = [k for k in spec.weight_scales if None not in scores[f"{k:g}"]]
    if not healthy:
        what = "the method" if arm == TUNE_ARM else f"arm '{arm}'"
        raise KasegError(f"{out}: {what} diverged at every weight scale "
                         f"{spec.weight_scales} on the tuning seeds (see tuning/*/failed.json): "
                         "lower the weights or train.lr")
    best = max(healthy, key=lambda k: sum(scores[f"{k:g}"]) / len(scores[f"{k:g}"]))
    return best, scores


def arm_scales(out: Path, spec: CompareSpec, tuning: list[PlannedRun]) -> dict[str, tuple]:
    """``{arm: (chosen scale or None while tuning, tuning scores)}`` of each tuned arm."""
    return {a.name: chosen_scale(out, spec, tuning, a.name) for a in tuned_arms(spec)}


def _last_miou(run: Path) -> float:
    """The val mIoU of a run's last checkpoint (its last validation in ``history.jsonl``)."""
    last = None
    for line in (run / "history.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val" in rec:
            last = rec["val"]["miou"]
    if last is None:
        raise KasegError(f"{run}: no validation in history.jsonl")
    return last


def scale_dependent(cfg: Config, arm: Arm) -> bool:
    """Whether the arm's config changes with the method's weight scale (its runs at another
    scale are other runs)."""
    return to_dict(arm_config(cfg, arm, 0, 1.0)) != to_dict(arm_config(cfg, arm, 0, 2.0))


def arm_stages(cfg: Config, spec: CompareSpec, variants: dict[str, Config],
               scale: float, out: Path | None = None,
               own: dict[str, float] | None = None) -> list[PlannedRun]:
    """The arms x budgets x seeds; ``own``: the chosen scale of each tuned arm's losses (its
    folder names it unless x1)."""
    stages, own = [], own or {}
    tags = {arm.name: f"-x{scale:g}" if scale_dependent(variants[arm.ae] if arm.ae else cfg, arm)
            else "" for arm in spec.arms}
    for name, k in own.items():
        if k != 1.0:
            tags[name] += f"-x{k:g}"
    matched = None
    if any(a.matched for a in spec.arms):
        matched = matched_schedule(out, cfg, spec, variants, scale)
    budgets = arm_budgets(out, cfg, spec, variants, scale)
    for seed in spec.seeds:  # seed-major: partial results are paired
        for arm in spec.arms:
            base = variants[arm.ae] if arm.ae else cfg
            c = arm_config(base, arm, seed, scale)
            if arm.name in own:
                c = tune_weights(c, arm, own[arm.name])
            if arm.matched:
                m = replace(c, train=replace(c.train, **matched["train"]))
                stages.append(PlannedRun(f"runs/{arm.name}-i{m.train.iters}-s{seed}", "distill",
                                         m, arm.name, seed))
                continue
            for b in budgets.get(arm.name, [1.0]):
                t = replace(c.train, **budget_schedule(c.train.iters, c.train.val_every, b))
                stages.append(PlannedRun(f"runs/{arm.name}{tags[arm.name]}{budget_tag(b)}-s{seed}",
                                         "distill", replace(c, train=t), arm.name, seed,
                                         budget=b))
    return stages


def arm_budgets(out: Path | None, cfg: Config, spec: CompareSpec, variants: dict[str, Config],
                scale: float) -> dict[str, list[float]]:
    """``{arm: its budgets}``: ``spec.budgets`` for every arm, CE only's extended to meet each
    distilling run's cost in FLOPs and in seconds alone, both estimated before any run
    (:func:`kaseg.compare.frontier.ce_budgets`); {} without budgets."""
    if spec.budgets is None:
        return {}
    rivals = [a for a in spec.arms if not (a.control or a.matched)]
    ce: set[float] = set()
    for what in COSTS:
        costs = step_costs(out, cfg, replace(spec, arms=rivals), variants, scale, what)
        ce.update(ce_budgets(costs, BASELINE, spec.budgets, cfg.train.iters)[0])
    cap = spec.max_ce_budget
    ce = {b for b in ce if cap is None or b <= cap or b in spec.budgets}
    return {a.name: (sorted(ce) if a.name == BASELINE else list(spec.budgets))
            for a in spec.arms}


def matched_schedule(out: Path, cfg: Config, spec: CompareSpec, variants: dict[str, Config],
                     scale: float) -> dict:
    """The compute-matched control's schedule: CE only for ``iters x r`` iterations, ``r`` the
    largest ratio of a distilling arm's training FLOPs per iteration to CE only's (the same
    schedule shape stretched: the poly decay over the longer run, validations as often in
    proportion). -> ``{"train": TrainConfig changes, "ratio", "costliest", "gflops"}``."""
    flops = step_flops(out, cfg, spec, variants, scale)
    base = flops[BASELINE]
    rivals = {a.name: flops[a.name] / base for a in spec.arms
              if a.name != BASELINE and not a.control and a.name in flops}
    costliest = max(rivals, key=rivals.get) if rivals else BASELINE
    ratio = rivals.get(costliest, 1.0)
    t = cfg.train
    return {"train": budget_schedule(t.iters, t.val_every, max(1.0, ratio)), "ratio": ratio,
            "costliest": costliest, "gflops": {k: v / 1e9 for k, v in flops.items()}}


def step_flops(out: Path, cfg: Config, spec: CompareSpec, variants: dict[str, Config],
               scale: float) -> dict[str, int]:
    """Training FLOPs per iteration of each arm (:func:`step_costs`)."""
    return step_costs(out, cfg, spec, variants, scale, "flops")


# where a config names weights: a step's FLOPs and seconds do not depend on them
_WEIGHT_PATHS = (("teacher", "weights"), ("ae", "weights"), ("masks", "weights"),
                 ("model", "init_weights"))


def cost_key(config_json: str) -> str:
    """An arm's config as the cost cache compares it: without the paths of its weights, so a
    comparison folder that is moved or copied keeps its measured costs (a re-measured time,
    noisy, could change which CE only budgets it plans)."""
    d = json.loads(config_json)
    for section, name in _WEIGHT_PATHS:
        d.get(section, {}).pop(name, None)
    return json.dumps(d, sort_keys=True)


def step_costs(out: Path | None, cfg: Config, spec: CompareSpec, variants: dict[str, Config],
               scale: float, what: str = "flops") -> dict[str, float]:
    """Training FLOPs (or seconds alone) per iteration of each arm (at its first seed),
    estimated from its config with untrained networks (they do not depend on the weights);
    cached in ``OUT/costs.json`` by each arm's config."""
    path = None if out is None else out / "costs.json"
    cache = json.loads(path.read_text()) if path is not None and path.exists() else {}
    estimate = {"flops": estimate_step_flops, "seconds": estimate_step_seconds}[what]
    result, changed = {}, False
    for arm in spec.arms:
        if arm.matched:
            continue
        c = arm_config(variants[arm.ae] if arm.ae else cfg, arm, spec.seeds[0], scale)
        key = json.dumps(to_dict(replace(c, seed=0)), sort_keys=True)
        entry = cache.get(arm.name)
        if entry is None or cost_key(entry["config"]) != cost_key(key):
            entry = cache[arm.name] = {"config": key}
        if what not in entry:
            entry[what] = estimate(c)
            changed = True
        result[arm.name] = entry[what]
    if changed and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1))
    return result


def adopt_unscaled_folders(out: Path, stages: list[PlannedRun]) -> list[str]:
    """Rename the runs an earlier kaseg named without their scale (``runs/ka-s0``) to their
    scaled name (``runs/ka-x0.3-s0``) when they were started with exactly this stage's config,
    so a comparison made before the scale was in the names resumes and is not retrained."""
    adopted = []
    for s in stages:
        if s.arm is None or "-x" not in s.name:
            continue
        new, old = s.folder(out), (s.root or out) / "runs" / f"{s.arm}-s{s.seed}"
        if not new.exists() and (old / "config.yaml").exists() and not config_changes(
                old, to_dict(s.cfg)):
            old.rename(new)
            adopted.append(s.name)
    return adopted


def check_arms(cfg: Config, spec: CompareSpec) -> None:
    """Every arm built into a full config and checked before anything trains."""
    for arm in spec.arms:
        arm_cfg = arm_config(cfg, arm, spec.seeds[0])
        check_losses_fit(arm_cfg, f"arm '{arm.name}'")
        check_memory_fits(arm_cfg, f"arm '{arm.name}'")
        if needs_masks(arm_cfg.distill.losses):
            classes = build_dataset(cfg.data, cfg.data.train_split, train=False).num_classes
            token_count(cfg.masks.tokens, classes, f"arm '{arm.name}'")


def all_stages(out: Path, cfg: Config, spec: CompareSpec):
    """-> (shared + tuning stages, arm stages or None while tuning is unfinished, scale,
    tuning scores, the arms' config)."""
    check_config(cfg, "compare")
    if spec.budgets is not None:
        check_budgets(spec.budgets, cfg.train.iters)
    shared, armed, variants = shared_stages(out, cfg, spec)
    check_arms(armed, spec)
    tuning = tuning_stages(armed, spec)
    scale, scores = chosen_scale(out, spec, tuning)
    own = {name: k for name, (k, _) in arm_scales(out, spec, tuning).items()}
    ready = scale is not None and None not in own.values()
    arms = arm_stages(armed, spec, variants, scale, out, own) if ready else None
    if arms:
        adopt_unscaled_folders(out, arms)
    return shared + tuning, arms, scale, scores, armed


def run(out: Path, cfg: Config, spec: CompareSpec, force: bool = False, desc: str = "compare",
        lockstep: bool = True, retry_failed: bool = False):
    """Every stage in order (finished ones are skipped, diverged ones too unless
    ``retry_failed``); the runs of one seed in lockstep (``lockstep=False``: one after another;
    the results are the same, bit for bit); -> (arm stages, scale, tuning scores, the arms'
    config)."""
    first, arms, _, _, _ = all_stages(out, cfg, spec)
    total = len(first) + (len(arms) if arms is not None else len(spec.arms) * len(spec.seeds))
    bar = tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)
    try:
        for group in lockstep_groups(first):
            run_group(out, group, force, lockstep, bar, retry_failed)
        _, arms, scale, scores, armed = all_stages(out, cfg, spec)
        for group in lockstep_groups(arms):
            run_group(out, group, force, lockstep, bar, retry_failed)
    finally:
        bar.close()
    return arms, scale, scores, armed


def plan(out: Path, cfg: Config, spec: CompareSpec, prefix: str = "kaseg") -> list[str]:
    """``OUT/plan.txt``: one command per unfinished run, each on a config written to
    ``OUT/configs``; phases in order (the lines within a phase are independent, except the
    shared stages, which run in order). Each phase's lines also go to ``OUT/plan-PHASE.txt``."""
    first, arms, scale, _, _ = all_stages(out, cfg, spec)
    lines, cfg_dir = [], out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    for old in out.glob("plan-*.txt"):  # a phase with nothing left to do has no file
        old.unlink()
    phases = [("shared", "shared stages, in this order"),
              ("tuning", "tuning runs (independent of each other)"),
              ("arms", "arms x seeds (independent of each other)")]
    stages = first + (arms or [])
    for phase, title in phases:
        todo = [s for s in stages if s.phase == phase and not s.done(out)
                and not s.failure(out)]  # a diverged run is retried only when asked
        if not todo:
            continue
        lines.append(f"# {title}")
        phase_lines = []
        for s in todo:
            path = cfg_dir / (s.name.replace("/", "__") + ".yaml")
            atomic_write_text(path, yaml.safe_dump(to_dict(s.cfg), sort_keys=False))
            phase_lines.append(f"{prefix} {s.command} --config {path} --out {s.folder(out)}")
        lines += phase_lines
        atomic_write_text(out / f"plan-{phase}.txt", "\n".join(phase_lines) + "\n")
    diverged = [s.name for s in stages if s.failure(out)]
    if diverged:
        lines.append("# diverged, not listed (kaseg compare ... --retry-failed retries them): " +
                     " ".join(diverged))
    if arms is None:
        lines.append("# then run the same `kaseg compare ... --plan` again: the arms' lines "
                     "need the weight scales the tuning runs choose")
    atomic_write_text(out / "plan.txt", "\n".join(lines) + "\n")
    return lines


SECTION_KEYS = ("arms", "seeds", "tune_seeds", "weight_scales", "controls", "init_iters",
                "slurm", "budgets", "cost", "max_ce_budget")


def spec_from(section: dict, source: str = "compare", arms: list[str] | None = None,
              seeds: int | None = None, tune_seeds: list[int] | None = None,
              weight_scales: list[float] | None = None, controls: bool = False,
              init_iters: int | None = None, budgets: list[float] | None = None,
              cost: str | None = None, max_ce_budget: float | None = None) -> CompareSpec:
    """A :class:`CompareSpec` from a config's ``compare:`` section, command-line values first."""
    bad = sorted(set(section) - set(SECTION_KEYS))
    if bad:
        raise KasegError(f"{source}: compare: unknown key(s) {bad}; known: "
                         f"{', '.join(SECTION_KEYS)}")
    declared = section.get("arms")
    defined: dict = {}
    if isinstance(declared, dict):
        defined = {name: arm_from_yaml(name, spec, source) for name, spec in declared.items()}
        order = list(declared)
    elif isinstance(declared, list):
        order = [str(a) for a in declared]
    elif declared is None:
        order = list(DEFAULT_ARMS)
    else:
        raise KasegError(f"{source}: compare.arms must be a list of names or a mapping")
    if arms:
        order = list(arms)
    order = expand_groups(order)  # a group name (e.g. "field") stands for its arms
    if controls or section.get("controls"):
        order += [a for a in CONTROL_ARMS if a not in order]
    if BASELINE not in order:
        order.insert(0, BASELINE)
    chosen = [defined[n] if n in defined else get_arm(n, source) for n in order]
    n_seeds = seeds if seeds is not None else section.get("seeds", 5)
    seed_list = list(range(n_seeds)) if isinstance(n_seeds, int) else [int(s) for s in n_seeds]
    kw = {}
    if tune_seeds is not None or "tune_seeds" in section:
        kw["tune_seeds"] = [int(s) for s in (tune_seeds if tune_seeds is not None
                                             else section["tune_seeds"])]
    if weight_scales is not None or "weight_scales" in section:
        kw["weight_scales"] = [float(k) for k in (weight_scales if weight_scales is not None
                                                  else section["weight_scales"])]
    init = init_iters if init_iters is not None else section.get("init_iters", 0)
    kw.update(_frontier_keys(section, budgets=budgets, cost=cost, max_ce_budget=max_ce_budget))
    try:
        kw["slurm"] = from_dict(SlurmConfig, section.get("slurm") or {}, source,
                                "compare.slurm.")
        return CompareSpec(chosen, seed_list, init_iters=int(init), **kw)
    except (TypeError, ValueError) as e:
        raise KasegError(f"{source}: compare: {e}") from None
    except KasegError as e:
        raise KasegError(f"{source}: {e}") from None


def _frontier_keys(section: dict, **given) -> dict:
    """The frontier's settings (budgets, cost, max_ce_budget): the command line's, else the
    section's."""
    out = {k: v if v is not None else section.get(k) for k, v in given.items()}
    out["cost"] = out["cost"] or "flops"
    return out


__getattr__ = renamed(__name__, {"Stage": "PlannedRun"}, globals())  # 0.1.0's names
