"""Where and how a job runs: the device, mixed precision, and the random number generators.

Every stage (training, evaluation, benchmarks, the CLI) asks these questions the same way, so the
answers live in one place.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .distributed import is_distributed, local_device
from .errors import KasegError



def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:1"``; under torchrun
    each process gets its own GPU."""
    if is_distributed() and torch.cuda.is_available() and name in ("auto", "cuda"):
        return local_device()  # torchrun: this process's GPU
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KasegError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def on_device(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """The one rule of where a model and its inputs live: the model is moved to the run's
    device (``resolve_device(train.device)``) where it is used, and every input is moved to
    :func:`model_device` of the model it is fed to (:func:`inputs_for`). Loaders may return a
    model anywhere; evaluation, costs and pictures all place it with this."""
    return model.to(torch.device(device))


def inputs_for(model: torch.nn.Module, *tensors: torch.Tensor):
    """``tensors`` moved to where ``model``'s weights are (one tensor: that tensor)."""
    device = model_device(model)
    moved = tuple(t.to(device) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def eval_generator() -> torch.Generator:
    """The generator of every evaluation loader. Why: a DataLoader without one draws its base
    seed from the global RNG each time it is iterated, so validating would move a training run's
    dropout stream and its weights would depend on ``train.val_every``."""
    return torch.Generator().manual_seed(0)


def autocast(device: torch.device, enabled: bool):
    """bf16 on CPU, fp16 on CUDA: the dtype each device runs fastest without a scaler on CPU."""
    if not enabled and not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()  # a device without autocast (e.g. meta): nothing to stop
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


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
