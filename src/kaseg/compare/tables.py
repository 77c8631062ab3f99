"""Paired comparisons of training recipes ("arms") over seeds: the machinery behind ``kaseg demo``
and ``kaseg study``.

A comparison shares one teacher, one autoencoder and (optionally) one CE-trained starting student;
each (arm, seed) is a resumable run folder. A seed fixes the student's initial weights, the data
order and every augmentation, identically in every arm, so arms are compared seed by seed
(:mod:`kaseg.core.stats`): the report gives each arm's mean ± sd and its paired difference to the
CE-only arm with a 95% confidence interval, and the verdict follows the interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
from pathlib import Path

import torch
from tqdm import tqdm

from .arms import ARMS, BASELINE, MATCHED
from .frontier import budget_tag
from ..nets.checkpoint import load_model
from ..core.config import Config
from ..data import build_dataset
from ..engine.evaluate import evaluate
from ..core.stats import paired, summarize, verdict
from ..core.runtime import resolve_device

log = logging.getLogger(__name__)

def label(arm: str) -> str:
    """An arm's label in reports (its name when it is not registered)."""
    return ARMS[arm].label if arm in ARMS else {"teacher": "teacher", "init": "shared start"}.get(
        arm, arm)


def code_version() -> str:
    """The code that produced a report: the git commit of the checkout kaseg runs from (with
    ``+changes`` when it has uncommitted ones), else the package version."""
    from .. import __version__

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                              capture_output=True, timeout=10)
        if head.returncode != 0:
            return f"kaseg {__version__}"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "."],
                               cwd=here, text=True, capture_output=True, timeout=10).stdout.strip()
        return f"commit {head.stdout.strip()}{' +changes' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"kaseg {__version__}"


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The processor's model as the OS names it ("AMD EPYC", "Intel(R) Xeon(R) ..."), else "".

    Reports name it because the same seed gives other numbers on another CPU kind (other
    kernels, another floating-point order)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor()


def machine(device: str = "auto") -> str:
    """The device a report was measured on, in words."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = cpu_name()
    return (f"CPU ({name + ', ' if name else ''}{os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads)")


def evaluate_runs(out: Path, cfg: Config, runs: dict[str, tuple]) -> list[dict]:
    """Every run's *last* weights on the same val set (no checkpoint picked on val); ``runs``:
    ``{folder: (arm, seed)}`` or ``(arm, seed, budget)``."""
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    device = resolve_device(cfg.train.device)
    context = getattr(val, "context_classes", ())
    records = []
    for folder, (arm, seed, *budget) in tqdm(runs.items(), desc="evaluate", leave=False):
        budget = float(budget[0]) if budget else 1.0
        model, meta = load_model(out / folder, which="last")
        m = evaluate(model, val, cfg.train.val_batch_size, device)
        ctx = [m["per_class_iou"][val.class_names[c]] for c in context]
        ctx = [v for v in ctx if v is not None]
        records.append({
            "name": f"{arm}{budget_tag(budget)}-s{seed}", "arm": arm,
            "seed": seed, "budget": budget, "model": meta["spec"]["name"],
            "miou": m["miou"], "per_class_iou": m["per_class_iou"], "pixel_acc": m["pixel_acc"],
            "context_iou": sum(ctx) / len(ctx) if ctx else None, "run": folder,
            "protocol": "val, last checkpoint, single scale, full image",
            **run_cost(out / folder),
        })
    return records


COST_KEYS = ("train_gflops", "train_seconds_alone", "train_gflops_cached")  # run_cost's


def at_budget_one(records: list[dict]) -> list[dict]:
    """The records of budget 1 (the paired table's; a frontier's other budgets are its own)."""
    return [r for r in records if r.get("budget", 1.0) == 1.0]


def run_cost(run: Path) -> dict:
    """A run's whole training cost from its ``cost.json``: ``train_gflops`` (FLOPs per iteration
    x iterations, the teacher's forward counted), ``train_seconds_alone`` and, for a run from a
    teacher cache, ``train_gflops_cached`` (its step as it ran); {} for a run that recorded
    none."""
    path = Path(run) / "cost.json"
    if not path.exists():
        return {}
    c = json.loads(path.read_text())
    if "train_gflops_per_iter" not in c:
        return {}
    # a run from a teacher cache counts its step without the teacher and the forward it
    # skipped apart: the first accounting counts that forward, as a live run pays it
    live = c["train_gflops_per_iter"] + c.get("teacher_gflops_per_iter", 0.0)
    out = {"train_gflops": live * c["iters"]}
    if "seconds_per_iter_alone" in c:
        out["train_seconds_alone"] = c["seconds_per_iter_alone"] * c["iters"]
    if "teacher_cache" in c:
        out["train_gflops_cached"] = c["train_gflops_per_iter"] * c["iters"]
    return out


def paired_rows(records: list[dict], arms: list[str], key: str = "miou",
                reference: str = BASELINE) -> list[dict]:
    """Per arm: mean ± sd over seeds and the paired difference to the CE-only arm (95% CI).

    Every row is over the same seeds: those every arm in the table has finished (a partial
    comparison or a diverged run leaves a seed out of every row, never out of one row only, so
    the means and the differences describe the same students). ``left_out`` (in each row):
    ``{seed: [arms without a finished run]}``."""
    by: dict[str, dict[int, float]] = {}
    for r in records:
        if r.get(key) is not None:
            by.setdefault(r["arm"], {})[r["seed"]] = 100 * r[key]
    present = [a for a in arms if a in by]
    if not present:
        return []
    seen = sorted(set().union(*(by[a] for a in present)))
    common = [s for s in seen if all(s in by[a] for a in present)]
    left_out = {s: [a for a in present if s not in by[a]] for s in seen if s not in common}
    base = {s: by[reference][s] for s in common} if reference in by else {}
    cost = _mean_costs(records, common)
    rows = []
    for arm in present:
        values = [by[arm][s] for s in common]
        summary = (summarize(values).to_dict() if values else
                   {"n": 0, "mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan})
        row = {"arm": arm, "label": label(arm), "seeds": common, "values": values,
               "n": len(common), "summary": summary, "left_out": left_out}
        for what in COST_KEYS:
            if arm in cost.get(what, {}) and BASELINE in cost.get(what, {}):
                row[f"{what}_x"] = cost[what][arm] / cost[what][BASELINE]
        if arm != reference and base:
            d = paired({s: by[arm][s] for s in common}, base)
            row["diff"] = d.to_dict()
            row["verdict"] = verdict(d)
        rows.append(row)
    return rows


def with_matched(rows: list[dict], records: list[dict], names: list[str]) -> list[dict]:
    """``rows`` with each arm's paired difference to the compute-matched control
    (``diff_matched``, ``verdict_matched``) when the comparison has one."""
    if not any(r["arm"] == MATCHED for r in rows):
        return rows
    against = {r["arm"]: r for r in paired_rows(records, names, reference=MATCHED)}
    for r in rows:
        m = against.get(r["arm"], {})
        if "diff" in m and r["arm"] != MATCHED:
            r["diff_matched"], r["verdict_matched"] = m["diff"], m["verdict"]
    return rows


def _mean_costs(records: list[dict], seeds: list[int]) -> dict[str, dict[str, float]]:
    """``{cost key: {arm: mean over seeds}}`` of the training costs the records carry."""
    out: dict[str, dict[str, list]] = {}
    for r in records:
        if r.get("seed") in seeds:
            for what in COST_KEYS:
                if r.get(what) is not None:
                    out.setdefault(what, {}).setdefault(r["arm"], []).append(r[what])
    return {w: {a: sum(v) / len(v) for a, v in arms.items()} for w, arms in out.items()}


def _fmt(mean: float, sd: float) -> str:
    return f"{mean:.2f}" if sd != sd else f"{mean:.2f} ± {sd:.2f}"


def markdown_table(rows: list[dict], key_label: str = "mIoU") -> list[str]:
    """The paired table; ``n``: the seeds every row is over (the same in every row)."""
    costed = any("train_gflops_x" in r for r in rows)
    matched = any("diff_matched" in r for r in rows)
    lines = [f"| arm | | n | {key_label} (mean ± sd) | paired Δ vs CE only | 95% CI of Δ | "
             "verdict |" + (" Δ vs CE compute-matched [95% CI] |" if matched else "") +
             (" cost x CE only |" if costed else ""),
             "| --- | --- | ---: | ---: | ---: | --- | --- |" + (" --- |" if matched else "") +
             (" ---: |" if costed else "")]
    for r in rows:
        s = r["summary"]
        if "diff" in r:
            d = r["diff"]
            ci = "n/a" if d["n"] < 2 else f"[{d['low']:+.2f}, {d['high']:+.2f}]"
            delta, verdict_ = f"{d['mean']:+.2f}", r["verdict"]
        else:
            delta, ci, verdict_ = "", "", ""
        n = r.get("n", len(r["values"]))
        line = (f"| {r['label']} | `{r['arm']}` | {n} | {_fmt(s['mean'], s['sd'])} | "
                f"{delta} | {ci} | {verdict_} |")
        if matched:
            dm = r.get("diff_matched")
            line += (f" {dm['mean']:+.2f} [{dm['low']:+.2f}, {dm['high']:+.2f}] |"
                     if dm and dm["n"] > 1 else f" {dm['mean']:+.2f} |" if dm else " |")
        if costed:  # FLOPs: the same on every machine (seconds are in results.json)
            fx = r.get("train_gflops_x")
            line += f" {fx:.2f} |" if fx is not None else " |"
        lines.append(line)
    return lines


def context_table(rows: list[dict], title: str) -> list[str]:
    """The context-class table under ``title``, or one line when no arm scores on them at all
    (a table of zeros says nothing a sentence cannot)."""
    if not rows or all(v == 0 for r in rows for v in r["values"]):
        return [f"{title} 0.00 in every arm and seed (no student separates the twins yet)."]
    return [title, "", *markdown_table(rows, "context IoU")]
