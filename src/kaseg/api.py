"""Distillation from Python, with networks and data you built yourself.

The command line builds everything from a config; these two functions take the objects instead:
any kaseg model (an alias, ``arch:encoder``, ``torchvision:NAME``, or your own module wrapped in
:class:`kaseg.nets.external.TappedModel`) as teacher and student, and any dataset whose items are
``(image tensor, mask tensor)`` (255 = ignore). Training is kaseg's own loop: run folders that
resume, seeded per-sample augmentation, TensorBoard logs, checkpoints of the student alone::

    ae = api.autoencoder(teacher, student, train_set, val_set, "runs/ae")
    result = api.distill(student, teacher, train_set, val_set, "runs/d", autoencoder=ae)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


from .core.config import AEConfig, Config, DistillConfig, TeacherConfig, TrainConfig, to_dict
from .core.errors import KasegError
from .losses.registry import needs_autoencoder
from .losses.method import FeatureAutoencoder
from .core.runtime import seed_everything
from .engine.stages import build_distill_task, fit_autoencoder, fit_distillation, load_autoencoder


def _check_taps(model, tap: str, role: str) -> None:
    if tap not in model.feature_info:
        raise KasegError(f"{role} tap '{tap}' is not a feature of {model.spec.name}; choose one "
                         f"of {sorted(model.feature_info)}")


def autoencoder(teacher, student, train_set, val_set, run: str | Path, *,
                tap: str = "pre_logits", student_tap: str = "pre_logits",
                ae: AEConfig | None = None, train: TrainConfig | None = None, seed: int = 0,
                num_workers: int = 0, force: bool = False) -> FeatureAutoencoder:
    """Stage 1: the autoencoder of the teacher's map ``tap``, sized for the student's
    ``student_tap`` stride; trained (or resumed) in ``run``; returns it, trained and frozen."""
    _check_taps(teacher, tap, "teacher")
    _check_taps(student, student_tap, "student")
    ae, train = ae or AEConfig(), train or TrainConfig()
    seed_everything(seed)
    record = {"api": "kaseg.api.autoencoder", "teacher": teacher.spec.name, "tap": tap,
              "student": student.spec.name, "student_tap": student_tap, "seed": seed,
              "ae": to_dict(ae), "train": to_dict(train)}
    fit_autoencoder(teacher.eval(), student.feature_info[student_tap].stride, train_set,
                    val_set, run, tap=tap, ae=ae, train=train, seed=seed, record=record,
                    num_workers=num_workers, force=force, teacher_source=teacher.spec.name)
    net, _ = load_autoencoder(run)
    return net


def distill(student, teacher, train_set, val_set, run: str | Path, *,
            autoencoder: FeatureAutoencoder | None = None, distill: DistillConfig | None = None,
            train: TrainConfig | None = None, tap: str = "pre_logits", seed: int = 0,
            unlabeled_set=None, num_workers: int = 0, force: bool = False) -> dict:
    """Stage 2: train ``student`` with CE + the terms of ``distill.losses`` (default: the
    method's two) against the frozen ``teacher``; ``run`` gets the student's ``best``/``last``
    weights and ``metrics.json``, which is returned. Without an autoencoder, select terms that
    do not read it (e.g. KD alone: ``DistillConfig(losses={"kd": {"temperature": 2.0}})``).
    ``unlabeled_set``: images without labels, items ``(image, validity mask)``
    (:class:`kaseg.data.UnlabeledImages`)."""
    d, train = distill or DistillConfig(), train or TrainConfig()
    _check_taps(teacher, tap, "teacher")
    _check_taps(student, d.student_tap, "student")
    try:
        uses_method = needs_autoencoder(d.losses)
    except ValueError as e:
        raise KasegError(f"api.distill: {e}") from None
    if uses_method and autoencoder is None:
        raise KasegError("api.distill: pass autoencoder= (from api.autoencoder), or select "
                         "distill.losses that do not read it (the method's adapt / affinity do)")
    cfg = replace(Config(), seed=seed, distill=d, train=train,
                  teacher=replace(TeacherConfig(), name=teacher.spec.name, tap=tap))
    ae = autoencoder if uses_method else None
    task = build_distill_task(cfg, student, teacher, ae, getattr(ae, "meta", None),
                              "api.distill(autoencoder=...)")
    seed_everything(seed)
    record = {"api": "kaseg.api.distill", "student": student.spec.name,
              "teacher": teacher.spec.name, "tap": tap, "seed": seed,
              "autoencoder": None if not uses_method else {
                  "in": autoencoder.in_channels, "latent": autoencoder.latent_channels,
                  "strides": list(autoencoder.strides)},
              "distill": to_dict(d), "train": to_dict(train)}
    return fit_distillation(task, train_set, val_set, run, train=train, seed=seed, record=record,
                            num_workers=num_workers, force=force, unlabeled_set=unlabeled_set,
                            unlabeled_batch_size=d.unlabeled_batch_size)
