"""``kaseg demo --limited-labels`` end to end at a tiny size: the table, the paired rows, the
subset and the unlabelled stream of each arm."""

import json

import pytest
import yaml

import kaseg.presets.limited_labels as limited_labels
import kaseg.presets.recipes as presets
from kaseg.cli import main
from kaseg.core.config import AEConfig, Config, DataConfig, ModelConfig, TeacherConfig, TrainConfig


def tiny_config(quick=False, device="cpu"):
    data = DataConfig(image_size=32, train_count=16, val_count=4, crop_size=32)
    train = TrainConfig(iters=2, batch_size=4, val_every=2, val_batch_size=4, device="cpu",
                        log_every=1)
    return Config(data=data, model=ModelConfig("tiny-student"), train=train,
                  teacher=TeacherConfig(iters=2), ae=AEConfig(epochs=0.5, min_iters=0))


@pytest.mark.slow
def test_limited_labels_demo_end_to_end(tmp_path, monkeypatch, capsys, run_folder):
    monkeypatch.setattr(limited_labels, "demo_config", tiny_config)
    monkeypatch.setattr(presets, "init_schedule", lambda quick: (2, 0.1))
    monkeypatch.setattr(presets, "LABELED_COUNT", 4)
    out = tmp_path / "d"
    assert main(["demo", "--limited-labels", "--out", str(out), "--seeds", "2",
                 "--device", "cpu"]) == 0
    report = capsys.readouterr().out
    assert "limited labels, many pictures" in report and "Mean paired Δ vs CE only" in report
    runs = out / "limited-labels" / "runs"
    data = {arm: yaml.safe_load((run_folder(runs, arm, 0) / "config.yaml").read_text())["data"]
            for arm in presets.LIMITED_ARMS}
    assert data["ka"]["labeled_count"] == 4 and data["ka"]["unlabeled_split"] == "train"
    assert data["ka_labeled"]["unlabeled_split"] is None
    assert data["all_labels"]["labeled_count"] is None
    history = {arm: (run_folder(runs, arm, 0) / "history.jsonl").read_text() for arm in presets.LIMITED_ARMS}
    assert "kd_unlabeled" in history["kd_t2"] and "kd_unlabeled" not in history["kd_t2_labeled"]
    assert "ce_pseudo_unlabeled" in history["pseudo"]
    records = json.loads((out / "limited-labels" / "results.json").read_text())
    assert {r["arm"] for r in records} == {"teacher", "init", *presets.LIMITED_ARMS}
    assert sum(r["arm"] == "ka" for r in records) == 2
    # the shared stages are the demo's own folders
    assert (out / "teacher" / "last.safetensors").exists() and (out / "init").is_dir()
