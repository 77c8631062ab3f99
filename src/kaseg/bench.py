"""``kaseg bench``: what a teacher/student pair costs at one input size, measured in one process so
the ratios are comparable: params, GFLOPs, inference latency and throughput, the time of a training
step with and without distillation, and how fast the data loader feeds it."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from .cost import count_params, count_flops, measure_latency
from .data.synthetic import SyntheticScenes
from .data.transforms import TrainTransform
from .method import DistillTask, FeatureAutoencoder, ae_strides
from .models import build_model
from .supervised import SegmentationTask
from .train import InfiniteSampler, SeededSamples


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def throughput(model, size, device, batch: int, runs: int = 10, warmup: int = 3) -> float:
    """Images per second of inference at ``batch``."""
    model.eval().to(device)
    x = torch.randn(batch, 3, *size, device=device)
    for _ in range(warmup):
        model(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(runs):
        model(x)
    _sync(device)
    return batch * runs / (time.perf_counter() - t0)


def step_time(task, size, device, batch: int, runs: int = 10, warmup: int = 3,
              amp: bool = False) -> float:
    """Median seconds of one training step (forward, backward, SGD update) of ``task``."""
    from .evaluate import autocast

    task.to(device).train()
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, 8, (batch, *size), device=device)
    times = []
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            loss = task(x, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


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
            "images_per_s": throughput(net, size, device, batch, runs)}
    t, s = out["teacher_cost"], out["student_cost"]
    out["flops_ratio"] = s["gflops"] / t["gflops"]
    out["latency_ratio"] = s["latency_ms"] / t["latency_ms"]
    # training: the student alone, and distilled (the method's two terms, a fresh autoencoder)
    t_info = nets["teacher"].feature_info["pre_logits"]
    s_info = nets["student"].feature_info["pre_logits"]
    ae = FeatureAutoencoder(t_info.channels, max(1, t_info.channels // 2),
                            ae_strides(s_info.stride // t_info.stride))
    baseline = step_time(SegmentationTask(nets["student"]), size, device, batch, runs, amp=amp)
    distill = step_time(DistillTask(nets["student"], nets["teacher"], ae.encoder,
                                    ae.latent_channels), size, device, batch, runs, amp=amp)
    teacher_fwd = _teacher_forward(nets["teacher"], size, device, batch, runs, amp)
    out["train"] = {"student_step_s": baseline, "distill_step_s": distill,
                    "teacher_forward_s": teacher_fwd, "distill_vs_student": distill / baseline,
                    "distill_overhead": distill / (baseline + teacher_fwd)}
    out["loader_images_per_s"] = loader_rate(size, batch, workers)
    return out


@torch.inference_mode()
def _teacher_forward(teacher, size, device, batch, runs, amp) -> float:
    from .evaluate import autocast

    teacher.eval().to(device)
    x = torch.randn(batch, 3, *size, device=device)
    times = []
    for i in range(3 + runs):
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            teacher(x)
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


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
