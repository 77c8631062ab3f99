"""`benchmarks/gpu_check.sh --dry-run`: the GPU check starts, every part runs at tiny sizes on the
CPU and lands in one JSON and one markdown (so the session lent a device only has to run it)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["missing"] == []
    amp = record["amp"]["rows"]
    assert {(r["dtype"], r["affinity"]) for r in amp} == {
        ("float16", "dense"), ("float16", "gram"), ("bfloat16", "dense"), ("bfloat16", "gram")}
    bf16 = [r for r in amp if r["dtype"] == "bfloat16"]
    for r in bf16:  # CPU autocast has bf16: these must have run, with every term finite
        assert r["finite"] and {"ce", "adapt", "affinity", "loss"} <= set(r["losses"])
        assert all(math.isfinite(v) for v in r["losses"].values())
        assert r["distill_step_ms"] > 0 and r["overhead"] > 0
    tr = record["torchrun"]
    assert tr["exit"] == 0 and tr["backend"] == "gloo"
    assert {"teacher", "student", "distilled"} <= set(tr["summary"])
    assert record["bench"]["result"]["train"]["distill_overhead"] > 0
    assert set(record["study"]["rows"]) == {"baseline", "kd_t2", "ka"}
    assert "delta" in record["study"]["rows"]["ka"]
    rep = record["report"]
    assert rep["exit"] == 0 and set(rep["rows"]) == {"baseline", "kd_t2"} and rep["pictures"]
    assert set(rep["costs"]) == {"teacher", "student"}
    md = (out / "gpu_check.md").read_text()
    assert "## kaseg compare report" in md
    assert "## AMP distillation steps" in md and "## torchrun" in md and "## study regime" in md


def test_gpu_check_refuses_an_unknown_argument(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "unknown argument '--fast'" in done.stderr
