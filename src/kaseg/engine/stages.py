"""The method's stages as commands: ``train-ae`` (stage 1), ``distill`` (stage 2) and ``pipeline``
(teacher -> autoencoder -> student -> distilled student). Each builds its task from
:mod:`kaseg.losses.method` and runs it through the one loop, :func:`kaseg.engine.train.fit`."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..nets.checkpoint import (is_kaseg_weights, load_model, load_state_strict,
                         load_weights_into, read_weights, resolve_weights, save_model, save_weights)
from ..core.files import atomic_write_text
from ..core.config import AEConfig, Config, ModelConfig, TrainConfig, to_dict
from ..core.deprecation import renamed
from ..core.errors import KasegError
from .evaluate import evaluate
from ..losses.maskd import ReceptiveTokens
from ..losses.registry import LOSSES, needs_autoencoder, needs_masks, resolve_losses
from .tasks import AutoencoderTask, DistillTask, memos_off, share_frozen, unshare_frozen
from ..losses.method import FeatureAutoencoder, ae_strides
from ..nets.models import SegModel, build_model
from ..data import build_dataset, build_unlabeled
from .runs import build_data, dataset_meta, prepare_run, write_result
from .supervised import build_network, train_segmenter
from ..core.runtime import (autocast, eval_generator, inputs_for, on_device, resolve_device,
                      seed_everything, seeded)
from .train import TrainingRun, fit, fit_lockstep, rng_state
from ..nets.cost import train_step_flops, train_step_seconds, training_copy
from .mask_stage import fit_masks, load_masks, token_count
from .teacher_cache import build_cache, cache_options, needed_entries, open_cache, pick
from ..core.distributed import barrier, is_main, world_size

log = logging.getLogger(__name__)


def load_teacher(cfg: Config, num_classes: int) -> tuple[SegModel, Path | str]:
    """The frozen teacher: a kaseg checkpoint, a user's own weights for ``teacher.name`` (keys
    checked), or torchvision's pretrained weights as they are."""
    t = cfg.teacher
    if not t.weights and t.pretrained and t.name.startswith("torchvision:"):
        teacher, path = build_model(t.name, num_classes, pretrained=True), f"{t.name} (pretrained)"
    elif not t.weights:
        raise KasegError("teacher.weights must name a trained teacher (a run folder, a "
                         ".safetensors file, or your own .pth of teacher.name); `kaseg pipeline` "
                         "trains one for you")
    else:
        path = resolve_weights(t.weights)
        if path.suffix != ".safetensors" or not is_kaseg_weights(path):
            teacher = build_model(t.name, num_classes, t.output_stride, t.decoder_channels)
            load_weights_into(teacher.net, path)  # the network's own keys, as its code saves them
            log.info("teacher: %s with the weights of %s", t.name, path)
        else:
            teacher, _ = load_model(path)
    if t.tap not in teacher.feature_info:
        raise KasegError(f"teacher.tap '{t.tap}' is not a feature of {path}; "
                         f"choose one of {sorted(teacher.feature_info)}")
    if teacher.num_classes != num_classes:
        raise KasegError(f"{path}: teacher has {teacher.num_classes} classes, the dataset "
                         f"{num_classes}")
    return teacher.eval(), path


def build_student(cfg: Config, num_classes: int) -> SegModel:
    student = build_network(cfg, num_classes)
    if cfg.distill.student_tap not in student.feature_info:
        raise KasegError(f"distill.student_tap '{cfg.distill.student_tap}' is not a feature of "
                         f"{cfg.model.name}; choose one of {sorted(student.feature_info)}")
    return student


def load_autoencoder(path: str | Path) -> tuple[FeatureAutoencoder, dict]:
    path = resolve_weights(path)
    state, meta = read_weights(path)
    if meta.get("kind") != "autoencoder":
        raise KasegError(f"{path}: not an autoencoder checkpoint (from `kaseg train-ae`)")
    ae = FeatureAutoencoder(meta["in_channels"], meta["latent_channels"], tuple(meta["strides"]))
    load_state_strict(ae, state, path)
    ae.meta = dict(meta)  # what it was trained for, checked where it is used
    return ae.eval(), meta


def check_autoencoder_fits(meta: dict, path, teacher: SegModel, tap: str,
                           student_stride: int) -> None:
    """Refuse an autoencoder made for another teacher map or another student stride: its latent
    would sit at the wrong scale, which a silent resize would hide."""
    t_info = teacher.feature_info[tap]
    want = {"tap": tap, "teacher_model": teacher.spec.name, "in_channels": t_info.channels}
    if student_stride % t_info.stride == 0 and student_stride // t_info.stride in (1, 2, 4, 8):
        want["strides"] = list(ae_strides(student_stride // t_info.stride))
    else:
        want["strides"] = f"none (student stride {student_stride} / teacher {t_info.stride})"
    for key, value in want.items():
        if key in meta and meta[key] != value:
            raise KasegError(
                f"{path}: the autoencoder was trained with {key} {meta[key]!r} (teacher "
                f"'{meta.get('teacher_model', '?')}' tap '{meta.get('tap')}', student stride "
                f"{meta.get('student_stride', '?')}); this pair needs {value!r} (teacher "
                f"'{teacher.spec.name}' tap '{tap}', student stride {student_stride}): "
                "train one for this pair with `kaseg train-ae`")


@torch.no_grad()
def reconstruction_error(teacher: SegModel, ae: FeatureAutoencoder, tap: str, dataset,
                         batch_size: int, device, amp: bool = False) -> dict:
    """Val reconstruction error of the autoencoder, relative to the teacher features' variance
    (per channel, over all positions): 0 is perfect, 1 is no better than each channel's mean."""
    was = ae.training
    ae.eval()
    teacher.eval()
    sse = count = 0.0
    s1 = s2 = None
    on_device(teacher, device)
    on_device(ae, device)
    for images, _ in DataLoader(dataset, batch_size=batch_size, generator=eval_generator()):
        images = inputs_for(teacher, images)
        with autocast(device, amp):
            f = teacher(images)["features"][tap].float()
            _, r = ae(f)
        f64 = f.double()
        sse += float((f64 - r.double()).pow(2).sum())
        s1 = f64.sum((0, 2, 3)) if s1 is None else s1 + f64.sum((0, 2, 3))
        s2 = f64.pow(2).sum((0, 2, 3)) if s2 is None else s2 + f64.pow(2).sum((0, 2, 3))
        count += f.shape[0] * f.shape[2] * f.shape[3]
    ae.train(was)
    total_var = float((s2 - s1.pow(2) / count).sum())
    rel = sse / max(total_var, 1e-12)
    return {"score": -rel, "rel_error": rel, "mse": sse / (count * f.shape[1]),
            "feature_var": total_var / (count * f.shape[1])}


def train_masks(cfg: Config, run: str | Path, force: bool = False) -> dict:
    """MasKD's mask stage (``kaseg train-masks``): receptive tokens on the frozen teacher."""
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_data(cfg)
    teacher, source = load_teacher(cfg, train_set.num_classes)
    return fit_masks(cfg, teacher, train_set, val_set, run, force, str(source))


def train_autoencoder(cfg: Config, run: str | Path, force: bool = False) -> dict:
    """Stage 1 (``kaseg train-ae``): train the feature autoencoder on the frozen teacher."""
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_data(cfg)
    teacher, teacher_path = load_teacher(cfg, train_set.num_classes)
    student = build_student(cfg, train_set.num_classes)
    return fit_autoencoder(teacher, student.feature_info[cfg.distill.student_tap].stride,
                           train_set, val_set, run, tap=cfg.teacher.tap, ae=cfg.ae,
                           train=cfg.train, seed=cfg.seed, num_workers=cfg.data.num_workers,
                           record=to_dict(cfg), force=force, teacher_source=str(teacher_path))


def fit_autoencoder(teacher: SegModel, student_stride: int, train_set, val_set, run: str | Path,
                    *, tap: str, ae: AEConfig, train: TrainConfig, seed: int,
                    record: dict, num_workers: int = 0, force: bool = False,
                    teacher_source: str = "") -> dict:
    """Stage 1 on objects: the autoencoder of ``teacher``'s map ``tap`` for a student whose
    distilled map has stride ``student_stride``; its weights in ``run`` (``best``/``last``).
    ``record``: what the run was asked to do (a resumed run must be asked the same)."""
    run = Path(run)
    t_info = teacher.feature_info[tap]
    if student_stride % t_info.stride:
        raise KasegError(f"student feature stride {student_stride} is not a multiple of the "
                         f"teacher's {t_info.stride}")
    try:
        strides = ae_strides(student_stride // t_info.stride)
    except ValueError as e:
        raise KasegError(str(e)) from None
    latent = ae.latent_channels or max(1, t_info.channels // 2)
    net = FeatureAutoencoder(t_info.channels, latent, strides)
    per_epoch = len(train_set) / train.batch_size
    iters = max(1, ae.min_iters, math.ceil(ae.epochs * per_epoch))
    if ae.val_every_epochs:
        val_every = max(1, round(ae.val_every_epochs * per_epoch))
    else:
        val_every = max(1, iters // 4) if ae.patience else iters
    tcfg = replace(train, iters=iters, lr=ae.lr, weight_decay=ae.weight_decay,
                   val_every=val_every, grad_clip=ae.grad_clip, patience=ae.patience)
    device = resolve_device(train.device)
    prepare_run(run, record, force, "train-ae")
    meta = {"kind": "autoencoder", "in_channels": t_info.channels, "latent_channels": latent,
            "strides": list(strides), "teacher": teacher_source, "tap": tap,
            "teacher_model": teacher.spec.name, "teacher_stride": t_info.stride,
            "student_stride": student_stride}

    def validate() -> dict:
        return reconstruction_error(teacher.to(device), net, tap, val_set, train.val_batch_size,
                                    device, train.amp)

    def export(which: str) -> None:
        save_weights(net, run / which, meta)

    log.info("autoencoder: %d -> %d channels, strides %s, %d iterations", t_info.channels,
             latent, strides, iters)
    summary = fit(AutoencoderTask(teacher, net, tap, ae.alpha), train_set, tcfg, run, seed=seed,
                  validate=validate, export=export, score_key="score", num_workers=num_workers,
                  desc="train-ae")
    result = {"val": summary["best_metrics"], "iters": summary["iters"], "best_iter":
              summary["best_iter"], **meta}
    atomic_write_text(run / "metrics.json", json.dumps(result, indent=2))
    return result


NEEDS_AE = ("ae.weights must name a trained autoencoder (`kaseg train-ae`): distill.losses selects "
            "terms that read its latent code (the method's adapt / affinity); drop them or set "
            "their weight to 0 to distil without one")


@dataclass
class PreparedRun:
    """A distillation run built and checked, not yet trained: what :func:`fit_distillation`
    needs, and the global RNG state the run starts from."""

    task: DistillTask
    train_set: object
    val_set: object
    folder: Path
    cfg: Config
    unlabeled_set: object = None
    rng: dict | None = None


def distill(cfg: Config, run: str | Path, force: bool = False) -> dict:
    """Stage 2 (``kaseg distill``): train the student with CE + adaptation + affinity."""
    p = prepare_distill(cfg, run)
    return fit_distillation(p.task, p.train_set, p.val_set, p.folder, train=cfg.train,
                            seed=cfg.seed, record=to_dict(cfg), num_workers=cfg.data.num_workers,
                            force=force, unlabeled_set=p.unlabeled_set,
                            unlabeled_batch_size=cfg.distill.unlabeled_batch_size,
                            name=cfg.model.name, cfg=cfg)


def prepare_distill(cfg: Config, run: str | Path) -> PreparedRun:
    """Data, teacher, student, autoencoder and task of a ``kaseg distill`` run, each drawn from
    the global RNG exactly as a run alone draws them; the RNG is left at the state training
    starts from (recorded in ``rng``)."""
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_data(cfg)
    unlabeled_set = build_unlabeled(cfg.data, train_set)
    teacher, _ = load_teacher(cfg, train_set.num_classes)
    dcfg = cfg.distill
    if cache_options(cfg, "distill") is not None:
        check_cacheable(cfg, unlabeled_set is not None)
        train_set = open_cache(cfg, train_set, teacher)
    if needs_autoencoder(dcfg.losses) and not cfg.ae.weights:
        raise KasegError(NEEDS_AE)
    check_memory_fits(cfg, "distill")
    student = build_student(cfg, train_set.num_classes)
    ae, ae_meta = load_autoencoder(cfg.ae.weights) if cfg.ae.weights else (None, None)
    masks = _masks_for(cfg, train_set.num_classes)
    task = build_distill_task(cfg, student, teacher, ae, ae_meta, cfg.ae.weights or "", masks)
    seed_everything(cfg.seed, cfg.deterministic)  # dropout's stream: the same in every arm
    return PreparedRun(task, train_set, val_set, Path(run), cfg, _used(task, unlabeled_set),
                      rng_state())


def _masks_for(cfg: Config, num_classes: int):
    """MasKD's trained tokens when a term reads them (``masks.weights``), else None."""
    if not needs_masks(cfg.distill.losses):
        return None
    if not cfg.masks.weights:
        raise KasegError("masks.weights must name MasKD's trained receptive tokens (`kaseg "
                         "train-masks`; `kaseg compare` trains them as a shared stage): "
                         "distill.losses selects maskd")
    return load_masks(cfg.masks.weights, cfg.teacher.name, num_classes)


def check_cacheable(cfg: Config, unlabeled: bool, source: str = "distill") -> None:
    """A teacher cache stores the teacher on the labelled training views only: a run that
    also reads the teacher on unlabelled images (or pseudo-labels them) is a one-line error."""
    if unlabeled or cfg.distill.pseudo_labels:
        raise KasegError(f"{source}: distill.teacher_cache holds the teacher's outputs on the "
                         "labelled training images only; unlabelled images (data.unlabeled_*) "
                         "and pseudo-labels need the live teacher: drop one or the other")


def cache_teacher(cfg: Config, out: str | Path, max_gb: float | None = None,
                  entries: list[str] | None = None) -> dict:
    """``kaseg cache-teacher``: the teacher's outputs on a fixed pool of training views, stored
    once in ``out`` for every run that sets ``distill.teacher_cache.path`` to it
    (:mod:`kaseg.engine.teacher_cache`). Resumes a killed build; a finished one is kept."""
    d = cfg.data
    check_cacheable(cfg, bool(d.unlabeled_count or d.unlabeled_root or d.unlabeled_split),
                    "cache-teacher")
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    teacher, _ = load_teacher(cfg, train_set.num_classes)
    if world_size() > 1:  # under torchrun the first process builds it, the others wait
        if is_main():
            build_cache(cfg, teacher, train_set, out, entries=entries, max_gb=max_gb)
        barrier()
    return build_cache(cfg, teacher, train_set, out, entries=entries, max_gb=max_gb)


@functools.lru_cache(maxsize=16)
def _feature_info(name: str, output_stride: int | None, decoder_channels: int | None) -> dict:
    """The tapped maps of an untrained ``name`` (their channels and strides do not depend on the
    weights); cached, so checking many arms builds each architecture once."""
    with torch.random.fork_rng(devices=[]):
        return dict(build_model(name, 2, output_stride, decoder_channels).feature_info)


def check_losses_fit(cfg: Config, source: str = "config") -> None:
    """A distillation whose terms read a map the networks do not expose (``teacher.tap``,
    ``distill.student_tap``), or a selected loss that cannot run on the teacher's map
    (:attr:`LossSpec.check`, e.g. Af-DCD's channel groups), is a one-line error naming
    ``source`` before anything trains: the architectures are built untrained."""
    d, t, m = cfg.distill, cfg.teacher, cfg.model
    losses = {n: o for n, (_, o) in resolve_losses(d.losses).items()}
    if not losses:
        return  # CE only (or pseudo-labels): no tapped map is read
    teacher = _feature_info(t.name, t.output_stride, t.decoder_channels)
    student = _feature_info(m.name, m.output_stride, m.decoder_channels)
    for key, tap, name, info in (("teacher.tap", t.tap, t.name, teacher),
                                 ("distill.student_tap", d.student_tap, m.name, student)):
        if tap not in info:
            raise KasegError(f"{source}: {key} '{tap}' is not a feature of {name}; choose one "
                             f"of {sorted(info)}")
    channels = teacher[t.tap].channels
    for name, options in losses.items():
        problem = LOSSES[name].check and LOSSES[name].check(channels, **options)
        if problem:
            raise KasegError(f"{source}: {name} needs what {t.name}'s '{t.tap}' map does not "
                             f"give: {problem}")


def device_memory(device: torch.device) -> int:
    """Bytes of memory ``device`` has: a GPU's total, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory_fits(cfg: Config, source: str = "config", processes: int | None = None,
                      available: int | None = None) -> None:
    """A selected term whose own memory (:attr:`LossSpec.memory`, e.g. CIRKD's relations) would
    not fit the device that trains (``available`` bytes; default: ``train.device``'s) with the
    batch each of the ``processes`` gets (default: torchrun's ``WORLD_SIZE``, else 1) is a
    one-line error naming the keys that change it, before anything trains."""
    d, t, m = cfg.distill, cfg.teacher, cfg.model
    terms = {n: o for n, (_, o) in resolve_losses(d.losses).items() if LOSSES[n].memory}
    if not terms:
        return
    world = processes or int(os.environ.get("WORLD_SIZE", world_size()))
    batch = max(1, cfg.train.batch_size // world)
    crop = cfg.data.crop_size
    h, w = (crop, crop) if isinstance(crop, int) else tuple(crop)
    strides = [_feature_info(name, os_, dc)[tap].stride for name, os_, dc, tap in (
        (m.name, m.output_stride, m.decoder_channels, d.student_tap),
        (t.name, t.output_stride, t.decoder_channels, t.tap))]
    sizes = [(math.ceil(h / st), math.ceil(w / st)) for st in strides]
    try:
        device = resolve_device(cfg.train.device)
    except KasegError:  # not the machine that trains (a cluster's login node): its job checks
        return
    have = device_memory(device) if available is None else available
    for name, options in terms.items():
        need = LOSSES[name].memory(batch, *sizes, **options)
        if need > have:
            group = (f", in groups of distill.losses.{name}.group={options['group']}"
                     if "group" in options else "")
            raise KasegError(
                f"{source}: distill.losses.{name} alone needs about {need / 2**30:.1f} GiB for "
                f"train.batch_size={cfg.train.batch_size} over {world} process(es) ({batch} "
                f"images each{group}, {h} x {w} crops) and the {device.type} has "
                f"{have / 2**30:.1f} GiB: lower the batch or the group, or use more processes")


def estimate_step_flops(cfg: Config) -> int:
    """Training FLOPs per iteration of a ``kaseg distill`` of ``cfg``, from untrained networks of
    its architectures: FLOPs do not depend on the weights, so nothing is loaded or trained, and a
    comparison knows each arm's cost before its runs exist (the compute-matched control's
    schedule). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        task, inputs = _throwaway_task(cfg)
        return train_step_flops(task, inputs, copy=False)  # a throwaway task: no copy


def estimate_step_seconds(cfg: Config) -> float:
    """Seconds of one training iteration of ``cfg`` alone on its device, timed on untrained
    networks of its architectures (the time does not depend on the weights either): what a
    comparison that judges by seconds plans CE only's budgets with."""
    with torch.random.fork_rng(devices=[]):
        task, inputs = _throwaway_task(cfg)
        device = resolve_device(cfg.train.device)
        return train_step_seconds(training_copy(task, device), inputs, device, runs=3,
                                  copy=False)


def _throwaway_task(cfg: Config) -> tuple[DistillTask, tuple]:
    """The distillation task of ``cfg`` on untrained networks, and a stand-in batch."""
    train_set, _ = build_data(cfg)
    unlabeled = build_unlabeled(cfg.data, train_set)
    k, t, d = train_set.num_classes, cfg.teacher, cfg.distill
    teacher = build_model(t.name, k, t.output_stride, t.decoder_channels).eval()
    student = build_student(replace(cfg, model=replace(cfg.model, init_weights=None,
                                                       pretrained=False)), k)
    encoder, latent = torch.nn.Identity(), 1
    if needs_autoencoder(d.losses):
        ti, si = teacher.feature_info[t.tap], student.feature_info[d.student_tap]
        latent = cfg.ae.latent_channels or max(1, ti.channels // 2)
        try:
            strides = ae_strides(si.stride // ti.stride)
        except ValueError as e:
            raise KasegError(str(e)) from None
        encoder = FeatureAutoencoder(ti.channels, latent, strides).encoder
    masks = ReceptiveTokens(k, token_count(cfg.masks.tokens, k)) if needs_masks(d.losses) \
        else None
    task = distill_task(cfg, student, teacher, encoder, latent, masks)
    return task, step_inputs(cfg, k, unlabeled is not None and task.uses_teacher)


def teacher_training_flops(cfg: Config) -> int:
    """FLOPs of training ``cfg``'s teacher as a comparison does (CE, its iterations): the cost a
    user without a teacher pays before any distillation."""
    tcfg = teacher_training_config(cfg)
    ce = replace(tcfg, distill=replace(tcfg.distill, losses={}, pseudo_labels=False))
    return estimate_step_flops(ce) * tcfg.train.iters


def _used(task: DistillTask, unlabeled_set):
    """The unlabelled set, or None when no term of ``task`` can learn from it."""
    if unlabeled_set is not None and not task.uses_teacher:
        log.warning("distill: no term uses the unlabelled images (CE only, no pseudo-labels); "
                    "training without them")
        return None
    return unlabeled_set


def _stream(p: PreparedRun) -> str:
    """What decides a run's batches: runs with the same stream can train in lockstep. Its
    schedule (length, learning rate, validations) does not: a run of a smaller budget sees a
    prefix of a longer run's batches, and leaves the group at its own end."""
    c = p.cfg
    unl = (c.distill.unlabeled_batch_size or c.train.batch_size) if p.unlabeled_set else None
    opts = cache_options(c)
    cache = opts.path if opts is not None else None
    return json.dumps([c.seed, to_dict(c.data), c.train.batch_size, c.train.device, unl, cache],
                      sort_keys=True)


def distill_lockstep(cfgs: list[Config], runs: list[str | Path],
                     force: bool = False) -> list[dict]:
    """Several ``kaseg distill`` runs in one process: those with the same batch stream (seed,
    data, batch size; each its own schedule) train in lockstep, their equal frozen networks
    (the teacher, a shared trained encoder) run once per batch. Each run ends bit-identical to
    the same run alone (its own RNG stream, optimizer, checkpoints and folder); -> each run's
    result, in order (``{"failed": record}`` for a run that diverged: it stopped alone, the
    others went on)."""
    prepared = []
    for c, r in zip(cfgs, runs):
        prepared.append(prepare_distill(c, r))
        share_frozen([prepared[0].task, prepared[-1].task])  # one teacher in memory, not one each
    for p in prepared:  # every input is checked before any folder is touched
        prepare_run(p.folder, to_dict(p.cfg), force)
    for p in prepared:
        record_cost(p)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(_stream(p), []).append(i)
    results: dict[int, dict] = {}
    for members in groups.values():
        group = [prepared[i] for i in members]
        tasks = [j.task for j in group]
        distinct = share_frozen(tasks)
        log.info("lockstep: %d run(s) on one batch stream, %d frozen network(s) for %d task(s)",
                 len(group), distinct, len(group))
        runs_ = []
        for j in group:
            _describe(j.task, j.train_set, j.unlabeled_set)
            io = _student_io(j.task.student, j.train_set, j.val_set, j.folder, j.cfg.train,
                             j.cfg.data.num_workers)
            runs_.append(TrainingRun(j.task, j.folder, *io, desc=f"distill {j.folder.name}",
                                     rng=j.rng, cfg=j.cfg.train))
        try:
            summaries = fit_lockstep(
                runs_,
                group[0].train_set, group[0].cfg.train, seed=group[0].cfg.seed,
                num_workers=group[0].cfg.data.num_workers,
                desc=f"lockstep x{len(group)} (seed {group[0].cfg.seed})",
                unlabeled_set=group[0].unlabeled_set,
                unlabeled_batch_size=group[0].cfg.distill.unlabeled_batch_size)
        finally:
            unshare_frozen(tasks)
        for i, p, summary in zip(members, group, summaries):
            results[i] = ({"failed": summary["failed"]} if "failed" in summary else
                          write_result(p.folder, summary, p.cfg.model.name))
    return [results[i] for i in range(len(prepared))]


COST = "cost.json"  # in a distillation run's folder: what one of its training steps costs


def step_inputs(cfg: Config, num_classes: int, unlabeled: bool) -> tuple:
    """A stand-in training batch of ``cfg``'s shape (this process's share of the batch, the crop,
    the unlabelled images when the run uses them): FLOPs do not depend on the values. Drawn
    from a fixed seed outside the global RNG."""
    crop = cfg.data.crop_size
    h, w = (crop, crop) if isinstance(crop, int) else tuple(crop)
    world = world_size()
    n = max(1, cfg.train.batch_size // world)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(n, 3, h, w, generator=g),
             torch.randint(0, num_classes, (n, h, w), generator=g))
    if unlabeled:
        m = max(1, (cfg.distill.unlabeled_batch_size or cfg.train.batch_size) // world)
        batch += (torch.randn(m, 3, h, w, generator=g), torch.zeros(m, h, w, dtype=torch.long))
    return batch


def record_cost(p: PreparedRun, time_it: bool = True) -> dict:
    """``RUN/cost.json`` (once per run): the training FLOPs of one iteration (teacher forward,
    student forward and backward, every term and adapter; kaseg's FLOP counter) and the seconds
    of one iteration of this run trained alone, on the run's device (fp32, default layout). Why: a
    comparison weighs what each arm gains against what it costs; lockstep shares the teacher
    only inside a comparison, a user deploying one method pays the step alone. A run from a
    teacher cache counts its step as it runs, without the teacher
    (``train_gflops_per_iter``, ``seconds_per_iter_cached``), and the teacher's forward it
    skips apart (``teacher_gflops_per_iter``; ``seconds_per_iter_alone`` is the live step's)."""
    path = p.folder / COST
    if path.exists():
        return json.loads(path.read_text())
    if not is_main():
        return {}
    device = resolve_device(p.cfg.train.device)
    inputs = step_inputs(p.cfg, p.task.student.num_classes, p.unlabeled_set is not None)
    with memos_off(p.task):
        twin = training_copy(p.task, device)
    flops = train_step_flops(twin, inputs, device, copy=False)
    seconds = train_step_seconds(twin, inputs, device, runs=2, copy=False) if time_it else None
    record = {"train_gflops_per_iter": flops / 1e9, "iters": p.cfg.train.iters,
              "batch": p.cfg.train.batch_size, "unlabeled_batch": (
                  inputs[2].shape[0] * world_size() if len(inputs) > 2 else 0),
              "input_size": list(inputs[0].shape[-2:]), "device": str(device)}
    if seconds is not None:
        record["seconds_per_iter_alone"] = seconds
    if cache_options(p.cfg) is not None:
        record.update(_cached_cost(p, twin, inputs, flops, device, time_it))
    del twin
    atomic_write_text(path, json.dumps(record, indent=2))
    return record


def cached_inputs(cfg: Config, teacher: torch.nn.Module, inputs: tuple) -> tuple:
    """``inputs`` of a step from a teacher cache: the images and labels, and the teacher's
    outputs on the images as the cache stores them (its dtype), in place of running it."""
    opts = cache_options(cfg)
    device = next(iter(teacher.parameters())).device
    with torch.no_grad():
        out = teacher(inputs[0].to(device))
    stored = {e: pick(out, e).to(getattr(torch, opts.dtype)) for e in needed_entries(cfg)}
    return (*inputs[:2], None, None, stored)


def _cached_cost(p: PreparedRun, twin, inputs: tuple, flops: int, device, time_it: bool) -> dict:
    """A cached run's step: its FLOPs and seconds without the teacher, and the teacher's
    forward it skips."""
    cached = cached_inputs(p.cfg, twin.teacher.inner, inputs)
    own = train_step_flops(twin, cached, device, copy=False)
    out = {"train_gflops_per_iter": own / 1e9, "teacher_gflops_per_iter": (flops - own) / 1e9,
           "teacher_cache": cache_options(p.cfg).path}
    if time_it:
        out["seconds_per_iter_cached"] = train_step_seconds(twin, cached, device, runs=2,
                                                            copy=False)
    return out


def _student_io(student: SegModel, train_set, val_set, run: Path, train: TrainConfig,
                num_workers: int):
    """(validate, export) of a distillation run: the student alone is evaluated and saved."""
    device = resolve_device(train.device)
    meta = dataset_meta(train_set, student.num_classes)

    def validate() -> dict:
        return evaluate(student, val_set, train.val_batch_size, device, train.amp, num_workers)

    def export(which: str) -> None:
        save_model(student, run / which, meta)  # adapters and teacher stay out

    return validate, export


def _describe(task: DistillTask, train_set, unlabeled_set) -> None:
    log.info("distill: CE%s", "".join(f" + {w:g} * {k} {o or ''}"
                                      for k, (w, o) in task.terms.items()))
    if unlabeled_set is not None:
        log.info("distill: %d labelled + %d unlabelled training images%s", len(train_set),
                 len(unlabeled_set), ", pseudo-labels" if task.config.pseudo_labels else "")


def fit_distillation(task: DistillTask, train_set, val_set, run: str | Path, *,
                     train: TrainConfig, seed: int, record: dict, num_workers: int = 0,
                     force: bool = False, unlabeled_set=None,
                     unlabeled_batch_size: int | None = None, name: str = "",
                     cfg: Config | None = None) -> dict:
    """Stage 2 on objects: train ``task`` (its student is saved alone, as ``best``/``last``).
    ``record``: what the run was asked to do (a resumed run must be asked the same); ``cfg``
    (from a config): its step's cost is recorded too (:func:`record_cost`)."""
    run = Path(run)
    name = name or task.student.spec.name
    prepare_run(run, record, force)
    unlabeled_set = _used(task, unlabeled_set)
    if cfg is not None:
        record_cost(PreparedRun(task, train_set, val_set, run, cfg, unlabeled_set))
    _describe(task, train_set, unlabeled_set)
    validate, export = _student_io(task.student, train_set, val_set, run, train, num_workers)
    summary = fit(task, train_set, train, run, seed=seed, validate=validate, export=export,
                  num_workers=num_workers, desc=f"distill {name}", unlabeled_set=unlabeled_set,
                  unlabeled_batch_size=unlabeled_batch_size)
    return write_result(run, summary, name)


CONTROL_SEED_OFFSET = 1  # the untrained encoder of the random-encoder control
ADAPTER_SEED_OFFSET = 2  # adapters and regressors: the same in every arm of a seed


def build_distill_task(cfg: Config, student: SegModel, teacher: SegModel,
                       autoencoder: FeatureAutoencoder | None, ae_meta: dict | None = None,
                       ae_source: str | Path = "autoencoder", masks=None) -> DistillTask:
    """The one builder of a distillation step, for the command line and the Python API alike:
    checks that the autoencoder fits this teacher map and student stride, builds the untrained
    encoder of ``distill.control=random_encoder``, and seeds the adapters by ``cfg.seed``."""
    dcfg = cfg.distill
    if needs_autoencoder(dcfg.losses) and autoencoder is None:
        raise KasegError(NEEDS_AE)
    if autoencoder is None:
        encoder, latent = torch.nn.Identity(), 1
    else:
        meta = {"in_channels": autoencoder.in_channels, "strides": list(autoencoder.strides),
                **(ae_meta or {})}
        check_autoencoder_fits(meta, ae_source, teacher, cfg.teacher.tap,
                               student.feature_info[dcfg.student_tap].stride)
        if dcfg.control == "random_encoder":  # negative control: same shapes, no training
            with seeded(cfg.seed + CONTROL_SEED_OFFSET):
                autoencoder = FeatureAutoencoder(autoencoder.in_channels,
                                                 autoencoder.latent_channels,
                                                 autoencoder.strides)
        encoder, latent = autoencoder.encoder.eval(), autoencoder.latent_channels
    with seeded(cfg.seed + ADAPTER_SEED_OFFSET):
        return distill_task(cfg, student, teacher.eval(), encoder, latent, masks)


def distill_task(cfg: Config, student: SegModel, teacher: SegModel, encoder: torch.nn.Module,
                 latent_channels: int, masks=None) -> DistillTask:
    """A :class:`DistillTask` from a config (no checks, no seeding: see
    :func:`build_distill_task`)."""
    try:
        return DistillTask(student=student, teacher=teacher, encoder=encoder,
                           latent_channels=latent_channels, config=cfg.distill,
                           teacher_tap=cfg.teacher.tap, masks=masks)
    except ValueError as e:
        raise KasegError(str(e)) from None


def teacher_training_config(cfg: Config) -> Config:
    """The config that trains ``cfg.teacher`` itself (its network, iterations and lr)."""
    t = cfg.teacher
    return replace(cfg, model=ModelConfig(t.name, t.output_stride, t.decoder_channels, t.pretrained),
                   train=replace(cfg.train, iters=t.iters or cfg.train.iters, lr=t.lr or cfg.train.lr))


def pipeline(cfg: Config, run: str | Path, force: bool = False) -> dict:
    """teacher -> autoencoder -> student (CE only, the baseline) -> distilled student, each in its
    own subfolder of ``run``. Finished stages are not redone; a set ``teacher.weights`` skips the
    teacher stage."""
    run = Path(run)
    check_losses_fit(cfg, "pipeline")
    check_memory_fits(cfg, "pipeline")
    results = {}
    if not cfg.teacher.weights:
        results["teacher"] = train_segmenter(teacher_training_config(cfg), run / "teacher", force)
        cfg = replace(cfg, teacher=replace(cfg.teacher, weights=str(run / "teacher")))
    if not cfg.ae.weights:
        results["autoencoder"] = train_autoencoder(cfg, run / "ae", force)
        cfg = replace(cfg, ae=replace(cfg.ae, weights=str(run / "ae")))
    results["student"] = train_segmenter(cfg, run / "student", force)
    results["distilled"] = distill(cfg, run / "distilled", force)
    summary = {k: v["best_miou"] for k, v in results.items() if "best_miou" in v}
    if "autoencoder" in results:
        summary["autoencoder_rel_error"] = results["autoencoder"]["val"]["rel_error"]
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2))
    return results


__getattr__ = renamed(__name__, {"DistillRun": "PreparedRun"}, globals())  # 0.1.0's names
