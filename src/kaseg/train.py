"""The one training loop. Every stage (teacher, autoencoder, student, distilled student) runs
through :func:`fit`; stages differ only by the *task* module they pass in.

A task is an ``nn.Module`` whose ``forward(images, targets)`` returns a dict of scalar losses:
``"loss"`` (the total that is optimised) and one entry per term (logged separately). Only its
parameters with ``requires_grad`` are optimised, so frozen parts (a teacher) cost nothing here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .checkpoint import STATE, atomic_write_text, load_state, save_state
from .config import TrainConfig, diff_configs
from .distributed import barrier, is_distributed, is_main, local_device, rank, world_size
from .errors import KasegError
from .evaluate import autocast

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if is_distributed() and torch.cuda.is_available() and name in ("auto", "cuda"):
        return local_device()  # torchrun: this process's GPU
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KasegError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with the CPU RNG seeded to ``seed`` and restore the RNG afterwards.

    Why: a network built inside gets the same initial weights whatever was built before it (a
    teacher, an autoencoder, adapters), so every arm of a comparison starts from the same student.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class InfiniteSampler(Sampler):
    """Endless shuffled indices, one fresh permutation per epoch, seeded by (seed, epoch).

    ``start`` skips that many samples without loading them, so a resumed run sees the data in the
    same order as one that was never stopped. ``rank``/``world`` shard each permutation. With
    ``positions=True`` it yields ``(index, k)``, k the sample's position in the stream, which
    :class:`SeededSamples` turns into that sample's augmentation seed.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1,
                 positions: bool = False):
        if n < world or n == 0:
            raise KasegError(f"the training split has {n} samples, fewer than the {world} "
                             "process(es)" if n else "the training split is empty")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world
        self.positions = positions
        self.per_rank = n // world  # every rank the same share per epoch (the rest is dropped)

    def __iter__(self):
        k = self.start  # position in this rank's stream
        while True:
            epoch, pos = divmod(k, self.per_rank)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            mine = perm[self.rank : self.per_rank * self.world : self.world].tolist()
            for i in mine[pos:]:
                # globally unique position: the sample's augmentation seed
                yield (i, k * self.world + self.rank) if self.positions else i
                k += 1
            k = (epoch + 1) * self.per_rank


class SeededSamples(torch.utils.data.Dataset):
    """Each training sample's random augmentation is a pure function of (seed, its position k in
    the sample stream), not of the process, worker or moment that loads it: a run resumed after a
    crash, or run with another ``num_workers``, sees exactly the same crops, scales and flips.
    The global RNG of the loading process is left as it was (dropout etc. keep their stream)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, k = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 0x9E3779B1 + k) % 2**63)
            return self.dataset[index]


def poly_lr(iters: int, power: float) -> Callable[[int], float]:
    return lambda it: max(0.0, 1.0 - it / max(1, iters)) ** power


def _rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _append_history(run: Path, record: dict) -> None:
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _trim_history(run: Path, last_iter: int) -> None:
    """Drop records logged after the checkpoint we resume from (they will be redone)."""
    path = run / "history.jsonl"
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["iter"] <= last_iter]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def fit(task: nn.Module, train_set, cfg: TrainConfig, run: Path, *, seed: int,
        validate: Callable[[], dict], export: Callable[[str], None], score_key: str = "miou",
        num_workers: int = 0, desc: str = "train") -> dict:
    """Train ``task`` for ``cfg.iters`` iterations, resuming from ``run/checkpoint.pt`` if present.

    Every ``cfg.val_every`` iterations (and at the end): ``validate()`` -> metrics, ``export("best")``
    when ``metrics[score_key]`` improves, ``export("last")``, and an atomic training checkpoint.
    """
    device = resolve_device(cfg.device)
    world, main = world_size(), is_main()
    if cfg.batch_size % world:
        raise KasegError(f"train.batch_size={cfg.batch_size} (the global batch) must be divisible "
                         f"by the {world} processes")
    if cfg.sync_bn and world > 1:  # the trainable modules only: the frozen teacher is not in them
        if device.type == "cuda":
            task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
        else:
            log.warning("train.sync_bn: SyncBatchNorm needs CUDA; on %s each process keeps its "
                        "own BatchNorm statistics", device.type)
    task.to(device)
    if cfg.channels_last:
        task.to(memory_format=torch.channels_last)
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lr(cfg.iters, cfg.poly_power))
    use_scaler = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start, best, best_iter, best_metrics, skipped, stopped = 0, -math.inf, 0, {}, 0, False
    if (run / STATE).exists():
        ckpt = load_state(run / STATE)
        task.load_state_dict(ckpt["task"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start, best, best_iter = ckpt["iter"], ckpt["best"], ckpt["best_iter"]
        best_metrics = json.loads(ckpt["best_metrics"])
        skipped = int(ckpt.get("skipped", 0))
        stopped = bool(ckpt.get("stopped", False))
        _set_rng_state(ckpt["rng"])
        if main:
            _trim_history(run, start)
        log.info("resuming %s from iteration %d", run, start)
    if start >= cfg.iters or stopped:
        return {"best": best, "best_iter": best_iter, "iters": start, "best_metrics": best_metrics}

    per_rank = cfg.batch_size // world
    sampler = InfiniteSampler(len(train_set), seed, start * per_rank, rank(), world,
                              positions=True)
    # the loader's own generator: creating it must not draw from the global RNG (a resumed run
    # would then continue from a different RNG state than an uninterrupted one)
    loader = DataLoader(SeededSamples(train_set, seed), batch_size=per_rank,
                        sampler=sampler, drop_last=True, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)
    writer = None  # opened at the first log, so a run that fails on its first batch adds nothing
    # DDP wraps the task, whose parameters are the trainable ones only (the teacher and the
    # encoder are held outside the module tree by Frozen: no gradients, no all-reduce)
    model = task
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            task, device_ids=[device.index] if device.type == "cuda" else None)
    task.train()
    bar = tqdm(total=cfg.iters, initial=start, desc=desc, dynamic_ncols=True, mininterval=1.0,
               disable=not main)
    t0 = time.perf_counter()
    try:
        for it in range(start + 1, cfg.iters + 1):
            images, targets = next(batches)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.amp):
                losses = model(images, targets)
            bad = [name for name, value in losses.items() if not torch.isfinite(value.detach()).all()]
            if world > 1:  # every rank skips (or stops) together, or the all-reduce would hang
                flag = torch.tensor([float(bool(bad))], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                if flag.item() and not bad:
                    bad = ["loss (on another process)"]
            opt.zero_grad(set_to_none=True)
            if bad and not cfg.skip_nonfinite:
                raise KasegError(f"{run}: loss term '{bad[0]}' is {losses[bad[0]].item()} at iteration "
                                 f"{it}; lower train.lr, set train.grad_clip, or set "
                                 f"train.skip_nonfinite=true to skip such steps")
            if bad:  # skip the step: no update, but the schedule moves on as if it had happened
                skipped += 1
                log.warning("%s: iteration %d skipped: loss term '%s' is not finite (%d skipped so "
                            "far)", desc, it, bad[0], skipped)
            else:
                scaler.scale(losses["loss"]).backward()
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            sched.step()
            bar.update(1)
            if main and (it % cfg.log_every == 0 or it == cfg.iters):
                record = {k: float(v.detach()) for k, v in losses.items()}
                record.update(iter=it, lr=opt.param_groups[0]["lr"])
                if cfg.skip_nonfinite:
                    record["skipped"] = skipped
                writer = writer or SummaryWriter(str(run / "tb"),
                                                 purge_step=start + 1 if start else None)
                for k, v in record.items():
                    if k != "iter":
                        writer.add_scalar(f"train/{k}", v, it)
                _append_history(run, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if it % cfg.val_every == 0 or it == cfg.iters:
                metrics = validate()  # on every rank (evaluation shards and reduces)
                task.train()
                score = float(metrics[score_key])
                improved = score > best
                if improved:
                    best, best_iter, best_metrics = score, it, metrics
                stop = bool(cfg.patience) and it - best_iter >= cfg.patience * cfg.val_every
                if main:  # rank 0 alone writes
                    writer = writer or SummaryWriter(str(run / "tb"),
                                                     purge_step=start + 1 if start else None)
                    for k, v in metrics.items():
                        if isinstance(v, (int, float)):
                            writer.add_scalar(f"val/{k}", v, it)
                    _append_history(run, {"iter": it, "val": metrics})
                    if improved:
                        export("best")
                    export("last")
                    save_state(run / STATE, {
                        "task": task.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                        "iter": it, "best": best, "best_iter": best_iter,
                        "best_metrics": json.dumps(best_metrics), "rng": _rng_state(),
                        "skipped": skipped, "stopped": stop})
                    bar.write(f"[{desc}] iter {it}/{cfg.iters}: val {score_key} {score:.4f} "
                              f"(best {best:.4f} @ {best_iter})")
                barrier()  # rank 0's checkpoint is on disk before anyone moves on
                if stop:
                    log.info("%s: no improvement in %d validations; stopping at iteration %d",
                             desc, cfg.patience, it)
                    break
    finally:  # the bar ends its line even on an error, so the error gets a line of its own
        bar.close()
        if writer is not None:
            writer.close()
    log.info("%s: %d iterations in %.1fs%s", desc, cfg.iters - start, time.perf_counter() - t0,
             f" ({skipped} skipped: non-finite loss)" if skipped else "")
    return {"best": best, "best_iter": best_iter, "iters": it, "best_metrics": best_metrics,
            "skipped": skipped}


# settings that change how a run is executed, not what it computes: a run may resume with others
# (augmentation is seeded per sample, so the number of loader workers does not change results)
RUNTIME_KEYS = {"data.num_workers", "train.device", "train.log_every"}

RUN_ARTEFACTS = ("checkpoint.pt", "best.safetensors", "best.json", "last.safetensors", "last.json",
                 "history.jsonl", "metrics.json", "tb")


def prepare_run(run: Path, config: dict, force: bool = False) -> None:
    """Make ``run`` ready for this config: new, resumable (same config), or restarted (``force``).

    Call it only after every input has been checked, so a run that fails on bad input never
    touches what an earlier run saved.
    """
    cfg_path = run / "config.yaml"
    if run.exists() and not run.is_dir():
        raise KasegError(f"{run}: exists and is not a folder")
    if run.is_dir() and any(run.iterdir()) and not cfg_path.exists() and not force:
        raise KasegError(f"{run}: folder is not empty and is not a kaseg run; choose another --out")
    if cfg_path.exists() and not force:
        old = yaml.safe_load(cfg_path.read_text()) or {}
        changed = [k for k in diff_configs(old, config) if k not in RUNTIME_KEYS]
        if changed:
            raise KasegError(
                f"{run}: was started with a different config ({', '.join(changed[:5])}); "
                f"use --force to start over or choose another --out"
            )
    if not is_main():  # the checks above run everywhere (same answer); rank 0 alone writes
        barrier()
        return
    if force:
        for name in RUN_ARTEFACTS:
            p = run / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, yaml.safe_dump(config, sort_keys=False))
    barrier()
