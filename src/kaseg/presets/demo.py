"""``kaseg demo``: the paper's experiment end to end on the built-in synthetic scenes, on a CPU.

teacher -> autoencoder -> one CE-trained starting student (on *other* scenes: the stand-in for
ImageNet initialisation, paid once) -> that student fine-tuned in each arm of the comparison (CE
only, logit KD, the method, ...) for the same budget, over several paired seeds; every model is
evaluated on the same validation set and ``report.md`` gives each arm's paired difference to the
CE-only student with its 95% confidence interval. Every stage is a run folder under DIR; a
finished stage is not redone (``--force`` redoes it). The machinery is :mod:`kaseg.compare.tables`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..compare.arms import BASELINE, with_method_weights
from ..nets.checkpoint import load_model
from ..core.files import atomic_write_text
from ..compare.tables import (code_version, context_table, evaluate_runs, label, machine, markdown_table,
                      paired_rows)
from ..compare.runner import run
from ..core.config import COMPARE_SEEDS, QUICK_SEEDS, Config
from ..nets.cost import measure_latency, model_cost
from ..data import build_dataset
from .recipes import TUNED_WEIGHT_SCALE, demo_config, demo_spec
from ..core.runtime import inputs_for, on_device, resolve_device
from ..core.stats import summarize
from ..engine.visualize import prediction_grid, spread_indices, training_curves

log = logging.getLogger(__name__)


def run_demo(out: str | Path = "demo_out", quick: bool = False, seeds: int | None = None,
             device: str = "auto", force: bool = False, all_methods: bool = False,
             lockstep: bool = True, retry_failed: bool = False) -> list[dict]:
    out = Path(out)
    spec = demo_spec(quick, seeds, all_methods)
    cfg = demo_config(quick, device)
    chosen = [a.name for a in spec.arms]
    t0 = time.perf_counter()
    stages, scale, _, cfg = run(out, cfg, spec, force, desc="demo", lockstep=lockstep,
                                 retry_failed=retry_failed)
    cfg = with_method_weights(cfg, scale)  # the weights the arms trained with, for the report
    log.info("demo: trained in %.0fs; evaluating", time.perf_counter() - t0)
    runs = {s.name: (s.arm, s.seed) for s in stages if s.done(out)}  # not those that diverged
    records = evaluate_runs(out, cfg, {"teacher": ("teacher", 0), "init": ("init", 0), **runs})
    add_costs(out, cfg, records)
    atomic_write_text(out / "results.json", json.dumps(records, indent=2))
    n = len(spec.seeds)
    flags = (" --quick" if quick else "") + (" --all-methods" if all_methods else "") + (
        f" --seeds {n}" if n != (QUICK_SEEDS if quick else COMPARE_SEEDS) else "")
    provenance = (f"Produced by `kaseg demo --out {out.name}{flags}` with {code_version()}, "
                  f"{time.strftime('%Y-%m-%d')}, in {time.perf_counter() - t0:.0f} s on "
                  f"{machine(cfg.train.device)}.")
    write_report(out, cfg, records, n, quick, chosen, spec.init_iters, provenance)
    first = {s.arm: s.name for s in stages if s.seed == spec.seeds[0] and s.done(out)}
    write_pictures(out, cfg, chosen, first)
    log.info("demo: done in %.0fs; see %s", time.perf_counter() - t0, out / "report.md")
    return records


def add_costs(out: Path, cfg: Config, records: list[dict]) -> None:
    """Params, GFLOPs and CPU latency, measured once per architecture."""
    size = (cfg.data.crop_size, cfg.data.crop_size)
    costs: dict[str, dict] = {}
    for r in records:
        if r["model"] not in costs:
            model, _ = load_model(out / r["run"], which="last")
            cost = model_cost(model, size)
            cost["latency_ms"] = measure_latency(model, size, "cpu")
            costs[r["model"]] = cost
        c = costs[r["model"]]
        r.update(params=c["params"], gflops=c["gflops"], latency_ms=c["latency_ms"],
                 input_size=list(size))


def write_report(out: Path, cfg: Config, records: list[dict], seeds: int, quick: bool,
                 chosen: list[str], init_iters: int, provenance: str = "") -> None:
    by = {r["arm"]: r for r in records if r["arm"] in ("teacher", "init")}
    teacher, init = 100 * by["teacher"]["miou"], 100 * by["init"]["miou"]
    rows = paired_rows(records, chosen)
    ctx_rows = paired_rows(records, chosen, key="context_iou")
    student = next(r for r in records if r["arm"] == BASELINE)
    lines = [
        "# kaseg demo: knowledge adaptation on the synthetic scenes", "", provenance, "",
        f"Teacher `{cfg.teacher.name}` (OS 8, {cfg.teacher.iters} iterations): **{teacher:.2f}** "
        f"mIoU. Student `{cfg.model.name}` (OS 16): every arm starts from the same student, "
        f"trained with CE for {init_iters} iterations on *other* scenes (data seed 1; {init:.2f} "
        f"mIoU here), then is fine-tuned for {cfg.train.iters} iterations (batch "
        f"{cfg.train.batch_size}, lr {cfg.train.lr}) with its arm's losses; the method's weights "
        f"adaptation {cfg.distill.losses['adapt']['weight']:g}, affinity "
        f"{cfg.distill.losses['affinity']['weight']:g} "
        f"(x{TUNED_WEIGHT_SCALE:g} the defaults: the scale `kaseg study` chose on its tuning "
        f"seeds). {seeds} paired seeds"
        f"{' (--quick)' if quick else ''}: a seed fixes the data order, every augmentation and "
        "the adapters' initial weights in every arm. Evaluation: the last checkpoint of each run "
        f"on the same {cfg.data.val_count} validation images, single scale, full image. mIoU in %;"
        " Δ is the paired difference to the CE-only student, with its 95% confidence interval "
        "(Student t over seeds); the verdict follows the interval.", "",
        *markdown_table(rows), "",
        *context_table(ctx_rows, "Context classes only (twin-red, twin-blue: told apart by a "
                                 "beacon far away), IoU in %:"), "",
        f"Cost at {cfg.data.crop_size} x {cfg.data.crop_size}: teacher "
        f"{by['teacher']['params'] / 1e6:.2f} M params, {by['teacher']['gflops']:.3f} GFLOPs, "
        f"{by['teacher']['latency_ms']:.1f} ms on CPU; student {student['params'] / 1e6:.2f} M, "
        f"{student['gflops']:.3f} GFLOPs, {student['latency_ms']:.1f} ms.", "",
    ]
    ka = next((r for r in rows if r["arm"] == "ka"), None)
    if ka and "diff" in ka:
        d = ka["diff"]
        met = d["mean"] >= 2.5 and d["low"] > 0
        lines.append(f"Target (the method >= CE-only + 2.5 mIoU, 95% CI above 0): **"
                     f"{'met' if met else 'NOT met'}**: Δ {d['mean']:+.2f} mIoU, CI "
                     f"[{d['low']:+.2f}, {d['high']:+.2f}] over {d['n']} seeds.")
    base = summarize([100 * r["miou"] for r in records if r["arm"] == BASELINE])
    lines += [f"The CE-only student reaches {base.mean:.2f} mIoU, {base.mean / teacher:.0%} of "
              "the teacher's.", "",
              "Files: `results.json` (one record per model and seed), `predictions.png`, "
              "`curves.png`; every stage's run folder (config, weights, history, TensorBoard) "
              "under `teacher/`, `ae/`, `init/` and `runs/`."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


@torch.no_grad()
def write_pictures(out: Path, cfg: Config, chosen: list[str], folders: dict[str, str],
                   count: int = 4) -> None:
    """``predictions.png`` (validation images spread over the set) and ``curves.png`` of the
    runs ``folders`` names (arm -> run folder at the first seed)."""
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    device = resolve_device(cfg.train.device)
    models = {"teacher": "teacher"}
    models.update({label(a): folders[a] for a in [BASELINE, *chosen]
                   if a in folders and (a == BASELINE or a in ("ka", "kd_t2"))})
    picked = spread_indices(len(val), count)
    preds: dict[str, list[np.ndarray]] = {"ground truth": []}
    images = []
    for i in picked:
        img, mask = val.raw(i)
        images.append(img)
        preds["ground truth"].append(mask)
    batch = torch.stack([val[i][0] for i in picked])
    for name, folder in models.items():
        model = on_device(load_model(out / folder, which="last")[0], device).eval()
        preds[name] = list(model(inputs_for(model, batch))["logits"].argmax(1).cpu().numpy())
    prediction_grid(out / "predictions.png", images, preds, val.class_names, val.palette,
                    row_labels=[f"val #{i}" for i in picked])
    shared = {"teacher": out / "teacher", "autoencoder": out / "ae", "shared start": out / "init"}
    arms = {label(a): out / folders[a] for a in chosen if a in folders}
    training_curves(out / "curves.png", arms, shared=shared)
