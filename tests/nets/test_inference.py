"""Whole-image, sliding-window and multi-scale + flip inference give the known answers."""

import pytest
import torch
from torch import nn

from kaseg.data.synthetic import SyntheticScenes
from kaseg.data.transforms import EvalTransform
from kaseg.engine.evaluate import evaluate
from kaseg.nets.inference import MS_SCALES, predict, protocol_name, sliding_window


class Pointwise(nn.Module):
    """A 1x1 conv: translation-, scale- and flip-equivariant, so every protocol must agree."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.num_classes = classes
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        return {"logits": self.conv(x)}


class Neighbourhood(nn.Module):
    """A 3x3 conv: what a pixel sees depends on its surroundings (so windows matter)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return {"logits": self.conv(x)}


def test_sliding_window_of_a_pointwise_model_equals_whole_image():
    model = Pointwise()
    x = torch.randn(2, 3, 37, 53)
    ref = model(x)["logits"]
    model.calls.clear()
    out = sliding_window(model, x, (16, 24), (10, 15))
    torch.testing.assert_close(out, ref)
    # rows: ceil((37 - 16) / 10) + 1 = 4 (last aligned to the border), cols: ceil(29 / 15) + 1 = 3
    assert len(model.calls) == 12 and set(model.calls) == {(16, 24)}
    # a window larger than the image is one pass over the whole image
    model.calls.clear()
    torch.testing.assert_close(sliding_window(model, x, (64, 64)), ref)
    assert model.calls == [(37, 53)]


def test_sliding_window_averages_overlaps():
    model = Neighbourhood()
    x = torch.randn(1, 3, 8, 12)
    out = sliding_window(model, x, (8, 8), (8, 4))  # windows at columns 0-7 and 4-11
    left, right = model(x[..., :8])["logits"], model(x[..., 4:])["logits"]
    torch.testing.assert_close(out[..., :4], left[..., :4])
    torch.testing.assert_close(out[..., 4:8], (left[..., 4:] + right[..., :4]) / 2)
    torch.testing.assert_close(out[..., 8:], right[..., 4:])


def test_multiscale_flip_on_a_constant_image_equals_single_scale():
    model = Pointwise()
    x = torch.ones(1, 3, 20, 30) * torch.tensor([0.2, -0.5, 0.9]).view(1, 3, 1, 1)
    single = model(x)["logits"].softmax(1)
    ms = predict(model, x, MS_SCALES, flip=True)
    torch.testing.assert_close(ms, single)
    assert ms.shape == single.shape
    both = predict(model, x, (0.5, 1.5), flip=True, window=(8, 8))
    torch.testing.assert_close(both, single)


def test_flip_averages_the_mirrored_prediction():
    model = Neighbourhood()
    x = torch.randn(1, 3, 6, 9)
    p = model(x)["logits"].softmax(1)
    pf = model(x.flip(-1))["logits"].flip(-1).softmax(1)
    torch.testing.assert_close(predict(model, x, flip=True), (p + pf) / 2)
    assert torch.equal(predict(model, x), model(x)["logits"])  # single scale: the logits


def test_evaluate_protocols_agree_for_a_pointwise_model():
    ds = SyntheticScenes("val", 3, 32, transform=EvalTransform())
    model = Pointwise(8)
    base = evaluate(model, ds)
    slid = evaluate(model, ds, window=(16, 16), stride=(8, 8))
    assert slid["miou"] == pytest.approx(base["miou"])
    assert slid["per_class_iou"] == base["per_class_iou"]


def test_protocol_names():
    assert protocol_name() == "single-scale"
    assert protocol_name(MS_SCALES, True) == "ms(0.5,0.75,1,1.25,1.5,1.75)+flip"
    assert protocol_name(window=[769, 769]) == "single-scale+slide(769x769/512x512)"
