"""The README says what the code has: every module in its Layout, every command it shows in the
command line's own parser."""

import re
from pathlib import Path

from kaseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_layout_lists_every_module():
    layout = README[README.index("## Layout"):]
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src" / "kaseg").rglob("*.py")
                     if p.name != "__init__.py")
    missing = [m for m in modules if m not in layout]
    assert not missing, f"README Layout lacks {missing}"


def test_every_command_the_readme_shows_exists():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    known = set(sub.choices)
    shown = set(re.findall(r"(?:`|bin/|^)kaseg ([a-z][a-z-]+)", README, re.MULTILINE))
    assert shown - known - {"demo_out"} == set(), shown - known
    for name in ("compare", "demo", "study", "train", "distill", "train-ae", "predict"):
        assert name in shown
