"""The report of ``kaseg compare``: what a user acts on. Every finished run evaluated the same way
(last checkpoint, the validation split, single scale), each arm's paired difference to CE only
with its 95% CI, the tuning table, the teacher and start, cost, and a closing verdict; plus
``results.json``, a paired-gain plot and a predictions grid. Built from whatever run folders have
finished, so ``--report`` after a ``--plan`` gives the table the one-shot command gives."""

from __future__ import annotations

import json
import logging
import textwrap
import time
from pathlib import Path

import torch

from .arms import BASELINE, MATCHED, method_weights
from ..nets.checkpoint import load_model, save_model
from ..core.files import atomic_write_text
from .tables import (at_budget_one, code_version, context_table, evaluate_runs, label, machine,
                     markdown_table, paired_rows, with_matched)
from .runner import CACHE, CompareSpec, all_stages, arm_scales
from .frontier_report import frontier_figure, frontier_lines, frontier_of
from ..core.config import Config
from ..nets.cost import measure_latency, model_cost
from ..data import build_dataset
from ..engine.evaluate import evaluate
from ..core.runtime import inputs_for, on_device, resolve_device
from ..engine.stages import load_teacher
from ..engine.teacher_cache import cache_meta
from ..engine.visualize import paired_gain_plot, prediction_grid, spread_indices

log = logging.getLogger(__name__)
AE_WARN = 0.9  # relative reconstruction error at which the autoencoder barely knows the map


def collect(out: Path, cfg: Config, spec: CompareSpec) -> dict:
    """Evaluate every finished run -> ``{"records", "missing", "failed", "scale", "tuning",
    "cfg", "val", "teacher"}`` (``failed``: each diverged run's ``failed.json``)."""
    first, arms, scale, scores, armed = all_stages(out, cfg, spec)
    missing = [s.name for s in first + (arms or []) if not s.done(out)]
    failed = {s.name: s.failure(out) for s in first + (arms or []) if s.failure(out)}
    val = build_dataset(armed.data, armed.data.val_split, train=False)
    device = resolve_device(armed.train.device)
    records, teacher = [], None
    if "teacher" not in missing:  # loaded once: the cost and the pictures use it too
        teacher, source = load_teacher(armed, val.num_classes)
        m = evaluate(teacher, val, armed.train.val_batch_size, device)
        records.append({"name": "teacher", "arm": "teacher", "seed": 0,
                        "model": armed.teacher.name, "miou": m["miou"],
                        "per_class_iou": m["per_class_iou"], "source": str(source)})
    if spec.init_iters and "init" not in missing:
        records += evaluate_runs(out, armed, {"init": ("init", 0)})
    done = {s.name: (s.arm, s.seed, s.budget) for s in arms or [] if s.done(out)}
    records += evaluate_runs(out, armed, done)
    matched = next((s for s in arms or [] if s.arm == MATCHED), None)
    if matched is not None:
        costs = json.loads((out / "costs.json").read_text()) if (out / "costs.json").exists() \
            else {}
        rivals = {a.name: costs[a.name]["flops"] for a in spec.arms
                  if not a.control and a.name in costs}
        base = rivals.pop(BASELINE, None)
        if base and rivals:
            top = max(rivals, key=rivals.get)
            matched_cfg = {"iters": matched.cfg.train.iters, "ratio": rivals[top] / base,
                           "costliest": top}
        else:
            matched_cfg = None
    own = arm_scales(out, spec, [s for s in first if s.phase == "tuning"])
    return {"records": records, "missing": missing, "failed": failed, "scale": scale,
            "tuning": scores, "cfg": armed, "val": val, "teacher": teacher,
            "arm_tuning": {name: {"scale": k, "scores": sc} for name, (k, sc) in own.items()},
            "matched": matched_cfg if matched is not None else None,
            "trained_teacher": any(s.name == "teacher" for s in first),
            "teacher_cache": cache_summary(out, spec, records)}


def cache_summary(out: Path, spec: CompareSpec, records: list[dict]) -> dict | None:
    """The shared teacher cache's one-off cost and the runs that trained from it, or None."""
    meta = cache_meta((spec.shared_dir or out) / CACHE)
    if meta is None:
        return None
    keep = ("images", "views", "dtype", "bytes", "teacher_gflops", "build_seconds", "entries")
    return {**{k: meta[k] for k in keep},
            "runs": sorted(str(r["run"]) for r in records if "train_gflops_cached" in r)}


def _cache_lines(cache: dict | None) -> list[str]:
    if not cache:
        return []
    runs = len(cache["runs"])
    return [f"Teacher cache: {cache['images']} images x {cache['views']} views, "
            f"{', '.join(cache['entries'])} in {cache['dtype']} ({cache['bytes'] / 1e9:.3g} "
            f"GB), built once: {cache['teacher_gflops']:.4g} teacher GFLOPs in "
            f"{cache['build_seconds']:.0f} s, shared by {runs} run(s) (every arm draws from the "
            "same pool of views). Each of those runs' costs counts its step as it ran, without "
            "the teacher (the accounting \"FLOPs, teacher cached\"), the first accounting "
            "counting the teacher's forward as a live run pays it.", ""]


def best_arm(rows: list[dict], spec: CompareSpec) -> dict | None:
    """The arm with the largest mean gain among those worth using: its 95% CI lies above CE only
    and, when the comparison has the compute-matched control, above that too (training the
    student longer for the same compute is the alternative a user has). Controls are never
    chosen."""
    controls = {a.name for a in spec.arms if a.control}
    matched = any(r["arm"] == MATCHED for r in rows)
    better = [r for r in rows if r.get("verdict") == "better" and r["arm"] not in controls
              and (not matched or r.get("verdict_matched") == "better")]
    return max(better, key=lambda r: r["diff"]["mean"]) if better else None


def _at_costliest(stages_cfg: dict | None) -> str:
    """Which compute the one control was matched to, in words."""
    if not stages_cfg:
        return "for the compute of the costliest distilling arm"
    return (f"for the compute of the costliest arm (`{stages_cfg['costliest']}`, "
            f"{stages_cfg['ratio']:.2f}x)")


def _own_cost(r: dict) -> str:
    return f"; its own cost {r['train_gflops_x']:.2f}x" if "train_gflops_x" in r else ""


def matched_lines(rows: list[dict], spec: CompareSpec, stages_cfg: dict | None) -> list[str]:
    """What the compute-matched control says, in words: how long it trained, and whether
    training the student longer beats distilling it. The one control is matched to the
    costliest arm, so each arm is named with its own cost: a cheaper arm's control had more
    compute than the arm had."""
    ctrl = next((r for r in rows if r["arm"] == MATCHED), None)
    if ctrl is None:
        if any(a.name == MATCHED for a in spec.arms):
            return ["Compute-matched control (`ce_matched`): asked for, but it has **no finished "
                    "run**, so every verdict below is against CE only, not against training "
                    "the student longer."]
        return []
    controls = {a.name for a in spec.arms if a.control}
    rivals = [r for r in rows if r["arm"] not in controls and r["arm"] != BASELINE
              and "diff_matched" in r]
    at = _at_costliest(stages_cfg)
    head = "Compute-matched control (`ce_matched`): CE only" + (
        f" for {stages_cfg['iters']} iterations, {stages_cfg['ratio']:.2f}x the CE-only "
        f"schedule: the training FLOPs per iteration of the costliest distilling arm "
        f"(`{stages_cfg['costliest']}`)" if stages_cfg else "") + (
        ". Every arm is met by this one control, so a cheaper arm's control had more compute "
        "than the arm (each arm's own cost beside it).")
    beaten = [r for r in rivals if r["diff_matched"]["high"] < 0]
    level = [r for r in rivals if r["diff_matched"]["low"] <= 0 <= r["diff_matched"]["high"]]
    worth = [r for r in rivals if r["diff_matched"]["low"] > 0]
    lines = [head]
    if beaten:
        lines.append(f"**Training the student longer, {at}, beats distilling it** with " +
                     ", ".join(f"`{r['arm']}` ({r['diff_matched']['mean']:+.2f}{_own_cost(r)})"
                               for r in beaten)
                     + ": their paired interval against the compute-matched control lies below "
                     "0.")
    if level:
        lines.append(f"No resolved difference from training the student longer {at}: " +
                     ", ".join(f"`{r['arm']}`" + (f" ({_own_cost(r)[2:]})" if _own_cost(r) else "")
                               for r in level) + ".")
    if worth:
        lines.append(f"Better than training the student longer {at}: " +
                     ", ".join(f"`{r['arm']}`" + (f" ({_own_cost(r)[2:]})" if _own_cost(r) else "")
                               for r in worth) + ".")
    return lines


def write_report(out: Path, cfg: Config, spec: CompareSpec, command: str,
                 device: str = "auto", jobs: dict[str, str] | None = None) -> dict:
    """``report.md``, ``results.json``, ``gain.png``, ``predictions.png``; -> the collection.
    ``jobs``: the cluster job each unfinished run was left by, in words (its id and log)."""
    got = collect(out, cfg, spec)
    got["jobs"] = {k: v for k, v in (jobs or {}).items() if k in got["missing"]}
    records, armed = got["records"], got["cfg"]
    names = [a.name for a in spec.arms]
    flat = at_budget_one(records)
    rows = with_matched(paired_rows(flat, names), flat, names)
    ctx_rows = paired_rows(flat, names, key="context_iou")
    got["frontier"] = frontier_of(cfg, got, spec) if spec.budgets else None
    costs = _costs(out, armed, records, got["teacher"])
    got["pictured"] = _predictions(out, got, spec)
    atomic_write_text(out / "results.json", json.dumps(
        {"command": command, "code": code_version(), "date": time.strftime("%Y-%m-%d"),
         "machine": machine(device), "weight_scale": got["scale"], "tuning": got["tuning"],
         "arm_tuning": got["arm_tuning"],
         "missing": got["missing"], "missing_jobs": got["jobs"], "failed": got["failed"],
         "costs": costs,
         "compute_matched": got["matched"], "teacher_cache": got["teacher_cache"],
         "rows": rows, "frontier": got["frontier"],
         "records": records, "pictured_val_images": got["pictured"]},
        indent=2))
    if rows:
        paired_gain_plot(out / "gain.png", {"paired gain vs CE only": rows},
                         {a.name: a.label for a in spec.arms},
                         controls={a.name for a in spec.arms if a.control})
    if got["frontier"]:
        frontier_figure(out / "frontier.png", got["frontier"], {a.name: a.label for a in spec.arms})
    lines = _report_lines(out, got, spec, rows, ctx_rows, costs, command, device)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    got["rows"] = rows
    return got


def _report_lines(out, got, spec, rows, ctx_rows, costs, command, device) -> list[str]:
    cfg, records = got["cfg"], got["records"]
    refs = {r["arm"]: 100 * r["miou"] for r in records if r["arm"] in ("teacher", "init")}
    d = cfg.data
    where = d.dataset + (f" at {d.root}" if d.root else "")
    lines = ["# kaseg compare: does distillation help this student on this data?", "",
             f"Produced by `{command}` with {code_version()}, {time.strftime('%Y-%m-%d')}, on "
             f"{machine(device)}.", "",
             f"Data: `{where}` ({len(got['val'])} validation images, split `{d.val_split}`). "
             f"Teacher `{cfg.teacher.name}`" + (f": **{refs['teacher']:.2f}** mIoU"
                                                if "teacher" in refs else "") +
             f". Student `{cfg.model.name}`" + (
                 f", every arm from a shared CE-trained start ({spec.init_iters} iterations, "
                 f"{refs['init']:.2f} mIoU)" if "init" in refs else
                 (f", from `{cfg.model.init_weights}`" if cfg.model.init_weights else
                  ", from its initial weights (pretrained encoder)" if cfg.model.pretrained
                  else ", from scratch")) +
             f"; each arm trains {cfg.train.iters} iterations (batch {cfg.train.batch_size}, "
             f"lr {cfg.train.lr:g}). {len(spec.seeds)} paired seeds {spec.seeds}: a seed fixes "
             "the student's initial weights, the data order and every augmentation in every "
             "arm. Evaluation: the last checkpoint of each run, single scale, full image. mIoU "
             "in %; Δ is the paired difference to the CE-only student with its 95% CI "
             "(Student t over seeds); the verdict follows the interval.", ""]
    lines += _ae_lines(out, spec, cfg)
    lines += _masks_lines((spec.shared_dir or out) / "masks", cfg)
    lines += _cache_lines(got.get("teacher_cache"))
    lines += _tuning_lines(got, spec, cfg)
    lines += [*markdown_table(rows), ""]
    if ctx_rows and getattr(got["val"], "context_classes", ()):
        lines += [*context_table(ctx_rows, "Context classes only (IoU %):"), ""]
    for arm, c in costs.items():
        lines.append(f"Cost at {c['input_size'][0]} x {c['input_size'][1]}, {arm} "
                     f"`{c['model']}`: {c['params'] / 1e6:.2f} M params, {c['gflops']:.3f} "
                     f"GFLOPs, {c['latency_ms']:.1f} ms per image on {c['device']}.")
    lines.append("")
    lines += _verdict_lines(got, spec, rows)
    if got.get("frontier"):
        lines += ["", *frontier_lines(got["frontier"], {a.name: a.label for a in spec.arms})]
    lines += _left_out_lines(got, rows)
    pictured = got.get("pictured") or []
    lines += ["", "Files: `results.json` (every record), `gain.png` (each arm's paired gain "
              "with its CI), `predictions.png` (validation images " +
              ", ".join(f"#{i}" for i in pictured) + f", spread evenly over the "
              f"{len(got['val'])}: ground truth, teacher, each arm at the first seed); every "
              "run's folder under `runs/`."]
    return lines


def _verdict_lines(got: dict, spec: CompareSpec, rows: list[dict]) -> list[str]:
    """What each arm costs, what the compute-matched control says, and the closing verdict."""
    lines = []
    if any("train_gflops_x" in r for r in rows):
        secs = [f"`{r['arm']}` {r['train_seconds_alone_x']:.2f}" for r in rows
                if "train_seconds_alone_x" in r]
        lines += ["Cost x CE only: each arm's whole training compute (FLOPs per iteration, by "
                  "kaseg's counter, x iterations) over CE only's (each run's `cost.json`)." + (
                      " Its training time alone over CE only's, on this machine: " +
                      ", ".join(secs) + "." if secs else ""), ""]
    matched_text = matched_lines(rows, spec, got.get("matched"))
    if matched_text:
        lines += [*matched_text, ""]
    matched = any(r["arm"] == MATCHED for r in rows)
    missing = not matched and any(a.name == MATCHED for a in spec.arms)
    best = best_arm(rows, spec)
    also = (f" and than training the student longer {_at_costliest(got.get('matched'))}"
            if matched else "")
    if best:
        dd = best["diff"]
        lines.append(f"**Verdict: {best['label']} (`{best['arm']}`) is the best arm resolved "
                     f"better than CE only{also} on this data**: Δ {dd['mean']:+.2f} mIoU, "
                     f"95% CI [{dd['low']:+.2f}, {dd['high']:+.2f}] over {dd['n']} seeds" +
                     (_MISSING if missing else "."))
    else:
        lines.append(f"**Verdict: no arm is resolved better than CE only{also} on this data** "
                     "(no arm's 95% interval lies above 0 against " +
                     ("both)." if matched else "it)" + (_MISSING if missing else ".")))
    return lines


_MISSING = ("; the compute-matched control (`ce_matched`) was asked for but has no finished run, "
            "so this verdict is against CE only.")


def _left_out_lines(got: dict, rows: list[dict]) -> list[str]:
    """The runs that diverged (with why), those unfinished, and the seeds the table leaves out
    so that every row is over the same seeds."""
    lines = []
    failed, missing = got["failed"], [m for m in got["missing"] if m not in got["failed"]]
    if failed:
        lines += ["", f"**Diverged ({len(failed)})**, stopped alone while the other runs "
                  "trained on; not retried on a re-run unless `--retry-failed`:"]
        lines += [f"- `{name}`: {rec.get('message', '?')}" for name, rec in failed.items()]
    jobs = got.get("jobs", {})
    if missing and jobs:
        lines += ["", f"Unfinished ({len(missing)}), with the cluster job that left each so "
                  "(re-run the same command to resubmit them; they resume from their "
                  "checkpoints):"]
        lines += [f"- `{m}`" + (f": {jobs[m]}" if m in jobs else "") for m in missing]
    elif missing:
        lines += ["", f"Unfinished ({len(missing)}): " + ", ".join(f"`{m}`" for m in missing) +
                  "."]
    left = rows[0].get("left_out", {}) if rows else {}
    if left:
        lines += ["", "Seeds left out of the table (every row is over the same paired seeds): " +
                  "; ".join(f"seed {s}: no finished run of " + ", ".join(f"`{a}`" for a in arms)
                            for s, arms in left.items()) + "."]
    return lines


def _ae_lines(out: Path, spec: CompareSpec, cfg: Config) -> list[str]:
    lines = []
    for name in ["ae"] + [f"ae-{a.ae}" for a in spec.arms if a.ae]:
        path = out / name / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        rel = m["val"]["rel_error"]
        lines.append(f"Autoencoder `{name}`: relative reconstruction error (val) {rel:.3f} "
                     f"after {m['iters']} iterations (0 = perfect, 1 = no better than each "
                     "channel's mean).")
        if rel >= AE_WARN:
            lines.append(f"**Warning**: an error of {rel:.2f} means the autoencoder has barely "
                         "learnt the teacher's map: the method's arms then teach little more "
                         "than the untrained-encoder control. Train it longer (`ae.min_iters`, "
                         "`ae.epochs`) before reading their rows.")
    return lines + ([""] if lines else [])


def _masks_lines(folder: Path, cfg: Config) -> list[str]:
    """MasKD's mask stage: its val loss, and whether it stopped because that loss stopped
    falling or at its most iterations (then it may have more to learn)."""
    path = folder / "metrics.json"
    if not path.exists():
        return []
    m = json.loads(path.read_text())
    why = ("its validation loss had stopped falling" if m["iters"] < cfg.masks.iters else
           f"at its most iterations (`masks.iters` {cfg.masks.iters}; best at {m['best_iter']})")
    return [f"MasKD's mask stage: {m['tokens']} receptive tokens on the teacher's "
            f"{m['channels']} logit channels, validation loss {m['val']['loss']:.4f} (CE "
            f"{m['val']['ce']:.4f}, mask overlap {m['val']['diversity']:.4f}) after "
            f"{m['iters']} iterations: stopped {why}.", ""]


def _tuning_lines(got: dict, spec: CompareSpec, cfg: Config) -> list[str]:
    scale = got["scale"]
    if not any(a.uses_method(cfg.distill) for a in spec.arms):  # no arm uses its weights
        return _arm_tuning_lines(got, spec)
    if scale is None:
        return ["The method's weights: tuning unfinished.", ""]
    now, given = method_weights(cfg, scale), method_weights(cfg)
    head = (f"The method's weights: adaptation {now['adapt']:g}, affinity {now['affinity']:g} "
            f"(x{scale:g} the config's {given['adapt']:g} and {given['affinity']:g})")
    if not got["tuning"]:
        return [head + ".", ""]
    table = ["| scale | " + " | ".join(f"seed {s}" for s in spec.tune_seeds) + " | mean |",
             "| --- |" + " ---: |" * (len(spec.tune_seeds) + 1)]
    for k, vs in got["tuning"].items():
        diverged = None in vs
        table.append(f"| x{k} | " + " | ".join("diverged" if v is None else f"{100 * v:.2f}"
                                               for v in vs) +
                     (" | not chosen |" if diverged else f" | {100 * sum(vs) / len(vs):.2f} |"))
    lines = [head + f", the best mean mIoU of the method on the tuning seeds {spec.tune_seeds} "
             "(never reported):", "", *table, ""]
    return lines + _arm_tuning_lines(got, spec)


def _arm_tuning_lines(got: dict, spec: CompareSpec) -> list[str]:
    """Each tuned arm's chosen scale of its own losses' weights, with its tuning table."""
    own = got.get("arm_tuning") or {}
    if not own:
        return []
    arms = {a.name: a for a in spec.arms}
    lines = ["The other methods' weights, each tuned the same way on the same seeds (x each "
             "scale of its authors' default weight):", "",
             "| arm | tuned losses | " + " | ".join(f"x{k:g}" for k in spec.weight_scales) +
             " | chosen |", "| --- | --- |" + " ---: |" * (len(spec.weight_scales) + 1)]
    for name, t in own.items():
        cells = []
        for k in spec.weight_scales:
            vs = t["scores"].get(f"{k:g}")
            cells.append("" if not vs else "diverged" if None in vs
                         else f"{100 * sum(vs) / len(vs):.2f}")
        chosen = "tuning unfinished" if t["scale"] is None else f"x{t['scale']:g}"
        lines.append(f"| `{name}` | {', '.join(arms[name].tuned)} | " + " | ".join(cells) +
                     f" | {chosen} |")
    return lines + ["", "(mean mIoU over the tuning seeds; never reported)", ""]


def _costs(out: Path, cfg: Config, records: list[dict], teacher) -> dict:
    """Params, GFLOPs and latency of the teacher and the student, at the training crop."""
    crop = cfg.data.crop_size
    size = (crop, crop) if isinstance(crop, int) else tuple(crop)
    device = resolve_device(cfg.train.device)
    student = next((r for r in records if r["arm"] == BASELINE), None)
    models = {"teacher": teacher}
    if student:
        models["student"] = load_model(out / student["run"], which="last")[0]
    costs = {}
    for role, model in models.items():
        if model is None:
            continue
        c = model_cost(model, size)
        costs[role] = {**c, "model": model.spec.name, "input_size": list(size),
                       "latency_ms": measure_latency(model, size, device),
                       "device": machine(str(device))}
    return costs


@torch.no_grad()
def _predictions(out: Path, got: dict, spec: CompareSpec, count: int = 4) -> list[int]:
    """Ground truth, teacher and each arm (first seed) on validation images spread evenly over
    the set (:func:`kaseg.engine.visualize.spread_indices`); -> their indices."""
    val = got["val"]
    done = {r["arm"]: r["run"] for r in at_budget_one(got["records"]) if r.get("run")
            and r["seed"] == spec.seeds[0]}
    if not done:
        return []
    picked = spread_indices(len(val), count)
    images, truth = zip(*(val.raw(i) for i in picked))
    columns = {"ground truth": list(truth)}
    inputs = [val[i][0] for i in picked]
    device = resolve_device(got["cfg"].train.device)
    models = [("teacher", got["teacher"])] if got["teacher"] is not None else []
    for arm in spec.arms:
        if arm.name in done:
            title = textwrap.fill(arm.label, 24)  # long labels wrap instead of overlapping
            models.append((title, load_model(out / done[arm.name], which="last")[0]))
    for name, model in models:
        model = on_device(model, device).eval()
        # one image at a time: validation images may differ in size
        columns[name] = [model(inputs_for(model, x[None]))["logits"].argmax(1)[0].cpu().numpy()
                         for x in inputs]
    name = getattr(val, "name", None)
    labels = [f"val #{i}" + (f"\n{name(i)}" if callable(name) else "") for i in picked]
    prediction_grid(out / "predictions.png", list(images), columns, val.class_names, val.palette,
                    row_labels=labels)
    return picked


def export_best(out: Path, got: dict, spec: CompareSpec, fmt: str | None = None) -> dict | None:
    """The best arm's student (its seed with the highest mIoU) as ``OUT/best/student``
    (safetensors; ONNX too with ``fmt="onnx"``); None when no arm is resolved better."""
    best = best_arm(got["rows"], spec)
    if best is None:
        return None
    runs = [r for r in at_budget_one(got["records"]) if r["arm"] == best["arm"]]
    pick = max(runs, key=lambda r: r["miou"])
    model, meta = load_model(out / pick["run"], which="last")
    meta = {k: v for k, v in meta.items() if k not in ("kind", "spec")}
    path = save_model(model, out / "best" / "student",
                      {**meta, "arm": best["arm"], "seed": pick["seed"], "miou": pick["miou"]})
    result = {"arm": best["arm"], "seed": pick["seed"], "miou": pick["miou"], "path": str(path)}
    if fmt == "onnx":
        from ..nets.export import export_onnx

        crop = got["cfg"].data.crop_size
        size = (crop, crop) if isinstance(crop, int) else tuple(crop)
        result["onnx"] = export_onnx(path, out / "best" / "student.onnx", size=size)
    return result

