import json

import numpy as np
from PIL import Image

from kaseg.cli import main
from kaseg.demo import METHODS, methods


def test_quick_demo_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    for name in ("results.json", "report.md", "predictions.png", "curves.png"):
        assert (out / name).is_file(), name
    records = json.loads((out / "results.json").read_text())
    assert sorted(r["method"] for r in records) == sorted(["teacher", *METHODS])
    for r in records:
        assert 0.0 <= r["miou"] <= 1.0 and r["seed"] == 0
        assert r["params"] > 0 and r["gflops"] > 0 and r["latency_ms"] > 0
        assert set(r["per_class_iou"]) >= {"twin-red", "twin-blue"}
    teacher = next(r for r in records if r["method"] == "teacher")
    student = next(r for r in records if r["method"] == "baseline")
    assert teacher["gflops"] > 3 * student["gflops"]
    report = (out / "report.md").read_text()
    assert "| + both (the method) | `ka` |" in report and "Target" in report
    # the paper's comparison table, in its order: baseline, KD, FitNet, + adapt, + affinity, ours
    rows = [line.split("`")[1] for line in report.splitlines() if line.startswith("| ")
            and line.count("`") >= 2 and "|" in line.split("`")[0][2:]]
    assert rows[:8] == ["teacher", "baseline", "kd", "fitnet", "adapt", "affinity", "ka",
                        "ka_paper"]
    kd_cfg = (out / "students" / "kd-s0" / "config.yaml").read_text()
    assert "- kd\n" in kd_cfg and "kd_temperature: 4.0" in kd_cfg
    # pictures decode, at the size their layout implies
    pred = Image.open(out / "predictions.png")
    # input, ground truth, teacher, student, distilled: 5 columns, 4 rows at 100 dpi
    assert pred.size == (5 * 220, int((4 * 2.2 + 0.8) * 100))
    assert np.asarray(pred.convert("RGB")).std() > 10
    curves = Image.open(out / "curves.png")
    curves.load()
    assert curves.size[1] == 320 and curves.size[0] >= 4 * 400
    # a second run skips every finished stage: no history grows, same numbers
    histories = {p: p.read_text() for p in out.rglob("history.jsonl")}
    assert len(histories) == 2 + len(METHODS)
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    assert {p: p.read_text() for p in out.rglob("history.jsonl")} == histories
    again = json.loads((out / "results.json").read_text())
    assert [r["miou"] for r in again] == [r["miou"] for r in records]


def test_all_methods_adds_the_rest_of_the_field_in_report_order():
    assert list(methods()) == ["baseline", "kd", "fitnet", "adapt", "affinity", "ka", "ka_paper"]
    every = methods(all_methods=True)
    assert list(every) == ["baseline", "kd_t2", "kd", "kd_t6", "fitnet", "skd", "cwd", "ifvd",
                           "adapt", "affinity", "ka", "ka_paper"]
    assert every["kd_t6"]["kd_temperature"] == 6.0 and every["ifvd"]["extra_losses"] == ["ifvd"]
    assert every["cwd"]["adapt_weight"] == 0.0 and every["cwd"]["affinity_weight"] == 0.0
