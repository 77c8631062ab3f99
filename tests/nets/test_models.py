import os
import subprocess
import sys

import pytest
import torch

from kaseg.core.errors import KasegError
from kaseg.nets.models import ALIASES, build_model


@pytest.mark.parametrize("name,os_", [
    ("tiny-student", None), ("tiny-student", 8), ("tiny-student", 32), ("tiny-teacher", None),
    ("unet:resnet18", None), ("fpn:tu-resnet10t", None), ("deeplabv3plus:tu-mobilenetv2_050", 16),
])
def test_reported_features_match_forward(name, os_):
    model = build_model(name, num_classes=5, output_stride=os_).eval()
    h, w = 64, 96
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out["logits"].shape == (2, 5, h, w)
    for tap, info in model.feature_info.items():
        f = out["features"][tap]
        assert f.shape == (2, info.channels, h // info.stride, w // info.stride), tap


def test_paper_pair_strides_without_a_forward():
    t = build_model("paper-teacher-r50", 21)
    s = build_model("paper-student", 21)
    assert t.feature_info["pre_logits"].stride == 4 and t.feature_info["encoder"].stride == 8
    assert s.feature_info["pre_logits"].stride == 16 and s.feature_info["pre_logits"].channels == 256
    assert ALIASES["paper-teacher"]["encoder"] == "tu-xception65"


def test_paper_student_is_tf_deeplabs_mobilenet_v2_without_aspp():
    s = build_model("paper-student", 21).eval()
    # the backbone stops at the last inverted residual (320 channels), no 1x1 expansion to 1280
    assert s.feature_info["encoder"].channels == 320
    head = s.net.decoder
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    # 1x1 branch, image-pooling branch, 1x1 projection: no atrous 3x3 anywhere in the head
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (320, 256, (1, 1)), (320, 256, (1, 1)), (512, 256, (1, 1))]
    with torch.no_grad():
        out = s(torch.randn(1, 3, 64, 96))
    assert out["features"]["pre_logits"].shape == (1, 256, 4, 6)
    assert out["logits"].shape == (1, 21, 64, 96)
    # the image-pooling branch makes the head see the whole image: a change far away moves
    # every position's feature
    x = torch.randn(1, 3, 64, 96)
    y = x.clone()
    y[..., :16, :16] += 3.0
    with torch.no_grad():
        a, b = s(x)["features"]["pre_logits"], s(y)["features"]["pre_logits"]
    assert (a[..., -1, -1] - b[..., -1, -1]).abs().max() > 0
    # the ASPP variant stays available under its own name
    aspp = build_model("paper-student-aspp", 21)
    assert aspp.feature_info["encoder"].channels == 1280
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in aspp.parameters()) / 4


def test_any_input_size_gives_logits_at_input_size():
    model = build_model("tiny-student", 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53))["logits"].shape == (1, 3, 37, 53)


@pytest.mark.parametrize("name,match", [
    ("tiny-studnet", "did you mean 'tiny-student'"),
    ("deeplabv4:resnet18", "unknown architecture 'deeplabv4'"),
    ("unet:resnet19", "unknown encoder 'resnet19'"),
    ("unet:tu-resnet1000", "unknown timm encoder"),
])
def test_unknown_names(name, match):
    with pytest.raises(KasegError, match=match):
        build_model(name, 3)


def test_unsupported_output_stride():
    with pytest.raises(KasegError, match="output_stride"):
        build_model("unet:resnet18", 3, output_stride=8)


@pytest.mark.slow
def test_pretrained_offline_is_one_line_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), TORCH_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "kaseg", "train", "--config", "configs/synthetic_tiny.yaml",
         "--out", str(tmp_path / "run"), "model.pretrained=true"],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not fetch pretrained weights" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
