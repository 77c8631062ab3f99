"""``kaseg demo --limited-labels``: limited labels, many pictures. The demo's teacher (trained on every
label) teaches students that keep only 64 labelled scenes; the other 960 scenes of the training
split are their unlabelled pool. Each arm is fine-tuned from the demo's shared CE-pretrained
start for the same number of steps (an arm that uses the unlabelled pool also sees an unlabelled
batch per step), over paired seeds, and is compared with the CE-only student on the 64 labels;
the student trained with every label is the upper bound. The shared stages are the demo's own
(one folder serves both), the arms go to ``DIR/limited-labels``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..compare.arms import ARMS, with_method_weights
from ..core.files import atomic_write_text
from ..compare.tables import code_version, evaluate_runs, machine, markdown_table, paired_rows
from ..compare.runner import run
from .recipes import LABELED_COUNT, LIMITED_ARMS, demo_config, limited_spec

log = logging.getLogger(__name__)

LABELS_LIMITED = {**{a: ARMS[a].label for a in LIMITED_ARMS},
                  "baseline": f"CE only, {LABELED_COUNT} labels",
                  "kd_t2": "CE + logit KD (T = 2), with the unlabelled images",
                  "ka": "CE + the method, with the unlabelled images"}


def run_limited_labels(out: str | Path = "demo_out", quick: bool = False,
                       seeds: int | None = None, device: str = "auto",
                       force: bool = False, lockstep: bool = True,
                       retry_failed: bool = False) -> list[dict]:
    out = Path(out)
    spec = limited_spec(out, quick, seeds)
    cfg = demo_config(quick, device)
    folder = out / "limited-labels"
    t0 = time.perf_counter()
    stages, scale, _, cfg = run(folder, cfg, spec, force, desc="limited labels",
                                 lockstep=lockstep, retry_failed=retry_failed)
    cfg = with_method_weights(cfg, scale)  # the weights the arms trained with, for the report
    runs = {s.name: (s.arm, s.seed) for s in stages if s.done(folder)}  # not diverged ones
    records = (evaluate_runs(out, cfg, {"teacher": ("teacher", 0), "init": ("init", 0)})
               + evaluate_runs(folder, cfg, runs))
    atomic_write_text(folder / "results.json", json.dumps(records, indent=2))
    n = len(spec.seeds)
    flags = (" --quick" if quick else "") + (f" --seeds {n}" if n != (2 if quick else 5) else "")
    provenance = (f"Produced by `kaseg demo --limited-labels --out {out.name}{flags}` with "
                  f"{code_version()}, {time.strftime('%Y-%m-%d')}, in "
                  f"{time.perf_counter() - t0:.0f} s on {machine(cfg.train.device)}.")
    write_report(folder, cfg, records, n, spec.init_iters, provenance,
                 cfg.data.labeled_count)
    return records


def write_report(folder: Path, cfg, records: list[dict], seeds: int, init_iters: int,
                 provenance: str, labeled: int = LABELED_COUNT) -> None:
    refs = {r["arm"]: 100 * r["miou"] for r in records if r["arm"] in ("teacher", "init")}
    rows = [dict(r, label=LABELS_LIMITED.get(r["arm"], r["arm"]))
            for r in paired_rows(records, LIMITED_ARMS)]
    n_train = cfg.data.train_count
    lines = [
        "# kaseg demo --limited-labels: limited labels, many pictures", "", provenance, "",
        f"Teacher `{cfg.teacher.name}` trained on all {n_train} labelled scenes: "
        f"**{refs['teacher']:.2f}** mIoU. Every student starts from the demo's shared CE-trained "
        f"start ({init_iters} iterations on other scenes; {refs['init']:.2f} mIoU here) and is "
        f"fine-tuned for {cfg.train.iters} iterations with {labeled} labelled scenes (a "
        f"fixed subset, the same in every arm) at batch {cfg.train.batch_size}; arms marked "
        f"'with the unlabelled images' (and the pseudo-label arm) also take a batch of "
        f"{cfg.distill.unlabeled_batch_size or cfg.train.batch_size} of the other "
        f"{n_train - labeled} scenes, without their labels, at every step. The method's "
        f"weights: adaptation {cfg.distill.losses['adapt']['weight']:g}, affinity "
        f"{cfg.distill.losses['affinity']['weight']:g}. {seeds} paired seeds; mIoU in % of the last "
        "checkpoint on the validation scenes; Δ is the paired difference to the CE-only student "
        "on the same labels, with its 95% CI; the verdict follows the interval.", "",
        *markdown_table(rows), "",
        gains_line(rows), "",
        "Files: `results.json` (one record per model and seed); each run's folder under "
        "`runs/`."]
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")


def gains_line(rows: list[dict]) -> str:
    """What the unlabelled images add to each method: its paired Δ with them minus without."""
    by = {r["arm"]: r for r in rows}
    parts = []
    for with_u, without, name in (("kd_t2", "kd_t2_labeled", "logit KD"),
                                  ("ka", "ka_labeled", "the method")):
        if with_u in by and without in by and "diff" in by[with_u] and "diff" in by[without]:
            parts.append(f"{name} {by[without]['diff']['mean']:+.2f} on the labels alone, "
                         f"{by[with_u]['diff']['mean']:+.2f} with the unlabelled images")
    if "pseudo" in by and "diff" in by["pseudo"]:
        parts.append(f"pseudo-labels {by['pseudo']['diff']['mean']:+.2f}")
    if "all_labels" in by and "diff" in by["all_labels"]:
        parts.append(f"every label (upper bound) {by['all_labels']['diff']['mean']:+.2f}")
    return ("Mean paired Δ vs CE only: " + "; ".join(parts) + ".") if parts else ""
