"""MasKD against its authors' code: hunto/MasKD at commit
b5af34fe343f1b82689291871f85b97a6aea4278, ``segmentation/losses/maskd.py`` (``dice_coeff``,
``MaskModule``, ``MasKDLoss``) and ``segmentation/losses/loss.py`` (``SegCrossEntropyLoss``),
transcribed below (adapted only: no checkpoint is loaded, ``ignore_index`` is kaseg's 255)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kaseg.losses.maskd import ReceptiveTokens, mask_diversity, mask_stage_loss, maskd_loss


def dice_coeff(inputs):
    pred = inputs[:, None, :, :]
    target = inputs[:, :, None, :]
    mask = pred.new_ones(pred.size(0), target.size(1), pred.size(2))
    mask[:, torch.arange(mask.size(1)), torch.arange(mask.size(2))] = 0
    a = torch.sum(pred * target, -1)
    b = torch.sum(pred * pred, -1) + 1e-12
    c = torch.sum(target * target, -1) + 1e-12
    d = (2 * a) / (b + c)
    return (d * mask).sum() / mask.sum()


class MaskModule(nn.Module):
    def __init__(self, channels, num_tokens=8):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(num_tokens, channels).normal_(0, 0.01))

    def forward_mask(self, x):
        N, C, H, W = x.shape
        mask_token = self.mask_token.expand(N, -1, -1)
        k = x.view(N, -1, H * W)
        attn = mask_token @ k
        attn = attn.sigmoid()
        return attn.view(N, -1, H, W)

    def forward_train(self, x):
        mask = self.forward_mask(x)
        out = (x.unsqueeze(1) * mask.unsqueeze(2)).sum(1)
        return out, dice_coeff(mask.flatten(2))


def masked_kd(mask_module, y_s, y_t):  # MasKDLoss.forward
    mask = mask_module.forward_mask(y_t)
    masked_y_s = y_s.unsqueeze(1) * mask.unsqueeze(2)
    masked_y_t = y_t.unsqueeze(1) * mask.unsqueeze(2)
    square_loss = (masked_y_s - masked_y_t) ** 2
    square_loss = square_loss.sum((3, 4))
    square_loss = square_loss / (mask.sum((2, 3)).unsqueeze(-1) + 1e-5)
    return square_loss.mean() * 0.5


def seg_ce(inputs, targets, ignore_index=255):  # SegCrossEntropyLoss
    B, H, W = targets.size()
    inputs = F.interpolate(inputs, (H, W), mode="bilinear", align_corners=True)
    return nn.CrossEntropyLoss(ignore_index=ignore_index)(inputs, targets)


def _pair(shape, tokens, dtype, seed):
    torch.manual_seed(seed)
    ref = MaskModule(shape[1], tokens).to(dtype)
    ours = ReceptiveTokens(shape[1], tokens).to(dtype)
    with torch.no_grad():
        ours.tokens.copy_(ref.mask_token)
    return ref, ours


SHAPES = [((2, 19, 8, 16), 8), ((1, 5, 6, 6), 3), ((3, 8, 4, 7), 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,tokens", SHAPES)
def test_masks_diversity_and_the_distillation_term_equal_the_authors(shape, tokens, dtype):
    ref, ours = _pair(shape, tokens, dtype, sum(shape))
    # logits of a trained teacher are large: masks then use the sigmoid's whole range
    y_t = 4 * torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        ref.mask_token.normal_(0, 0.5)
        ours.tokens.copy_(ref.mask_token)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    m_ref, m = ref.forward_mask(y_t), ours.masks(y_t)
    assert torch.allclose(m, m_ref, rtol=tol, atol=tol)
    assert torch.allclose(mask_diversity(m), dice_coeff(m_ref.flatten(2)), rtol=tol, atol=tol)
    s = torch.randn(shape, dtype=dtype, requires_grad=True)
    s2 = s.detach().clone().requires_grad_(True)
    ours_v = maskd_loss(s, y_t, m)
    ref_v = masked_kd(ref, s2, y_t)
    assert torch.allclose(ours_v, ref_v, rtol=tol, atol=tol)
    (g,), (g_ref,) = torch.autograd.grad(ours_v, s), torch.autograd.grad(ref_v, s2)
    assert torch.allclose(g, g_ref, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=tol)


def test_padded_positions_take_no_part_in_the_distillation_term():
    _, ours = _pair((2, 4, 5, 6), 3, torch.float64, 0)
    s, t = torch.randn(2, 4, 5, 6, dtype=torch.float64), torch.randn(2, 4, 5, 6,
                                                                         dtype=torch.float64)
    valid = torch.ones(2, 5, 6, dtype=torch.bool)
    valid[:, :, 4:] = False
    m = ours.masks(t)
    with_valid = maskd_loss(s, t, m, valid)
    cropped = maskd_loss(s[..., :4], t[..., :4], m[..., :4])
    assert torch.allclose(with_valid, cropped, rtol=1e-12)
    changed = s.clone()
    changed[..., 4:] += 100.0
    assert torch.equal(maskd_loss(changed, t, m, valid), with_valid)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_mask_stage_loss_and_one_optimiser_step_of_the_tokens_equal_the_authors(dtype):
    """train_mask_module.py: task loss (CE of the masked logits at the labels' size) + the dice
    term, SGD lr 0.1, momentum 0.9, weight decay 1e-3; the teacher frozen."""
    ref, ours = _pair((2, 6, 4, 5), 4, dtype, 3)
    x = 3 * torch.randn(2, 6, 4, 5, dtype=dtype)
    labels = torch.randint(0, 6, (2, 13, 17))
    labels[0, :3] = 255
    out, dice = ref.forward_train(x)
    ref_total = seg_ce(out, labels) + dice
    total, ce, diversity = mask_stage_loss(ours, x, labels)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(total.to(dtype), ref_total, rtol=tol, atol=tol)
    assert torch.allclose(diversity, dice, rtol=tol, atol=tol) and ce > 0
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
            for m in (ref, ours)]
    for opt, loss in zip(opts, (ref_total, total)):
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(ours.tokens, ref.mask_token, rtol=tol, atol=tol)
    assert not torch.allclose(ours.tokens.detach(), _pair((2, 6, 4, 5), 4, dtype, 3)[1].tokens)


def test_a_token_count_below_one_is_refused():
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        ReceptiveTokens(8, 0)
