"""What each distillation method adds to a training step: the step time, the peak GPU memory and
the training FLOPs of each arm of ``--arms field`` (CE only, logit KD, CWD, DIST, CIRKD, Af-DCD,
the method), each as built by ``kaseg compare`` from its registered config, beside CE only's.

    python benchmarks/term_cost.py [--pairs tiny paper] [--device auto] [--runs 10] [--amp]
        [--json FILE]

Defaults: the tiny pair at 96 px (batch 8, the demo) and the paper pair at 512 px (batch 8, the
paper's crop; on a CPU the paper pair runs at 128 px, batch 2, unless ``--paper-size`` says
otherwise). Each row is measured in one process, one arm after another on the same batch;
ratios are to CE only of the same pair. Peak memory is read on CUDA only (the allocator's
high-water mark over the timed steps); on a CPU the column says n/a.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace

import torch

from kaseg.compare.arms import ARM_GROUPS, arm_config
from kaseg.engine.bench import lockstep_iteration
from kaseg.nets.cost import median_seconds, train_step_flops
from kaseg.engine.experiment import load_config
from kaseg.engine.mask_stage import token_count
from kaseg.losses.maskd import ReceptiveTokens
from kaseg.losses.registry import needs_autoencoder, needs_masks
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model
from kaseg.core.runtime import resolve_device
from kaseg.engine.stages import distill_task

PAIRS = {"tiny": ("tiny-teacher", "tiny-student", 96, 8),
         "paper": ("paper-teacher", "paper-student", 512, 8)}
CLASSES = 19


def arm_task(arm: str, teacher, student_name: str):
    """The distillation task of a registered arm (its losses, weights and options), a fresh
    student of the same initial weights for every arm, and (for the method) a fresh encoder
    (for MasKD fresh tokens)."""
    cfg = load_config(None, [f"model.name={student_name}", f"teacher.name={teacher.spec.name}"])
    cfg = arm_config(cfg, arm, 0)
    torch.manual_seed(0)
    student = build_model(student_name, CLASSES)
    d = cfg.distill
    encoder, latent = torch.nn.Identity(), 1
    if needs_autoencoder(d.losses):
        ti, si = teacher.feature_info[cfg.teacher.tap], student.feature_info[d.student_tap]
        latent = max(1, ti.channels // 2)
        encoder = FeatureAutoencoder(ti.channels, latent,
                                     ae_strides(si.stride // ti.stride)).encoder
    # MasKD: untrained receptive tokens (the mask stage's cost is its own, once)
    masks = ReceptiveTokens(CLASSES, token_count(cfg.masks.tokens, CLASSES)) \
        if needs_masks(d.losses) else None
    return distill_task(replace(cfg, seed=0), student, teacher, encoder, latent, masks), d


def measure(arm: str, teacher, student_name: str, x, y, device, runs: int, amp: bool) -> dict:
    task, d = arm_task(arm, teacher, student_name)
    flops = train_step_flops(task, (x.cpu(), y.cpu()), device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(lockstep_iteration([task], itertools.repeat((x, y)), device, amp),
                             device, runs)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"arm": arm, "terms": list(d.losses) or ["ce"], "step_s": seconds,
            "peak_mib": peak, "gflops": flops / 1e9}


def run_pair(name: str, device, runs: int, amp: bool, paper_size: int | None) -> dict:
    t_name, s_name, size, batch = PAIRS[name]
    if name == "paper" and device.type != "cuda":
        size, batch = paper_size or 128, 2
    elif name == "paper" and paper_size:
        size = paper_size
    torch.manual_seed(0)
    teacher = build_model(t_name, CLASSES).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, CLASSES, (batch, size, size), generator=g)
    y[:, : size // 8] = 255  # some ignore pixels, as real labels have
    y = y.to(device)
    arms = [a for a in ARM_GROUPS["field"] if a != "ka_kd"]
    rows = [measure(a, teacher, s_name, x, y, device, runs, amp) for a in arms]
    return {"pair": [t_name, s_name], "size": size, "batch": batch, "device": str(device),
            "amp": amp, "rows": rows}


def format_pair(r: dict) -> str:
    base = r["rows"][0]
    lines = [f"{r['pair'][0]} -> {r['pair'][1]} at {r['size']} px, batch {r['batch']}, "
             f"{r['device']}{' (amp)' if r['amp'] else ''}",
             f"{'arm':<9} {'terms':<34} {'step ms':>8} {'x CE':>6} {'peak MiB':>9} {'x CE':>6} "
             f"{'GFLOPs':>8} {'x CE':>6}"]
    for row in r["rows"]:
        peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        peak_x = "n/a" if row["peak_mib"] is None else f"{row['peak_mib'] / base['peak_mib']:.2f}"
        lines.append(f"{row['arm']:<9} {'+'.join(row['terms']):<34} {1e3 * row['step_s']:>8.1f} "
                     f"{row['step_s'] / base['step_s']:>6.2f} {peak:>9} {peak_x:>6} "
                     f"{row['gflops']:>8.2f} {row['gflops'] / base['gflops']:>6.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--paper-size", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(resolve_device(args.device))
    results = []
    for pair in args.pairs:
        r = run_pair(pair, device, args.runs, args.amp, args.paper_size)
        results.append(r)
        print(format_pair(r), flush=True)
        print(flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
