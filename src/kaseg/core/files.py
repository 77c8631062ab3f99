"""Atomic file writes, used for every file kaseg saves: a temp file in the same folder, fsynced,
then renamed over the target, so a crash mid-write leaves the previous file intact. Under
torchrun only rank 0 writes. Below every module that saves anything (no network libraries)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .distributed import is_main


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    if not is_main():  # under torchrun rank 0 alone writes files
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
