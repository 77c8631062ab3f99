"""The package's shape: subpackages in layers, every import (lazy ones counted) running down the
layers, no import circle between modules, and the paths of release 0.1.0 still importable."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "kaseg"
# top to bottom: a module may import its own layer's and any lower layer's modules
LAYERS = [["cli", "api", "__main__"], ["presets"], ["compare"], ["engine"], ["losses"], ["nets"],
          ["data"], ["core", "__init__"]]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kaseg modules ``name`` imports anywhere in its file (inside functions too)."""
    package = name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:  # `from . import x` may name a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in known else (target or "__init__"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kaseg"):
            found.add(node.module[len("kaseg."):] if node.module != "kaseg" else "__init__")
    return {m if m in known else f"{m}.__init__" for m in found if m and m != name}


def _layer(name: str) -> int:
    head = name.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if head in layer)


def test_the_top_of_the_package_is_a_few_subpackages_and_the_entry_points():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert entries == ["__init__.py", "__main__.py", "api.py", "cli.py", "compare", "core",
                       "data", "engine", "losses", "nets", "presets", "py.typed"]


def test_every_import_runs_down_the_layers_and_none_makes_a_circle():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    upward = [(a, b) for a, deps in graph.items() for b in deps
              if b in modules and _layer(b) < _layer(a)]
    assert not upward, f"imports that run up the layers: {upward}"
    # no circle: a depth-first walk finds no module on its own path
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError(f"import circle: {' -> '.join(path + [node, dep])}")
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_module_takes_a_private_name_from_another_subpackage():
    """A subpackage's ``_names`` are its own: another one imports only its public names."""
    found = []
    for name, path in _modules().items():
        home = name.split(".")[0]
        package = name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package[: len(package) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target and target[0] != home:
                found += [f"{name}: {alias.name} from {'.'.join(target)}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []


def test_an_old_import_path_still_works_with_a_deprecation_warning():
    """In a fresh interpreter (nothing imported yet): each path of release 0.1.0 warns, names
    the new one, and is the very module at the new path."""
    moved = {"kaseg.config": "kaseg.core.config", "kaseg.models": "kaseg.nets.models",
             "kaseg.kd_losses": "kaseg.losses.registry", "kaseg.stages": "kaseg.engine.stages",
             "kaseg.fewlabels": "kaseg.presets.limited_labels"}
    code = ["import importlib, warnings"]
    for old, new in moved.items():
        code += [f"with warnings.catch_warnings(record=True) as seen:",
                 f"    warnings.simplefilter('always')",
                 f"    old = importlib.import_module('{old}')",
                 f"print('warned:', *[str(w.message) for w in seen if w.category is DeprecationWarning])",
                 f"now = importlib.import_module('{new}')",
                 f"assert old is now and now.__spec__.name == '{new}', (old, now.__spec__)"]
    out = subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for old, new in moved.items():
        assert f"warned: {old} moved to {new}; the old path goes in the next release" in out.stdout


def test_an_old_class_name_still_works_with_a_deprecation_warning():
    """0.1.0's names for a run (``Job``, ``DistillRun``, ``Stage``) are the classes now called
    ``TrainingRun``, ``PreparedRun`` and ``PlannedRun``, with a warning; a misspelt name is still
    an AttributeError."""
    import importlib
    import warnings

    import pytest

    for module, old, new in [("kaseg.engine.train", "Job", "TrainingRun"),
                             ("kaseg.engine.stages", "DistillRun", "PreparedRun"),
                             ("kaseg.compare.runner", "Stage", "PlannedRun")]:
        m = importlib.import_module(module)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert getattr(m, old) is getattr(m, new)
        assert [str(w.message) for w in seen if w.category is DeprecationWarning] == [
            f"{module}.{old} is now {module}.{new}; the old name goes in the next release"]
        with pytest.raises(AttributeError, match="has no attribute 'Jobb'"):
            getattr(m, "Jobb")


# words retired for one name per idea (docs/words.md lists them with the names that replaced
# them): none comes back in the code or the docs, save where an old name is upgraded (a line
# that says 0.1.0 or RENAMED) and in reports kept as they were produced (a generated section,
# or a report's table row: one with an arm's key in a cell)
RETIRED = {r"\bfew[ -]labels?\b": "limited labels", r"\brungs?\b": "regime(s) of a ladder",
           r"\b(Job|DistillRun)\b": "TrainingRun / PreparedRun", r"\bStage\(": "PlannedRun",
           r"\bdistill_scale\b": "warmup_factor", r"\+ both \(the method\)": "the method"}


def _prose(path: Path) -> str:
    """A file without its generated report sections (``<!-- results:NAME:begin -->`` ...)."""
    import re

    return re.sub(r"<!-- results:(\w+):begin -->.*?<!-- results:\1:end -->", "",
                  path.read_text(), flags=re.S)


def test_no_retired_word_comes_back():
    import re

    root = PACKAGE.parents[1]
    files = [*PACKAGE.rglob("*.py"), root / "README.md", *(root / "docs").glob("*.md"),
             *(root / "tools").glob("*.py"), *(root / "benchmarks").glob("*.py"),
             *(root / "configs").glob("*.yaml")]
    found = []
    for path in files:
        if path.name == "words.md":
            continue
        for n, line in enumerate(_prose(path).splitlines(), 1):
            if "0.1.0" in line or "RENAMED" in line or re.search(r"\| `[a-z0-9_]+` \|", line):
                continue
            found += [f"{path.relative_to(root)}: {line.strip()[:80]} (say: {now})"
                      for old, now in RETIRED.items() if re.search(old, line)]
    assert found == []


def test_the_tests_mirror_the_package():
    """``tests/SUB/test_NAME.py`` tests ``src/kaseg/SUB/NAME.py`` (a test that spans a
    subpackage's modules says so by a name that is no module's: listed here)."""
    tests = PACKAGE.parents[1] / "tests"
    spans = {"engine/test_distill_unlabeled.py"}  # distillation with unlabelled images: stages,
    # tasks and data together
    stray = [str(t.relative_to(tests)) for t in tests.glob("*/test_*.py")
             if str(t.relative_to(tests)) not in spans
             and not (PACKAGE / t.parent.name / f"{t.stem[len('test_'):]}.py").exists()]
    assert stray == []
    top = sorted(t.name for t in tests.glob("test_*.py"))
    assert top == ["test_api.py", "test_bad_inputs.py", "test_cli.py", "test_gpu_check.py",
                   "test_layout.py", "test_readme.py"]


def test_no_function_is_longer_than_50_lines():
    """A function a newcomer reads in one screen: over 50 lines, split it (data tables are
    module-level constants, not functions)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 50:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines})")
    assert not long, long


def test_every_flop_is_counted_by_kasegs_counter():
    """torch's own FlopCounterMode counts a grouped convolution's weight gradient once per
    group (a depthwise 3x3 of 32 channels: 32x): only kaseg.nets.cost, which wraps it with the
    right formula, may open it; src/, benchmarks/ and tools/ count through flop_counter()."""
    root = Path(__file__).resolve().parents[1]
    allowed = root / "src/kaseg/nets/cost.py"
    offenders = []
    for folder in ("src", "benchmarks", "tools"):
        for path in sorted((root / folder).rglob("*.py")):
            if path == allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                elif isinstance(node, ast.Attribute):
                    names = [node.attr]
                if any(n and ("FlopCounterMode" in n or n.endswith("flop_counter") and
                              n.startswith("torch")) for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"torch's FLOP counter opened directly: {offenders}"
