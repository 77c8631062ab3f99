"""``kaseg bench``: every number is there, and the counted ones are exact."""

import json
import math

import pytest

from kaseg.engine.bench import bench, format_bench
from kaseg.cli import main
from kaseg.nets.cost import count_flops, median_seconds
from kaseg.nets.models import build_model


def test_bench_reports_costs_steps_and_loader(capsys):
    r = bench("tiny-teacher", "tiny-student", (32, 32), "cpu", batch=2, runs=2, workers=0)
    ft = count_flops(build_model("tiny-teacher", 8), (32, 32)) / 1e9
    fs = count_flops(build_model("tiny-student", 8), (32, 32)) / 1e9
    assert r["teacher_cost"]["gflops"] == ft and r["student_cost"]["gflops"] == fs
    assert r["flops_ratio"] == fs / ft < 1
    timings = [r["teacher_cost"]["latency_ms"], r["student_cost"]["images_per_s"],
               *r["train"].values(), r["loader_images_per_s"]]
    assert all(math.isfinite(v) and v > 0 for v in timings)
    # a distilled step runs the student's step and a teacher forward: it must take longer than
    # the student's step alone (a bench that timed the wrong task would not)
    assert r["train"]["distill_step_s"] > r["train"]["student_step_s"]
    text = format_bench(r)
    assert "student / teacher: FLOPs" in text and "data loader" in text
    assert main(["bench", "--teacher", "tiny-teacher", "--student", "tiny-student", "--size", "32",
                 "32", "--batch", "2", "--runs", "1", "--workers", "0", "--device", "cpu",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == [32, 32]


def test_median_seconds_times_the_call_and_skips_warmup():
    import time

    durations = iter([0.2, 0.2] + [0.001, 0.03, 0.001, 0.03, 0.03])  # 2 warm-up calls, then 5
    assert median_seconds(lambda: time.sleep(next(durations)), "cpu", runs=5,
                          warmup=2) == pytest.approx(0.03, abs=0.015)
