"""What a model costs: parameters and FLOPs, counted by torch's own FLOP counter."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    """FLOPs of one forward pass on a batch of one ``size`` image (a multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, *size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def median_seconds(fn, device: torch.device | str = "cpu", runs: int = 10,
                   warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``runs`` calls after ``warmup`` (GPU work included:
    the device is synchronised around each call). Every timing in kaseg goes through here."""
    device = torch.device(device)
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def measure_latency(model: nn.Module, size: tuple[int, int], device: str | torch.device = "cpu",
                    runs: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of one forward pass, batch 1, after ``warmup`` passes."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    x = torch.randn(1, 3, *size, device=device)
    ms = median_seconds(lambda: model(x), device, runs, warmup) * 1e3
    model.train(was_training)
    return ms


def model_cost(model: nn.Module, size: tuple[int, int]) -> dict:
    flops = count_flops(model, size)
    return {"params": count_params(model), "gflops": flops / 1e9, "gmacs": flops / 2e9,
            "size": list(size)}
