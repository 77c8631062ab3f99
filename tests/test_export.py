"""ONNX export round trip on a tiny student (skipped, saying why, without onnxruntime)."""

import pytest
import torch

from kaseg.checkpoint import save_model
from kaseg.cli import main
from kaseg.export import export_onnx
from kaseg.models import build_model


@pytest.mark.slow
def test_onnx_round_trip_matches_pytorch(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install "
                        "'kaseg[export]' to test the ONNX export")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (kaseg[export])")
    torch.manual_seed(0)
    model = build_model("tiny-student", 5)
    model.train()(torch.randn(2, 3, 64, 64))  # non-trivial BatchNorm statistics
    save_model(model.eval(), tmp_path / "run" / "best", {"class_names": list("abcde")})
    r = export_onnx(tmp_path / "run", size=(64, 64))
    assert r["max_abs_diff"] is not None and r["max_abs_diff"] < 1e-4
    assert r["checked_size"] == [81, 55]  # another size and batch than traced: dynamic axes
    assert (tmp_path / "run" / "best.onnx").is_file()
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--size", "64", "64",
                 "--out", str(tmp_path / "s.onnx")]) == 0
    assert "max abs difference" in capsys.readouterr().out
