"""Multi-GPU / multi-node training under ``torchrun`` (PyTorch DDP), and the same code on one process.

``torchrun --nproc-per-node N -m kaseg train|train-ae|distill|pipeline ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`init_from_env` starts the process group from them (NCCL on
GPUs, gloo on CPU). Everything else asks :func:`rank` / :func:`world_size`: one process is simply
rank 0 of 1, so there is one code path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import KasegError


def init_from_env() -> None:
    """Join the process group torchrun describes (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes logs, weights and checkpoints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def check_global_batch(batch: int, key: str, source: str | None = None) -> None:
    """A global batch (``train.batch_size``, ``distill.unlabeled_batch_size``) is split evenly
    over the processes, so it must divide by their number."""
    world = world_size()
    if batch % world:
        raise KasegError(f"{source + ': ' if source else ''}{key}={batch} (the global batch) must "
                         f"be divisible by the {world} processes")


def local_device() -> torch.device:
    """This process's GPU under torchrun (``cuda:LOCAL_RANK``)."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def shard(n: int) -> list[int]:
    """This rank's share of ``n`` evaluation samples: every sample exactly once over all ranks
    (no padding duplicates, so reduced metrics equal the single-process ones)."""
    return list(range(rank(), n, world_size()))

