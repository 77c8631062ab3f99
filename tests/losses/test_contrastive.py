"""CIRKD and Af-DCD against references transcribed from their authors' code (values, gradients,
memory-bank updates step by step), the places where kaseg reads them differently, and their
errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kaseg.losses.contrastive import (AfDcdHead, CirkdMemory, af_dcd_loss, cirkd_batch_loss,
                                      cirkd_memory_loss, common_grid, omni_contrastive_loss)
from kaseg.core.errors import KasegError
from kaseg.engine.experiment import load_config
from kaseg.losses.registry import LOSSES, resolve_losses
from kaseg.engine.stages import check_losses_fit

IGNORE = 255


# --------------------------------------------------------------------------- CIRKD references
# Transcribed from winycg/CIRKD at commit 2d8ad0f703676da698abdf077cc5a67181d1c635 (the CVPR 2022
# code, train_cirkd.py and its losses): losses/cirkd_mini_batch.py
# (CriterionMiniBatchCrossImagePair, pooling off as train_cirkd.py builds it) and
# losses/cirkd_memory.py (StudentSegContrast). Adaptations: no .cuda(), no all_gather (one
# process), BatchNorm2d for SyncBatchNorm, the sampled contrasts in the bank's dtype (the
# authors' .float() would refuse a float64 test), and one fix marked FIX (see
# CirkdMemory.enqueue).
def _ref_minibatch(feat_S, feat_T, temperature):
    B = feat_S.shape[0]
    feat_S = F.normalize(feat_S, p=2, dim=1)
    feat_T = F.normalize(feat_T, p=2, dim=1)

    def sim(a, b):
        C = a.shape[0]
        return torch.mm(a.reshape(C, -1).transpose(0, 1), b.reshape(C, -1))

    sim_dis = 0.0
    for i in range(B):
        for j in range(B):
            p_s = F.log_softmax(sim(feat_S[i], feat_S[j]) / temperature, dim=1)
            p_t = F.softmax(sim(feat_T[i], feat_T[j]) / temperature, dim=1)
            sim_dis = sim_dis + F.kl_div(p_s, p_t, reduction="batchmean")
    return sim_dis / (B * B)


class _RefStudentSegContrast(nn.Module):
    def __init__(self, num_classes, pixel_memory_size, region_memory_size, region_contrast_size,
                 pixel_contrast_size, contrast_kd_temperature, contrast_temperature, s_channels,
                 t_channels, ignore_label, pixel_update_freq=16):
        super().__init__()
        self.contrast_kd_temperature = contrast_kd_temperature
        self.contrast_temperature = contrast_temperature
        self.dim = t_channels
        self.ignore_label = ignore_label
        self.project_head = nn.Sequential(nn.Conv2d(s_channels, t_channels, 1, bias=False),
                                          nn.BatchNorm2d(t_channels), nn.ReLU(True),
                                          nn.Conv2d(t_channels, t_channels, 1, bias=False))
        self.num_classes = num_classes
        self.region_memory_size = region_memory_size
        self.pixel_memory_size = pixel_memory_size
        self.pixel_update_freq = pixel_update_freq
        self.pixel_contrast_size = pixel_contrast_size
        self.region_contrast_size = region_contrast_size
        self.register_buffer("teacher_segment_queue",
                             torch.randn(num_classes, region_memory_size, self.dim))
        self.teacher_segment_queue = F.normalize(self.teacher_segment_queue, p=2, dim=2)
        self.register_buffer("segment_queue_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("teacher_pixel_queue",
                             torch.randn(num_classes, pixel_memory_size, self.dim))
        self.teacher_pixel_queue = F.normalize(self.teacher_pixel_queue, p=2, dim=2)
        self.register_buffer("pixel_queue_ptr", torch.zeros(num_classes, dtype=torch.long))

    def _sample_negative(self, Q, index):
        class_num, cache_size, feat_size = Q.shape
        contrast_size = index.size(0)
        X_ = torch.zeros((class_num * contrast_size, feat_size), dtype=Q.dtype)
        y_ = torch.zeros((class_num * contrast_size, 1))
        sample_ptr = 0
        for ii in range(class_num):
            X_[sample_ptr:sample_ptr + contrast_size, ...] = Q[ii, index, :]
            y_[sample_ptr:sample_ptr + contrast_size, ...] = ii
            sample_ptr += contrast_size
        return X_, y_

    def _dequeue_and_enqueue(self, keys, labels):
        segment_queue = self.teacher_segment_queue
        pixel_queue = self.teacher_pixel_queue
        batch_size, feat_dim, H, W = keys.size()
        for bs in range(batch_size):
            this_feat = keys[bs].contiguous().view(feat_dim, -1)
            this_label = labels[bs].contiguous().view(-1)
            this_label_ids = torch.unique(this_label)
            this_label_ids = [x for x in this_label_ids if x != self.ignore_label]
            for lb in this_label_ids:
                idxs = (this_label == lb).nonzero()
                feat = torch.mean(this_feat[:, idxs], dim=1).squeeze(1)
                ptr = int(self.segment_queue_ptr[lb])
                segment_queue[lb, ptr, :] = F.normalize(feat.view(-1), p=2, dim=0)
                self.segment_queue_ptr[lb] = (self.segment_queue_ptr[lb] + 1) % \
                    self.region_memory_size
                num_pixel = idxs.shape[0]
                perm = torch.randperm(num_pixel)
                K = min(num_pixel, self.pixel_update_freq)
                feat = this_feat[:, idxs[perm[:K], 0]]  # FIX: the authors index with perm[:K]
                feat = torch.transpose(feat, 0, 1)
                ptr = int(self.pixel_queue_ptr[lb])
                if ptr + K >= self.pixel_memory_size:
                    pixel_queue[lb, -K:, :] = F.normalize(feat, p=2, dim=1)
                    self.pixel_queue_ptr[lb] = 0
                else:
                    pixel_queue[lb, ptr:ptr + K, :] = F.normalize(feat, p=2, dim=1)
                    self.pixel_queue_ptr[lb] = (self.pixel_queue_ptr[lb] + K) % \
                        self.pixel_memory_size

    def contrast_sim_kd(self, s_logits, t_logits):
        p_s = F.log_softmax(s_logits / self.contrast_kd_temperature, dim=1)
        p_t = F.softmax(t_logits / self.contrast_kd_temperature, dim=1)
        return F.kl_div(p_s, p_t, reduction="batchmean") * self.contrast_kd_temperature**2

    def forward(self, s_feats, t_feats, labels=None, predict=None):
        t_feats = F.normalize(t_feats, p=2, dim=1)
        s_feats = self.project_head(s_feats)
        s_feats = F.normalize(s_feats, p=2, dim=1)
        labels = labels.unsqueeze(1).float().clone()
        labels = F.interpolate(labels, (s_feats.shape[2], s_feats.shape[3]), mode="nearest")
        labels = labels.squeeze(1).long()
        ori_t_fea, ori_labels = t_feats, labels
        labels = labels.contiguous().view(-1)
        idxs = labels != self.ignore_label
        s_feats = s_feats.permute(0, 2, 3, 1).contiguous().view(-1, s_feats.shape[1])[idxs, :]
        t_feats = t_feats.permute(0, 2, 3, 1).contiguous().view(-1, t_feats.shape[1])[idxs, :]
        self._dequeue_and_enqueue(ori_t_fea.detach().clone(), ori_labels.detach().clone())
        class_num, pixel_queue_size, feat_size = self.teacher_pixel_queue.shape
        perm = torch.randperm(pixel_queue_size)
        pixel_index = perm[:self.pixel_contrast_size]
        t_X_pixel_contrast, _ = self._sample_negative(self.teacher_pixel_queue, pixel_index)
        t_pixel_logits = torch.div(torch.mm(t_feats, t_X_pixel_contrast.T),
                                   self.contrast_temperature)
        s_pixel_logits = torch.div(torch.mm(s_feats, t_X_pixel_contrast.T),
                                   self.contrast_temperature)
        class_num, region_queue_size, feat_size = self.teacher_segment_queue.shape
        perm = torch.randperm(region_queue_size)
        region_index = perm[:self.region_contrast_size]
        t_X_region_contrast, _ = self._sample_negative(self.teacher_segment_queue, region_index)
        t_region_logits = torch.div(torch.mm(t_feats, t_X_region_contrast.T),
                                    self.contrast_temperature)
        s_region_logits = torch.div(torch.mm(s_feats, t_X_region_contrast.T),
                                    self.contrast_temperature)
        pixel_sim_dis = self.contrast_sim_kd(s_pixel_logits, t_pixel_logits.detach())
        region_sim_dis = self.contrast_sim_kd(s_region_logits, t_region_logits.detach())
        return pixel_sim_dis, region_sim_dis


# --------------------------------------------------------------------------- Af-DCD reference
# Transcribed from OSVAI/Af-DCD at commit 5b086a7b4d92e5d14208d95347f05c014e5ca84a,
# losses/ocmgd.py (OmniContrastiveFeatureLoss and EnhancedProjector; the non-CamVid branch).
# Adaptation: the random mask is made in the maps' dtype (the authors' int mask times a float32
# map is float32, which a float64 test would not be).
class _RefEnhancedProjector(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.block_1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                     nn.ReLU(inplace=True))
        self.block_2 = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1),
                                     nn.ReLU(inplace=True))
        self.adpator_1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.adpator_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x):
        x_1 = self.block_1(x)
        x_2 = self.block_2(x_1)
        return (self.adpator_1(x_1) + self.adpator_2(x_2)) / 2.


class _RefOmniContrastiveFeatureLoss(nn.Module):
    def __init__(self, student_channels, teacher_channels, tau_ocd=0.07, M_ocd=16, pool_size=4,
                 patch_size=(4, 4), mask_ratio=0.75):
        super().__init__()
        self.zeta_fd, self.tau_ocd, self.M_ocd = mask_ratio, tau_ocd, M_ocd
        self.pool_size, self.patch_size = pool_size, patch_size
        self.align = nn.Conv2d(student_channels, teacher_channels, 1, 1, 0)
        self.projetor = _RefEnhancedProjector(teacher_channels, teacher_channels)

    def forward(self, feat_S, feat_T):
        feat_S = self.align(feat_S)
        BS, C, H, W = feat_T.shape
        mat = torch.rand((BS, 1, H, W))
        mat = torch.where(mat > 1 - self.zeta_fd, 0, 1).to(feat_S.dtype)
        new_fea = self.projetor(torch.mul(feat_S, mat))
        dis_loss = nn.MSELoss(reduction="sum")(new_fea, feat_T) / BS
        ctr_loss = self.get_omni_contrastive_loss(new_fea, feat_T) / BS
        return dis_loss, ctr_loss

    def get_omni_contrastive_loss(self, preds, targets):
        if self.pool_size != 0:
            preds = F.max_pool2d(preds, self.pool_size)
            targets = F.max_pool2d(targets, self.pool_size)
        BS, C, H, W = preds.shape
        N2 = self.patch_size[0] * self.patch_size[1]
        M = self.M_ocd
        preds = self._to_ctr_format(preds, self.patch_size)
        targets = self._to_ctr_format(targets, self.patch_size)
        similarity_matrix = -torch.cdist(preds, targets, p=1)
        mask = torch.eye(N2 * M, dtype=torch.bool).repeat(similarity_matrix.shape[0], 1, 1)
        mask_c = torch.cat([torch.arange(M) for i in range(N2)], dim=0)
        mask_c = (mask_c.unsqueeze(0) == mask_c.unsqueeze(1)).bool()
        mask_negative = ~mask_c.repeat(similarity_matrix.shape[0], 1, 1)
        positives = similarity_matrix[mask].view(BS * H * W * M, -1)
        negatives = similarity_matrix[mask_negative].view(BS * H * W * M, -1)
        logits = torch.cat([positives, negatives], dim=1) / self.tau_ocd
        labels = torch.zeros((logits.shape[0]), dtype=torch.long)
        return nn.CrossEntropyLoss(reduction="sum")(logits, labels) / (H * W)

    def _to_ctr_format(self, x, patch_size):
        M = self.M_ocd
        BS, C, H, W = x.shape
        H_p, W_p = patch_size
        num_p = (H * W) // (H_p * W_p)
        N2 = H_p * W_p
        x = x.contiguous().view(BS, C, H // H_p, H_p, W // W_p, W_p).permute(0, 2, 4, 1, 3, 5)
        x = torch.stack(x.split(C // M, dim=3), dim=3)
        x = x.contiguous().view(BS, num_p, M, C // M, N2)
        return x.permute(0, 1, 4, 2, 3).contiguous().view(-1, N2 * M, C // M)


def _tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5,
                                                                           "atol": 1e-6}


def _close_grad(got, want, dtype):
    """Gradients to rounding: a float32 sum over many positions has an absolute error that
    scales with the gradient's size, so the absolute tolerance does too."""
    tol = _tol(dtype)
    atol = tol["atol"] * (10.0 if dtype == torch.float32 else 1.0)
    torch.testing.assert_close(got, want, rtol=tol["rtol"],
                               atol=atol * max(1.0, want.abs().max().item()))


# --------------------------------------------------------------------------- CIRKD tests
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,cs,ct,h,w", [(2, 8, 12, 5, 7), (3, 4, 6, 4, 4)])
def test_cirkd_batch_equals_its_authors_code_in_value_and_gradient(b, cs, ct, h, w, dtype):
    torch.manual_seed(0)
    fs = torch.randn(b, cs, h, w, dtype=dtype, requires_grad=True)
    ft = torch.randn(b, ct, h, w, dtype=dtype)
    ref_in = fs.detach().clone().requires_grad_(True)
    # one group of the whole batch: the authors' code on one GPU holding all b images
    ours, ref = cirkd_batch_loss(fs, ft, 0.1, group=b), _ref_minibatch(ref_in, ft, 0.1)
    torch.testing.assert_close(ours, ref, **_tol(dtype))
    ours.backward(), ref.backward()
    torch.testing.assert_close(fs.grad, ref_in.grad, **_tol(dtype))
    assert ours.item() > 0 and cirkd_batch_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-6)
    # groups of 2 (the default): the authors' code on GPUs of 2 images each, averaged over the
    # GPUs as DDP averages their gradients (b = 3: a GPU of 2 and one of 1)
    fs.grad, ref_in.grad = None, None
    ours = cirkd_batch_loss(fs, ft, 0.1)
    ref = torch.stack([_ref_minibatch(ref_in[k:k + 2], ft[k:k + 2], 0.1)
                       for k in range(0, b, 2)]).mean()
    torch.testing.assert_close(ours, ref, **_tol(dtype))
    ours.backward(), ref.backward()
    torch.testing.assert_close(fs.grad, ref_in.grad, **_tol(dtype))


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward of ``fn()`` (each storage counted once)."""
    kept: dict[int, int] = {}

    def pack(x):
        kept[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(kept.values())


@pytest.mark.parametrize("group", [4, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_cirkd_batch_keeps_no_more_for_its_backward_than_the_authors_code(group, masked):
    """B = 4 images of N = 1024 positions: the authors' log_softmax / softmax / kl_div keep
    about 8 bytes per relation entry; kaseg's term at most 9 (it kept 22.5 before), with ignore
    pixels too. Entries: B x group x N^2 (every pair of a group)."""
    torch.manual_seed(4)
    fs = torch.randn(4, 16, 32, 32, requires_grad=True)
    ft = torch.randn(4, 24, 32, 32)
    valid = (torch.rand(4, 32, 32) > 0.3) if masked else None
    entries = 4 * group * 1024**2
    ours = _saved_bytes(lambda: cirkd_batch_loss(fs, ft, 0.1, valid, group=group))
    assert ours / entries <= 9.0
    if group == 4 and not masked:
        theirs = _saved_bytes(lambda: _ref_minibatch(fs, ft, 0.1))
        assert 7.5 <= theirs / entries <= 9.0


def test_cirkd_batch_with_ignore_pixels_is_the_authors_formula_on_the_valid_positions():
    """[ours] rows and columns are valid positions only: each pair's term equals the authors'
    formula on the valid positions of the two images; an image with none joins no pair."""
    torch.manual_seed(1)
    fs, ft = torch.randn(3, 5, 4, 6, dtype=torch.float64), torch.randn(3, 7, 4, 6,
                                                                        dtype=torch.float64)
    valid = torch.rand(3, 4, 6) > 0.4
    valid[2] = False  # an image without a valid position
    got = cirkd_batch_loss(fs, ft, 0.1, valid)
    s, t = F.normalize(fs, dim=1).flatten(2), F.normalize(ft, dim=1).flatten(2)
    terms = []
    for i in range(2):
        for j in range(2):
            si, sj = s[i][:, valid[i].flatten()], s[j][:, valid[j].flatten()]
            ti, tj = t[i][:, valid[i].flatten()], t[j][:, valid[j].flatten()]
            terms.append(F.kl_div(F.log_softmax(si.t() @ sj / 0.1, 1),
                                  F.softmax(ti.t() @ tj / 0.1, 1), reduction="batchmean"))
    torch.testing.assert_close(got, torch.stack(terms).mean(), rtol=1e-10, atol=1e-12)
    all_valid = torch.ones(3, 4, 6, dtype=torch.bool)
    torch.testing.assert_close(cirkd_batch_loss(fs, ft, 0.1, all_valid), cirkd_batch_loss(fs, ft))


def test_cirkd_puts_a_finer_teacher_map_on_the_students_grid_by_averaging():
    torch.manual_seed(2)
    fs, ft = torch.randn(2, 4, 3, 5), torch.randn(2, 6, 12, 20)
    pooled = F.avg_pool2d(ft, 4)
    torch.testing.assert_close(common_grid(fs, ft)[1], pooled)
    torch.testing.assert_close(cirkd_batch_loss(fs, ft), _ref_minibatch(fs, pooled, 0.1))


def _memory_pair(dtype, cs=5, ct=6, k=3, pixel=10, region=4, update=3):
    """Ours and the reference, the same initial weights and banks (built from one seed in the
    authors' order, then the reference's state copied across by name)."""
    torch.manual_seed(3)
    ref = _RefStudentSegContrast(k, pixel, region, 4 // k + 1, 8 // k + 1, 1.0, 0.1, cs, ct,
                                 IGNORE, pixel_update_freq=update).to(dtype)
    torch.manual_seed(3)
    ours = CirkdMemory(cs, ct, k, pixel_memory_size=pixel, region_memory_size=region,
                       pixel_update=update).to(dtype)
    names = {"teacher_segment_queue": "region_queue", "segment_queue_ptr": "region_ptr",
             "teacher_pixel_queue": "pixel_queue", "pixel_queue_ptr": "pixel_ptr"}
    state = {names.get(n, n).replace("project_head", "project"): v
             for n, v in ref.state_dict().items()}
    ours.load_state_dict(state)
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cirkd_memory_equals_its_authors_code_step_by_step(dtype):
    """Three training steps from the same banks and random draws: every loss, the gradients of
    the student map and of the projection head, and both banks and pointers after each step (the
    pixel bank wraps: 3 classes x up to 3 new pixels per image into 10 slots)."""
    ours, ref = _memory_pair(dtype)
    for step in range(3):
        g = torch.Generator().manual_seed(10 + step)
        fs = torch.randn(2, 5, 4, 5, generator=g, dtype=dtype)
        ft = torch.randn(2, 6, 4, 5, generator=g, dtype=dtype)
        labels = torch.randint(0, 3, (2, 4, 5), generator=g)
        labels[0, 0] = IGNORE
        fs_o, fs_r = fs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
        torch.manual_seed(100 + step)
        got = cirkd_memory_loss(ours, fs_o, ft, labels, 8, 4, ignore_index=IGNORE)
        torch.manual_seed(100 + step)
        pixel, region = ref(fs_r, ft, labels, labels)
        want = pixel + region
        torch.testing.assert_close(got, want, **_tol(dtype))
        got.backward(), want.backward()
        torch.testing.assert_close(fs_o.grad, fs_r.grad, **_tol(dtype))
        for (n, p), (_, q) in zip(ours.project.named_parameters(),
                                  ref.project_head.named_parameters()):
            _close_grad(p.grad, q.grad, dtype)
        torch.testing.assert_close(ours.pixel_queue, ref.teacher_pixel_queue, **_tol(dtype))
        torch.testing.assert_close(ours.region_queue, ref.teacher_segment_queue, **_tol(dtype))
        assert ours.pixel_ptr.tolist() == ref.pixel_queue_ptr.tolist()
        assert ours.region_ptr.tolist() == ref.segment_queue_ptr.tolist()
    assert ours.region_ptr.tolist() != [0, 0, 0]  # the banks did move
    # the default region_weight is the authors' equal weights; another one scales the region term
    torch.manual_seed(7)
    both = cirkd_memory_loss(ours, fs, ft, labels, 8, 4, ignore_index=IGNORE, update=False)
    torch.manual_seed(7)
    pix = cirkd_memory_loss(ours, fs, ft, labels, 8, 4, ignore_index=IGNORE, update=False,
                            region_weight=0.0)
    torch.manual_seed(7)
    triple = cirkd_memory_loss(ours, fs, ft, labels, 8, 4, ignore_index=IGNORE, update=False,
                               region_weight=3.0)
    torch.testing.assert_close(triple - pix, 3 * (both - pix))


def test_the_pixel_bank_takes_positions_of_the_class_it_stores():
    """[ours] the authors' code stores the first n_k positions of the image under class k;
    kaseg stores n_k random positions *of class k*: every new row of class k's pixel bank is the
    unit teacher embedding of a position labelled k."""
    torch.manual_seed(4)
    memory = CirkdMemory(4, 6, 3, pixel_memory_size=50, region_memory_size=5, pixel_update=4)
    t = F.normalize(torch.randn(1, 6, 5, 5), dim=1)
    labels = torch.full((1, 5, 5), 2)
    labels[0, 3:] = 1  # class 1 only in the last two rows: the first positions are class 2
    memory.enqueue(t, labels, IGNORE)
    flat, lab = t[0].flatten(1).t(), labels[0].flatten()
    for k in (1, 2):
        rows = memory.pixel_queue[k, :4]
        match = (rows @ flat.t()).isclose(torch.tensor(1.0), atol=1e-5)  # (4, positions)
        assert match.any(1).all() and bool((lab[match.nonzero()[:, 1]] == k).all())
        # the region bank holds the class's mean embedding, normalised
        torch.testing.assert_close(memory.region_queue[k, 0],
                                   F.normalize(flat[lab == k].mean(0), dim=0))
    assert memory.pixel_ptr.tolist() == [0, 4, 4] and memory.region_ptr.tolist() == [0, 1, 1]
    assert memory.pixel_queue[0].norm(dim=1).allclose(torch.ones(50))  # untouched class 0


def test_cirkd_memory_without_an_anchor_is_a_zero_with_a_gradient():
    memory = CirkdMemory(4, 6, 3, pixel_memory_size=8, region_memory_size=2)
    fs = torch.randn(1, 4, 3, 3, requires_grad=True)
    loss = cirkd_memory_loss(memory, fs, torch.randn(1, 6, 3, 3), torch.full((1, 3, 3), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(fs.grad).all()


# --------------------------------------------------------------------------- Af-DCD tests
def _af_dcd_pair(cs, ct, dtype, groups):
    torch.manual_seed(5)
    ref = _RefOmniContrastiveFeatureLoss(cs, ct, M_ocd=groups).to(dtype)
    ours = AfDcdHead(cs, ct).to(dtype)
    state = {n.replace("projetor", "project").replace("adpator", "adaptor"): v
             for n, v in ref.state_dict().items()}
    ours.load_state_dict(state)
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,cs,ct,groups,h,w", [(2, 8, 32, 16, 16, 16), (1, 6, 48, 16, 16, 32),
                                                 (2, 4, 12, 4, 32, 16)])
def test_af_dcd_equals_its_authors_code_in_value_and_gradient(b, cs, ct, groups, h, w, dtype):
    """Both terms (each alone through its weight), the same random mask from the same seed, and
    the gradients of the student map and of every trained module."""
    ours, ref = _af_dcd_pair(cs, ct, dtype, groups)
    torch.manual_seed(6)
    fs = torch.randn(b, cs, h, w, dtype=dtype)
    ft = torch.randn(b, ct, h, w, dtype=dtype)
    for fd_w, ctr_w, pick in ((1.0, 0.0, 0), (0.0, 1.0, 1), (2e-6, 5e-3, None)):
        ours.zero_grad(), ref.zero_grad()
        fs_o, fs_r = fs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
        torch.manual_seed(8)
        got = af_dcd_loss(ours, fs_o, ft, fd_w, ctr_w, groups=groups)
        torch.manual_seed(8)
        fd, ctr = ref(fs_r, ft)
        want = (fd, ctr)[pick] if pick is not None else 2e-6 * fd + 5e-3 * ctr
        torch.testing.assert_close(got, want, **_tol(dtype))
        got.backward(), want.backward()
        _close_grad(fs_o.grad, fs_r.grad, dtype)
        for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
            _close_grad(p.grad, q.grad, dtype)
    assert LOSSES["af_dcd"].options["fd_weight"] == 2e-6
    assert LOSSES["af_dcd"].options["ctr_weight"] == 5e-3


def test_af_dcd_contrast_by_hand_and_on_small_maps():
    """One patch, two groups of one channel, no pooling: the positive of each token is the same
    position and group of the teacher, its negatives the other group at every position."""
    x = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]]])  # (1, C=2, 1, 2): tokens by (position, group)
    y = torch.tensor([[[[0.5, 1.0]], [[2.0, 3.0]]]])
    got = omni_contrastive_loss(x, y, temperature=1.0, groups=2, pool=1, patch=2)
    xs, ys = [0.0, 2.0, 1.0, 0.0], [0.5, 2.0, 1.0, 3.0]  # token p * 2 + g
    total = 0.0
    for i, a in enumerate(xs):
        pos = -abs(a - ys[i])
        negs = [-abs(a - ys[j]) for j in range(4) if j % 2 != i % 2]
        total += torch.logsumexp(torch.tensor([pos, *negs]), 0).item() - pos
    assert got.item() == pytest.approx(total / 2)  # 2 positions
    # [ours] a 12 x 12 map: pooling 4 would leave 3 x 3 < one patch, so pooling 2 and a crop to
    # 4 x 4 whole patches (the top left), as the authors crop CamVid
    torch.manual_seed(9)
    a, b = torch.randn(1, 32, 12, 12), torch.randn(1, 32, 12, 12)
    want = omni_contrastive_loss(F.max_pool2d(a, 2)[..., :4, :4],
                                 F.max_pool2d(b, 2)[..., :4, :4], pool=1)
    torch.testing.assert_close(omni_contrastive_loss(a, b), want)
    # valid: every position valid is the unmasked value; a masked position is no anchor
    torch.testing.assert_close(omni_contrastive_loss(a, b, valid=torch.ones(1, 12, 12, dtype=torch.bool)),
                               omni_contrastive_loss(a, b))


def test_a_loss_that_does_not_fit_the_teacher_map_is_an_error_before_anything_trains(tmp_path):
    cfg = load_config(None, ["distill.losses={af_dcd: {groups: 24}}"])
    assert cfg.teacher.name == "tiny-teacher"
    with pytest.raises(KasegError, match=r"^arm 'af_dcd': af_dcd needs what tiny-teacher's "
                       r"'pre_logits' map does not give: the teacher's map has 64 channels, not "
                       r"a multiple of distill.losses.af_dcd.groups=24$"):
        check_losses_fit(cfg, "arm 'af_dcd'")
    check_losses_fit(load_config(None, ["distill.losses.af_dcd.groups=16"]))  # 16 divides 64
    with pytest.raises(ValueError, match=r"distill.losses.cirkd_memory: unknown option "
                       r"\['bank'\]"):
        resolve_losses({"cirkd_memory": {"bank": 3}})
    with pytest.raises(ValueError, match="projector must be 'enhanced' or 'plain'"):
        AfDcdHead(4, 8, projector="big")


def test_an_arm_reading_a_map_the_network_does_not_expose_is_named_before_anything_trains():
    cfg = load_config(None, ["distill.losses={cirkd_batch: {}}", "distill.student_tap=stem"])
    with pytest.raises(KasegError, match=r"^arm 'cirkd': distill.student_tap 'stem' is not a "
                       r"feature of tiny-student; choose one of \['encoder', 'pre_logits'\]$"):
        check_losses_fit(cfg, "arm 'cirkd'")
    # CE only reads no map: nothing to check
    check_losses_fit(load_config(None, ["distill.losses={}", "distill.student_tap=stem"]))
