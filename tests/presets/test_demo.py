import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import kaseg.presets.demo as demo
import kaseg.presets.recipes as presets
from kaseg.cli import main
from kaseg.presets.recipes import DEMO_ARMS as DEFAULT_ARMS, MORE_ARMS, demo_arms as arms


def tiny_demo_config(quick=False, device="cpu"):
    """The demo's recipe at a size the suite can afford (the real one: ``kaseg demo --quick``)."""
    cfg = presets.demo_config(quick, device)
    return replace(cfg, data=replace(cfg.data, image_size=48, crop_size=48, val_count=16),
                   train=replace(cfg.train, iters=4, val_every=4, val_batch_size=16),
                   teacher=replace(cfg.teacher, iters=20), ae=replace(cfg.ae, epochs=0.05))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_demo_end_to_end_and_resume(tmp_path, capsys, monkeypatch, run_folder):
    monkeypatch.setattr(demo, "demo_config", tiny_demo_config)
    monkeypatch.setattr(presets, "init_schedule", lambda quick: (10, 0.1))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    for name in ("results.json", "report.md", "predictions.png", "curves.png"):
        assert (out / name).is_file(), name
    records = json.loads((out / "results.json").read_text())
    runs = [r for r in records if r["arm"] not in ("teacher", "init")]
    assert sorted((r["arm"], r["seed"]) for r in runs) == sorted(
        (a, s) for a in DEFAULT_ARMS for s in (0, 1))
    for r in records:
        assert 0.0 <= r["miou"] <= 1.0
        assert r["params"] > 0 and r["gflops"] > 0 and r["latency_ms"] > 0
        assert set(r["per_class_iou"]) >= {"twin-red", "twin-blue"}
    teacher = next(r for r in records if r["arm"] == "teacher")
    student = next(r for r in records if r["arm"] == "baseline")
    assert teacher["gflops"] > 3 * student["gflops"]
    # every arm fine-tunes the same CE-trained start
    cfg = (run_folder(out / "runs", "ka", 1) / "config.yaml").read_text()
    assert f"init_weights: {out / 'init' / 'last.safetensors'}" in cfg
    report = (out / "report.md").read_text()
    assert report.startswith("# kaseg demo") and "Produced by `kaseg demo --out demo --quick`" in report
    # the paired table: each arm's Δ is the mean of its per-seed differences to CE only
    base = {r["seed"]: 100 * r["miou"] for r in runs if r["arm"] == "baseline"}
    ka = {r["seed"]: 100 * r["miou"] for r in runs if r["arm"] == "ka"}
    delta = sum(ka[s] - base[s] for s in base) / len(base)
    line = next(l for l in report.splitlines() if l.startswith("| CE + the method (adaptation + affinity) | `ka` |"))
    assert f"| {delta:+.2f} |" in line and "[" in line
    assert "Target (the method >= CE-only + 2.5 mIoU, 95% CI above 0)" in report
    # pictures decode; the curves are a grid readable at screen size, not one long row
    pred = np.asarray(Image.open(out / "predictions.png").convert("RGB"))
    assert pred.std() > 10
    curves = Image.open(out / "curves.png")
    curves.load()
    assert curves.size[0] <= 1400 and curves.size[1] >= 600
    # a second run skips every finished stage: no history grows, same numbers
    histories = {p: p.read_text() for p in out.rglob("history.jsonl")}
    assert len(histories) == 3 + 2 * len(DEFAULT_ARMS)
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    assert {p: p.read_text() for p in out.rglob("history.jsonl")} == histories
    again = json.loads((out / "results.json").read_text())
    assert [r["miou"] for r in again] == [r["miou"] for r in records]


def test_all_methods_adds_the_rest_in_report_order():
    assert arms() == ["baseline", "kd_t2", "ka", "ka_kd"]
    every = arms(all_methods=True)
    assert set(every) == set(DEFAULT_ARMS) | set(MORE_ARMS)
    assert every[0] == "baseline" and every.index("ka") < every.index("ctrl_random_ae")
