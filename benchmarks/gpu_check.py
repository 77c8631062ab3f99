"""The parts of ``benchmarks/gpu_check.sh`` that run in Python: AMP distillation steps of a pair
(fp16 and bf16; dense and Gram affinity: finite losses, peak memory, step time, distillation
overhead), the study's demo regime at another input size, and a ``kaseg compare`` report (every
path that loads a model and feeds it: evaluation, costs, pictures). Each part writes one JSON
file; ``--summarize`` merges them into ``gpu_check.json`` and ``gpu_check.md``.

    python benchmarks/gpu_check.py amp|bench|torchrun|study|report --out DIR [--dry-run]
    python benchmarks/gpu_check.py summarize --out DIR

``--dry-run``: the tiny pair at 64 px, batch 2, on the CPU (bf16 autocast; fp16 where the CPU
autocast has it), and a two-iteration study: checks that every part starts and writes its
record, in the test suite, without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from kaseg.compare.tables import code_version
from kaseg.nets.cost import median_seconds
from kaseg.core.config import DistillConfig
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model
from kaseg.engine.tasks import DistillTask, SegmentationTask


def amp_steps(out: Path, dry: bool) -> dict:
    device = torch.device("cpu" if dry else "cuda")
    pair, size, batch, runs = (("tiny-teacher", "tiny-student"), 64, 2, 1) if dry else (
        ("paper-teacher", "paper-student"), 512, 8, 10)
    torch.manual_seed(0)
    teacher = build_model(pair[0], 19).to(device).eval()
    ti = teacher.feature_info["pre_logits"]
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 19, (batch, size, size), device=device)
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for impl in ("dense", "gram"):
            torch.manual_seed(1)
            student = build_model(pair[1], 19).to(device)
            si = student.feature_info["pre_logits"]
            ae = FeatureAutoencoder(ti.channels, ti.channels // 2,
                                    ae_strides(si.stride // ti.stride)).to(device)
            task = DistillTask(student=student, teacher=teacher, encoder=ae.encoder,
                               latent_channels=ae.latent_channels, config=DistillConfig(
                                   losses={"adapt": {}, "affinity": {"impl": impl}})
                               ).to(device).train()
            alone = SegmentationTask(student).train()
            row = {"dtype": str(dtype).replace("torch.", ""), "affinity": impl,
                   "size": size, "batch": batch, "pair": list(pair), "device": str(device)}
            try:
                row.update(_measure(task, alone, teacher, x, y, dtype, device, runs))
            except RuntimeError as e:  # e.g. a dtype this device's autocast lacks
                row["error"] = str(e).splitlines()[0][:200]
            rows.append(row)
    record = {"part": "amp", "rows": rows}
    (out / "amp.json").write_text(json.dumps(record, indent=2))
    return record


def _measure(task, alone, teacher, x, y, dtype, device, runs) -> dict:
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and
                                  dtype == torch.float16)
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=1e-4,
                          momentum=0.9)
    losses = {}

    def step(t):
        def run():
            with torch.autocast(device.type, dtype=dtype):
                out = t(x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            losses.update({k: float(v.detach()) for k, v in out.items()})
        return run

    @torch.no_grad()
    def teacher_forward():
        with torch.autocast(device.type, dtype=dtype):
            teacher(x)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    distill = median_seconds(step(task), device, runs, warmup=min(2, runs))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    finite = all(math.isfinite(v) for v in losses.values())
    terms = dict(losses)
    student = median_seconds(step(alone), device, runs, warmup=min(2, runs))
    fwd = median_seconds(teacher_forward, device, runs, warmup=min(2, runs))
    return {"finite": finite, "losses": terms, "distill_step_ms": 1e3 * distill,
            "student_step_ms": 1e3 * student, "teacher_forward_ms": 1e3 * fwd,
            "overhead": distill / (student + fwd), "peak_gib": peak}


def study_regime(out: Path, dry: bool) -> dict:
    """The study's first regime (the demo's: CE-pretrained start, 150 iterations) at 256 px,
    the ladder's arms, three seeds (dry run: 32 px, two iterations, one seed, three arms)."""
    from kaseg.presets import recipes as presets, study
    from kaseg.core.config import AEConfig, Config, DataConfig, ModelConfig, TeacherConfig, TrainConfig

    device = "cpu" if dry else "cuda"
    regime = study.REGIMES[0]
    if dry:
        cfg = Config(data=DataConfig(image_size=32, train_count=16, val_count=4, crop_size=32),
                     model=ModelConfig("tiny-student"),
                     train=TrainConfig(iters=2, batch_size=4, val_every=2, val_batch_size=4,
                                       device="cpu"),
                     teacher=TeacherConfig(iters=2), ae=AEConfig(epochs=0.5, min_iters=0))
        regime = replace(regime, name="dry-run", size=32, iters=2,
                         arms=["baseline", "kd_t2", "ka"], init_iters=2)
        seeds = [0]
    else:
        # the ladder's five arms and three seeds: what fits the check's time on one GPU
        cfg = study.base_config(256, device)
        regime = replace(regime, name=f"{regime.name}-256px", size=256,
                         arms=list(study.LADDER_ARMS))
        seeds = [0, 1, 2]
    t0 = time.perf_counter()
    result = study.run_regime(out / "study", regime, seeds, device, False, (
        presets.TUNED_WEIGHT_SCALE, {}), cfg=cfg)
    rows = {r["arm"]: {"miou": r["summary"]["mean"],
                       **({"delta": r["diff"]} if "diff" in r else {})} for r in result["rows"]}
    record = {"part": "study", "regime": regime.name, "size": regime.size, "seeds": seeds,
              "rows": rows, "minutes": (time.perf_counter() - t0) / 60}
    (out / "study.json").write_text(json.dumps(record, indent=2))
    return record


def bench_part(out: Path, dry: bool) -> dict:
    """``kaseg bench`` of the paper pair at 512 px on the GPU (dry run: tiny pair, 64 px, CPU)."""
    from kaseg.engine.bench import bench

    if dry:
        r = bench("tiny-teacher", "tiny-student", (32, 32), "cpu", batch=2, runs=1, workers=0)
    else:
        r = bench("paper-teacher", "paper-student", (512, 512), "cuda", batch=8, runs=10,
                  workers=4, amp=True)
    record = {"part": "bench", "result": r}
    (out / "bench.json").write_text(json.dumps(record, indent=2))
    return record


ROOT = Path(__file__).resolve().parents[1]


def torchrun_part(out: Path, dry: bool) -> dict:
    """``kaseg pipeline`` on the built-in scenes under ``torchrun`` with one process: NCCL on a
    GPU (gloo on the CPU of a dry run)."""
    import subprocess

    overrides = (["train.device=cpu", "train.iters=2", "train.val_every=2", "teacher.iters=2",
                  "ae.min_iters=0", "ae.epochs=0.05", "data.train_count=16", "data.val_count=4",
                  "data.image_size=32", "data.crop_size=32", "train.batch_size=2"]
                 if dry else ["train.device=cuda", "train.amp=true"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "1", "-m", "kaseg", "pipeline", "--config",
           str(ROOT / "configs" / "synthetic_pipeline.yaml"), "--out", str(out / "pipeline"),
           *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    summary = out / "pipeline" / "summary.json"
    record = {"part": "torchrun", "backend": "gloo" if dry else "nccl",
              "command": " ".join(cmd[1:]).replace(str(out), "OUT"), "exit": done.returncode,
              "seconds": time.perf_counter() - t0,
              "summary": json.loads(summary.read_text()) if summary.exists() else None,
              "stderr_tail": done.stderr[-2000:]}
    (out / "torchrun.json").write_text(json.dumps(record, indent=2))
    return record


def report_part(out: Path, dry: bool) -> dict:
    """``kaseg compare`` of CE only and KD on the built-in scenes, one seed, its report written on
    the GPU: the teacher and students are loaded from their run folders, evaluated, costed and
    pictured on CUDA (dry run: the same at 32 px on the CPU)."""
    from kaseg.cli import main as kaseg

    size = ["data.image_size=32", "data.crop_size=32", "data.train_count=16",
            "data.val_count=4", "ae.min_iters=0", "ae.epochs=0.05"] if dry else [
        "data.image_size=128", "data.crop_size=128", "train.amp=true"]
    folder = out / "compare"
    args = ["compare", "--config", str(ROOT / "configs" / "synthetic_pipeline.yaml"), "--out",
            str(folder), f"train.device={'cpu' if dry else 'cuda'}",
            "train.iters=4" if dry else "train.iters=40",
            "train.val_every=4" if dry else "train.val_every=40",
            "teacher.iters=4" if dry else "teacher.iters=60", *size,
            "--arms", "baseline", "kd_t2", "--seeds", "1", "--weight-scales", "1"]
    t0 = time.perf_counter()
    code = kaseg(args)
    results = folder / "results.json"
    got = json.loads(results.read_text()) if results.exists() else {}
    record = {"part": "report", "exit": code, "seconds": time.perf_counter() - t0,
              "rows": {r["arm"]: r["summary"]["mean"] for r in got.get("rows", [])},
              "costs": {k: {"latency_ms": v["latency_ms"], "device": v["device"]}
                        for k, v in got.get("costs", {}).items()},
              "pictures": (folder / "predictions.png").exists()}
    (out / "report.json").write_text(json.dumps(record, indent=2))
    return record


def summarize(out: Path) -> dict:
    """``gpu_check.json`` (every part's record, and what is missing) and ``gpu_check.md``."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "code":
           code_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)
           if torch.cuda.is_available() else "none (CPU)"}
    parts = {}
    for name in ("amp", "bench", "torchrun", "study", "report"):
        path = out / f"{name}.json"
        parts[name] = json.loads(path.read_text()) if path.exists() else None
    record = {"env": env, **parts,
              "missing": [k for k, v in parts.items() if v is None]}
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    lines = ["# kaseg GPU check", "", f"{env['device']}, torch {env['torch']} (CUDA "
             f"{env['cuda']}), {env['code']}, {env['date']}.", ""]
    if parts["amp"]:
        lines += ["## AMP distillation steps", "",
                  "| dtype | affinity | size x batch | finite | distill ms | student ms | "
                  "teacher fwd ms | overhead | peak GiB |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in parts["amp"]["rows"]:
            if "error" in r:
                lines.append(f"| {r['dtype']} | {r['affinity']} | {r['size']} x {r['batch']} | "
                             f"error: {r['error']} | | | | | |")
                continue
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
            lines.append(f"| {r['dtype']} | {r['affinity']} | {r['size']} x {r['batch']} | "
                         f"{r['finite']} | {r['distill_step_ms']:.1f} | {r['student_step_ms']:.1f}"
                         f" | {r['teacher_forward_ms']:.1f} | {r['overhead']:.3f} | {peak} |")
        lines.append("")
    if parts["torchrun"]:
        t = parts["torchrun"]
        lines += [f"## torchrun (one process, {t.get('backend', '?')})", "",
                  f"`{t['command']}`: exit {t['exit']}, {t['seconds']:.0f} s; "
                  f"summary: {json.dumps(t.get('summary'))}", ""]
    if parts["bench"]:
        from kaseg.engine.bench import format_bench

        lines += ["## kaseg bench", "", "```", format_bench(parts["bench"]["result"]), "```", ""]
    if parts["study"]:
        s = parts["study"]
        lines += [f"## study regime {s['regime']} ({s['size']} px, seeds {s['seeds']}, "
                  f"{s['minutes']:.1f} min)", "", "| arm | mIoU | Δ vs CE only [95% CI] |",
                  "|---|---:|---|"]
        for arm, r in s["rows"].items():
            d = r.get("delta")
            lines.append(f"| {arm} | {r['miou']:.2f} | " + (
                f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" if d else "") + " |")
        lines.append("")
    if parts["report"]:
        r = parts["report"]
        lines += ["## kaseg compare report", "", f"exit {r['exit']}, {r['seconds']:.0f} s; "
                  f"mIoU {json.dumps(r['rows'])}; costs {json.dumps(r['costs'])}; "
                  f"predictions.png: {r['pictures']}", ""]
    if record["missing"]:
        lines.append(f"Missing parts (failed or timed out): {', '.join(record['missing'])}.")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return record


def run_part(part: str, out: Path, dry: bool) -> int:
    """One part; its exit code."""
    if part == "amp":
        rec = amp_steps(out, dry)
        bad = [r for r in rec["rows"] if not r.get("finite") and "error" not in r]
        return 1 if bad else 0
    if part == "study":
        study_regime(out, dry)
        return 0
    if part == "bench":
        bench_part(out, dry)
        return 0
    if part == "report":
        return report_part(out, dry)["exit"]
    if part == "torchrun":
        return torchrun_part(out, dry)["exit"]
    rec = summarize(out)
    print((out / "gpu_check.md").read_text())
    return 1 if rec["missing"] else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("part", nargs="+", choices=["amp", "bench", "torchrun", "study", "report",
                                                "summarize"],
                    help="one or more parts, run in this order (one process: the dry run's "
                         "parts share its imports)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and args.part != ["summarize"] and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    worst = 0
    for part in args.part:
        try:
            worst = max(worst, run_part(part, out, args.dry_run))
        except Exception as e:  # the other parts still run; summarize lists this one missing
            print(f"gpu_check: {part} failed: {type(e).__name__}: {e}", file=sys.stderr)
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
