"""What a pool of views costs in quality: CE only and KD trained with live augmentation against
the same arms trained from teacher caches of V views per image (float16), and one pool in
float32 (the float16 rounding alone), each a `kaseg compare` on the same paired seeds, shared
teacher and shared start. Prints each condition's mIoU, its paired difference from live
augmentation (95% CI) and KD's gain over CE only inside it, and the smallest pool whose
difference from live includes 0 for both arms.

    python benchmarks/teacher_cache_pool.py --out runs_pool \\
        --teacher cmp_folder_field/teacher --init cmp_folder_field/init/last.safetensors

Each comparison resumes where it stopped; one at a time (one torch job on these cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from kaseg.core.stats import paired, summarize, verdict

ARMS = ("baseline", "kd_t2")


def conditions(views: list[int], fp32: int | None) -> dict[str, str | None]:
    """``{name: distill.teacher_cache override or None (live)}``."""
    out: dict[str, str | None] = {"live": None}
    for v in views:
        out[f"pool {v}"] = f"distill.teacher_cache={{views: {v}}}"
    if fp32:
        out[f"pool {fp32}, float32"] = f"distill.teacher_cache={{views: {fp32}, dtype: float32}}"
    return out


def run(args, name: str, override: str | None) -> Path:
    out = args.out / name.replace(" ", "_").replace(",", "")
    cmd = [sys.executable, "-m", "kaseg", "compare", "--config", args.config, "--out", str(out),
           "--arms", *ARMS, "--seeds", str(args.seeds), "--weight-scales", "1",
           "--init-iters", "0", f"teacher.weights={args.teacher}",
           f"model.init_weights={args.init}"] + ([override] if override else [])
    if not (out / "results.json").exists() or args.rerun:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return out / "results.json"


def values(path: Path) -> dict[str, dict[int, float]]:
    return {r["arm"]: dict(zip(r["seeds"], r["values"]))
            for r in json.loads(path.read_text())["rows"]}


def fmt(d) -> str:
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def table(results: dict[str, Path]) -> list[str]:
    live = values(results["live"])
    lines = ["| condition | CE only mIoU | KD mIoU | CE only Δ vs live [95% CI] | "
             "KD Δ vs live [95% CI] | KD - CE only [95% CI] |",
             "| --- | ---: | ---: | --- | --- | --- |"]
    smallest = None
    for name, path in results.items():
        got = values(path)
        cells, holds = [], True
        for arm in ARMS:
            s = summarize(list(got[arm].values()))
            cells.append(f"{s.mean:.2f} ± {s.sd:.2f}")
        for arm in ARMS:
            if name == "live":
                cells.append("")
                continue
            d = paired(got[arm], live[arm])
            holds = holds and d.low <= 0 <= d.high
            cells.append(f"{fmt(d)} ({verdict(d)})")
        cells.append(fmt(paired(got["kd_t2"], got["baseline"])))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if name.startswith("pool") and "float32" not in name and holds and smallest is None:
            smallest = name
    lines += ["", *precision_lines(results)]
    lines.append("")
    lines.append(f"Smallest float16 pool whose paired difference from live includes 0 for both "
                 f"arms: {smallest or 'none of those measured'}.")
    return lines


def precision_lines(results: dict[str, Path]) -> list[str]:
    """float16 against float32 at the same pool: the stored outputs' rounding alone (CE only
    reads none of them, so its difference is exactly 0)."""
    out = []
    for name in results:
        if name.endswith("float32"):
            half = name.replace(", float32", "")
            a, b = values(results[half]), values(results[name])
            out.append(f"{half}, float16 - float32: " + "; ".join(
                f"{arm} {fmt(paired(a[arm], b[arm]))}" for arm in ARMS) + ".")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/compare_folder.yaml")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--teacher", required=True, help="the shared teacher (a run folder)")
    p.add_argument("--init", required=True, help="the shared start (.safetensors)")
    p.add_argument("--views", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--fp32", type=int, default=16, help="this pool also in float32 (0: no)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rerun", action="store_true")
    args = p.parse_args()
    results = {name: run(args, name, o) for name, o in conditions(args.views, args.fp32).items()}
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
