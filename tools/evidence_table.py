"""The README's evidence table, generated from the committed results (never typed by hand): each
regime (one of `kaseg study`, or a `kaseg compare` of a folder set) x KD, the method, the
method + KD, the untrained-encoder control and CE only trained for the costliest arm's FLOPs: the paired
difference to CE only (mIoU points) with its 95% interval, bold where the interval lies above 0.

    python tools/evidence_table.py           # rewrite README.md between the evidence:table markers
    python tools/evidence_table.py --check   # exit 1 when README.md's table is not this output

Below the table, between the evidence:frontier markers: each committed frontier's verdict (a
`kaseg compare --budgets` report's, in its own words and accounting).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = "docs/results/study_field.json"  # every regime of the study, each with its commit
COMPARISONS = {"folder set (112 images), field methods tuned": "docs/results/field_folder_results.json"}
COLUMNS = [("kd_t2", "KD"), ("ka", "the method"), ("ka_kd", "the method + KD"),
           ("ctrl_random_ae", "control: untrained encoder"), ("ce_matched", "CE, costliest arm's FLOPs")]
BEGIN, END = "<!-- evidence:table -->", "<!-- /evidence:table -->"
# the frontiers (``kaseg compare --budgets``) whose verdict README states, by label
FRONTIERS = {"the folder set": "docs/results/frontier_folder_results.json",
             "the folder set up to budget 9, the arms that won at 3 and KD":
                 "docs/results/frontier_folder_b9_results.json",
             "the scenes with 64 labels + 960 unlabelled, KD only":
                 "docs/results/frontier_limited_labels_regime.json"}
F_BEGIN, F_END = "<!-- evidence:frontier -->", "<!-- /evidence:frontier -->"


def cell(row: dict | None) -> str:
    """``+0.46 [+0.33, +0.59]``, bold when the interval lies above 0; n/a with one seed."""
    if row is None or "diff" not in row:
        return ""
    d = row["diff"]
    if d["n"] < 2:
        return f"{d['mean']:+.2f} (1 seed)"
    text = f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
    return f"**{text}**" if d["low"] > 0 else text


def regime_label(reg: dict) -> str:
    """What a study regime trains, in words."""
    start = "64 labels + 960 unlabelled" if reg.get("labeled_count") else (
        "CE-pretrained start" if reg.get("pretrained") else "from scratch")
    field = ", the field's methods" if reg["name"].endswith("-field") else ""
    return f"scenes {reg['size']} px, {start}, {reg['iters']} it{field}"


def table_rows(root: Path = ROOT) -> list[tuple[str, str, int, dict]]:
    """(regime, source and commit, seeds, {arm: row}) per regime, in the study's order."""
    out = []
    from kaseg.presets.study import upgrade_record  # the regimes under today's names

    for reg in map(upgrade_record, json.loads((root / STUDY).read_text())):
        rows = {r["arm"]: r for r in reg["rows"]}
        n = max((r["diff"]["n"] for r in reg["rows"] if "diff" in r), default=0)
        out.append((regime_label(reg), f"`{reg['name']}`, {reg['code']}", n, rows))
    for label, path in COMPARISONS.items():
        res = json.loads((root / path).read_text())
        rows = {r["arm"]: r for r in res["rows"]}
        n = max((r["diff"]["n"] for r in res["rows"] if "diff" in r), default=0)
        out.append((label, f"`{Path(path).name}`, {res['code']}", n, rows))
    return out


def table(root: Path = ROOT) -> str:
    head = ["regime", "n", *[name for _, name in COLUMNS], "source"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | ---: | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]
    for label, source, n, rows in table_rows(root):
        lines.append(f"| {label} | {n} | " + " | ".join(cell(rows.get(arm)) for arm, _ in COLUMNS)
                     + f" | {source} |")
    return "\n".join(lines)


def frontiers(root: Path = ROOT) -> str:
    """Each committed frontier's verdict in its accounting, with its seeds, budgets, source and
    commit (the report's own sentences: :func:`kaseg.compare.frontier.verdict_sentences`)."""
    from kaseg.compare.arms import ARMS
    from kaseg.compare.frontier import ACCOUNTINGS, verdict_sentences

    labels = {name: arm.label for name, arm in ARMS.items()}
    out = []
    for label, path in FRONTIERS.items():
        if not (root / path).is_file():
            continue
        res = json.loads((root / path).read_text())
        fr = res["frontier"]
        n = max((len(p["seeds"]) for p in fr["points"]), default=0)
        out.append(f"**Which method at my compute, on {label}** (budgets "
                   f"{', '.join(f'{b:g}' for b in fr['budgets'])} x {fr['iters']} iterations, "
                   f"up to {n} paired seeds, by {ACCOUNTINGS[fr['accounting']]}; "
                   f"`{Path(path).name}`, {res['code']}): " +
                   " ".join(verdict_sentences(fr, fr["accounting"], labels)))
    return "\n\n".join(out)


def with_table(readme: str, body: str, begin: str = BEGIN, end: str = END) -> str:
    if begin not in readme or end not in readme:
        raise SystemExit(f"README.md lacks the {begin} ... {end} markers")
    head, rest = readme.split(begin, 1)
    return head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def generated(readme: str, root: Path = ROOT) -> str:
    """README with its evidence table and frontier verdicts as the committed results give."""
    return with_table(with_table(readme, table(root)), frontiers(root), F_BEGIN, F_END)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = generated(old)
    if args.check:
        if new != old:
            print("README.md's evidence table or frontier lines are not "
                  "tools/evidence_table.py's output",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
