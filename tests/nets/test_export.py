"""ONNX export round trip on a tiny student (skipped, saying why, without onnxruntime)."""

import re

import pytest
import torch

from kaseg.nets.checkpoint import save_model
from kaseg.cli import main
from kaseg.nets.models import build_model


@pytest.mark.slow
def test_onnx_round_trip_matches_pytorch(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install "
                        "'kaseg[export]' to test the ONNX export")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (kaseg[export])")
    torch.manual_seed(0)
    model = build_model("tiny-student", 5)
    model.train()(torch.randn(2, 3, 64, 64))  # non-trivial BatchNorm statistics
    save_model(model.eval(), tmp_path / "run" / "best", {"class_names": list("abcde")})
    # one export (the exporter takes seconds), through the command line
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--size", "64", "64"]) == 0
    said = capsys.readouterr().out
    got = re.search(r"best\.onnx: ONNX \(opset \d+\), dynamic batch and size; onnxruntime vs "
                    r"PyTorch max abs difference (\S+) at 81x55", said)  # another size and batch
    assert got, said  # than traced: dynamic axes
    assert float(got.group(1)) < 1e-4
    assert (tmp_path / "run" / "best.onnx").is_file()
