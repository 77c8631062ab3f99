import os

import numpy as np
import pytest
import torch
from PIL import Image

# Two test processes (``pytest -n 2``, the README's command) share the 2 cores: one thread each.
# Alone (no -n): both cores to the one process. An explicit OMP_NUM_THREADS is respected. The
# test process and every process it starts (torchrun, the command line, Slurm's jobs, which
# inherit the variable) get the same count: tests that compare their weights bit for bit need
# the same float reductions on both sides.
# The first process to read this (pytest alone, or xdist's controller) records what the user set
# in KASEG_TEST_THREADS, so that xdist's workers, which inherit the controller's environment, do
# not take the controller's own count for the user's.
_MARK = "KASEG_TEST_THREADS"
if _MARK not in os.environ:
    os.environ[_MARK] = os.environ.get("OMP_NUM_THREADS", "")
THREADS = int(os.environ[_MARK] or (1 if os.environ.get("PYTEST_XDIST_WORKER") else 2))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


@pytest.fixture
def folder_dataset(tmp_path):
    """A 3-class folder dataset with split lists: 6 train and 2 val images of 24x32."""
    return write_folder_dataset(tmp_path)


@pytest.fixture(scope="module")
def module_folder_dataset(tmp_path_factory):
    """:func:`folder_dataset`, written once for a test module."""
    return write_folder_dataset(tmp_path_factory.mktemp("module"))


def write_folder_dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    rng = np.random.default_rng(0)
    names = [f"img{i}" for i in range(8)]
    for i, n in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"{n}.jpg")
        mask = rng.integers(0, 3, (24, 32)).astype(np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{n}.png")
    (root / "splits" / "train.txt").write_text("\n".join(names[:6]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(names[6:]) + "\n")
    (root / "classes.yaml").write_text("names: [background, road, car]\npalette: [[0,0,0],[128,64,128],[0,0,142]]\n")
    return root


@pytest.fixture
def run_folder():
    """``find(runs, arm, seed)``: the run folder of ``arm`` at ``seed`` in a comparison's
    ``runs/``, named with its weight scale (``ka-x0.3-s0``) when its config depends on it."""
    import re

    def find(runs, arm: str, seed: int):
        hits = [p for p in runs.iterdir()
                if re.fullmatch(rf"{re.escape(arm)}(-x[0-9.e+-]+)?-s{seed}", p.name)]
        assert len(hits) == 1, (arm, seed, sorted(p.name for p in runs.iterdir()))
        return hits[0]

    return find
