"""What a change of code moved: two `results.json` of the same comparison (same config, arms
and seeds; the earlier one e.g. from git), each arm's mIoU paired seed by seed, new - old, with
its 95% interval. A seed pairs the same student init, data order and augmentation in both, so
an arm whose code did not change reads 0 exactly.

    python tools/results_diff.py OLD_RESULTS_JSON NEW_RESULTS_JSON
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kaseg.core.stats import paired, summarize, verdict


def values(path: Path) -> dict[str, dict[int, float]]:
    """``{arm: {seed: mIoU %}}`` of a comparison's results."""
    out: dict[str, dict[int, float]] = {}
    for r in json.loads(path.read_text())["rows"]:
        out[r["arm"]] = dict(zip(r["seeds"], r["values"]))
    return out


def table(old: Path, new: Path) -> list[str]:
    a, b = values(old), values(new)
    lines = ["| arm | n | old mIoU | new mIoU | paired Δ new - old | 95% CI | verdict |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for arm in [k for k in b if k in a]:
        seeds = sorted(set(a[arm]) & set(b[arm]))
        if not seeds:
            continue
        d = paired({s: b[arm][s] for s in seeds}, {s: a[arm][s] for s in seeds})
        mo = summarize([a[arm][s] for s in seeds]).mean
        mn = summarize([b[arm][s] for s in seeds]).mean
        ci = f"[{d.low:+.2f}, {d.high:+.2f}]" if d.n > 1 else ""
        said = verdict(d).replace("better", "higher").replace("worse", "lower")
        if all(a[arm][s] == b[arm][s] for s in seeds):
            said = "identical"
        lines.append(f"| `{arm}` | {d.n} | {mo:.2f} | {mn:.2f} | {d.mean:+.2f} | {ci} | {said} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args()
    print("\n".join(table(args.old, args.new)))


if __name__ == "__main__":
    main()
