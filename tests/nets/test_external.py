"""Networks kaseg did not build: torchvision's models by name, any module with named taps, and
users' own checkpoints (every key checked)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kaseg.nets.checkpoint import load_model, load_weights_into, save_model
from kaseg.core.errors import KasegError
from kaseg.nets.external import TappedModel, build_torchvision
from kaseg.core.config import DistillConfig
from kaseg.engine.tasks import DistillTask
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model, check_model_name

# (pre_logits channels, stride), (encoder channels, stride), from torchvision's architectures:
# DeepLabV3 heads end in a 256-ch 3x3 conv; FCN's in a 512-ch one; ResNets are dilated to OS 8
# (2048 ch), MobileNetV3-Large to OS 16 (960 ch); LR-ASPP's high branch is 128 ch at OS 8
EXPECTED = {
    "deeplabv3_resnet50": ((256, 8), (2048, 8)),
    "deeplabv3_resnet101": ((256, 8), (2048, 8)),
    "deeplabv3_mobilenet_v3_large": ((256, 16), (960, 16)),
    "fcn_resnet50": ((512, 8), (2048, 8)),
    "fcn_resnet101": ((512, 8), (2048, 8)),
    "lraspp_mobilenet_v3_large": ((128, 8), (960, 16)),
}


def _one_step(student, teacher):
    """One distillation step (the method, KD and FitNet) between the two; gradients reach the
    student and never the teacher."""
    ts, ss = teacher.feature_info["pre_logits"], student.feature_info["pre_logits"]
    ae = FeatureAutoencoder(ts.channels, 16, ae_strides(ss.stride // ts.stride))
    task = DistillTask(student=student, teacher=teacher.eval(), encoder=ae.encoder.eval(),
                       latent_channels=16, config=DistillConfig(losses={
                           "adapt": {"weight": 5.0}, "affinity": {"weight": 1.0},
                           "kd": {"temperature": 2.0}, "fitnet": {}})).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    losses = task(x, y)
    assert {"ce", "adapt", "affinity", "kd", "fitnet"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_torchvision_models_as_teacher_and_as_student(name):
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", 4)
    (pc, ps), (ec, es) = EXPECTED[name]
    assert model.feature_info["pre_logits"].channels == pc
    assert model.feature_info["pre_logits"].stride == ps
    assert (model.feature_info["encoder"].channels, model.feature_info["encoder"].stride) == (ec, es)
    assert model.spec.name == f"torchvision:{name}" and model.num_classes == 4
    out = model.eval()(torch.randn(1, 3, 48, 40))
    assert out["logits"].shape == (1, 4, 48, 40)
    assert out["features"]["pre_logits"].shape[1] == pc
    # the logits on the classifier's own grid (what the logit terms read), LR-ASPP's at input
    lraspp = name.startswith("lraspp")
    assert model.logit_stride == (1 if lraspp else ps) and "head_logits" not in out["features"]
    grid = out["logits"] if lraspp else out["features"]["pre_logits"]
    assert out["head_logits"].shape == (1, 4, *grid.shape[-2:])
    # as teacher of an SMP student (OS 16), and as student of an SMP teacher (OS 4 decoder map)
    _one_step(build_model("tiny-student", 4), model)  # (a teacher is frozen for good)
    _one_step(build_model(f"torchvision:{name}", 4), build_model("tiny-teacher", 4))


def test_torchvision_names_are_checked_and_weights_fetched_only_when_asked(monkeypatch):
    with pytest.raises(KasegError, match="did you mean 'torchvision:deeplabv3_resnet50'"):
        check_model_name("torchvision:deeplabv3_resnet5")
    with pytest.raises(KasegError, match="fixed output stride"):
        build_model("torchvision:fcn_resnet50", 3, output_stride=16)
    import torchvision.models._api as tv_api

    def offline(self, *a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(KasegError, match="could not fetch torchvision's pretrained weights "
                                         r"\(OSError: <urlopen error"):
        build_model("torchvision:lraspp_mobilenet_v3_large", 21, pretrained=True)


def test_pretrained_torchvision_weights_get_a_new_classifier_for_other_classes(monkeypatch):
    import torchvision.models._api as tv_api
    import torchvision.models.segmentation as tvseg

    torch.manual_seed(1)
    published = tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                num_classes=21).state_dict()
    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", lambda self, *a, **k: published)
    model = build_model("torchvision:lraspp_mobilenet_v3_large", 5, pretrained=True)
    state = model.net.state_dict()
    assert state["classifier.high_classifier.weight"].shape[0] == 5
    assert state["classifier.low_classifier.weight"].shape[0] == 5
    kept = [k for k in published if "classifier.high_classifier" not in k
            and "classifier.low_classifier" not in k]
    assert kept and all(torch.equal(state[k], published[k]) for k in kept)  # the rest as published
    voc = build_model("torchvision:lraspp_mobilenet_v3_large", 21, pretrained=True)
    assert torch.equal(voc.net.state_dict()["classifier.high_classifier.weight"],
                       published["classifier.high_classifier.weight"])


class Mine(nn.Module):
    """A hand-made segmenter: two stride-2 convs, a 1x1 classifier at OS 4."""

    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1))
        self.head = nn.Conv2d(12, classes, 1)

    def forward(self, x):
        return {"out": self.head(torch.relu(self.body(x)))}


def test_any_module_with_named_taps():
    model = TappedModel(Mine(), {"pre_logits": "head:input", "encoder": "body.0", "deep": "body"})
    info = model.feature_info
    assert (info["pre_logits"].channels, info["pre_logits"].stride) == (12, 4)
    assert (info["encoder"].channels, info["encoder"].stride) == (8, 2)
    assert (info["deep"].channels, info["deep"].stride) == (12, 4)
    assert model.spec.name == "custom:Mine" and model.num_classes == 3
    x = torch.randn(2, 3, 32, 28)
    out = model(x)
    assert out["logits"].shape == (2, 3, 32, 28)  # upsampled to the input
    assert model.logit_stride == 4 and out["head_logits"].shape == (2, 3, 8, 7)  # the module's
    torch.testing.assert_close(out["logits"], F.interpolate(out["head_logits"], size=(32, 28),
                                                            mode="bilinear"))
    expected = torch.relu(model.net.body(x))  # the classifier's input, by hand
    torch.testing.assert_close(out["features"]["pre_logits"], expected)
    with pytest.raises(KasegError, match="no submodule 'neck'"):
        TappedModel(Mine(), {"pre_logits": "neck"})
    with pytest.raises(KasegError, match="no key 'high'"):
        TappedModel(Mine(), {"pre_logits": "body:high"})


def test_users_checkpoints_load_with_every_key_checked(tmp_path: Path):
    mine = Mine()
    state = mine.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    model = TappedModel(Mine(), {"pre_logits": "head:input"})
    load_weights_into(model.net, tmp_path / "ddp.pth")  # wrapper and DDP prefix undone
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items())
    partial = {k: v for k, v in state.items() if k != "head.bias"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(KasegError, match=r"partial.pth: does not match .*missing \['head.bias'\]"):
        load_weights_into(model.net, tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(KasegError, match="junk.pth: not a readable weights file"):
        load_weights_into(model.net, tmp_path / "junk.pth")
    # kaseg's own checkpoint of a wrapped module: kaseg cannot rebuild it by name, so it says how
    save_model(model, tmp_path / "run" / "best")
    with pytest.raises(KasegError, match="custom module \\(Mine\\).*load_weights_into"):
        load_model(tmp_path / "run")
    again = TappedModel(Mine(), {"pre_logits": "head:input"})
    load_weights_into(again, tmp_path / "run" / "best.safetensors")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_torchvision_checkpoint_round_trips_through_kaseg(tmp_path: Path):
    model = build_model("torchvision:lraspp_mobilenet_v3_large", 3)
    save_model(model, tmp_path / "best")
    loaded, meta = load_model(tmp_path / "best.safetensors")
    assert meta["spec"]["name"] == "torchvision:lraspp_mobilenet_v3_large"
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x)["logits"], model.eval()(x)["logits"])
