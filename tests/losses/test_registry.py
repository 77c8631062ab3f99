"""The field's other losses: hand values, KD = CE for a one-hot teacher, zero for identical maps,
ignore pixels, gradcheck, and their place in the distillation task."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kaseg.core.config import DistillConfig
from kaseg.engine.experiment import load_config
from kaseg.core.tensors import kl_from_logits
from kaseg.losses.cwd import cwd_loss
from kaseg.losses.dist import dist_loss
from kaseg.losses.fitnet import FitNetRegressor, fitnet_loss
from kaseg.losses.ifvd import class_prototype_similarity, ifvd_loss
from kaseg.losses.kd import kd_loss
from kaseg.losses.masks import valid_mask
from kaseg.losses.registry import LOSSES, LossSpec
from kaseg.losses.skd import skd_pairwise_loss
from kaseg.engine.tasks import DistillTask
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model

IGN = 255


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# --------------------------------------------------------------------------- hand values
def test_kd_by_hand():
    s = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]), rel=1e-6)
    r3 = math.sqrt(3.0)  # T = 2: softmax(ln3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1)
    expected = 4 * _kl([r3 / (r3 + 1), 1 / (r3 + 1)], [0.5, 0.5])
    assert kd_loss(s, t, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # two pixels, the second ignored: the mean runs over the first only
    s2, t2 = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    t2[0, 0, 0, 0], t2[0, 0, 0, 1] = math.log(3.0), 50.0
    valid = torch.tensor([[[True, False]]])
    assert kd_loss(s2, t2, 1.0, valid).item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]),
                                                               rel=1e-6)


def test_fitnet_by_hand_with_upsampling():
    fs = torch.ones(1, 1, 1, 1)  # student at a quarter of the teacher's positions: upsampled
    ft = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    assert fitnet_loss(fs, ft).item() == pytest.approx((0 + 1 + 4 + 16) / 4)
    fs2 = torch.zeros(1, 2, 2, 2)
    ft2 = torch.stack([ft[0, 0], torch.zeros(2, 2)])[None]  # mean over channels too
    assert fitnet_loss(fs2, ft2).item() == pytest.approx((1 + 4 + 9 + 25) / 8)
    valid = torch.tensor([[[True, False], [False, True]]])
    assert fitnet_loss(fs2, ft2, valid).item() == pytest.approx((1 + 25) / 4)


def test_skd_by_hand():
    # positions are nodes (pool 1): student (1,0), (0,1); teacher (1,0), (1,1)
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    ft = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)
    # cos_s = [[1,0],[0,1]], cos_t = [[1,r],[r,1]] with r = 1/sqrt2: mean of squared diff = 2r^2/4
    assert skd_pairwise_loss(fs, ft, pool=1).item() == pytest.approx(0.25, rel=1e-6)
    # pool 2 over a 2x4 map: the node is the max of each 2x2 block
    fs4 = torch.zeros(1, 2, 2, 4)
    fs4[0, 0, 1, 1] = 1.0  # node 1 -> (1, 0)
    fs4[0, 1, 0, 3] = 2.0  # node 2 -> (0, 2)
    ft4 = torch.zeros(1, 2, 2, 4)
    ft4[0, 0, 0, 0], ft4[0, 0, 1, 2], ft4[0, 1, 0, 2] = 3.0, 1.0, 1.0  # (3, 0), (1, 1)
    assert skd_pairwise_loss(fs4, ft4, pool=2).item() == pytest.approx(0.25, rel=1e-6)


def test_cwd_by_hand():
    s = torch.zeros(1, 2, 1, 2)  # channel 0: positions (0, 0); channel 1: identical maps
    t = torch.zeros(1, 2, 1, 2)
    t[0, 0, 0, 0] = math.log(3.0)
    expected = _kl([0.75, 0.25], [0.5, 0.5]) / 2  # mean over channels
    assert cwd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2: both scaled by 1/2 inside, T^2 = 4 outside
    r3 = math.sqrt(3.0)
    expected2 = 4 * _kl([r3 / (r3 + 1), 1 / (r3 + 1)], [0.5, 0.5]) / 2
    assert cwd_loss(s, t, 2.0).item() == pytest.approx(expected2, rel=1e-6)


def test_ifvd_by_hand():
    labels = torch.tensor([[[0, 0, 1]]])
    fs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 3)
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]]).T.reshape(1, 2, 1, 3)
    # student prototype of class 0 = (.5, .5): cos = 1/sqrt2 at both; teacher cos = 1 everywhere
    ms = class_prototype_similarity(fs, labels, 2)
    torch.testing.assert_close(ms, torch.tensor([[[2**-0.5, 2**-0.5, 1.0]]]))
    expected = 2 * (1 - 2**-0.5) ** 2 / 3
    assert ifvd_loss(fs, ft, labels, 2).item() == pytest.approx(expected, rel=1e-6)
    # the third pixel ignored: it leaves the mean (and its class has no prototype)
    labels_ign = torch.tensor([[[0, 0, IGN]]])
    assert ifvd_loss(fs, ft, labels_ign, 2).item() == pytest.approx(expected * 3 / 2, rel=1e-6)


# --------------------------------------------------------------------------- properties
def test_kd_with_one_hot_teacher_at_t1_is_cross_entropy_with_same_gradient():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (2, 3, 5))
    y[0, 0, :2] = IGN
    one_hot = F.one_hot(y.clamp(max=3), 4).permute(0, 3, 1, 2).bool()
    t = torch.where(one_hot, 0.0, float("-inf")).double()
    kd = kd_loss(s, t, 1.0, valid_mask(y, y.shape[-2:]))
    (g_kd,) = torch.autograd.grad(kd, s)
    ce = F.cross_entropy(s, y, ignore_index=IGN)
    (g_ce,) = torch.autograd.grad(ce, s)
    torch.testing.assert_close(kd, ce)
    torch.testing.assert_close(g_kd, g_ce)


def _maps(seed=0, c=6, h=6, w=8):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    t = torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2, h, w), generator=g)
    y[0, :2, :3] = IGN  # a whole 2x2 node ignored, and parts of others
    y[1, 3, 5] = IGN
    return s, t, y


def _all_losses(s, t, y):
    v = valid_mask(y, y.shape[-2:])
    return {
        "kd": kd_loss(s[:, :4], t[:, :4], 4.0, v),
        "fitnet": fitnet_loss(s, t, v),
        "skd": skd_pairwise_loss(s, t, 2, v),
        "cwd": cwd_loss(s[:, :4], t[:, :4], 4.0, v),
        "ifvd": ifvd_loss(s, t, y, 4),
    }


def test_identical_student_and_teacher_give_zero():
    s, _, y = _maps()
    for name, value in _all_losses(s, s.clone(), y).items():
        assert abs(value.item()) < 1e-12, name
    for name, value in _all_losses(s, s.clone(), torch.zeros_like(y)).items():
        assert abs(value.item()) < 1e-12, name


def test_ignore_pixels_do_not_change_any_loss():
    s, t, y = _maps()
    ref = _all_losses(s, t, y)
    ign = (y == IGN)[:, None].expand_as(s)
    noise = torch.randn_like(s) * 5
    moved = _all_losses(torch.where(ign, s + noise, s), torch.where(ign, t - noise, t), y)
    for name in ref:
        torch.testing.assert_close(moved[name], ref[name], msg=name)
    # ... while the same change at valid pixels does change each loss (the test can fail)
    val = (y != IGN)[:, None].expand_as(s)
    changed = _all_losses(torch.where(val, s + noise, s), t, y)
    for name in ref:
        assert abs(changed[name].item() - ref[name].item()) > 1e-6, name


@pytest.mark.parametrize("name", ["kd", "fitnet", "skd", "cwd", "ifvd"])
def test_gradcheck(name):
    s, t, y = _maps(seed=3, c=5, h=4, w=6)
    s.requires_grad_(True)
    v = valid_mask(y, y.shape[-2:])
    fn = {
        "kd": lambda x: kd_loss(x, t, 2.0, v),
        "fitnet": lambda x: fitnet_loss(x, t, v),
        "skd": lambda x: skd_pairwise_loss(x, t, 2, v),
        "cwd": lambda x: cwd_loss(x, t, 4.0, v),
        "ifvd": lambda x: ifvd_loss(x, t, y, 4),
    }[name]
    assert torch.autograd.gradcheck(fn, (s,))
    # unmasked, with a student at half the teacher's resolution (the upsampling path)
    half = s[:, :, ::2, ::2].detach().clone().requires_grad_(True)
    fn_half = {
        "kd": lambda x: kd_loss(x, t, 2.0),
        "fitnet": lambda x: fitnet_loss(x, t),
        "skd": lambda x: skd_pairwise_loss(x, t, 2),
        "cwd": lambda x: cwd_loss(x, t, 4.0),
        "ifvd": lambda x: ifvd_loss(x, t, y.clamp(max=3), 4),
    }[name]
    assert torch.autograd.gradcheck(fn_half, (half,))


def test_valid_mask_nearest_downsampling():
    y = torch.tensor([[[0, IGN, 1, 1], [IGN, IGN, 1, 1]]])
    torch.testing.assert_close(valid_mask(y, (1, 2)), torch.tensor([[[True, True]]]))
    torch.testing.assert_close(valid_mask(y, (2, 4)), y != IGN)


# --------------------------------------------------------------------------- in the task
def _task(losses=None, **kw):
    """A tiny distillation task; ``losses``: ``{name: weight}`` or ``distill.losses``."""
    torch.manual_seed(6)
    teacher = build_model("tiny-teacher", 3)
    student = build_model("tiny-student", 3)
    teacher.train()(torch.randn(2, 3, 64, 64))
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    losses = {n: {"weight": w} if isinstance(w, float) else w for n, w in (losses or {}).items()}
    return DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                       config=DistillConfig(losses=losses, **kw)), teacher


def test_task_adds_selected_losses_with_their_weights_and_combines_with_ours():
    weights = {"kd": 1.0, "fitnet": 2.0, "skd": 10.0, "cwd": 3.0, "ifvd": 200.0}
    task, teacher = _task({"adapt": 50.0, **weights})
    fitnet = task.loss_modules["fitnet"]
    assert isinstance(fitnet, FitNetRegressor)
    assert fitnet.weight.shape == (64, 64, 1, 1)  # student 64 -> teacher 64 channels
    assert any(n.startswith("loss_modules.fitnet.") for n, _ in task.named_parameters())
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    y[:, :8] = IGN
    losses = task.train()(x, y)
    assert set(weights) | {"ce", "adapt", "loss"} <= set(losses)
    total = losses["ce"] + 50 * losses["adapt"] + sum(w * losses[k] for k, w in weights.items())
    torch.testing.assert_close(losses["loss"], total)
    # each term is the pure loss on the two networks' outputs
    task.eval()
    losses = task(x, y)
    s_out, t_out = task.student(x), teacher.eval()(x)
    # logit KD on the teacher's output grid (its classifier's, stride 4 here: 16 x 16), the
    # student's logits (stride 16: 4 x 4) sampled onto it: both SMP heads upsample to the 64
    # padded pixels with align_corners=True, so teacher position j lies at pixel 63 j / 15 and
    # student position i at 21 i: j at student position j / 5, align_corners' own resize
    t_head, s_head = t_out["head_logits"], s_out["head_logits"]
    assert t_head.shape[-2:] == (16, 16) and s_head.shape[-2:] == (4, 4)
    assert task.student.logit_corners and teacher.logit_corners
    v = valid_mask(y, (16, 16), stride=4)
    assert not v[:, :2].any() and v[:, 2:].all()  # label rows 0-7 ignored: grid rows 0-1
    s_up = F.interpolate(s_head, size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(losses["kd"], kd_loss(s_up, t_head, 4.0, v))
    assert not torch.allclose(losses["kd"], kd_loss(s_out["logits"], t_out["logits"], 4.0,
                                                    valid_mask(y, (64, 64))), rtol=0.01)
    ft = t_out["features"]["pre_logits"]
    torch.testing.assert_close(
        losses["ifvd"], ifvd_loss(s_out["features"]["pre_logits"], ft, y, 3))
    losses["loss"].backward()
    assert fitnet.weight.grad is not None and fitnet.weight.grad.abs().sum() > 0


def test_task_with_only_the_fields_losses_needs_no_autoencoder_terms():
    task, _ = _task({"kd": 1.0, "cwd": 0.0})
    assert list(task.terms) == ["kd"] and not task.loss_modules
    losses = task(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    assert set(losses) == {"ce", "kd", "kd_ratio", "loss"}  # weight 0 = not computed
    with pytest.raises(ValueError, match="unknown loss 'at'; known: \\['adapt', 'af_dcd'"):
        _task({"at": 1.0})


def test_a_new_loss_is_one_function_and_one_registry_entry(monkeypatch):
    # a toy loss: the mean squared student logit, weight 0.5, with one option
    calls = []

    def toy(o, power):
        calls.append(power)
        return o.student_logits.pow(power).mean()

    monkeypatch.setitem(LOSSES, "toy", LossSpec(toy, weight=0.5, options={"power": 2}))
    cfg = load_config(None, ["distill.losses={toy: {power: 4}}"])
    assert cfg.distill.losses == {"toy": {"weight": 0.5, "power": 4}}
    task, _ = _task(cfg.distill.losses)
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = task.train()(x, y)
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.5 * losses["toy"])
    losses["loss"].backward()
    opt.step()
    assert calls == [4]


def test_kl_of_close_maps_over_many_positions_is_accurate_in_float32():
    # the textbook form loses ~1e-6 to cancelling log-normalisers over 10^4 positions and can go
    # negative; the loss must stay >= 0 and near its float64 value
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 128, 128, generator=g, dtype=torch.float64) * 0.05
    s = t + torch.randn(t.shape, generator=g, dtype=torch.float64) * 1e-3
    exact = cwd_loss(s, t, 4.0).item()
    approx = cwd_loss(s.float(), t.float(), 4.0).item()
    assert approx >= 0 and abs(approx - exact) < 1e-8 and exact > 0  # textbook: 5.7e-7 off
    assert abs(kd_loss(s.float(), t.float(), 4.0).item() - kd_loss(s, t, 4.0).item()) < 1e-7


# --------------------------------------------------------------------------- review defects (#12)
@pytest.mark.parametrize("shift", [-10.0, -16.0, -18.0, -60.0, 25.0])
def test_kd_is_invariant_to_a_constant_shift_and_finite(shift):
    # softmax ignores a constant per position: the true KD of s against s + shift is 0
    s = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    x = s.clone().requires_grad_(True)
    value = kd_loss(x, s + shift, 1.0)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-5)
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max().item() < 1e-5
    # a shift of the teacher by a different constant at every position: still 0
    per_pos = s + torch.linspace(-40, 40, 64).view(1, 1, 8, 8)
    assert kd_loss(s, per_pos, 1.0).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("shift", [-10.0, -60.0, -200.0])
def test_cwd_is_invariant_to_a_per_channel_shift(shift):
    s = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    t = s.flip(1)
    ref = cwd_loss(s.double(), t.double(), 4.0).item()  # 3.935 for this seed
    shifted = t + shift + torch.arange(5.0).view(1, 5, 1, 1)  # a different constant per channel
    assert cwd_loss(s, shifted, 4.0).item() == pytest.approx(ref, rel=1e-5)
    assert cwd_loss(s, s + shift, 4.0).item() == pytest.approx(0.0, abs=1e-5)


def test_kl_keeps_its_accuracy_for_close_maps():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 3000, generator=g, dtype=torch.float64)
    s = t + 1e-3 * torch.randn(t.shape, generator=g, dtype=torch.float64)
    pt = t.softmax(1)
    ref = (pt * (t.log_softmax(1) - s.log_softmax(1))).sum(1)
    got = kl_from_logits(t.float() - 7.0, s.float(), dim=1).double()
    assert torch.allclose(got, ref, rtol=1e-3, atol=0)


def test_cwd_mask_does_not_count_images_without_valid_pixels():
    s, t, _ = _maps(c=4)
    v = torch.ones(2, 6, 8, dtype=torch.bool)
    v[1] = False  # the second image has no valid pixel: only the first one's channels count
    one = cwd_loss(s[:1], t[:1], 4.0)
    assert cwd_loss(s, t, 4.0, v).item() == pytest.approx(one.item(), rel=1e-10)


def test_skd_pools_the_larger_teacher_map_to_the_students_size():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 6, 6, 8, generator=g, dtype=torch.float64)
    ft = torch.randn(2, 10, 24, 32, generator=g, dtype=torch.float64)  # teacher at 4x the size
    pooled = F.max_pool2d(ft, 4)
    assert skd_pairwise_loss(fs, ft, 2).item() == pytest.approx(
        skd_pairwise_loss(fs, pooled, 2).item(), rel=1e-12)
    # the node count follows the student's map (12 nodes), not the teacher's (192)
    node_s = F.normalize(F.max_pool2d(fs, 2, 2, ceil_mode=True).flatten(2), dim=1)
    node_t = F.normalize(F.max_pool2d(pooled, 2, 2, ceil_mode=True).flatten(2), dim=1)
    by_hand = (node_s.transpose(1, 2) @ node_s - node_t.transpose(1, 2) @ node_t).pow(2).mean()
    assert skd_pairwise_loss(fs, ft, 2).item() == pytest.approx(by_hand.item(), rel=1e-12)
    # a mask at the teacher's size is reduced with the maps
    valid = torch.ones(2, 24, 32, dtype=torch.bool)
    assert skd_pairwise_loss(fs, ft, 2, valid).item() == pytest.approx(by_hand.item(), rel=1e-12)


# --------------------------------------------------------------------------- labels on a map's grid
def _padded_side(side: int, divisor: int, stride: int) -> int:
    """A map's side for an image of ``side`` px that the network pads to ``divisor``."""
    return -(-side // divisor) * divisor // stride


@pytest.mark.parametrize("side", [97, 513, 769])
@pytest.mark.parametrize("stride,divisor", [(4, 8), (8, 8), (16, 16)])
def test_labels_sit_on_the_map_grid_by_its_geometry(side, stride, divisor):
    """An impulse at pixel (j*s, k*s) lands on map position (j, k); positions whose pixel lies in
    the padding are ignore, however the sides round."""
    from kaseg.losses.masks import labels_at
    h = _padded_side(side, divisor, stride)
    j = k = (side - 1) // stride  # the last position whose first pixel is inside the image
    y = torch.full((1, side, side), IGN)
    y[0, j * stride, k * stride] = 3
    y[0, 0, stride] = 1  # position (0, 1)
    grid = labels_at(y, (h, h), stride)
    assert grid.shape == (1, h, h)
    assert grid[0, j, k] == 3 and grid[0, 0, 1] == 1
    assert (grid != IGN).sum() == 2
    full = labels_at(torch.zeros(1, side, side, dtype=torch.long), (h, h), stride)
    rows_inside = -(-side // stride)
    assert (full[0, :rows_inside, :rows_inside] == 0).all()
    assert (full[0, rows_inside:] == IGN).all() and (full[0, :, rows_inside:] == IGN).all()
    if rows_inside < h:  # the old nearest resize stretched the labels over the padding
        assert (labels_at(torch.zeros(1, side, side, dtype=torch.long), (h, h))[0, -1] == 0).all()


def test_masks_of_the_task_follow_the_padded_geometry_at_odd_sizes():
    """At 97 px the tiny teacher's stride-4 map has 26 rows (104 padded px): its last row is
    padding, so FitNet's mask leaves it out, and the loss equals the one on the real rows."""
    from kaseg.losses.registry import Outputs
    torch.manual_seed(0)
    teacher, student = build_model("tiny-teacher", 3).eval(), build_model("tiny-student", 3).eval()
    x, y = torch.randn(1, 3, 97, 97), torch.randint(0, 3, (1, 97, 97))
    s_out, t_out = student(x), teacher(x)
    ft, fs = t_out["features"]["pre_logits"], s_out["features"]["pre_logits"]
    assert ft.shape[-1] == 26 and fs.shape[-1] == 7
    o = Outputs(s_out["logits"], t_out["logits"], fs, ft, y, y != IGN,
                student_stride=16, teacher_stride=4)
    v = o.valid_on(ft)
    assert v[0, :25, :25].all() and not v[0, 25].any() and not v[0, :, 25].any()
    reg = FitNetRegressor(fs.shape[1], ft.shape[1])
    per_position = (F.interpolate(reg(fs), size=ft.shape[-2:], mode="bilinear") - ft).pow(2).mean(1)
    torch.testing.assert_close(LOSSES["fitnet"].compute(replace(o, module=reg)),
                               per_position[:, :25, :25].mean())
    torch.testing.assert_close(o.labels_on(ft)[0, :25, :25], y[0, :100:4, :100:4])
    assert o.valid_on(fs)[0].sum() == 7 * 7  # 97 px: 7 rows of 16 start inside the image


def test_a_loss_that_reads_labels_on_an_unlabelled_batch_fails_loudly():
    from kaseg.losses.registry import Outputs
    t = torch.randn(1, 3, 8, 8)
    o = Outputs(t, t, t, t, None, torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs_labels"):
        o.labels_on(t)


def test_a_registered_name_is_not_taken_twice():
    from kaseg.losses.registry import register_loss
    for name in ("adapt", "affinity", "kd"):
        with pytest.raises(ValueError, match="already registered"):
            register_loss(name, LossSpec(lambda o: o.student_logits.sum(), weight=1.0))


@pytest.mark.parametrize("name", ["weight", "ce", "pseudo", "loss", "kd_ratio",
                                  "ce_pseudo", "x_unlabeled"])
def test_the_tasks_own_entry_names_are_reserved(name):
    from kaseg.losses.registry import register_loss
    spec = LossSpec(lambda o: o.student_logits.sum(), weight=1.0)
    with pytest.raises(ValueError, match="reserved"):
        register_loss(name, spec)
    with pytest.raises(ValueError, match="reserved"):
        LOSSES[name] = spec
    assert name not in LOSSES


def test_a_registered_loss_never_swallows_an_old_key_of_the_method(monkeypatch):
    """A loss named 'dense' with an option 'max_positions': the old key
    distill.dense_max_positions is the affinity term's option, not that loss's."""
    monkeypatch.setitem(LOSSES, "dense", LossSpec(lambda o, max_positions: o.student_logits.sum(),
                                                  weight=1.0, options={"max_positions": 3}))
    cfg = load_config(None, ["distill.dense_max_positions=64"])
    assert cfg.distill.losses["affinity"]["dense_max_positions"] == 64
    assert "dense" not in cfg.distill.losses


# --------------------------------------------------------------------------- DIST vs its authors
# Transcribed from hunto/DIST_KD, segmentation/losses/dist_kd.py at commit 2418f18 (the class DIST
# and its helpers, beta = gamma = 1, no temperature), as the reference kaseg's dist_loss must equal.
def _ref_cosine_similarity(x, y, eps=1e-8):
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)


def _ref_pearson_correlation(x, y, eps=1e-8):
    return _ref_cosine_similarity(x - x.mean(1).unsqueeze(1), y - y.mean(1).unsqueeze(1), eps)


def _ref_inter_class_relation(y_s, y_t):
    return 1 - _ref_pearson_correlation(y_s, y_t).mean()


def _ref_intra_class_relation(y_s, y_t):
    return _ref_inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def _ref_dist(y_s, y_t, beta=1.0, gamma=1.0):
    if y_s.ndim == 4:
        num_classes = y_s.shape[1]
        y_s = y_s.transpose(1, 3).reshape(-1, num_classes)
        y_t = y_t.transpose(1, 3).reshape(-1, num_classes)
    y_s = y_s.softmax(dim=1)
    y_t = y_t.softmax(dim=1)
    return beta * _ref_inter_class_relation(y_s, y_t) + gamma * _ref_intra_class_relation(y_s, y_t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 5, 4, 6), (1, 19, 8, 8), (3, 2, 3, 7)])
def test_dist_equals_its_authors_code_in_value_and_gradient(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    s = (3 * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_(True)
    t = 3 * torch.randn(shape, generator=g, dtype=dtype)
    s_ref = s.detach().clone().requires_grad_(True)
    ours, ref = dist_loss(s, t), _ref_dist(s_ref, t)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, ref.to(ours.dtype), **tol)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(s.grad, s_ref.grad, **tol)
    # the weights of its two relations, as the authors' beta and gamma
    torch.testing.assert_close(dist_loss(s, t, 1.0, 2.0, 0.5), _ref_dist(s_ref, t, 2.0, 0.5)
                               .to(ours.dtype), **tol)
    # ignore pixels [ours]: only the valid pixels are rows, the reference on those rows
    valid = torch.rand(shape[0], *shape[2:], generator=g) > 0.3
    rows = lambda x: x.permute(0, 2, 3, 1)[valid]  # (valid pixels, classes)
    torch.testing.assert_close(dist_loss(s, t, valid=valid),
                               _ref_dist(rows(s_ref), rows(t)).to(ours.dtype), **tol)


def test_dist_by_its_definition_and_at_another_resolution():
    """Identical maps: both relations are perfect (0, up to the eps of the correlation); a
    student at half the teacher's size is upsampled to it; T scales the softmax and the loss
    by T^2; no valid pixel is 0 with a zero gradient."""
    t = torch.randn(2, 4, 6, 6)
    assert dist_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    up = F.interpolate(s.detach(), size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(dist_loss(s, t), _ref_dist(up, t))
    torch.testing.assert_close(dist_loss(s, t, 2.0), 4 * _ref_dist(up / 2, t / 2))
    none = dist_loss(s, t, valid=torch.zeros(2, 6, 6, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and not s.grad.any()
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t.double()),
                                    (s.detach().double().requires_grad_(True),))
    assert LOSSES["dist"].weight == 1.0 and LOSSES["dist"].options == {
        "temperature": 1.0, "inter_weight": 1.0, "intra_weight": 1.0, "grid": "teacher"}


def test_an_unknown_option_of_dist_in_an_arm_is_one_line_naming_the_arm():
    from kaseg.compare.arms import Arm, arm_config
    from kaseg.core.errors import KasegError

    arm = Arm("dist_t2", "DIST T=2", {"losses": {"dist": {"tau": 2}}})
    with pytest.raises(KasegError, match=r"^arm 'dist_t2': distill.losses.dist: unknown "
                       r"option \['tau'\]; dist takes weight and temperature, inter_weight, "
                       r"intra_weight, grid$"):
        arm_config(load_config(None, []), arm, 0)


@pytest.mark.parametrize("name", ["kd", "cwd", "dist"])
def test_a_logit_term_on_the_input_grid_is_the_loss_on_upsampled_logits(name):
    """grid: input keeps the earlier reading (both networks' logits at the input's size), grid:
    teacher (the default) reads the teacher's own output grid; a third value is refused."""
    assert LOSSES[name].options["grid"] == "teacher"
    task, teacher = _task({name: {"grid": "input"}})
    x, y = torch.randn(2, 3, 48, 48), torch.randint(0, 3, (2, 48, 48))
    y[0, :, :20] = IGN
    got = task.eval()(x, y)[name]
    s, t = task.student(x)["logits"], teacher.eval()(x)["logits"]
    fn, opts = {"kd": (kd_loss, (4.0,)), "cwd": (cwd_loss, (4.0,)),
                "dist": (dist_loss, (1.0, 1.0, 1.0))}[name]
    torch.testing.assert_close(got, fn(s, t, *opts, valid_mask(y, (48, 48))))
    on_teacher = _task({name: {}})[0]
    on_teacher.load_state_dict(task.state_dict())
    assert not torch.allclose(on_teacher.eval()(x, y)[name], got, rtol=1e-3)
    with pytest.raises(ValueError, match=f"distill.losses.{name}: grid must be one of "
                                         r"\('teacher', 'input'\), got 'output'"):
        _task({name: {"grid": "output"}})
