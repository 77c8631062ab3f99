"""What a teacher cache saves, measured on real training (the folder config, its data, a trained
teacher and shared start): seconds per iteration of a run trained alone (CE only, KD T = 2) with
the live teacher and from a cache, and of one seed's lockstep group of the field's arms, live
and cached; the cache's one-off cost (its build) beside them.

    python benchmarks/teacher_cache.py --teacher cmp_folder_field/teacher \\
        --init cmp_folder_field/init/last.safetensors --ae cmp_folder_field/ae [--iters 60]

Timed: the training loop alone (loading, augmentation or the cache's re-cut views and stored
outputs, every step), validation and export left out. Goal (issue 42): KD from the cache at
most 1.2x CE only's seconds per iteration. Ratios are from one run of this script.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from kaseg.compare.arms import ARM_GROUPS, arm_config
from kaseg.engine.experiment import load_config
from kaseg.engine.stages import cache_teacher, prepare_distill
from kaseg.engine.tasks import share_frozen, unshare_frozen
from kaseg.engine.train import TrainingRun, fit_lockstep


def configs(args, arms: list[str], cache: dict | None) -> list:
    base = load_config(args.config, [f"teacher.weights={args.teacher}",
                                     f"model.init_weights={args.init}", f"ae.weights={args.ae}",
                                     f"train.iters={2 * args.iters}",
                                     "train.device=cpu"])
    out = []
    for arm in arms:
        c = arm_config(base, arm, seed=0)
        out.append(replace(c, distill=replace(c.distill, teacher_cache=cache)))
    return out


def seconds_per_iter(cfgs: list, folder: Path, warmup: int) -> float:
    """One lockstep group of ``cfgs`` (one run: trained alone), training only: ``warmup``
    iterations, then as many timed, between the last run's two "validations" (a time stamp and
    a checkpoint, after each half): the loader's start, TensorBoard's and the first steps left
    out."""
    prepared = [prepare_distill(c, folder / str(i)) for i, c in enumerate(cfgs)]
    tasks = [p.task for p in prepared]
    share_frozen(tasks)
    stamps: list[float] = []

    def stamp() -> dict:
        stamps.append(time.perf_counter())
        return {"miou": 0.0}

    train = replace(cfgs[0].train, val_every=warmup, iters=2 * warmup)
    runs = [TrainingRun(p.task, p.folder, stamp, lambda which: None, desc=f"run {i}",
                        rng=p.rng, cfg=train) for i, p in enumerate(prepared)]
    for p in prepared:
        p.folder.mkdir(parents=True, exist_ok=True)
    fit_lockstep(runs, prepared[0].train_set, train, seed=0, desc="timing")
    unshare_frozen(tasks)
    k = len(runs)
    return (stamps[-1] - stamps[k - 1]) / (train.iters - warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/compare_folder.yaml")
    p.add_argument("--teacher", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--ae", required=True, help="the method's trained autoencoder (field arms)")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--iters", type=int, default=60,
                   help="timed iterations, after as many untimed ones")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kaseg-cache-bench-"))
    field = list(ARM_GROUPS["field"])
    cache = {"views": args.views, "path": str(tmp / "cache")}
    t0 = time.perf_counter()
    meta = cache_teacher(replace(configs(args, field, cache)[0], distill=replace(
        configs(args, field, cache)[0].distill, teacher_cache=dict(cache, outputs=sorted({
            "head_logits", "features.pre_logits"})))), tmp / "cache")
    build = time.perf_counter() - t0
    rows = []
    for name, arms in (("CE only alone", ["baseline"]), ("KD T=2 alone", ["kd_t2"]),
                       (f"field, {len(field)} arms in lockstep", field)):
        live = seconds_per_iter(configs(args, arms, None), tmp / f"{name}-live",
                                args.iters)
        cached = seconds_per_iter(configs(args, arms, cache), tmp / f"{name}-cached",
                                  args.iters)
        rows.append((name, live, cached))
    ce_live, ce_cached = rows[0][1], rows[0][2]
    print(f"teacher cache: {meta['images']} images x {meta['views']} views, "
          f"{meta['bytes'] / 1e6:.1f} MB {meta['dtype']}, built once in {build:.1f} s "
          f"({meta['teacher_gflops']:.0f} teacher GFLOPs)\n")
    print("| what | s/iter live | s/iter cached | cached / live | live / CE only live | "
          "cached / CE only cached |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, live, cached in rows:
        print(f"| {name} | {live:.3f} | {cached:.3f} | {cached / live:.2f} | "
              f"{live / ce_live:.2f} | {cached / ce_cached:.2f} |")
    print(f"\nthe cache's build = {build / (rows[1][1] - rows[1][2]):.0f} iterations of the "
          "saving of one KD run alone" if rows[1][1] > rows[1][2] else "")


if __name__ == "__main__":
    main()
