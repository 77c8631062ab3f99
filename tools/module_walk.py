"""How often walking one ``kaseg distill`` config through the code re-enters a module.

Runs ``kaseg distill`` on a tiny built-in config (teacher and autoencoder trained first, not
counted) and records, from reading the config to the first training step, the kaseg module of
every function called with the config or one of its sections among its arguments (a profile
hook): the path the config takes. Consecutive calls in one module are one visit; a visit to a
module already visited and left is a re-entry. Prints the re-entries per module and in total,
and the walk itself with --walk.

    python tools/module_walk.py [--walk]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=32", "data.crop_size=32", "data.train_count=8", "data.val_count=2",
        "train.iters=1", "train.val_every=1", "train.batch_size=2", "train.val_batch_size=2",
        "train.device=cpu", "teacher.iters=1", "ae.epochs=0.5", "ae.min_iters=0"]


class Stop(Exception):
    pass


def walk(out: Path) -> list[str]:
    from kaseg.cli import main
    from kaseg.engine import train

    config = str(ROOT / "configs" / "synthetic_pipeline.yaml")
    assert main(["train", "--config", config, "--out", str(out / "t"), *TINY,
                 "model.name=tiny-teacher"]) == 0
    assert main(["train-ae", "--config", config, "--out", str(out / "ae"), *TINY,
                 f"teacher.weights={out / 't'}"]) == 0
    visits: list[str] = []

    from dataclasses import fields, is_dataclass

    from kaseg.core.config import Config

    sections = (Config, *(type(f.default_factory()) for f in fields(Config)
                          if f.default_factory is not None and is_dataclass(f.default_factory)))

    def hook(frame, event, arg):
        if event != "call":
            return
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("kaseg."):
            return
        code = frame.f_code
        args = [frame.f_locals.get(v) for v in code.co_varnames[:code.co_argcount +
                                                                code.co_kwonlyargcount]]
        if any(isinstance(a, sections) for a in args) and (not visits or visits[-1] != name):
            visits.append(name)

    def stop(*args, **kwargs):
        raise Stop

    train_fit, train.fit = train.fit, stop
    import kaseg.engine.stages as stages
    stages_fit, stages.fit = stages.fit, stop
    sys.setprofile(hook)
    try:
        main(["distill", "--config", config, "--out", str(out / "d"), *TINY,
              f"teacher.weights={out / 't'}", f"ae.weights={out / 'ae'}"])
    except Stop:
        pass
    finally:
        sys.setprofile(None)
        train.fit, stages.fit = train_fit, stages_fit
    return visits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--walk", action="store_true", help="print the walk, one visit a line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        visits = walk(Path(tmp))
    seen, again = set(), collections.Counter()
    for name in visits:
        if name in seen:
            again[name] += 1
        seen.add(name)
    if args.walk:
        print("\n".join(visits))
    print(f"{len(visits)} visits to {len(seen)} modules; {sum(again.values())} re-entries")
    for name, n in again.most_common():
        print(f"  {name:<28} {n}")


if __name__ == "__main__":
    main()
