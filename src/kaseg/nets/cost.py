"""What a model costs: parameters and FLOPs, counted by torch's own FLOP counter with one formula
of ours (a grouped convolution's backward)."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """FLOPs of a convolution's backward: each gradient it computes (input, weight) takes as many
    multiply-adds as the forward. Why ours: torch's formula (2.14) counts the weight gradient of a
    grouped convolution as if it had one group, 32x too many for a depthwise 3x3 of 32 channels,
    which made a MobileNetV2 student's backward 14x its forward. Every FLOP kaseg counts goes
    through :func:`flop_counter` (tests/test_layout.py checks that nothing opens torch's own)."""
    # the forward's multiply-adds: every element of the larger side (the output of a plain conv,
    # the input of a transposed one) takes (channels per group) x kernel of them
    big = x_shape if transposed else grad_out_shape
    macs = 1
    for d in big:
        macs *= d
    for d in w_shape[1:]:
        macs *= d
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter with our convolution-backward formula."""
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flop})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    """FLOPs of one forward pass on a batch of one ``size`` image (a multiply-add counts 2)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, *size, device=device)
    counter = flop_counter()
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


def measure_latency(model: nn.Module, size: tuple[int, int], device: str | torch.device = "cpu",
                    runs: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of one forward pass, batch 1, after ``warmup`` passes. The model is
    moved to ``device`` *before* inference mode: moved inside it, its weights would become
    inference tensors, and a later training step on them fails (on a GPU only: on the CPU the
    move is a no-op)."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    with torch.inference_mode():
        x = torch.randn(1, 3, *size, device=device)
        ms = median_seconds(lambda: model(x), device, runs, warmup) * 1e3
    model.train(was_training)
    return ms


def model_cost(model: nn.Module, size: tuple[int, int]) -> dict:
    flops = count_flops(model, size)
    return {"params": count_params(model), "gflops": flops / 1e9, "gmacs": flops / 2e9,
            "size": list(size)}


def moved(inputs: tuple, device) -> tuple:
    """A step's inputs on ``device`` (a teacher cache's outputs, a dict, included)."""
    return tuple({k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else
                 None if x is None else x.to(device) for x in inputs)


def training_copy(task: nn.Module, device=None) -> nn.Module:
    """A copy of ``task`` in training mode (on ``device`` when given), to measure on: one copy
    serves both measurements of a run (a teacher is copied once, not twice)."""
    twin = copy.deepcopy(task).train()
    return twin.to(device) if device is not None else twin


def _forked(device: torch.device):
    """The global RNG (and CUDA's on a GPU) restored after the block."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def train_step_flops(task: nn.Module, inputs: tuple,
                     device: torch.device | str | None = None, copy: bool = True) -> int:
    """FLOPs of one training step of ``task`` on ``inputs``: its forward (teacher, student,
    every term and adapter) and its backward, by :func:`flop_counter`. Measured on a copy, so the
    task's weights, buffers (BatchNorm statistics, a warm-up counter) and the global RNG are left
    as they were: a run that records its cost trains exactly as one that does not. ``copy=False``:
    ``task`` is already a throwaway copy (:func:`training_copy`) and is used as it is."""
    twin = training_copy(task, device) if copy else task
    device = next(iter(twin.parameters())).device
    inputs = moved(inputs, device)
    with _forked(device):
        counter = flop_counter()
        with counter:
            twin(*inputs)["loss"].backward()
    return int(counter.get_total_flops())


def train_step_seconds(task: nn.Module, inputs: tuple, device: torch.device | str | None = None,
                       runs: int = 3, warmup: int = 1, copy: bool = True) -> float:
    """Median seconds of one training step (forward, backward, SGD update) of ``task`` alone, on
    a copy (the task and the global RNG are left as they were; ``copy``: as in
    :func:`train_step_flops`)."""
    twin = training_copy(task, device) if copy else task
    device = next(iter(twin.parameters())).device
    inputs = moved(inputs, device)
    opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=1e-6)

    def step():
        opt.zero_grad(set_to_none=True)
        twin(*inputs)["loss"].backward()
        opt.step()

    with _forked(device):
        return median_seconds(step, device, runs, warmup)
