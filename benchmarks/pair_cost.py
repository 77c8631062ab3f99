"""(b) The paper's pair at 512 x 512: the student's FLOPs and CPU latency as a share of the
teacher's. Goals: FLOPs <= 8%, latency <= 10%.

    python benchmarks/pair_cost.py [--size 512 512] [--device cpu] [--runs 10]
"""

from __future__ import annotations

import argparse

import torch

from kaseg.nets.cost import count_flops, count_params, measure_latency
from kaseg.nets.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", default="paper-teacher")
    ap.add_argument("--student", default="paper-student")
    ap.add_argument("--size", nargs=2, type=int, default=[512, 512])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    size = tuple(args.size)
    torch.manual_seed(0)
    rows = {}
    for role, name in (("teacher", args.teacher), ("student", args.student)):
        net = build_model(name, 21)
        rows[role] = (name, count_params(net) / 1e6, count_flops(net, size) / 1e9,
                      measure_latency(net, size, args.device, runs=args.runs))
    print(f"{size[0]}x{size[1]}, batch 1, {args.device}, median of {args.runs} after warm-up")
    print(f"{'':<8} {'model':<16} {'params (M)':>10} {'GFLOPs':>8} {'latency ms':>11}")
    for role, (name, p, g, ms) in rows.items():
        print(f"{role:<8} {name:<16} {p:>10.2f} {g:>8.2f} {ms:>11.1f}")
    f = rows["student"][2] / rows["teacher"][2]
    lat = rows["student"][3] / rows["teacher"][3]
    print(f"student / teacher: FLOPs {100 * f:.1f}% (goal <= 8%: {'ok' if f <= 0.08 else 'MISSED'})"
          f", latency {100 * lat:.1f}% (goal <= 10%: {'ok' if lat <= 0.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
