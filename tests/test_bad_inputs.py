"""Fuzz-style: every kind of bad input gives one line (no traceback) naming the file or key, exit
code 2, and leaves existing run folders byte-for-byte as they were."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaseg.cli import main

# every test here trains a small run first (the fixture) and then feeds it bad input
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _args(root, out, *extra):
    return ["train", "--config", str(ROOT / "configs" / "synthetic_tiny.yaml"), "--out", str(out),
            "data.dataset=folder", f"data.root={root}", "data.crop_size=16", "train.iters=2",
            "train.val_every=2", "train.batch_size=6", "train.val_batch_size=1",
            "train.device=cpu", *extra]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, len(path.read_bytes()) // 3)])


def _png_image(ds: Path) -> None:  # a truncated PNG where the first image was
    img = ds / "images" / "img0.jpg"
    Image.open(img).save(ds / "images" / "img0.png")
    img.unlink()
    _truncate(ds / "images" / "img0.png")


DEFECTS = {  # name -> (break the dataset copy, text the error must contain)
    "truncated jpeg": (lambda ds: _truncate(ds / "images" / "img0.jpg"),
                       "img0.jpg: unreadable image"),
    "truncated png": (_png_image, "img0.png: unreadable image"),
    "zero-size image": (lambda ds: (ds / "images" / "img0.jpg").write_bytes(b""),
                        "img0.jpg: unreadable image"),
    "mask of the wrong mode": (
        lambda ds: Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(ds / "masks" / "img0.png"),
        "img0.png: mask has mode RGB"),
    "mask of the wrong size": (
        lambda ds: Image.fromarray(np.zeros((10, 32), np.uint8)).save(ds / "masks" / "img0.png"),
        "img0.png: mask is 32x10 but its image is 32x24"),
    "label out of range": (
        lambda ds: Image.fromarray(np.full((24, 32), 7, np.uint8)).save(ds / "masks" / "img0.png"),
        "img0.png: label values [7] are outside 0..2"),
    "empty split": (lambda ds: (ds / "splits" / "train.txt").write_text(""),
                    "split 'train' has no images"),
    "missing mask": (lambda ds: (ds / "masks" / "img0.png").unlink(), "img0.jpg: has no mask"),
}


@pytest.fixture
def finished_run(tmp_path, folder_dataset):
    run = tmp_path / "run"
    assert main(_args(folder_dataset, run)) == 0
    return run


def _one_error_line(capsys, needle):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "kaseg: error:" in line]
    assert all(line.startswith("kaseg: error:") for line in errors), err  # on a line of its own
    assert len(errors) == 1 and any(n in errors[0] for n in needle.split(" | ")), err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_bad_data_gives_one_line_and_touches_no_run(tmp_path, folder_dataset, finished_run,
                                                    capsys, defect):
    before = _snapshot(finished_run)
    broken = tmp_path / "broken"
    shutil.copytree(folder_dataset, broken)
    breaker, needle = DEFECTS[defect]
    breaker(broken)
    capsys.readouterr()
    workers = "data.num_workers=1" if defect == "truncated jpeg" else "data.num_workers=0"
    assert main(_args(broken, tmp_path / "new", workers)) == 2  # a fresh run on bad data
    _one_error_line(capsys, needle)
    assert not (tmp_path / "new" / "checkpoint.pt").exists()
    assert main(_args(broken, finished_run, workers)) == 2  # pointed at the finished run
    # refused: for the bad data (found first, while building the dataset) or the changed config
    _one_error_line(capsys, f"{needle} | was started with a different config (data.root)")
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize("override, needle", [
    ("train.iters=abc", "'train.iters' must be int"),
    ("train.iterz=5", "unknown config key 'train.iterz'; did you mean 'train.iters'?"),
    ("data.crop_size=[1, 2, 3]", "'data.crop_size' must be"),
    ("model.name=nope", "unknown model 'nope'"),
])
def test_bad_config_gives_one_line_and_touches_no_run(folder_dataset, finished_run, capsys,
                                                      override, needle):
    before = _snapshot(finished_run)
    capsys.readouterr()
    assert main(_args(folder_dataset, finished_run, override, "--force")) == 2
    _one_error_line(capsys, needle)
    assert _snapshot(finished_run) == before


def test_files_that_are_not_checkpoints(tmp_path, folder_dataset, finished_run, capsys):
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    capsys.readouterr()
    assert main(["eval", str(garbage), "--config", str(finished_run / "config.yaml")]) == 2
    _one_error_line(capsys, "model.safetensors: not a safetensors checkpoint")
    # a run whose training checkpoint is garbage: resuming refuses, and nothing is overwritten
    run = tmp_path / "run2"
    shutil.copytree(finished_run, run)
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("iters: 2", "iters: 4", 1))  # so it must resume
    before = _snapshot(run)
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    _one_error_line(capsys, "checkpoint.pt: not a readable kaseg training checkpoint")
    assert _snapshot(run) == before
    assert main(["predict", str(tmp_path / "model.safetensors"), str(folder_dataset / "images"),
                 "--out", str(tmp_path / "p")]) == 2
    _one_error_line(capsys, "not a safetensors checkpoint")


SYN = str(ROOT / "configs" / "synthetic_pipeline.yaml")
FOLDER = str(ROOT / "configs" / "compare_folder.yaml")


@pytest.mark.parametrize("argv, says", [
    (["train", "--config", SYN, "train.lr=0"], "train.lr must be > 0, got 0.0"),
    (["train-ae", "--config", SYN, "ae.epochs=0"], "ae.epochs must be > 0, got 0.0"),
    (["distill", "--config", SYN, "distill.unlabeled_weight=1.5"],
     "distill.unlabeled_weight must be in [0, 1], got 1.5"),
    (["pipeline", "--config", SYN, "distill.unlabeled_weight=1.5"],
     "distill.unlabeled_weight must be in [0, 1], got 1.5"),
    (["compare", "--config", FOLDER, "train.momentum=1"],
     "train.momentum must be in [0, 1), got 1.0"),
    (["demo", "--quick", "--device", "cpux"],
     "train.device 'cpux' is not a device; use auto, cpu, cuda, cuda:N or mps"),
], ids=["train", "train-ae", "distill", "pipeline", "compare", "demo"])
def test_every_command_refuses_a_bad_value_before_anything_trains(tmp_path, capsys, argv, says):
    """Each command checks the whole config when it reads it: a value out of range is one line
    naming the key, and nothing is written (a pipeline does not train a teacher, an autoencoder
    and a student first)."""
    out = tmp_path / "out"
    assert main([*argv[:1], "--out", str(out), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_under_torchrun_a_global_batch_that_does_not_split_is_refused_when_read(monkeypatch):
    """3 processes: train.batch_size 8 (and an unlabelled batch of 4) cannot be split evenly;
    refused when the config is read, before any process trains."""
    import kaseg.core.distributed as dist_mod
    from kaseg.core.errors import KasegError
    from kaseg.engine.experiment import load_config

    monkeypatch.setattr(dist_mod, "world_size", lambda: 3)
    with pytest.raises(KasegError, match=r"synthetic_pipeline.yaml: train.batch_size=8 \(the "
                                         r"global batch\) must be divisible by the 3 processes"):
        load_config(SYN, ["train.batch_size=8"])
    with pytest.raises(KasegError, match=r"distill.unlabeled_batch_size=4 \(the global batch\)"):
        load_config(SYN, ["train.batch_size=6", "distill.unlabeled_batch_size=4"])
    assert load_config(SYN, ["train.batch_size=6"]).train.batch_size == 6
