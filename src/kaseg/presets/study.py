"""``kaseg study``: does the method make the student better, and where? A ladder of regimes, each
a set of arms x paired seeds, on the built-in synthetic scenes.

Regimes vary one thing at a time from the demo's recipe: input size (96 px: a 6 x 6 OS-16 map;
192 px: 12 x 12), initialisation (from scratch, or "pretrained": every arm starts from one student
trained with CE on *other* scenes, the stand-in for ImageNet weights) and schedule (short, 4x
longer). Arms: CE only, logit KD, CWD, adaptation only, the method, the method + KD, the two
negative controls (an untrained encoder; adapters fitted to a constant target) and the recipes
the field uses to make feature distillation work (a warm-up; an autoencoder trained until its
validation error stops falling; the teacher's or the student's encoder map instead of the
decoder map).

The method's weights are chosen first, on *tuning seeds* that are never reported. Everything is
a resumable run folder under OUT (finished runs are skipped); ``study.md``, ``study.json`` and
``study.png`` (and ``frontier_REGIME.png`` for a regime run with budgets) are written from the
runs after each regime, so partial results are readable.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import KasegError
from ..core.files import atomic_write_text
from ..compare.arms import AE_VARIANTS, ARM_GROUPS, ARMS, method_weights
from ..compare.tables import (at_budget_one, code_version, context_table, evaluate_runs,
                              machine, markdown_table, paired_rows, with_matched)
from ..compare.frontier_report import frontier_figure, frontier_lines, frontier_of
from ..compare.runner import TUNE_SEEDS, WEIGHT_SCALES, run
from ..core.config import COMPARE_SEEDS, Config
from .recipes import demo_config, preset_spec
from ..engine.visualize import paired_gain_plot, schedule_plot

log = logging.getLogger(__name__)

LABELS_STUDY = {a.name: a.label for a in ARMS.values()}
LIMITED_LABEL_ARMS = ["baseline", "pseudo", "kd_t2_labeled", "kd_t2", "ka_labeled", "ka",
                      "ka_kd", "ctrl_random_ae", "ctrl_constant", "all_labels"]
# the recipes the field uses to make feature distillation work (each a registered arm)
RECIPES = ["ka_warmup", "ka_student_encoder", "ka_ae_plateau", "ka_teacher_encoder"]
CORE_ARMS = ["baseline", "kd_t2", "cwd", "adapt", "ka", "ka_kd", "ctrl_random_ae", "ctrl_constant"]


@dataclass
class Regime:
    name: str
    size: int = 96
    pretrained: bool = True
    iters: int = 150
    arms: list[str] = field(default_factory=lambda: list(CORE_ARMS))
    note: str = ""
    tune: bool = True  # False: reuse the weight scale tuned in the previous regime
    teacher_iters: int | None = None  # None: the demo's
    init_iters: int | None = None  # None: the demo's
    # limited labels: the students keep this many labelled scenes; the rest of the training split
    # is their unlabelled pool (the teacher and the shared start keep every label)
    labeled_count: int | None = None
    ladder: str | None = None  # the schedule ladder this regime is on (only its iters vary)
    tuned_in: str | None = None  # reuse this regime's weight scale (None: the first regime's)
    optional: bool = False  # run only when named in --regimes (too long for a default study)


# The arms of the schedule ladders: CE only, logit KD, the method, both, and the control
LADDER_ARMS = ["baseline", "kd_t2", "ka", "ka_kd", "ctrl_random_ae"]
LIMITED_LABELS = "96px-limited-labels"
_PRE = "CE-pretrained start"
_LIMITED = ("64 labelled scenes, the other 960 of the training split unlabelled (every arm "
            "uses them wherever a term can, unless marked 'labelled images only'); "
            "CE-pretrained start")


def _on_ladder(iters: int, optional: bool = False) -> Regime:
    return Regime(f"96px-pretrained-{iters}", 96, True, iters, list(LADDER_ARMS), tune=False,
                  ladder="pretrained", optional=optional,
                  note=f"{_PRE}, {iters} iterations; weights from the first regime")


def _limited_on_ladder(iters: int) -> Regime:
    return Regime(f"{LIMITED_LABELS}-{iters}", 96, True, iters, list(LADDER_ARMS), tune=False,
                  labeled_count=64, ladder="limited labels", tuned_in=LIMITED_LABELS,
                  note=f"{_LIMITED}, {iters} iterations; weights from {LIMITED_LABELS}")


# The ladder of regimes. On 2 CPU cores the default study takes hours (the 2400-iteration regimes
# most of it; every regime is resumable), so the costlier regimes run fewer arms. The schedule
# ladders (``ladder``) vary only the fine-tuning length: 150, 600, 2400 (and, named explicitly,
# 9600) iterations from the same start.
REGIMES: list[Regime] = [
    Regime("96px-pretrained-short", 96, True, 150, CORE_ARMS + RECIPES, ladder="pretrained",
           note="the demo's regime: CE-pretrained start, 150 iterations"),
    Regime("96px-scratch-short", 96, False, 150,
           ["baseline", "kd_t2", "adapt", "ka", "ctrl_random_ae", "ctrl_constant"],
           note="from scratch, 150 iterations"),
    Regime("96px-pretrained-long", 96, True, 600, LADDER_ARMS + ["ctrl_constant"], tune=False,
           ladder="pretrained",
           note="CE-pretrained start, 600 iterations (4x); weights from the first regime"),
    Regime("192px-pretrained-short", 192, True, 150, ["baseline", "ka", "ctrl_random_ae"],
           tune=False, teacher_iters=300, init_iters=600,
           note="192 px (12 x 12 OS-16 maps; teacher 300 and start 600 iterations at this "
                "size), CE-pretrained start, 150 iterations; weights from the first regime"),
    Regime(LIMITED_LABELS, 96, True, 150, LIMITED_LABEL_ARMS, labeled_count=64,
           ladder="limited labels", note=f"{_LIMITED}, 150 iterations; weights tuned here"),
    _on_ladder(2400),
    _limited_on_ladder(600),
    _limited_on_ladder(2400),
    _on_ladder(9600, optional=True),
    # the field's methods at the ladder's 600-iteration regime, with the compute-matched control
    # (CE only trained as long as the costliest arm's FLOPs): does distilling beat training longer?
    Regime("96px-pretrained-600-field", 96, True, 600,
           [*ARM_GROUPS["field"], "ctrl_random_ae", "ce_matched"], tune=False, optional=True,
           note=f"{_PRE}, 600 iterations; the field's methods (their authors' weights) and the "
                "compute-matched control; the method's weights from the first regime"),
]
# the names of release 0.1.0 (one idea, one name: "limited labels"): accepted by --regimes and
# --retune with a warning, and upgraded in the records and folders an earlier study left
RENAMED_REGIMES = {f"96px-few-labels{tail}": f"{LIMITED_LABELS}{tail}"
                   for tail in ("", "-600", "-2400")}
RENAMED_LADDERS = {"few labels": "limited labels"}


def current_name(name: str) -> str:
    """A regime's name now (an old name warns once per call)."""
    if name in RENAMED_REGIMES:
        log.warning("regime %s is now called %s", name, RENAMED_REGIMES[name])
    return RENAMED_REGIMES.get(name, name)


def upgrade_record(record: dict) -> dict:
    """A regime record (``regime.json``, an entry of ``study.json``) under today's names."""
    ladder = record.get("ladder")
    return {**record, "name": RENAMED_REGIMES.get(record["name"], record["name"]),
            **({"ladder": RENAMED_LADDERS.get(ladder, ladder)} if ladder else {})}


def upgrade_folders(out: Path) -> list[str]:
    """Renames the regime folders an earlier study left under old names (nothing in a regime's
    folder names its own path: its runs point at the shared stages only), so a study resumes
    where it stopped. Returns the new names of the folders moved."""
    moved = []
    for old, new in RENAMED_REGIMES.items():
        if (out / old).is_dir() and not (out / new).exists():
            os.replace(out / old, out / new)
            log.warning("renamed %s to %s (the regime's name now)", out / old, out / new)
            moved.append(new)
    return moved


# a regime longer than this validates and checkpoints every this many iterations, so a run killed
# midway resumes from its last checkpoint (validation draws no number from the global RNG: its
# loader has its own generator, so a dropout student trains the same whatever val_every is)
CHECKPOINT_EVERY = 600
TUNING_SEEDS = list(TUNE_SEEDS)  # the comparison's: choose the method's weights here


def base_config(size: int, device: str) -> Config:
    cfg = demo_config(False, device)
    data = replace(cfg.data, image_size=size, crop_size=size)
    return replace(cfg, data=data, train=replace(cfg.train, val_batch_size=32 if size > 96 else 64))


def regime_spec(out: Path, regime: Regime, seeds: list[int], scales: list[float],
                budgets: list[float] | None = None):
    """The regime as a comparison: shared stages per input size (``out/shared-SIZEpx``), the
    arms' schedule and data changed from the base recipe."""
    arms_data = ({"labeled_count": regime.labeled_count, "unlabeled_split": "train"}
                 if regime.labeled_count else {})
    spec = preset_spec(regime.arms, seeds, scales=scales, init=regime.pretrained,
                       init_iters=regime.init_iters, shared_dir=out / f"shared-{regime.size}px",
                       arms_data=arms_data,
                       arms_train={"iters": regime.iters,
                                   "val_every": min(regime.iters, CHECKPOINT_EVERY)},
                       budgets=budgets)
    spec.tune_seeds = list(TUNING_SEEDS)
    return spec


def run_regime(out: Path, regime: Regime, seeds: list[int], device: str, force: bool,
               tuned: tuple[float, dict] | None = None, lockstep: bool = True,
               cfg: Config | None = None, retune: bool = False,
               retry_failed: bool = False, budgets: list[float] | None = None,
               max_ce_budget: float | None = None) -> dict:
    """One regime's comparison and its record (``regime.json``); ``cfg``: the base recipe
    (default: the demo's at the regime's input size). ``retune``: choose the weight scale here
    even in a regime that reuses another's (the arms' runs are reused if it still wins).
    ``budgets``, ``max_ce_budget``: a frontier (:class:`kaseg.compare.runner.CompareSpec`'s)."""
    if retune and not regime.tune:
        head, reused, source = regime.note.partition("; weights from ")
        regime = replace(regime, tune=True, note=f"{head}; weights re-tuned here" + (
            f" (the ladder reuses those of {source})" if reused else ""))
    cfg = cfg or base_config(regime.size, device)
    if regime.teacher_iters:
        cfg = replace(cfg, teacher=replace(cfg.teacher, iters=regime.teacher_iters))
    rdir = out / regime.name
    scales = list(WEIGHT_SCALES) if regime.tune or tuned is None else [tuned[0]]
    spec = replace(regime_spec(out, regime, seeds, scales, budgets), max_ce_budget=max_ce_budget)
    stages, scale, tuning, cfg = run(rdir, cfg, spec, force, desc=f"study {regime.name}",
                                      lockstep=lockstep, retry_failed=retry_failed)
    runs = {s.name: (s.arm, s.seed, s.budget) for s in stages if s.done(rdir)}  # not diverged
    shared = spec.shared_dir
    refs = {f"{shared.name}/teacher": ("teacher", 0)}
    if regime.pretrained:
        refs[f"{shared.name}/init"] = ("init", 0)
    # run paths relative to the study folder (shared runs) or to the regime's folder
    records = evaluate_runs(out, cfg, refs) + evaluate_runs(rdir, cfg, runs)
    flat = at_budget_one(records)
    ae_errors = {}
    for variant in [None, *AE_VARIANTS]:
        path = shared / ("ae" if variant is None else f"ae-{variant}") / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            ae_errors[variant or "default"] = {"rel_error": m["val"]["rel_error"],
                                               "iters": m["iters"]}
    result = {"name": regime.name, "note": regime.note, "size": regime.size,
              "ladder": regime.ladder,
              "pretrained": regime.pretrained, "iters": regime.iters, "seeds": seeds,
              "labeled_count": regime.labeled_count, "code": code_version(),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(device),
              "weight_scale": scale, "tuning": tuning, "ae": ae_errors,
              **{f"{term}_weight": w for term, w in method_weights(cfg, scale).items()},
              "failed": {s.name: s.failure(rdir) for s in stages if s.failure(rdir)},
              "rows": with_matched(paired_rows(flat, regime.arms), flat, regime.arms),
              "context_rows": paired_rows(flat, regime.arms, key="context_iou"),
              "frontier": _frontier_of(cfg, records, stages, spec),
              "records": records}
    atomic_write_text(rdir / "regime.json", json.dumps(result, indent=2))
    return result


def reference_scale(out: Path, results: list[dict],
                    regime: Regime | None = None) -> tuple[float, dict] | None:
    """The weight scale an untuned regime reuses: that of ``regime.tuned_in`` (else the first
    regime of the ladder), from this invocation or the ``regime.json`` it left. A regime that
    must reuse one whose results are not there is an error naming the regime to run first (a
    silent stand-in would put another regime's scale under this one's name); None: no regime
    given and none known."""
    source = (regime.tuned_in if regime and regime.tuned_in else REGIMES[0].name)
    known = {r["name"]: r for r in known_results(out, results)}
    if source in known:
        return known[source]["weight_scale"], {}
    if regime is not None and not regime.tune:
        raise KasegError(
            f"regime {regime.name} reuses the weight scale tuned in {source}, which has no "
            f"results in {out}: run it first (--regimes {source} {regime.name}), give an "
            f"earlier study's with --reuse STUDY_JSON, or tune this one with --retune "
            f"{regime.name}")
    return None


def known_results(out: Path, fresh: list[dict]) -> list[dict]:
    """Every regime with results under ``out``, in ladder order: this invocation's, else the
    ``regime.json`` an earlier one left (each records the code and date that produced it)."""
    by_name = {r["name"]: r for r in fresh}
    for regime in REGIMES:
        path = out / regime.name / "regime.json"
        if regime.name not in by_name and path.exists():
            by_name[regime.name] = upgrade_record(json.loads(path.read_text()))
    return [by_name[r.name] for r in REGIMES if r.name in by_name]


def reuse_records(out: Path, path: str | Path, chosen: list[Regime]) -> list[str]:
    """Seed ``out`` with the regime records of an earlier study (its ``study.json``) so that a
    study can go on elsewhere: every record of a known regime that this invocation does not run
    and ``out`` lacks becomes ``out/NAME/regime.json`` (its own code, date and machine stated in
    the report); an untuned regime then reuses its weight scale. Returns the names reused."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KasegError(f"--reuse {path}: not a readable study.json ({e})") from None
    known = {r.name for r in REGIMES}
    if not isinstance(records, list) or not all(
            isinstance(r, dict) and {"name", "weight_scale", "rows", "records"} <= r.keys()
            for r in records):
        raise KasegError(f"--reuse {path}: not a study.json (a list of regime records with "
                         "name, weight_scale, rows and records)")
    records = [upgrade_record(r) for r in records]
    unknown = sorted({r["name"] for r in records} - known)
    if unknown:
        raise KasegError(f"--reuse {path}: unknown regime(s) {unknown}")
    running = {r.name for r in chosen}
    reused = []
    for r in records:
        target = out / r["name"] / "regime.json"
        if r["name"] in running or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(r, indent=2))
        reused.append(r["name"])
    return reused


def run_study(out: str | Path = "study_out", device: str = "auto", seeds: int = COMPARE_SEEDS,
              regimes: list[str] | None = None, force: bool = False,
              lockstep: bool = True, reuse: str | Path | None = None,
              retune: list[str] | None = None, retry_failed: bool = False,
              budgets: list[float] | None = None, arms: list[str] | None = None,
              max_ce_budget: float | None = None) -> list[dict]:
    """``reuse``: an earlier study's ``study.json`` whose regimes (those not run here) join this
    one's report (:func:`reuse_records`); ``retune``: regimes that choose their own weight scale
    (:func:`run_regime`)."""
    out = Path(out)
    chosen = only_arms(chosen_regimes(regimes), arms)
    retune = [current_name(n) for n in retune or []]
    upgrade_folders(out)
    stray = sorted(set(retune) - {r.name for r in chosen})
    if stray:
        raise KasegError(f"--retune {' '.join(stray)}: not among the regimes this study runs "
                         f"({', '.join(r.name for r in chosen)})")
    if reuse is not None:
        names = reuse_records(out, reuse, chosen)
        log.info("reused from %s: %s", reuse, ", ".join(names) or "nothing (all present or run)")
    seed_list = list(range(seeds))
    results, t0 = [], time.perf_counter()
    flags = (f" --seeds {seeds}" if seeds != COMPARE_SEEDS else "") + (
        f" --regimes {' '.join(regimes)}" if regimes else "") + (
        f" --reuse {reuse}" if reuse is not None else "") + (
        f" --retune {' '.join(retune)}" if retune else "") + (
        f" --budgets {' '.join(f'{b:g}' for b in budgets)}" if budgets else "") + (
        f" --arms {' '.join(arms)}" if arms else "") + (
        f" --max-ce-budget {max_ce_budget:g}" if max_ce_budget else "") + (
        f" --device {device}" if device != "auto" else "")
    for regime in chosen:
        own = regime.tune or regime.name in retune  # chooses its own scale: reuses none
        tuned = None if own else reference_scale(out, results, regime)
        results.append(run_regime(out, regime, seed_list, device, force, tuned,
                                  lockstep, retune=regime.name in retune,
                                  retry_failed=retry_failed, budgets=budgets,
                                  max_ce_budget=max_ce_budget))
        provenance = (f"Produced by `kaseg study --out {out.name}{flags}` with {code_version()}, "
                      f"{time.strftime('%Y-%m-%d')}, on {machine(device)}; "
                      f"{(time.perf_counter() - t0) / 60:.0f} minutes in this invocation "
                      "(finished runs are skipped).")
        write_study(out, known_results(out, results), provenance)
    return results


def only_arms(regimes: list[Regime], arms: list[str] | None) -> list[Regime]:
    """Each regime with the named arms only (CE only always kept): the same regimes, a smaller
    comparison (e.g. one method's frontier). A regime with none of them is an error."""
    if not arms:
        return regimes
    out = []
    for r in regimes:
        kept = [a for a in r.arms if a in arms or a == "baseline"]
        if len(kept) < 2:
            raise KasegError(f"--arms {' '.join(arms)}: regime {r.name} has none of them (its "
                             f"arms: {' '.join(r.arms)})")
        out.append(replace(r, arms=kept))
    return out


def chosen_regimes(names: list[str] | None = None) -> list[Regime]:
    """The named regimes in ladder order; by default every regime that is not optional."""
    names = [current_name(n) for n in names or []]
    unknown = set(names or []) - {r.name for r in REGIMES}
    if unknown:
        raise KasegError(f"unknown regime(s) {sorted(unknown)}; choose from "
                         f"{[r.name for r in REGIMES]}")
    return [r for r in REGIMES if (r.name in names if names else not r.optional)]


def write_study(out: Path, results: list[dict], provenance: str) -> None:
    atomic_write_text(out / "study.json", json.dumps(results, indent=2))
    lines = ["# kaseg study: the method's paired gain, regime by regime", "", provenance, "",
             "Built-in synthetic scenes; teacher `tiny-teacher` (OS 8), student `tiny-student` "
             "(OS 16). In each regime every arm trains with the same budget; a seed fixes the "
             "data order, every augmentation and the initial weights in every arm. The method's "
             "two weights are scaled by the factor (of 0.3, 1, 3 x the defaults 50 and 30) with "
             f"the best mean mIoU on tuning seeds {TUNING_SEEDS}, never on the reported seeds. "
             "Evaluation: last checkpoint, the same validation images, single scale. mIoU in %; "
             "Δ is the paired difference to CE only with its 95% CI (Student t over seeds); the "
             "verdict follows the interval.", ""]
    for r in results:
        refs = {x["arm"]: 100 * x["miou"] for x in r["records"] if x["arm"] in ("teacher", "init")}
        ae = ", ".join(f"{k}: {v['rel_error']:.3f} after {v['iters']} iterations"
                       for k, v in r["ae"].items())
        lines += [f"## {r['name']}: {r['note']}", "",
                  (f"Measured with {r['code']}, {r['date']}, on {r['machine']}. "
                   if "code" in r else "") + f"Teacher {refs['teacher']:.2f} mIoU" + (
                      f"; the shared CE-pretrained start {refs['init']:.2f} before fine-tuning."
                      if "init" in refs else "."),
                  (f"Weight scale chosen on the tuning seeds: x{r['weight_scale']:g} (adaptation "
                   f"{r['adapt_weight']:g}, affinity {r['affinity_weight']:g}); tuning mIoU per "
                   "scale: " + "; ".join(f"x{k}: " + ", ".join(
                       "diverged" if v is None else f"{100 * v:.2f}" for v in vs)
                                         for k, vs in r["tuning"].items()) + "."
                   if r["tuning"] else f"Weight scale x{r['weight_scale']:g} from the first "
                   f"regime (adaptation {r['adapt_weight']:g}, affinity "
                   f"{r['affinity_weight']:g}; not re-tuned here)."),
                  f"Autoencoder relative reconstruction error (val): {ae}." if ae else "",
                  *[f"Diverged (stopped alone, not in the table): `{k}`: {v.get('message', '?')}"
                    for k, v in r.get("failed", {}).items()], "",
                  *markdown_table([dict(x, label=LABELS_STUDY.get(x["arm"], x["arm"]))
                                   for x in r["rows"]]), "",
                  *context_table([dict(x, label=LABELS_STUDY.get(x["arm"], x["arm"]))
                                  for x in r["context_rows"]], "Context classes only (IoU %):"),
                  "", *_frontier_part(r)]
    ladders = schedule_ladders(results)
    if ladders:
        lines += schedule_table(ladders, ladder_provenance(results))
    lines += ["Files: `study.json` (every run's record), `study.png` (the paired gain of "
              "each arm with its CI, one panel per regime)" + (
                  ", `study_schedule.png` (each arm's paired gain against the fine-tuning "
                  "iterations, one panel per ladder)." if ladders else ".")]
    atomic_write_text(out / "study.md", "\n".join(lines) + "\n")
    paired_gain_plot(out / "study.png", {r["name"]: r["rows"] for r in results}, LABELS_STUDY,
                     controls={n for n, a in ARMS.items() if a.control})
    if ladders:
        schedule_plot(out / "study_schedule.png", ladders, LABELS_STUDY)
    frontier_pictures(out, results)


def _frontier_of(cfg: Config, records: list[dict], stages, spec) -> dict | None:
    """A regime's frontier (its teacher is the study's own, trained: counted in the third
    accounting); None without budgets."""
    if not spec.budgets:
        return None
    return frontier_of(cfg, {"records": records, "trained_teacher": True}, spec)


def _frontier_picture(r: dict) -> str:
    return f"frontier_{r['name']}.png"


def _frontier_part(r: dict) -> list[str]:
    """A regime's frontier section, when it ran with budgets."""
    fr = r.get("frontier")
    if not fr:
        return []
    # a part of the regime's section: its heading one level below the regime's
    return ["#" + ln if ln.startswith("## ") else ln
            for ln in frontier_lines(fr, LABELS_STUDY, _frontier_picture(r))] + [""]


def frontier_pictures(out: Path, results: list[dict]) -> list[Path]:
    """Each regime's frontier as a picture (``frontier_REGIME.png``, the one its section names),
    for the regimes that ran with budgets."""
    written = []
    for r in results:
        if r.get("frontier"):
            frontier_figure(out / _frontier_picture(r), r["frontier"], LABELS_STUDY)
            written.append(out / _frontier_picture(r))
    return written


def schedule_ladders(results: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """``{ladder: {iterations: paired rows of the ladder's arms}}`` of the ladders with at least
    two regimes measured (a regime's ladder as recorded, else as :data:`REGIMES` names it)."""
    tags = {r.name: r.ladder for r in REGIMES}
    ladders: dict[str, dict[int, list[dict]]] = {}
    for r in results:
        tag = r.get("ladder", tags.get(r["name"]))
        if tag:
            ladders.setdefault(tag, {})[int(r["iters"])] = [x for x in r["rows"]
                                                            if x["arm"] in LADDER_ARMS]
    return {k: dict(sorted(v.items())) for k, v in ladders.items() if len(v) > 1}


def ladder_provenance(results: list[dict]) -> dict[str, dict[int, dict]]:
    """``{ladder: {iterations: {machine, code, teacher, init}}}``: what each of a ladder's regimes
    was measured on and the mIoU (%) of its teacher and shared start, so a ladder can say when
    its regimes do not share them."""
    tags = {r.name: r.ladder for r in REGIMES}
    out: dict[str, dict[int, dict]] = {}
    for r in results:
        tag = r.get("ladder", tags.get(r["name"]))
        if tag:
            refs = {x["arm"]: round(100 * x["miou"], 2) for x in r.get("records", [])
                    if x["arm"] in ("teacher", "init")}
            out.setdefault(tag, {})[int(r["iters"])] = {
                "machine": r.get("machine", "?"), "code": r.get("code", "?"),
                "teacher": refs.get("teacher"), "init": refs.get("init")}
    return out


def schedule_table(ladders: dict[str, dict[int, list[dict]]],
                   provenance: dict[str, dict[int, dict]] | None = None) -> list[str]:
    """One table per ladder: each arm's paired Δ [95% CI] at each fine-tuning length; under it,
    a warning where its regimes were measured on other machines or from other starts (each
    regime's Δ is still paired within it, but the regimes then differ in more than their
    length)."""
    lines = ["## The schedule ladders: paired gain against fine-tuning length", "",
             "Δ mIoU vs CE only, mean [95% CI] over the paired seeds; CE only's own mIoU in "
             "its row. Only the fine-tuning length changes along a ladder.", ""]
    for name, lengths in ladders.items():
        iters = list(lengths)
        arms = [a for a in LADDER_ARMS if any(x["arm"] == a for rows in lengths.values()
                                              for x in rows)]
        lines += [f"### {name}", "", "| arm | " + " | ".join(f"{i} it" for i in iters) + " |",
                  "| --- |" + " ---: |" * len(iters)]
        for arm in arms:
            cells = []
            for i in iters:
                row = next((x for x in lengths[i] if x["arm"] == arm), None)
                if row is None:
                    cells.append("")
                elif "diff" not in row:
                    cells.append(f"{row['summary']['mean']:.2f}")
                else:
                    d = row["diff"]
                    ci = (f" [{d['low']:+.2f}, {d['high']:+.2f}]" if d["low"] == d["low"]
                          else "")
                    cells.append(f"{d['mean']:+.2f}{ci} (n={d['n']})")
            lines.append(f"| {LABELS_STUDY.get(arm, arm)} | " + " | ".join(cells) + " |")
        lines.append("")
        measured = {i: (provenance or {}).get(name, {}).get(i) for i in iters}
        if all(measured.values()):
            lines += _regimes_differ(measured)
    return lines


def _regimes_differ(measured: dict[int, dict]) -> list[str]:
    """A warning paragraph when a ladder's regimes differ in machine, teacher or start."""
    differ = [k for k in ("machine", "teacher", "init")
              if len({str(p[k]) for p in measured.values()}) > 1]
    if not differ:
        return []
    def cell(p: dict) -> str:
        return f"{p['machine']}, {p['code']}, teacher {p['teacher']}, start {p['init']}"
    return ["**The ladder's regimes differ in more than their length** (" + ", ".join(differ) +
            "): " + "; ".join(f"{i} it: {cell(p)}" for i, p in measured.items()) + ". Each Δ is "
            "paired within its regime; across them, the change of machine or start moves the "
            "gains too.",
            ""]
