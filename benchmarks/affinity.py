"""Affinity loss, dense (m x m matrices) vs Gram form (C x C matrices): time and peak memory of
forward + backward, measured in one run, and their relative difference; then, for maps that nearly
agree (student = teacher + a small perturbation, as late in training), each float32 form's relative
error against a float64 reference.

    python benchmarks/affinity.py [--json] [--device cpu|cuda] [--reduction mse|paper] [--repeats N]

Peak memory: on GPU, CUDA's allocator peak above what was allocated before the step; on CPU (Linux), the
rise of the peak resident set size over one step (VmHWM, reset through /proc/self/clear_refs just
before it), in a fresh subprocess per measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from kaseg.losses.method import affinity_loss_dense
from kaseg.losses.gram import affinity_loss_gram


def run(fn, fs, ft, reduction, device, repeats):
    """-> (median ms of forward + backward, peak MB, loss value)."""

    def step() -> float:
        a, b = fs.clone().requires_grad_(), ft.clone().requires_grad_()
        loss = fn(a, b, reduction)
        loss.backward()
        return loss.item()

    value = step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = cpu_peak(fn.__name__, tuple(fs.shape), reduction)
    return sorted(times)[len(times) // 2] * 1e3, peak / 2**20, value


def cpu_peak(fn_name: str, shape: tuple, reduction: str) -> int:
    """Peak RSS rise (bytes) of one forward + backward, measured in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--_child", fn_name, reduction,
                          *map(str, shape)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _child(fn_name: str, reduction: str, *shape: str) -> None:
    fn = {"affinity_loss_dense": affinity_loss_dense, "affinity_loss_gram": affinity_loss_gram}[fn_name]
    torch.manual_seed(0)
    a = torch.randn(*map(int, shape), requires_grad=True)
    b = torch.randn(*map(int, shape), requires_grad=True)
    fn(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), reduction)  # load kernels first
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak RSS (VmHWM) to now
        f.write("5")
    before = _status_kib("VmRSS")
    fn(a, b, reduction).backward()
    print((_status_kib("VmHWM") - before) * 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return _child(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reduction", default="paper", choices=["mse", "paper", "element"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="32,64,97", help="map sides: m = side^2 (97^2 = 9409)")
    ap.add_argument("--channels", default="64,256")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if not args.json:
        print(f"{'m':>6} {'C':>4} {'dense ms':>9} {'gram ms':>8} {'dense MB':>9} {'gram MB':>8} "
              f"{'mem ratio':>9} {'rel diff':>9}")
    for side in (int(s) for s in args.sizes.split(",")):
        for c in (int(x) for x in args.channels.split(",")):
            fs = torch.randn(1, c, side, side, device=device)
            ft = torch.randn(1, c, side, side, device=device)
            d_ms, d_mb, d_val = run(affinity_loss_dense, fs, ft, args.reduction, device, args.repeats)
            g_ms, g_mb, g_val = run(affinity_loss_gram, fs, ft, args.reduction, device, args.repeats)
            row = {"m": side * side, "c": c, "dense_ms": round(d_ms, 2), "gram_ms": round(g_ms, 2),
                   "dense_peak_mb": round(d_mb, 2), "gram_peak_mb": round(g_mb, 2),
                   "rel_diff": abs(g_val - d_val) / abs(d_val), "reduction": args.reduction,
                   "device": str(device)}
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{row['m']:>6} {c:>4} {d_ms:>9.1f} {g_ms:>8.1f} {d_mb:>9.1f} {g_mb:>8.1f} "
                      f"{d_mb / max(g_mb, 1e-9):>8.1f}x {row['rel_diff']:>9.1e}")
    near_agreement(args, device)


def near_agreement(args, device, c: int = 16, side: int = 48) -> None:
    """Relative error of the float32 dense and Gram forms against float64, for a student map
    equal to the teacher's plus a per-element perturbation of the given size."""
    if not args.json:
        print(f"\nnear agreement (C = {c}, m = {side * side}, {args.reduction}): relative error "
              "against float64")
        print(f"{'perturbation':>12} {'dense f32':>10} {'gram f32':>10}")
    for eps in (1e-1, 1e-2, 1e-3):
        g = torch.Generator().manual_seed(1)
        ft = torch.randn(2, c, side, side, generator=g, dtype=torch.float64)
        fs = ft + eps * torch.randn(ft.shape, generator=g, dtype=torch.float64)
        ref = affinity_loss_dense(fs, ft, args.reduction).item()
        f32 = [fn(fs.float().to(device), ft.float().to(device), args.reduction).item()
               for fn in (affinity_loss_dense, affinity_loss_gram)]
        errs = [abs(v - ref) / abs(ref) for v in f32]
        if args.json:
            print(json.dumps({"near_agreement": eps, "c": c, "m": side * side,
                              "dense_rel_err": errs[0], "gram_rel_err": errs[1],
                              "reduction": args.reduction, "device": str(device)}))
        else:
            print(f"{eps:>12.0e} {errs[0]:>10.1e} {errs[1]:>10.1e}")


if __name__ == "__main__":
    main()
