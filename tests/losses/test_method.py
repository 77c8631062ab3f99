"""The method's numbers: losses against hand values and a slow reference, dense vs Gram,
invariances, scale behaviour, frozen parts, and the autoencoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from kaseg.losses.method import (Adapter, FeatureAutoencoder, adaptation_loss, ae_strides, affinity_loss,
                          affinity_loss_dense, affinity_matrix, autoencoder_loss)
from kaseg.core.config import DistillConfig
from kaseg.engine.tasks import DistillTask, Frozen
from kaseg.losses.gram import affinity_loss_gram
from kaseg.nets.models import build_model

REDUCTIONS = ["mse", "paper", "element"]


def slow_affinity(fs, ft, reduction):
    """Double loop over positions, straight from the equations."""
    n, c, h, w = fs.shape
    m = h * w
    total = 0.0
    for b in range(n):
        s = [fs[b, :, k // w, k % w].double() for k in range(m)]
        t = [ft[b, :, k // w, k % w].double() for k in range(m)]
        rows, sq = [], 0.0
        for i in range(m):
            row = 0.0
            for j in range(m):
                cs = float(s[i] @ s[j] / (s[i].norm() * s[j].norm()))
                ct = float(t[i] @ t[j] / (t[i].norm() * t[j].norm()))
                row += (cs / m - ct / m) ** 2  # the paper's A = cos / m
                sq += (cs - ct) ** 2
            rows.append(math.sqrt(row))
        total += {"paper": sum(rows) / m, "mse": sq / m**2, "element": sq / m**4}[reduction]
    return total / n


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dense_and_gram_agree_with_slow_reference(reduction):
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 6, 3, 4), torch.randn(2, 6, 3, 4)
    ref = slow_affinity(fs, ft, reduction)
    assert affinity_loss_dense(fs, ft, reduction).item() == pytest.approx(ref, rel=1e-5)
    assert affinity_loss_gram(fs, ft, reduction).item() == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 16, 48, 48)])  # the second: 2304 positions
def test_dense_and_gram_same_loss_and_gradients(reduction, shape):
    torch.manual_seed(1)
    base_s, base_t = torch.randn(shape), torch.randn(shape)
    grads, values = [], []
    for fn in (affinity_loss_dense, affinity_loss_gram):
        fs, ft = base_s.clone().requires_grad_(), base_t.clone().requires_grad_()
        loss = fn(fs, ft, reduction)
        loss.backward()
        values.append(loss.detach())
        grads.append((fs.grad, ft.grad))
    torch.testing.assert_close(values[1], values[0], rtol=1e-4, atol=0)
    for g_gram, g_dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_gram, g_dense, rtol=1e-4, atol=1e-4 * g_dense.abs().max().item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_identical_features_give_zero(reduction):
    f = torch.randn(2, 8, 6, 6)
    assert affinity_loss_dense(f, f.clone(), reduction).item() == 0.0
    assert affinity_loss_gram(f, f.clone(), reduction).item() == 0.0
    assert adaptation_loss(f, f.clone(), reduction="paper").item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fn", [affinity_loss_dense, affinity_loss_gram])
def test_affinity_gradcheck(fn, reduction):
    torch.manual_seed(2)
    fs = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, reduction), (fs, ft))


@pytest.mark.parametrize("reduction", ["element", "paper"])
def test_adaptation_gradcheck(reduction):
    zs = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: adaptation_loss(a, b, reduction=reduction), (zs, zt))


def test_affinity_scale_behaviour():
    """Same maps at 2x resolution (4x positions): mse unchanged, paper halves (1/sqrt(m))."""
    torch.manual_seed(3)
    fs, ft = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    up = lambda f: F.interpolate(f, scale_factor=2, mode="nearest")  # noqa: E731
    for reduction, expected in (("mse", 1.0), ("paper", 0.5)):
        ratio = (affinity_loss(up(fs), up(ft), reduction) / affinity_loss(fs, ft, reduction)).item()
        assert ratio == pytest.approx(expected, rel=0.1), reduction
    smooth_s = F.interpolate(fs, scale_factor=2, mode="bilinear")
    smooth_t = F.interpolate(ft, scale_factor=2, mode="bilinear")
    ratio = (affinity_loss(up(smooth_s), up(smooth_t)) / affinity_loss(smooth_s, smooth_t)).item()
    assert ratio == pytest.approx(1.0, rel=0.1)


def test_invariance_to_per_position_rescaling():
    torch.manual_seed(4)
    fs, ft = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4, 5)
    scale_s, scale_t = torch.rand(2, 1, 4, 5) * 10 + 0.1, torch.rand(2, 1, 4, 5) * 10 + 0.1
    for reduction in REDUCTIONS:
        torch.testing.assert_close(affinity_loss(fs * scale_s, ft * scale_t, reduction),
                                   affinity_loss(fs, ft, reduction))
    for reduction in ("element", "paper"):
        torch.testing.assert_close(adaptation_loss(fs * scale_s, ft * scale_t, reduction=reduction),
                                   adaptation_loss(fs, ft, reduction=reduction))
    # the matrix itself: cosine / m, symmetric, diagonal 1/m
    a = affinity_matrix(fs)
    assert a.shape == (2, 20, 20)
    torch.testing.assert_close(a, a.transpose(1, 2))
    torch.testing.assert_close(a.diagonal(dim1=1, dim2=2), torch.full((2, 20), 1 / 20))


def test_adaptation_loss_by_hand():
    # two positions, two channels: s = (3, 4), (0, 2); t = (1, 0), (0, 5)
    zs = torch.tensor([[3.0, 0.0], [4.0, 2.0]]).reshape(1, 2, 1, 2)
    zt = torch.tensor([[1.0, 0.0], [0.0, 5.0]]).reshape(1, 2, 1, 2)
    # unit vectors: s -> (0.6, 0.8), (0, 1); t -> (1, 0), (0, 1); differences (-0.4, 0.8), (0, 0)
    assert adaptation_loss(zs, zt, reduction="paper").item() == pytest.approx(math.sqrt(0.8) / 2)
    assert adaptation_loss(zs, zt, reduction="element").item() == pytest.approx(0.8 / 4)
    assert adaptation_loss(zs, zt, p=1, reduction="paper").item() == pytest.approx(1.2 / 2)
    # q = 1 normalisation: s -> (3/7, 4/7), t -> (1, 0); |d| = (4/7, 4/7); p = 2 norm
    assert adaptation_loss(zs, zt, q=1, reduction="paper").item() == pytest.approx(
        math.sqrt(2 * (4 / 7) ** 2) / 2)


def test_autoencoder_loss_by_hand():
    f = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    r = torch.tensor([1.0, 1.0, 3.0, 2.0]).reshape(1, 1, 2, 2)
    z = torch.tensor([-2.0, 2.0]).reshape(1, 2, 1, 1)
    total, rec, l1 = autoencoder_loss(f, r, z, alpha=0.5)
    assert rec.item() == pytest.approx((0 + 1 + 0 + 4) / 4)
    assert l1.item() == pytest.approx(2.0)
    assert total.item() == pytest.approx(1.25 + 0.5 * 2.0)


def test_autoencoder_overfits_one_batch():
    torch.manual_seed(5)
    # teacher-like features: smooth and low-rank (random noise cannot pass a bottleneck)
    coarse = F.interpolate(torch.randn(4, 4, 4, 4), size=(8, 8), mode="bilinear")
    f = torch.relu(torch.einsum("oc,nchw->nohw", torch.randn(16, 4), coarse))
    ae = FeatureAutoencoder(16, 8, ae_strides(2))
    opt = torch.optim.SGD(ae.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(300):
        z, r = ae(f)
        loss = autoencoder_loss(f, r, z)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


@pytest.mark.parametrize("teacher_tap,student_os,ratio", [
    ("encoder", 8, 1), ("pre_logits", 8, 2), ("pre_logits", 16, 4)])
@pytest.mark.parametrize("size", [(96, 96), (64, 80)])
def test_encoder_output_matches_student_feature_size(teacher_tap, student_os, ratio, size):
    teacher = build_model("tiny-teacher", 3).eval()
    student = build_model("tiny-student", 3, output_stride=student_os).eval()
    t_info = teacher.feature_info[teacher_tap]
    assert student.feature_info["pre_logits"].stride // t_info.stride == ratio
    ae = FeatureAutoencoder(t_info.channels, 16, ae_strides(ratio)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        z, r = ae(teacher(x)["features"][teacher_tap])
        fs = student(x)["features"]["pre_logits"]
    assert z.shape[-2:] == fs.shape[-2:] and z.shape[1] == 16
    assert r.shape == teacher(x)["features"][teacher_tap].shape


def _tiny_task(losses=None, **kw):
    """A tiny distillation task; ``losses``: ``distill.losses`` (default: the method's two at
    their default weights); ``kw``: other ``distill`` keys."""
    torch.manual_seed(6)
    teacher = build_model("tiny-teacher", 3)
    student = build_model("tiny-student", 3)
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    # give BN non-trivial running statistics
    teacher.train()(torch.randn(2, 3, 64, 64))
    ae.train()(torch.randn(2, 64, 16, 16))
    cfg = DistillConfig(**kw) if losses is None else DistillConfig(losses=losses, **kw)
    return DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                       config=cfg), teacher, ae


def test_frozen_parts_stay_frozen_and_only_student_and_adapters_change():
    task, teacher, ae = _tiny_task({"adapt": {"weight": 50.0}, "affinity": {"weight": 10.0}})
    frozen = {**{f"t.{k}": v.clone() for k, v in teacher.state_dict().items()},
              **{f"e.{k}": v.clone() for k, v in ae.encoder.state_dict().items()}}
    trainable = {k: v.clone() for k, v in task.state_dict().items()}
    assert not any(k.startswith(("teacher", "encoder")) for k in trainable)
    task.train()
    assert not teacher.training and not ae.encoder.training
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    losses = task(x, y)
    assert set(losses) == {"loss", "ce", "adapt", "adapt_ratio", "affinity", "affinity_ratio"}
    losses["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in ae.encoder.parameters())
    after = {**{f"t.{k}": v for k, v in teacher.state_dict().items()},
             **{f"e.{k}": v for k, v in ae.encoder.state_dict().items()}}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # weights and BN statistics
    changed = {k for k, v in task.state_dict().items() if not torch.equal(v, trainable[k])}
    parts = {".".join(k.split(".")[:2]) if k.startswith("loss_modules") else k.split(".")[0]
             for k in changed}
    assert parts == {"student", "loss_modules.adapt", "loss_modules.affinity", "step"}
    assert int(task.step) == 1  # the step counter (warm-up) moves, nothing else
    total = losses["ce"] + 50 * losses["adapt"] + 10 * losses["affinity"]
    torch.testing.assert_close(losses["loss"], total)
    torch.testing.assert_close(losses["adapt_ratio"], (50 * losses["adapt"] / losses["ce"]).detach())


def test_switched_off_terms_are_not_built():
    task, _, _ = _tiny_task({"adapt": {"weight": 0.0}, "affinity": {"weight": 1.0}})
    assert list(task.loss_modules) == ["affinity"] and list(task.terms) == ["affinity"]
    task, _, _ = _tiny_task({})
    losses = task(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    assert set(losses) == {"loss", "ce"} and torch.equal(losses["loss"], losses["ce"])


def test_frozen_cannot_be_unfrozen_by_train():
    bn = torch.nn.BatchNorm2d(3)
    wrapper = torch.nn.Sequential(Frozen(bn))
    wrapper.train()
    before = bn.running_mean.clone()
    wrapper(torch.randn(4, 3, 2, 2) + 5)
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert list(wrapper.parameters()) == [] and wrapper.state_dict() == {}
    wrapper.to(torch.float64)
    assert bn.weight.dtype == torch.float64


def test_adapter_is_a_3x3_conv_bn_relu_by_hand():
    # [paper] C_f: 3x3 conv, stride 1, padding 1, BN, ReLU. With identity BN (eval, fresh
    # statistics) each output is ReLU(conv) / sqrt(1 + eps): check one interior and one border
    adapter = Adapter(2, 1).eval()
    with torch.no_grad():
        adapter[0].weight.copy_(torch.arange(18.0).view(1, 2, 3, 3) / 10 - 0.8)
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    out = adapter(x)
    assert out.shape == (1, 1, 5, 5)
    w = adapter[0].weight[0]
    pad = F.pad(x[0], (1, 1, 1, 1))
    scale = 1 / math.sqrt(1 + adapter[1].eps)
    for i, j in [(2, 3), (0, 0)]:
        by_hand = max(0.0, float((pad[:, i:i + 3, j:j + 3] * w).sum())) * scale
        assert out[0, 0, i, j].item() == pytest.approx(by_hand, rel=1e-5, abs=1e-6)


def test_bf16_autocast_step_matches_fp32():
    task, _, _ = _tiny_task({"adapt": {}, "affinity": {"impl": "gram"}})
    task.eval()  # same BN behaviour in both passes
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    with torch.no_grad():
        ref = task(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = task(x, y)
    for k in ("ce", "adapt", "affinity", "loss"):
        assert amp[k].dtype == torch.float32  # losses accumulate in float32
        assert amp[k].item() == pytest.approx(ref[k].item(), rel=0.05), k


# --------------------------------------------------------------------------- review defects (#12)
@pytest.mark.parametrize("p", [1.0, 1.5, 3.0])
def test_adaptation_paper_reduction_zero_difference_gives_zero_gradient(p):
    g = torch.Generator().manual_seed(0)
    zt = torch.relu(torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64))
    zs = zt.clone()
    zs[0, :, 0, 0] = 0.0  # both zero vectors at this position (ReLU outputs)
    zt[0, :, 0, 0] = 0.0
    zs[1, :, 1, 1] += 0.5  # one position differs
    x = zs.clone().requires_grad_(True)
    adaptation_loss(x, zt, p=p, reduction="paper").backward()
    assert torch.isfinite(x.grad).all()
    same = torch.ones(2, 3, 3, dtype=torch.bool)
    same[1, 1, 1] = False
    assert x.grad.permute(0, 2, 3, 1)[same].abs().max().item() == 0.0
    assert x.grad[1, :, 1, 1].abs().sum().item() > 0


def _impulse_autoencoder(strides):
    """E and D pass an impulse through: centre taps 1, BN identity (eval), ReLU on positives."""
    ae = FeatureAutoencoder(1, 1, strides).eval()
    with torch.no_grad():
        for mod in ae.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                mod.weight.zero_()
                mod.weight[..., 1, 1] = 1.0
                if mod.bias is not None:
                    mod.bias.zero_()
    return ae


@pytest.mark.parametrize("strides,side,at", [((2, 1, 1), 13, (12, 6)), ((2, 2, 1), 13, (12, 8)),
                                             ((2, 2, 2), 21, (16, 8))])
def test_autoencoder_reconstruction_is_aligned_at_odd_sizes(strides, side, at):
    # the side is not a multiple of the total stride: the decoder's output is larger than F_t;
    # an impulse on the encoder's sampling grid must come back where it was
    ae = _impulse_autoencoder(strides)
    f = torch.zeros(1, 1, side, side)
    f[0, 0, at[0], at[1]] = 1.0
    with torch.no_grad():
        _, r = ae(f)
    assert r.shape == f.shape
    peak = int(r.flatten().argmax())
    assert divmod(peak, side) == at
    assert r[0, 0, at[0], at[1]].item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gram_form_is_accurate_when_the_maps_nearly_agree(reduction):
    g = torch.Generator().manual_seed(1)
    ft = torch.randn(2, 16, 48, 48, generator=g, dtype=torch.float64)
    fs = ft + 1e-3 * torch.randn(ft.shape, generator=g, dtype=torch.float64)
    ref = affinity_loss_dense(fs, ft, reduction)
    a, b = fs.float().requires_grad_(True), ft.float().requires_grad_(True)
    got = affinity_loss_gram(a, b, reduction)
    assert abs(got.item() - ref.item()) / ref.item() <= 1e-4
    got.backward()
    x, y = fs.clone().requires_grad_(True), ft.clone().requires_grad_(True)
    affinity_loss_dense(x, y, reduction).backward()
    for mine, exact in ((a.grad, x.grad), (b.grad, y.grad)):
        rel = (mine.double() - exact).norm() / exact.norm()
        assert rel.item() <= 1e-3


def test_distill_refuses_a_latent_of_another_scale():
    # an autoencoder made for an OS 16 student (strides 2,2,1) used with an OS 8 one
    torch.manual_seed(0)
    teacher = build_model("tiny-teacher", 3)
    student = build_model("tiny-student", 3, output_stride=8)
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    task = DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                       config=DistillConfig(losses={"adapt": {}}))
    with pytest.raises(ValueError, match="another feature stride"):
        task(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    # the right pair at an input size that is not a multiple of 16 trains as usual
    right = DistillTask(student=build_model("tiny-student", 3), teacher=teacher,
                        encoder=ae.encoder, latent_channels=16,
                        config=DistillConfig(losses={"adapt": {}}))
    out = right(torch.randn(2, 3, 72, 72), torch.randint(0, 3, (2, 72, 72)))
    assert torch.isfinite(out["loss"])


# --------------------------------------------------------------------------- second review
def test_ratio_diagnostic_is_zero_when_ce_is_exactly_zero():
    from kaseg.engine.tasks import ratio
    assert ratio(torch.tensor(3.5), torch.tensor(0.0)).item() == 0.0
    assert ratio(torch.tensor(3.0), torch.tensor(2.0)).item() == 1.5


def test_confident_student_on_an_easy_batch_gives_finite_diagnostics():
    """CE of exactly 0 in float32: every logged entry stays finite (no inf ratio)."""
    task, _, _ = _tiny_task()
    task.train()
    head = task.student.net.segmentation_head[0]
    with torch.no_grad():  # class 0 wins everywhere by a margin that makes CE exactly 0
        head.weight.zero_()
        head.bias.copy_(torch.tensor([200.0, -200.0, -200.0]))
    x, y = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
    losses = task(x, y)
    assert losses["ce"].item() == 0.0
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert losses["adapt_ratio"].item() == 0.0 and losses["loss"].item() > 0


def test_distill_task_on_a_batch_without_labels_is_finite_with_every_term():
    names = ["kd", "fitnet", "skd", "cwd", "ifvd"]
    task, _, _ = _tiny_task({"adapt": {}, "affinity": {}, **{n: {} for n in names}})
    task.train()
    x, y = torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), 255)
    losses = task(x, y)
    assert losses["ce"].item() == 0.0
    for name in ["fitnet", "skd", "cwd", "ifvd"]:  # masked terms: nothing valid, nothing counts
        assert losses[name].item() == 0.0, name
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def test_task_defaults_are_the_configs():
    task, _, _ = _tiny_task()
    assert task.terms == {"adapt": (50.0, {"reduction": "element", "p": 2.0, "q": 2.0}),
                          "affinity": (30.0, {"reduction": "mse", "impl": "auto",
                                              "dense_max_positions": 1024})}
    assert task.terms["affinity"][0] == 30.0  # the documented default, not 1.0


@pytest.mark.parametrize("side", [4, 40])  # 16 positions (dense) and 1600 (Gram)
def test_affinity_auto_gives_the_same_error_at_every_size(side):
    fs, ft = torch.randn(1, 8, side, side), torch.randn(1, 6, side, side)
    with pytest.raises(ValueError, match="need the same shape"):
        affinity_loss(fs, ft)
    with pytest.raises(ValueError, match="need the same shape"):
        affinity_loss(fs, ft, impl="dense")


def test_unlabelled_terms_share_the_weight_of_the_labelled_ones():
    """With unlabelled images a label-free term is the image-weighted mean over both batches
    (default), or the stated mix: turning them on does not double its weight."""
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    u, uv = torch.randn(6, 3, 32, 32), torch.zeros(6, 32, 32, dtype=torch.long)
    for weight, share in ((None, 6 / 8), (0.5, 0.5), (1.0, 1.0)):
        task, _, _ = _tiny_task(unlabeled_weight=weight)
        task.eval()
        losses = task(x, y, u, uv)
        want = losses["ce"]
        for name, w in (("adapt", 50.0), ("affinity", 30.0)):
            want = want + w * ((1 - share) * losses[name] + share * losses[name + "_unlabeled"])
        torch.testing.assert_close(losses["loss"], want)
    with pytest.raises(ValueError, match="unlabeled_weight"):
        _tiny_task(unlabeled_weight=2.0)
