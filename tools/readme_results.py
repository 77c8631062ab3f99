"""Copy the results sections of docs/evidence.md from the reports that produced them, so that every
number the docs quote from the demo or the study is what the code wrote (with its command and
commit, which each report states in its first lines).

    python tools/readme_results.py [--demo demo_out] [--study study_out] [--ladder DIR]
                                   [--compare DIR] [--field DIR] [--frontier DIR]
                                   [--frontier-long DIR] [--limited-frontier DIR]
                                   [--into docs/evidence.md]

Sections: ``demo`` (DEMO/report.md), ``limited`` (DEMO/limited-labels/report.md, from
``kaseg demo --limited-labels``), ``study`` (STUDY/study.md), ``ladder`` (LADDER/study.md, a
``kaseg study --regimes ...`` of the schedule ladders' regimes), ``compare`` (COMPARE/report.md,
from ``kaseg compare --config configs/compare_folder.yaml``), ``field`` (FIELD/report.md, the
same with ``--arms field --controls``), ``frontier`` (FRONTIER/report.md, the same with
``--budgets``), ``frontier_long`` (the frontier section of FRONTIER_LONG/report.md: the folder
set's longest budget, for the arms that won below it) and ``limited_frontier`` (the
limited-labels 600-iteration regime's section of LIMITED_FRONTIER/study.md, a ``kaseg study ...
--budgets``).

Each report replaces the text between ``<!-- results:NAME:begin -->`` and
``<!-- results:NAME:end -->``; its title becomes a bold line and its headings move one level down.
A report that does not exist leaves its section as it is. The ``compare`` and ``study``
sections were superseded by later runs and live in docs/results/history.md (``--into`` it).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def demote(markdown: str) -> str:
    """The report's H1 title -> a bold line; its other headings one level deeper."""
    lines = []
    for line in markdown.splitlines():
        if line.startswith("# "):
            lines.append(f"**{line[2:].strip()}**")
        elif line.startswith("#"):
            lines.append("#" + line)
        else:
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


def relative_paths(markdown: str, root: Path) -> str:
    """Paths inside the checkout that produced a report, shown relative to it: the commands stay
    runnable from any clone, and no machine's folders end up in the docs."""
    return markdown.replace(str(root.resolve()) + "/", "")


def report_section(report_md: str, heading: str) -> str:
    """A report's provenance line and its section whose heading starts with ``heading`` (up to
    the next heading of that level): a study's regime (its others are reused records, reported
    elsewhere), or a comparison's frontier alone."""
    lines = report_md.splitlines()
    head = next((ln for ln in lines if ln.startswith("Produced by")), "")
    level = heading.split(" ", 1)[0] + " "
    start = next(i for i, ln in enumerate(lines) if ln.startswith(heading))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)),
               len(lines))
    return "\n".join([head, "", *lines[start:end]]).strip() + "\n"


def replace_section(readme: str, name: str, body: str) -> str:
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"no {begin} ... {end} section to fill")
    return pattern.sub(lambda _: f"{begin}\n{body}{end}", readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", default="demo_out")
    ap.add_argument("--study", default="study_out")
    ap.add_argument("--ladder", default="study_ladder",
                    help="a `kaseg study` folder of the schedule ladders' regimes")
    ap.add_argument("--compare", default="cmp_folder",
                    help="a `kaseg compare` folder (configs/compare_folder.yaml's)")
    ap.add_argument("--field", default="cmp_folder_field",
                    help="a `kaseg compare ... --arms field --controls` folder (the folder set's)")
    ap.add_argument("--frontier", default="cmp_folder_frontier",
                    help="a `kaseg compare ... --budgets` folder (the folder set's frontier)")
    ap.add_argument("--frontier-long", default="cmp_folder_b9",
                    help="a `kaseg compare ... --budgets` folder of the folder set's longest "
                         "budget (its frontier section only)")
    ap.add_argument("--limited-frontier", default="study_frontier",
                    help="a `kaseg study --regimes 96px-limited-labels-600 --budgets ...` folder")
    ap.add_argument("--into", "--readme", dest="readme", default="docs/evidence.md",
                    help="the file whose results sections are replaced")
    args = ap.parse_args()
    readme_path = Path(args.readme)
    text = readme_path.read_text()
    for name, report in (("demo", Path(args.demo) / "report.md"),
                         ("limited", Path(args.demo) / "limited-labels" / "report.md"),
                         ("study", Path(args.study) / "study.md"),
                         ("ladder", Path(args.ladder) / "study.md"),
                         ("compare", Path(args.compare) / "report.md"),
                         ("field", Path(args.field) / "report.md"),
                         ("frontier", Path(args.frontier) / "report.md")):
        if report.is_file():
            body = relative_paths(demote(report.read_text()), Path(__file__).resolve().parents[1])
            text = replace_section(text, name, body)
            print(f"{name}: {report}")
    for name, report, heading in (
            ("frontier_long", Path(args.frontier_long) / "report.md",
             "## Which method at my compute?"),
            ("limited_frontier", Path(args.limited_frontier) / "study.md",
             "## 96px-limited-labels-600:")):
        if report.is_file():
            body = report_section(report.read_text(), heading)
            body = relative_paths(demote(body), Path(__file__).resolve().parents[1])
            text = replace_section(text, name, body)
            print(f"{name}: {report}")
    readme_path.write_text(text)


if __name__ == "__main__":
    main()
