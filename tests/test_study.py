"""``kaseg study`` end to end on a tiny ladder: tables, JSON and figure from the runs, resumable."""

import json

import pytest

import kaseg.arms as arms_mod
import kaseg.presets as presets
import kaseg.study as study
from kaseg.cli import main
from kaseg.config import AEConfig, Config, DataConfig, ModelConfig, TeacherConfig, TrainConfig


def tiny_config(quick=False, device="cpu"):
    data = DataConfig(image_size=32, train_count=16, val_count=4, crop_size=32)
    train = TrainConfig(iters=2, batch_size=4, val_every=2, val_batch_size=4, device="cpu")
    return Config(data=data, model=ModelConfig("tiny-student"), train=train,
                  teacher=TeacherConfig(iters=2), ae=AEConfig(epochs=0.5, min_iters=0))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_study_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "demo_config", tiny_config)
    monkeypatch.setattr(presets, "init_schedule", lambda quick: (2, 0.1))
    monkeypatch.setattr(study, "WEIGHT_SCALES", [0.5, 1.0])
    monkeypatch.setattr(study, "TUNING_SEEDS", [100])
    monkeypatch.setattr(arms_mod, "AE_VARIANTS", {"plateau": dict(ae=dict(
        epochs=1.0, val_every_epochs=0.25, patience=1))})
    monkeypatch.setattr(study, "AE_VARIANTS", arms_mod.AE_VARIANTS)
    monkeypatch.setattr(study, "REGIMES", [
        study.Regime("a", 32, True, 2, ["baseline", "ka", "ka_ae_plateau", "ctrl_random_ae"]),
        study.Regime("b", 32, False, 4, ["baseline", "ka"], tune=False),
        study.Regime("few", 32, True, 2, ["baseline", "ka", "all_labels"], tune=False,
                     labeled_count=4)])
    out = tmp_path / "s"
    assert main(["study", "--out", str(out), "--seeds", "2", "--device", "cpu"]) == 0
    results = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in results] == ["a", "b", "few"]
    a, b, few = results
    assert a["weight_scale"] in (0.5, 1.0) and set(a["tuning"]) == {"0.5", "1"}
    assert b["weight_scale"] == a["weight_scale"] and b["tuning"] == {}  # reused, not re-tuned
    assert a["adapt_weight"] == 50 * a["weight_scale"]
    arms = [r["arm"] for r in a["rows"]]
    assert arms == ["baseline", "ka", "ka_ae_plateau", "ctrl_random_ae"]
    for row in a["rows"][1:]:
        assert row["diff"]["n"] == 2 and row["seeds"] == [0, 1]
        diffs = [x - y for x, y in zip(row["values"], a["rows"][0]["values"])]
        assert row["diff"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert {"teacher", "init"} <= {r["arm"] for r in a["records"]}
    assert "init" not in {r["arm"] for r in b["records"]}  # from scratch
    # the plateau autoencoder stopped by itself and its error is reported
    assert a["ae"]["plateau"]["iters"] <= 4 and a["ae"]["default"]["rel_error"] > 0
    # few labels: the students keep 4 labelled scenes, the rest is unlabelled (where a term can
    # use it); the upper bound keeps all
    import yaml
    ka = yaml.safe_load((out / "few" / "runs" / "ka-s0" / "config.yaml").read_text())["data"]
    top = yaml.safe_load((out / "few" / "runs" / "all_labels-s0" / "config.yaml").read_text())
    assert (ka["labeled_count"], ka["unlabeled_split"]) == (4, "train")
    assert (top["data"]["labeled_count"], top["data"]["unlabeled_split"]) == (None, None)
    assert "adapt_unlabeled" in (out / "few" / "runs" / "ka-s0" / "history.jsonl").read_text()
    assert few["labeled_count"] == 4 and few["code"]
    md = (out / "study.md").read_text()
    assert "## a:" in md and "## b:" in md and "paired Δ vs CE only" in md
    assert "Produced by `kaseg study --out s --seeds 2 --device cpu`" in md
    assert (out / "study.png").stat().st_size > 1000
    # resumable: a second call trains nothing and gives the same numbers
    histories = {p: p.read_text() for p in out.rglob("history.jsonl")}
    capsys.readouterr()
    assert main(["study", "--out", str(out), "--seeds", "2", "--device", "cpu"]) == 0
    assert {p: p.read_text() for p in out.rglob("history.jsonl")} == histories
    again = json.loads((out / "study.json").read_text())
    assert [r["rows"] for r in again] == [r["rows"] for r in results]
    # one regime alone: the others stay in study.md, from what they left
    assert main(["study", "--out", str(out), "--seeds", "2", "--device", "cpu",
                 "--regimes", "b"]) == 0
    merged = json.loads((out / "study.json").read_text())
    assert [r["name"] for r in merged] == ["a", "b", "few"]
    assert [r["rows"] for r in merged] == [r["rows"] for r in results]
    assert main(["study", "--out", str(out), "--regimes", "nope"]) == 2
