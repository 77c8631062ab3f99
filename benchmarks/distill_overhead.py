"""(a) What the distillation terms themselves cost: distilled step time divided by (student step +
teacher forward). Goal: <= 1.15 (the adapters, the autoencoder's encoder and the two losses add at
most 15%).

    python benchmarks/distill_overhead.py [--pairs tiny paper] [--size 256 256] [--device auto]
                                          [--batch 4] [--runs 10] [--amp]

Prints one table row per pair; every ratio is measured within one process.
"""

from __future__ import annotations

import argparse

import torch

from kaseg.engine.bench import train_times
from kaseg.nets.models import build_model
from kaseg.core.runtime import resolve_device

PAIRS = {"tiny": ("tiny-teacher", "tiny-student"), "paper": ("paper-teacher", "paper-student")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="+", default=["tiny", "paper"], choices=list(PAIRS))
    ap.add_argument("--size", nargs=2, type=int, default=[256, 256])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--amp", action="store_true")
    args = ap.parse_args()
    device, size = resolve_device(args.device), tuple(args.size)
    print(f"{size[0]}x{size[1]}, batch {args.batch}, {device}{' amp' if args.amp else ''}")
    print(f"{'pair':<8} {'student ms':>10} {'teacher fwd ms':>14} {'distill ms':>10} "
          f"{'distill / (student + teacher)':>30} {'goal':>6}")
    for name in args.pairs:
        torch.manual_seed(0)
        t_name, s_name = PAIRS[name]
        r = train_times(build_model(t_name, 8), build_model(s_name, 8), size, device, args.batch,
                        args.runs, args.amp)
        base, tf, dist = r["student_step_s"], r["teacher_forward_s"], r["distill_step_s"]
        ratio = r["distill_overhead"]
        print(f"{name:<8} {1e3 * base:>10.1f} {1e3 * tf:>14.1f} {1e3 * dist:>10.1f} "
              f"{ratio:>30.3f} {'ok' if ratio <= 1.15 else 'MISSED':>6}")

if __name__ == "__main__":
    main()
