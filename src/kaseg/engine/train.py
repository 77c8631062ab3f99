"""The one training loop. Every stage (teacher, autoencoder, student, distilled student) runs
through :func:`fit`; stages differ only by the *task* module they pass in.

A task is an ``nn.Module`` whose ``forward(images, targets)`` returns a dict of scalar losses:
``"loss"`` (the total that is optimised) and one entry per term (logged separately). Only its
parameters with ``requires_grad`` are optimised, so frozen parts (a teacher) cost nothing here.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..nets.checkpoint import STATE, load_state, save_state
from ..core.files import atomic_write_text
from ..core.config import TrainConfig
from ..core.distributed import barrier, check_global_batch, is_main, rank, world_size
from ..core.deprecation import renamed
from ..core.errors import KasegError
from ..core.runtime import autocast, resolve_device

log = logging.getLogger(__name__)
UNLABELED_SEED = 104_729  # offset of the unlabelled stream's seed from the run's
FAILED = "failed.json"  # in a run folder: the run diverged, and why (term, iteration, values)
# entries of a task's loss dict that are diagnostics, never a term that is optimised
DIAGNOSTIC_SUFFIXES = ("_ratio",)
DIAGNOSTICS = {"loss", "warmup_factor"}


class Diverged(KasegError):
    """A run's loss became non-finite. In lockstep the run stops alone (its folder's
    ``failed.json`` records why) and the others train on; a run alone raises it."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


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


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
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


@dataclass
class Progress:
    """What a run has reached: saved in its checkpoint, restored on resume."""

    iter: int = 0
    best: float = -math.inf
    best_iter: int = 0
    best_metrics: dict = field(default_factory=dict)
    skipped: int = 0
    stopped: bool = False  # early stop (train.patience): the run is finished

    def summary(self) -> dict:
        return {"best": self.best, "best_iter": self.best_iter, "iters": self.iter,
                "best_metrics": self.best_metrics, "skipped": self.skipped}


@dataclass
class Trainer:
    """The pieces one step needs, built once by :func:`fit`."""

    task: nn.Module
    model: nn.Module  # the task, or its DDP wrapper
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device
    folder: Path
    desc: str
    writer: SummaryWriter | None = None  # opened at the first log, so a run that fails on its
    start: int = 0  # first batch adds nothing


@dataclass
class TrainingRun:
    """A training run as :func:`fit_lockstep` holds it: its own task, folder, optimizer, RNG
    stream and saved progress; only the batches are shared."""

    task: nn.Module
    folder: Path
    validate: Callable[[], dict]
    export: Callable[[str], None]
    desc: str = "train"
    score_key: str = "miou"
    rng: dict | None = None  # the global RNG state this run starts from (None: the caller's)
    # its own schedule (iterations, validations, learning rate; None: the group's): runs of
    # other lengths share the batch stream, a shorter one seeing a prefix of a longer one's
    cfg: TrainConfig | None = None
    t: Trainer | None = None
    progress: Progress | None = None
    t0: float = 0.0
    failed: Diverged | None = None  # set when the run diverged (it stopped alone)


def fit(task: nn.Module, train_set, cfg: TrainConfig, run: Path, *, seed: int,
        validate: Callable[[], dict], export: Callable[[str], None], score_key: str = "miou",
        num_workers: int = 0, desc: str = "train", unlabeled_set=None,
        unlabeled_batch_size: int | None = None) -> dict:
    """Train ``task`` for ``cfg.iters`` iterations, resuming from ``run/checkpoint.pt`` if present.

    Every ``cfg.val_every`` iterations (and at the end): ``validate()`` -> metrics, ``export("best")``
    when ``metrics[score_key]`` improves, ``export("last")``, and an atomic training checkpoint.
    With ``unlabeled_set``, each step also draws ``unlabeled_batch_size`` (global; default the
    labelled batch size) of its samples, its own seeded stream, and calls
    ``task(images, targets, unlabeled_images, unlabeled_valid)``.
    """
    r = TrainingRun(task, run, validate, export, desc, score_key)
    summary = fit_lockstep([r], train_set, cfg, seed=seed, num_workers=num_workers, desc=desc,
                           unlabeled_set=unlabeled_set,
                           unlabeled_batch_size=unlabeled_batch_size)[0]
    if r.failed is not None:  # a run alone fails loudly (its failed.json is written too)
        raise r.failed
    return summary


def fit_lockstep(runs: list[TrainingRun], train_set, cfg: TrainConfig, *, seed: int,
                 num_workers: int = 0, desc: str = "train", unlabeled_set=None,
                 unlabeled_batch_size: int | None = None) -> list[dict]:
    """Train several runs on one batch stream, side by side: each batch is loaded once and each
    run takes its step on it in turn (``fit`` is the one-run case).

    Why: the arms of a paired comparison train on the same batches by design; in one process
    their frozen networks can share a forward pass (:func:`kaseg.engine.tasks.share_frozen`).
    Each run keeps its own global RNG state (swapped in around its steps, validations and
    checkpoints), optimizer and run folder, so it ends bit-identical to the same run trained
    alone, and a killed group resumes like any run (a run saved further than the others waits
    for them). Each run may have its own schedule (:attr:`TrainingRun.cfg`: its length, poly
    decay, validations; one batch size): the group trains until its longest run ends, a run
    leaving it at its own end.

    A run whose loss becomes non-finite stops alone: its folder gets ``failed.json`` (the term,
    the iteration, the values), its summary a ``"failed"`` record, and the others train on, so
    the arms of a seed finish whichever of them diverges (:class:`Diverged`).
    """
    swap = len(runs) > 1
    _start(runs, cfg, swap)
    active = [r for r in runs if not _finished(r)]
    if active:
        start = min(r.progress.iter for r in active)
        end = max(r.cfg.iters for r in active)
        batches = _batches(train_set, cfg, seed, start, num_workers, active[0].t.device,
                           unlabeled_set, unlabeled_batch_size)
        bar = tqdm(total=end, initial=start, desc=desc, dynamic_ncols=True,
                   mininterval=1.0, disable=not is_main())
        for r in active:
            r.t.task.train()
            r.t0, r.t.start = time.perf_counter(), r.progress.iter
        try:
            for it in range(start + 1, end + 1):
                active = _iteration(active, next(batches), it, bar, swap)
                bar.update(1)
                if not active:
                    break
        finally:  # the bar ends its line even on an error, so the error gets a line of its own
            bar.close()
            for r in runs:
                if r.t.writer is not None:
                    r.t.writer.close()
        if swap:  # leave the global RNG where the last run left it, as a run alone would
            set_rng_state(runs[-1].rng)
    return [dict(r.progress.summary(), **({"failed": r.failed.record} if r.failed else {}))
            for r in runs]


def _finished(r: TrainingRun) -> bool:
    """Whether a run has left its group: its schedule is done, it stopped early or diverged."""
    return r.progress.iter >= r.cfg.iters or r.progress.stopped or r.failed is not None


def _start(runs: list[TrainingRun], cfg: TrainConfig, swap: bool) -> None:
    """Each run's trainer and resumed progress, each under its own RNG state. A run without
    one starts from the caller's state, not from the one the run before it resumed to."""
    caller = rng_state() if swap else None
    for r in runs:
        if swap:
            set_rng_state(r.rng if r.rng is not None else caller)
        r.cfg = r.cfg or cfg
        if r.cfg.batch_size != cfg.batch_size:
            raise KasegError(f"{r.folder}: batch size {r.cfg.batch_size} in a lockstep group "
                             f"of batch size {cfg.batch_size}: its runs share every batch")
        r.t = _trainer(r.task, r.cfg, r.folder, r.desc)
        r.progress = _resume(r.t)
        r.rng = rng_state() if swap else None


def _iteration(active: list[TrainingRun], batch, it: int, bar, swap: bool) -> list[TrainingRun]:
    """Every active run's step ``it`` on ``batch``; -> the runs still active (a run that
    stopped early, diverged or reached its own end drops out, the others train on)."""
    for r in active:
        if r.progress.iter < it:  # a run saved further than this waits
            try:
                _advance(r, batch, it, bar, swap)
            except Diverged as e:  # this run stops; the others train on
                _fail(r, e, bar)
    return [r for r in active if not _finished(r)]


def _fail(r: TrainingRun, error: Diverged, bar) -> None:
    """Stop a diverged run: ``failed.json`` in its folder (rank 0), its TensorBoard closed; its
    last checkpoint stays, so ``--retry-failed`` (or a plain re-run) resumes from there."""
    r.failed = error
    if is_main():
        atomic_write_text(r.folder / FAILED, json.dumps(
            {**error.record, "message": str(error)}, indent=2))
        bar.write(f"[{r.desc}] stopped: {error}")
    log.error("%s", error)


def failure(run: Path) -> dict | None:
    """The record of a run that diverged (its ``failed.json``), else None."""
    path = Path(run) / FAILED
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {"message": f"{path}: unreadable"}


def _batches(train_set, cfg: TrainConfig, seed: int, start: int, num_workers: int,
             device: torch.device, unlabeled_set=None, unlabeled_batch_size: int | None = None):
    """The endless batch stream from iteration ``start`` on (labelled, then unlabelled parts)."""
    batches = iter(_loader(train_set, cfg, seed, start, num_workers, device))
    if unlabeled_set is None:
        return batches
    ucfg = replace(cfg, batch_size=unlabeled_batch_size or cfg.batch_size)
    check_global_batch(ucfg.batch_size, "distill.unlabeled_batch_size")
    # its own stream: another sampler and augmentation seed than the labelled one
    unlabeled = iter(_loader(unlabeled_set, ucfg, seed + UNLABELED_SEED, start, num_workers,
                             device))
    return ((*b, *u) for b, u in zip(batches, unlabeled))


def _advance(r: TrainingRun, batch, it: int, bar, swap: bool) -> None:
    """One iteration of one run: its step, log, validation and checkpoint, under its RNG."""
    t, progress, cfg = r.t, r.progress, r.t.cfg
    if swap:
        set_rng_state(r.rng)
    losses = _step(t, batch, it, progress)
    progress.iter = it
    if is_main() and (it % cfg.log_every == 0 or it == cfg.iters):
        record = _log(t, losses, it, progress)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
    if it % cfg.val_every == 0 or it == cfg.iters:
        _validate_and_save(t, progress, r.validate, r.export, r.score_key, bar)
        if progress.stopped:
            log.info("%s: no improvement in %d validations; stopping at iteration %d",
                     r.desc, cfg.patience, it)
    if progress.stopped or it == cfg.iters:
        log.info("%s: %d iterations in %.1fs%s", r.desc, progress.iter - t.start,
                 time.perf_counter() - r.t0,
                 f" ({progress.skipped} skipped: non-finite loss)" if progress.skipped else "")
    if swap:
        r.rng = rng_state()


def _trainer(task: nn.Module, cfg: TrainConfig, run: Path, desc: str) -> Trainer:
    """Device, SyncBN, optimizer, schedule, scaler and the DDP wrapper of ``task``."""
    device = resolve_device(cfg.device)
    world = world_size()
    check_global_batch(cfg.batch_size, "train.batch_size")
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
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    # DDP wraps the task, whose parameters are the trainable ones only (the teacher and the
    # encoder are held outside the module tree by Frozen: no gradients, no all-reduce)
    model = task
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            task, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(task, model, params, opt, sched, scaler, cfg, device, run, desc)


def _resume(t: Trainer) -> Progress:
    """The progress saved in ``run/checkpoint.pt`` (weights, optimizer, RNG restored), or a
    fresh start."""
    if is_main() and (t.folder / FAILED).exists():  # a retry: the run may now get further
        (t.folder / FAILED).unlink()
    if not (t.folder / STATE).exists():  # records of an attempt killed before its first
        if is_main():  # checkpoint are redone: drop them
            _trim_history(t.folder, 0)
        return Progress()
    ckpt = load_state(t.folder / STATE)
    t.task.load_state_dict(ckpt["task"])
    t.opt.load_state_dict(ckpt["optimizer"])
    t.sched.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    progress = Progress(ckpt["iter"], ckpt["best"], ckpt["best_iter"],
                        json.loads(ckpt["best_metrics"]), int(ckpt.get("skipped", 0)),
                        bool(ckpt.get("stopped", False)))
    set_rng_state(ckpt["rng"])
    if is_main():
        _trim_history(t.folder, progress.iter)
    log.info("resuming %s from iteration %d", t.folder, progress.iter)
    return progress


def _loader(train_set, cfg: TrainConfig, seed: int, start: int, num_workers: int,
            device: torch.device) -> DataLoader:
    """Endless batches from sample ``start * per-rank batch`` on, each sample's augmentation
    seeded by its position (:class:`SeededSamples`)."""
    per_rank = cfg.batch_size // world_size()
    sampler = InfiniteSampler(len(train_set), seed, start * per_rank, rank(), world_size(),
                              positions=True)
    # the loader's own generator: creating it must not draw from the global RNG (a resumed run
    # would then continue from a different RNG state than an uninterrupted one)
    return DataLoader(SeededSamples(train_set, seed), batch_size=per_rank, sampler=sampler,
                      drop_last=True, num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def _step(t: Trainer, batch, it: int, progress: Progress) -> dict:
    """One optimisation step; a non-finite loss stops the run, or (``train.skip_nonfinite``)
    skips the update, every process deciding together."""
    # a teacher cache's batch ends with the teacher's stored outputs ({entry: tensor})
    cached = batch[-1] if isinstance(batch[-1], dict) else None
    batch = batch[:-1] if cached is not None else batch
    images, targets, *unlabeled = (x.to(t.device, non_blocking=True) for x in batch)
    if t.cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
        unlabeled = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                     for x in unlabeled]
    extra = {} if cached is None else {"teacher_outputs": {
        k: v.to(t.device, non_blocking=True) for k, v in cached.items()}}
    with autocast(t.device, t.cfg.amp):
        losses = t.model(images, targets, *unlabeled, **extra)
    # only the loss that is back-propagated decides the step's fate: the other entries are
    # diagnostics (a term may be logged and not weighed in)
    bad = [] if torch.isfinite(losses["loss"].detach()).all() else [_culprit(losses)]
    if world_size() > 1:  # every rank skips (or stops) together, or the all-reduce would hang
        flag = torch.tensor([float(bool(bad))], device=t.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and not bad:
            bad = ["loss (on another process)"]
    t.opt.zero_grad(set_to_none=True)
    if bad and not t.cfg.skip_nonfinite:
        raise _diverged(t, losses, bad[0], it)
    if bad:  # skip the step: no update, but the schedule moves on as if it had happened
        progress.skipped += 1
        log.warning("%s: iteration %d skipped: loss term '%s' is not finite (%d skipped so far)",
                    t.desc, it, bad[0], progress.skipped)
    else:
        t.scaler.scale(losses["loss"]).backward()
        if t.cfg.grad_clip:
            t.scaler.unscale_(t.opt)
            nn.utils.clip_grad_norm_(t.params, t.cfg.grad_clip)
        t.scaler.step(t.opt)
        t.scaler.update()
    t.sched.step()
    return losses


def _is_term(name: str) -> bool:
    return name not in DIAGNOSTICS and not name.endswith(DIAGNOSTIC_SUFFIXES)


def _culprit(losses: dict) -> str:
    """The first non-finite *term* of a non-finite loss (diagnostics such as ``kd_ratio`` are
    never blamed); else the first term whose weighted value is not finite (its ratio to CE
    says so); else ``loss`` (the sum overflowed)."""
    for name, value in losses.items():
        if _is_term(name) and not torch.isfinite(value.detach()).all():
            return name
    for name, value in losses.items():
        if name.endswith("_ratio") and not torch.isfinite(value.detach()).all():
            return name[: -len("_ratio")]
    return "loss"


def _diverged(t: Trainer, losses: dict, name: str, it: int) -> Diverged:
    """The error of a non-finite loss: the term to blame, its weight when the weight times a
    finite term overflowed, every term's value, and the setting to change."""
    values = {k: float(v.detach().float().mean()) for k, v in losses.items()
              if v.numel() == 1 or k == "loss"}
    weights = t.task.term_weights() if hasattr(t.task, "term_weights") else {}
    base = name[: -len("_unlabeled")] if name.endswith("_unlabeled") else name
    weight, key = weights.get(base, (None, None))
    value = values.get(name, float("nan"))
    record = {"term": name, "iter": it, "value": value, "weight": weight, "values": values}
    where = f"{t.folder}: loss term '{name}'"
    if weight is not None and math.isfinite(value):
        msg = (f"{where} is {value:.4g} but its weight {key}={weight:g} times it "
               f"({weight * value:.4g}) overflows the loss at iteration {it}: lower {key}")
    elif name == "loss":
        msg = (f"{where} is {value} at iteration {it} (every term is finite: their weighted "
               "sum overflowed); lower the loss weights or train.lr")
    else:
        msg = (f"{where} is {value} at iteration {it}" + (f" (weight {key}={weight:g})"
                                                           if weight is not None else "") +
               "; lower train.lr, set train.grad_clip, or set train.skip_nonfinite=true to "
               "skip such steps")
    return Diverged(msg, record)


def _writer(t: Trainer) -> SummaryWriter:
    if t.writer is None:
        # events past where this attempt starts belong to a killed attempt: purged (from step 1
        # on when it starts fresh, as the history is)
        t.writer = SummaryWriter(str(t.folder / "tb"), purge_step=t.start + 1)
    return t.writer


def _log(t: Trainer, losses: dict, it: int, progress: Progress) -> dict:
    """Every loss term (and the lr) to TensorBoard and ``history.jsonl``."""
    record = {k: float(v.detach()) for k, v in losses.items()}
    record.update(iter=it, lr=t.opt.param_groups[0]["lr"])
    if t.cfg.skip_nonfinite:
        record["skipped"] = progress.skipped
    for k, v in record.items():
        if k != "iter":
            _writer(t).add_scalar(f"train/{k}", v, it)
    _append_history(t.folder, record)
    return record


def _validate_and_save(t: Trainer, progress: Progress, validate: Callable[[], dict],
                       export: Callable[[str], None], score_key: str, bar) -> None:
    """Validate (every rank: evaluation shards and reduces), export best/last weights and save
    the training checkpoint (rank 0 alone writes); decide an early stop."""
    metrics = validate()
    t.task.train()
    score, it = float(metrics[score_key]), progress.iter
    improved = score > progress.best
    if improved:
        progress.best, progress.best_iter, progress.best_metrics = score, it, metrics
    progress.stopped = bool(t.cfg.patience) and it - progress.best_iter >= (
        t.cfg.patience * t.cfg.val_every)
    if is_main():
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                _writer(t).add_scalar(f"val/{k}", v, it)
        _append_history(t.folder, {"iter": it, "val": metrics})
        if improved:
            export("best")
        export("last")
        save_state(t.folder / STATE, {
            "task": t.task.state_dict(), "optimizer": t.opt.state_dict(),
            "scheduler": t.sched.state_dict(), "scaler": t.scaler.state_dict(),
            "iter": it, "best": progress.best, "best_iter": progress.best_iter,
            "best_metrics": json.dumps(progress.best_metrics), "rng": rng_state(),
            "skipped": progress.skipped, "stopped": progress.stopped})
        bar.write(f"[{t.desc}] iter {it}/{t.cfg.iters}: val {score_key} {score:.4f} "
                  f"(best {progress.best:.4f} @ {progress.best_iter})")
    barrier()  # rank 0's checkpoint is on disk before anyone moves on


__getattr__ = renamed(__name__, {"Job": "TrainingRun"}, globals())  # 0.1.0's names
