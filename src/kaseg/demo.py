"""``kaseg demo``: the paper's experiment end to end on the built-in synthetic scenes, on a CPU.

teacher -> autoencoder -> the student trained with one recipe, seed and budget in the rows of the
paper's comparison table: CE only, + logit KD, + FitNet, + adaptation, + affinity, + both (the
method), and + both with the paper-literal reductions (``--all-methods``: also SKD, CWD, IFVD and
KD at T = 2 and 6); then every model evaluated on the same validation set and a report written.
Every stage is a run folder under DIR; a finished stage is not redone (``--force`` redoes it).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import atomic_write_text, load_model
from .config import (AEConfig, Config, DataConfig, DistillConfig, ModelConfig, TeacherConfig,
                     TrainConfig)
from .cost import measure_latency, model_cost
from .data import build_dataset
from .data.synthetic import CONTEXT_CLASSES
from .evaluate import evaluate
from .stages import distill, teacher_training_config, train_autoencoder
from .supervised import train_segmenter
from .train import resolve_device
from .visualize import prediction_grid, training_curves

log = logging.getLogger(__name__)

# the student variants: DistillConfig changes from the defaults (the method, "ka"), in the order
# of the paper's comparison table (baseline, KD, FitNet, + adaptation, + affinity, ours)
_OFF = dict(adapt_weight=0.0, affinity_weight=0.0)
METHODS: dict[str, dict] = {
    "baseline": _OFF,
    "kd": dict(_OFF, extra_losses=["kd"], kd_temperature=4.0),
    "fitnet": dict(_OFF, extra_losses=["fitnet"]),
    "adapt": dict(affinity_weight=0.0),
    "affinity": dict(adapt_weight=0.0),
    "ka": {},
    "ka_paper": dict(adapt_reduction="paper", affinity_reduction="paper", affinity_weight=1.0),
}
# ``--all-methods`` adds the rest of the field (each at its authors' weight) and KD's other T
MORE_METHODS: dict[str, dict] = {
    "kd_t2": dict(_OFF, extra_losses=["kd"], kd_temperature=2.0),
    "kd_t6": dict(_OFF, extra_losses=["kd"], kd_temperature=6.0),
    "skd": dict(_OFF, extra_losses=["skd"]),
    "cwd": dict(_OFF, extra_losses=["cwd"]),
    "ifvd": dict(_OFF, extra_losses=["ifvd"]),
}
# report order: the paper's table, with the extra methods beside their kin
ORDER = ["teacher", "baseline", "kd_t2", "kd", "kd_t6", "fitnet", "skd", "cwd", "ifvd", "adapt",
         "affinity", "ka", "ka_paper"]
LABELS = {"teacher": "teacher", "baseline": "student (CE only)", "kd": "+ logit KD (T = 4)",
          "kd_t2": "+ logit KD (T = 2)", "kd_t6": "+ logit KD (T = 6)",
          "fitnet": "+ FitNet (feature L2)", "skd": "+ SKD pair-wise", "cwd": "+ CWD (logits)",
          "ifvd": "+ IFVD", "adapt": "+ adaptation", "affinity": "+ affinity",
          "ka": "+ both (the method)", "ka_paper": "+ both, paper-literal reductions"}


def methods(all_methods: bool = False) -> dict[str, dict]:
    """The student variants a demo trains, in report order."""
    chosen = {**METHODS, **(MORE_METHODS if all_methods else {})}
    return {m: chosen[m] for m in ORDER if m in chosen}


def demo_config(quick: bool = False, device: str = "auto") -> Config:
    """The demo's recipe. Crops take the whole (rescaled) 96 px image, so the beacon band that
    decides the context classes is always in view of a network that can use it."""
    data = DataConfig(image_size=96, train_count=1024, val_count=256, crop_size=96,
                      scale_min=0.5, scale_max=1.0, flip=True, jitter=0.2)
    iters = 60 if quick else 150
    train = TrainConfig(iters=iters, batch_size=8, lr=0.1, weight_decay=1e-4,
                        val_every=iters if quick else 75, val_batch_size=64, log_every=10,
                        device=device)
    teacher = TeacherConfig(name="tiny-teacher", iters=150 if quick else 500, lr=0.05)
    return Config(seed=0, data=data, model=ModelConfig(name="tiny-student"), train=train,
                  teacher=teacher, ae=AEConfig(epochs=0.5 if quick else 1.0),
                  distill=DistillConfig())


def _stages(seeds: int, variants: dict[str, dict]) -> list[tuple[str, str, int]]:
    return [("teacher", "teacher", 0), ("ae", "ae", 0)] + [
        (f"students/{m}-s{s}", m, s) for s in range(seeds) for m in variants]


def run_demo(out: str | Path = "demo_out", quick: bool = False, seeds: int | None = None,
             device: str = "auto", force: bool = False, all_methods: bool = False) -> list[dict]:
    out = Path(out)
    seeds = seeds if seeds is not None else (1 if quick else 3)
    cfg = demo_config(quick, device)
    variants = methods(all_methods)
    stages = _stages(seeds, variants)
    t0 = time.perf_counter()
    bar = tqdm(total=len(stages), desc="demo", unit="stage", position=0, dynamic_ncols=True)
    runs: dict[str, tuple[str, int]] = {}
    for folder, method, seed in stages:
        run = out / folder
        bar.set_postfix_str(folder)
        if method == "teacher":
            train_segmenter(teacher_training_config(cfg), run, force)
            cfg = replace(cfg, teacher=replace(cfg.teacher, weights=str(run)))
        elif method == "ae":
            train_autoencoder(cfg, run, force)
            cfg = replace(cfg, ae=replace(cfg.ae, weights=str(run)))
        else:
            s_cfg = replace(cfg, seed=seed, distill=replace(cfg.distill, **variants[method]))
            distill(s_cfg, run, force)
        runs[folder] = (method, seed)
        bar.update(1)
    bar.close()
    log.info("demo: trained %d stages in %.0fs; evaluating", len(stages), time.perf_counter() - t0)
    records = evaluate_all(out, cfg, runs)
    atomic_write_text(out / "results.json", json.dumps(records, indent=2))
    write_report(out, cfg, records, seeds, quick)
    write_pictures(out, cfg, variants)
    log.info("demo: done in %.0fs; see %s", time.perf_counter() - t0, out / "report.md")
    return records


def evaluate_all(out: Path, cfg: Config, runs: dict[str, tuple[str, int]]) -> list[dict]:
    """Every model's *last* weights on the same val set (no checkpoint picked on val)."""
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    size = (cfg.data.crop_size, cfg.data.crop_size)
    device = resolve_device(cfg.train.device)
    costs: dict[str, dict] = {}
    records = []
    for folder, (method, seed) in tqdm(runs.items(), desc="evaluate", leave=False):
        if method == "ae":
            continue
        model, meta = load_model(out / folder, which="last")
        name = meta["spec"]["name"]
        if name not in costs:  # one measurement per architecture, shared by its runs
            cost = model_cost(model, size)
            cost["latency_ms"] = measure_latency(model, size, "cpu")
            costs[name] = cost
        m = evaluate(model, val, cfg.train.val_batch_size, device)
        ctx = [m["per_class_iou"][val.class_names[c]] for c in CONTEXT_CLASSES]
        ctx = [v for v in ctx if v is not None]
        records.append({
            "name": f"{method}-s{seed}", "method": method, "seed": seed, "model": name,
            "miou": m["miou"], "per_class_iou": m["per_class_iou"], "pixel_acc": m["pixel_acc"],
            "context_iou": sum(ctx) / len(ctx) if ctx else None,
            "params": costs[name]["params"], "gflops": costs[name]["gflops"],
            "latency_ms": costs[name]["latency_ms"], "input_size": list(size),
            "protocol": "synthetic val, last checkpoint, single scale, full image",
            "run": folder,
        })
    return records


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def write_report(out: Path, cfg: Config, records: list[dict], seeds: int, quick: bool) -> None:
    by = {}
    for r in records:
        by.setdefault(r["method"], []).append(r)
    base = statistics.mean(r["miou"] for r in by["baseline"])
    lines = [
        "# kaseg demo: knowledge adaptation on the synthetic scenes", "",
        f"Teacher `{cfg.teacher.name}` (OS 8, {cfg.teacher.iters} iterations) -> student "
        f"`{cfg.model.name}` (OS 16, {cfg.train.iters} iterations, batch {cfg.train.batch_size}, "
        f"lr {cfg.train.lr}), {seeds} seed(s){' (--quick)' if quick else ''}. Every student: the "
        "same recipe, seed and budget. Evaluation: the last checkpoint of each run on the same "
        f"{cfg.data.val_count} validation images, single scale, full image. mIoU in %, mean ± "
        "standard deviation over seeds.", "",
        "| model | method | mIoU | Δ vs student | context classes IoU | params (M) | GFLOPs | "
        "CPU latency (ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in ORDER:
        rs = by.get(method)
        if not rs:
            continue
        miou = [r["miou"] for r in rs]
        ctx = [r["context_iou"] for r in rs if r["context_iou"] is not None]
        delta = 100 * (statistics.mean(miou) - base)
        lines.append(
            f"| {LABELS[method]} | `{method}` | {_mean_sd(miou)} | {delta:+.2f} | "
            f"{_mean_sd(ctx) if ctx else 'n/a'} | {rs[0]['params'] / 1e6:.2f} | "
            f"{rs[0]['gflops']:.3f} | {rs[0]['latency_ms']:.1f} |")
    classes = list(records[0]["per_class_iou"])
    lines += ["", "Per-class IoU (%, mean over seeds):", "",
              "| method | " + " | ".join(classes) + " |",
              "| --- |" + " ---: |" * len(classes)]
    for method in ORDER:
        rs = by.get(method)
        if rs:
            vals = []
            for c in classes:
                v = [r["per_class_iou"][c] for r in rs if r["per_class_iou"][c] is not None]
                vals.append(f"{100 * statistics.mean(v):.1f}" if v else "n/a")
            lines.append(f"| `{method}` | " + " | ".join(vals) + " |")
    ka = statistics.mean(r["miou"] for r in by["ka"])
    teacher = statistics.mean(r["miou"] for r in by["teacher"])
    gain = 100 * (ka - base)
    verdict = ("met" if gain >= 2.5 and teacher > max(ka, base) else "NOT met")
    lines += ["", f"Target (distilled student >= student + 2.5 mIoU, teacher above both): "
              f"**{verdict}**: the method {gain:+.2f} mIoU over the CE-only student; teacher "
              f"{100 * teacher:.2f}.",
              f"Context classes ({', '.join(classes[c] for c in CONTEXT_CLASSES)}) are told apart "
              "only by a beacon far away in the image; their IoU is reported separately above.",
              "", "Files: `results.json` (one record per model and seed), `predictions.png`, "
              "`curves.png`; every stage's run folder (config, weights, history, TensorBoard) "
              "under `teacher/`, `ae/` and `students/`."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


@torch.no_grad()
def write_pictures(out: Path, cfg: Config, variants: dict[str, dict], count: int = 4) -> None:
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    models = {"teacher": "teacher", "student (CE only)": "students/baseline-s0",
              "distilled (ka)": "students/ka-s0"}
    preds: dict[str, list[np.ndarray]] = {"ground truth": []}
    images = []
    for i in range(count):
        img, mask = val.raw(i)
        images.append(img)
        preds["ground truth"].append(mask)
    for label, folder in models.items():
        model, _ = load_model(out / folder, which="last")
        batch = torch.stack([val[i][0] for i in range(count)])
        preds[label] = list(model(batch)["logits"].argmax(1).numpy())
    prediction_grid(out / "predictions.png", images, preds, val.class_names, val.palette)
    curve_runs = {"teacher": out / "teacher", "autoencoder": out / "ae"}
    curve_runs.update({m: out / f"students/{m}-s0" for m in variants})
    training_curves(out / "curves.png", curve_runs)
