"""The README says what the code has: every module in its Layout, every command it shows in the
command line's own parser."""

import re
from pathlib import Path

from kaseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_layout_is_one_line_per_subpackage_naming_every_module():
    layout = README[README.index("## Layout"):]
    block = layout[layout.index("```\n") + 4:layout.index("\n```", layout.index("```\n") + 4)]
    lines = {line.split()[0].rstrip(","): line for line in block.splitlines()}
    package = ROOT / "src" / "kaseg"
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
        line = lines.get(f"src/kaseg/{sub.name}/")
        assert line, f"README Layout has no line for src/kaseg/{sub.name}/"
        missing = [p.name for p in sorted(sub.glob("*.py"))
                   if p.name != "__init__.py" and p.name not in line]
        assert not missing, f"README Layout's line for {sub.name}/ lacks {missing}"
    top = " ".join(line for key, line in lines.items() if key.startswith("src/kaseg/") and
                   key.endswith(".py"))
    missing = [p.name for p in sorted(package.glob("*.py"))
               if p.name != "__init__.py" and p.name not in top]
    assert not missing, f"README Layout lacks {missing}"


def test_every_command_the_readme_shows_exists():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    known = set(sub.choices)
    shown = set(re.findall(r"(?:`|bin/|^)kaseg ([a-z][a-z-]+)", README, re.MULTILINE))
    assert shown - known - {"demo_out"} == set(), shown - known
    for name in ("compare", "demo", "study", "train", "distill", "train-ae", "predict"):
        assert name in shown


def test_the_evidence_table_is_generated_from_the_committed_results():
    """README's evidence table is tools/evidence_table.py's output from docs/results (a number
    there is never typed by hand), and its cells mark a resolved gain and only that."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evidence_table",
                                                  ROOT / "tools" / "evidence_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    readme = (ROOT / "README.md").read_text()
    assert tool.generated(readme) == readme
    assert tool.cell({"diff": {"n": 5, "mean": 0.46, "low": 0.33, "high": 0.59}}) == \
        "**+0.46 [+0.33, +0.59]**"
    assert tool.cell({"diff": {"n": 5, "mean": 0.14, "low": -0.004, "high": 0.27}}) == \
        "+0.14 [-0.00, +0.27]"
    assert tool.cell(None) == "" and tool.cell({"diff": {"n": 1, "mean": 1.0}}) == "+1.00 (1 seed)"
    assert "| scenes 96 px, CE-pretrained start, 2400 it | 5 | **+1.16 [+0.90, +1.42]** | " \
           "**+0.46 [+0.33, +0.59]** |" in readme


def test_the_readme_stays_under_300_lines():
    """What a stranger reads first: detail belongs in docs/ (README links each page)."""
    assert len(README.splitlines()) <= 300
    for page in re.findall(r"\]\((docs/[a-z_]+\.md)\)", README):
        assert (ROOT / page).is_file(), page
