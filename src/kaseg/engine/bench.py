"""``kaseg bench``: what a teacher/student pair costs at one input size, measured in one process so
the ratios are comparable: params, GFLOPs, inference latency and throughput, the time of a training
step with and without distillation, and how fast the data loader feeds it."""

from __future__ import annotations

import itertools
import time

import torch
from torch.utils.data import DataLoader

from ..nets.cost import count_flops, count_params, measure_latency, median_seconds
from ..data.synthetic import SyntheticScenes
from ..data.transforms import TrainTransform
from ..core.runtime import autocast
from .tasks import DistillTask
from ..losses.method import FeatureAutoencoder, ae_strides
from ..nets.models import build_model
from .tasks import SegmentationTask
from .train import InfiniteSampler, SeededSamples, rng_state, set_rng_state


def lockstep_iteration(tasks, batches, device, amp: bool = False,
                       memory_format=torch.contiguous_format, swap_rng: bool = False):
    """A function that runs one training iteration (forward, backward, SGD update) of every
    task in ``tasks`` on the same next batch of ``batches`` (an iterator of (images, targets),
    optionally followed by unlabelled images and their validity mask):
    one step alone, or an iteration of arms in lockstep. ``swap_rng``: each task's global RNG
    state swapped in around its step, as :func:`kaseg.engine.train.fit_lockstep` does."""
    tasks = [t.to(device).to(memory_format=memory_format).train() for t in tasks]
    opts = [torch.optim.SGD([p for p in t.parameters() if p.requires_grad], lr=1e-4,
                            momentum=0.9) for t in tasks]
    states = [rng_state() for _ in tasks]

    def run():
        x, y, *unlabeled = next(batches)
        x = x.contiguous(memory_format=memory_format)
        for i, (task, opt) in enumerate(zip(tasks, opts)):
            if swap_rng:
                set_rng_state(states[i])
            with autocast(device, amp):
                loss = task(x, y, *unlabeled)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if swap_rng:
                states[i] = rng_state()

    return run


def step_time(task, size, device, batch: int, runs: int = 10, amp: bool = False) -> float:
    """Median seconds of one training step (forward, backward, SGD update) of ``task``."""
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, 8, (batch, *size), device=device)
    return median_seconds(lockstep_iteration([task], itertools.repeat((x, y)), device, amp),
                          device, runs)


def forward_time(net, size, device, batch: int, runs: int = 10, amp: bool = False) -> float:
    """Median seconds of one inference forward pass at ``batch`` (the teacher's share of a step).
    The move to ``device`` comes before inference mode (see :func:`kaseg.nets.cost.measure_latency`)."""
    net.eval().to(device)
    x = torch.randn(batch, 3, *size, device=device)

    def forward():
        with torch.inference_mode(), autocast(device, amp):
            net(x)

    return median_seconds(forward, device, runs)


def train_times(teacher, student, size, device, batch: int, runs: int = 10,
                amp: bool = False) -> dict:
    """A training step of the student alone vs distilled (the method's two terms, a fresh
    autoencoder), and the teacher's forward pass; their ratios are the distillation's cost."""
    ti, si = teacher.feature_info["pre_logits"], student.feature_info["pre_logits"]
    ae = FeatureAutoencoder(ti.channels, max(1, ti.channels // 2),
                            ae_strides(si.stride // ti.stride))
    alone = step_time(SegmentationTask(student), size, device, batch, runs, amp)
    distilled = step_time(DistillTask(student=student, teacher=teacher, encoder=ae.encoder,
                                           latent_channels=ae.latent_channels), size,
                          device, batch, runs, amp)
    teacher_fwd = forward_time(teacher, size, device, batch, runs, amp)
    return {"student_step_s": alone, "distill_step_s": distilled,
            "teacher_forward_s": teacher_fwd, "distill_vs_student": distilled / alone,
            "distill_overhead": distilled / (alone + teacher_fwd)}


def loader_rate(size, batch: int, workers: int, batches: int = 20) -> float:
    """Training images per second the data loader delivers (synthetic scenes, full augmentation)."""
    ds = SyntheticScenes("train", 4 * batch * batches, max(size), transform=TrainTransform(
        size, 0.5, 2.0, True, 0.2))
    loader = DataLoader(SeededSamples(ds, 0), batch_size=batch, num_workers=workers,
                        sampler=InfiniteSampler(len(ds), 0, positions=True),
                        persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - t0)


def bench(teacher: str, student: str, size: tuple[int, int], device: str | torch.device = "cpu",
          batch: int = 8, runs: int = 10, workers: int = 2, classes: int = 8,
          amp: bool = False) -> dict:
    device = torch.device(device)
    nets = {"teacher": build_model(teacher, classes), "student": build_model(student, classes)}
    out: dict = {"teacher": teacher, "student": student, "size": list(size), "batch": batch,
                 "device": str(device), "amp": amp}
    for role, net in nets.items():
        out[role + "_cost"] = {
            "params_m": count_params(net) / 1e6, "gflops": count_flops(net, size) / 1e9,
            "latency_ms": measure_latency(net, size, device, runs=runs),
            "images_per_s": batch / forward_time(net, size, device, batch, runs, amp)}
    t, s = out["teacher_cost"], out["student_cost"]
    out["flops_ratio"] = s["gflops"] / t["gflops"]
    out["latency_ratio"] = s["latency_ms"] / t["latency_ms"]
    out["train"] = train_times(nets["teacher"], nets["student"], size, device, batch, runs, amp)
    out["loader_images_per_s"] = loader_rate(size, batch, workers)
    return out


def format_bench(r: dict) -> str:
    t, s = r["teacher_cost"], r["student_cost"]
    h, w = r["size"]
    lines = [f"{r['teacher']} -> {r['student']} at {h}x{w}, {r['device']}, batch {r['batch']}"
             f"{' (amp)' if r['amp'] else ''}",
             f"{'':<10} {'params (M)':>10} {'GFLOPs':>9} {'latency ms':>11} {'images/s':>9}"]
    for role, c in (("teacher", t), ("student", s)):
        lines.append(f"{role:<10} {c['params_m']:>10.2f} {c['gflops']:>9.2f} "
                     f"{c['latency_ms']:>11.1f} {c['images_per_s']:>9.1f}")
    lines.append(f"student / teacher: FLOPs {100 * r['flops_ratio']:.1f}%, latency "
                 f"{100 * r['latency_ratio']:.1f}%")
    tr = r["train"]
    lines.append(f"training step: student alone {1e3 * tr['student_step_s']:.1f} ms, distilled "
                 f"{1e3 * tr['distill_step_s']:.1f} ms ({tr['distill_vs_student']:.2f}x); teacher "
                 f"forward {1e3 * tr['teacher_forward_s']:.1f} ms")
    lines.append(f"distilled step / (student step + teacher forward) = "
                 f"{tr['distill_overhead']:.3f} (the distillation terms' own cost)")
    lines.append(f"data loader: {r['loader_images_per_s']:.0f} training images/s")
    return "\n".join(lines)
