"""Logit-standardised KD against its authors' code: sunshangquan/logit-standardization-KD,
mdistiller/distillers/KD.py at commit f6e5aa5172bad618e801163c3385322eea673754 (``normalize``
and ``kd_loss`` with ``logit_stand``), transcribed below for (N, C) logits and applied to every
valid pixel of a segmentation map (their classification batch -> our pixels)."""

import pytest
import torch
import torch.nn.functional as F

from kaseg.compare.arms import arm_config, get_arm
from kaseg.core.config import Config
from kaseg.losses.kd import kd_loss, zscore
from kaseg.losses.registry import resolve_losses


def _authors(logits_student, logits_teacher, temperature):
    """Their ``kd_loss(..., logit_stand=True)``: z-score each row (unbiased std, 1e-7 added),
    then KL of the temperature softmaxes summed over classes, the mean over rows, x T^2."""
    def normalize(logit):
        mean = logit.mean(dim=-1, keepdims=True)
        stdv = logit.std(dim=-1, keepdims=True)
        return (logit - mean) / (1e-7 + stdv)

    s, t = normalize(logits_student), normalize(logits_teacher)
    log_pred_student = F.log_softmax(s / temperature, dim=1)
    pred_teacher = F.softmax(t / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def _rows(x, valid):
    """(B, C, H, W) -> the (N, C) rows of the valid pixels."""
    return x.permute(0, 2, 3, 1)[valid]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,temperature", [((2, 5, 4, 6), 2.0), ((1, 19, 8, 8), 1.0),
                                               ((3, 3, 5, 7), 4.0)])
def test_standardised_kd_equals_the_authors_values_and_gradients_with_ignore_pixels(
        shape, temperature, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    s = (3 * torch.randn(shape, generator=g, dtype=dtype) + 1).requires_grad_(True)
    t = 5 * torch.randn(shape, generator=g, dtype=dtype) - 2
    valid = torch.rand(shape[0], *shape[2:], generator=g) > 0.3
    ours = kd_loss(s, t, temperature, valid, standardize=True)
    (g_ours,) = torch.autograd.grad(ours, s)
    s2 = s.detach().clone().requires_grad_(True)
    ref = _authors(_rows(s2, valid), _rows(t, valid), temperature)
    (g_ref,) = torch.autograd.grad(ref, s2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(ours.double(), ref.double(), rtol=tol, atol=tol)
    assert torch.allclose(g_ours.double(), g_ref.double(), rtol=1e-4 if tol > 1e-10 else 1e-9,
                          atol=tol)
    assert g_ours[~valid.unsqueeze(1).expand_as(s)].abs().max() == 0  # ignore pixels: no gradient
    # standardising changes the value: scaled teacher logits give the same standardised loss,
    # not the same plain KD
    same = kd_loss(s.detach(), 3 * t + 7, temperature, valid, standardize=True)
    assert torch.allclose(same.double(), ours.detach().double(), rtol=1e-4)
    assert not torch.allclose(kd_loss(s.detach(), 3 * t + 7, temperature, valid),
                              kd_loss(s.detach(), t, temperature, valid))


def test_zscore_has_zero_mean_and_unit_unbiased_std_over_the_classes():
    x = torch.tensor([[[[1.0]], [[2.0]], [[6.0]]]])  # one pixel, 3 classes: mean 3, std sqrt(7)
    z = zscore(x)
    assert torch.allclose(z.flatten(), torch.tensor([-2.0, -1.0, 3.0]) / (7 ** 0.5 + 1e-7))


def test_the_kd_ls_arm_is_the_authors_defaults_and_standardize_is_checked():
    cfg = arm_config(Config(), get_arm("kd_ls"), seed=0)
    weight, options = resolve_losses(cfg.distill.losses)["kd"]
    assert weight == 9.0 and options == {"temperature": 2.0, "grid": "teacher",
                                         "standardize": True}
    assert get_arm("kd_ls").tuned == ("kd",)
    with pytest.raises(ValueError, match="fitnet: unknown option"):
        resolve_losses({"fitnet": {"standardize": True}})
    with pytest.raises(ValueError, match="standardize must be bool"):
        resolve_losses({"kd": {"standardize": "yes"}})
