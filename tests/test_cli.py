import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=32", "data.crop_size=32", "data.train_count=16", "data.val_count=8",
        "train.iters=4", "train.val_every=2", "train.batch_size=4", "train.device=cpu"]


@pytest.mark.slow
def test_train_then_eval_reproduces_the_number(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs/synthetic_tiny.yaml"), "--out", str(run), *TINY]) == 0
    best = json.loads((run / "metrics.json").read_text())["best_miou"]
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["miou"] == best
    assert set(out["per_class_iou"]) == {"background", "grass", "water", "wire", "dot",
                                          "twin-red", "twin-blue", "beacon"}
    assert 0 <= out["pixel_acc"] <= 1 and out["protocol"] == "single-scale"


@pytest.mark.slow
def test_train_on_a_folder_dataset(tmp_path, folder_dataset, capsys):
    run = tmp_path / "run"
    code = main(["train", "--config", str(ROOT / "configs/synthetic_tiny.yaml"), "--out", str(run),
                 "data.dataset=folder", f"data.root={folder_dataset}", "data.crop_size=16",
                 "train.iters=2", "train.val_every=2", "train.batch_size=2", "train.val_batch_size=1"])
    assert code == 0
    assert json.loads((run / "best.json").read_text())["class_names"] == ["background", "road", "car"]


def test_info_json(capsys):
    assert main(["info", "tiny-student", "--size", "64", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] > 0 and info["gflops"] > 0
    assert info["features"]["pre_logits"] == {"channels": 64, "stride": 16}
    assert info["logit_stride"] == 16  # DeepLabV3's classifier at OS 16, then upsampled x16


@pytest.mark.parametrize("args,match", [
    (["train", "--config", "configs/synthetic_tiny.yaml", "--out", "{tmp}/r", "train.iter=3"],
     "unknown config key 'train.iter'; did you mean 'train.iters'"),
    (["train", "--config", "configs/synthetic_tiny.yaml", "--out", "{tmp}/r", "data.dataset=folder",
      "data.root={tmp}/missing"], "missing: dataset folder not found"),
    (["eval", "{tmp}/nothing"], "checkpoint not found"),
    (["info", "unet:resnet19"], "unknown encoder 'resnet19'"),
])
def test_errors_are_one_line(tmp_path, args, match):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "kaseg", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kaseg: error: ") and match in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


def test_demo_refuses_all_methods_with_limited_labels(tmp_path, capsys):
    """An option the command would ignore is an error, before anything trains."""
    assert main(["demo", "--limited-labels", "--all-methods", "--out", str(tmp_path / "d")]) == 2
    assert "--all-methods is not an option of --limited-labels" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
