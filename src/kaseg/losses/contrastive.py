"""The field's contrastive distillation losses, which carry state or a trained head of their own:
CIRKD (Yang et al., "Cross-Image Relational Knowledge Distillation for Semantic Segmentation",
CVPR 2022) and Af-DCD (Fan et al., "Augmentation-free Dense Contrastive Knowledge Distillation
for Efficient Semantic Segmentation", NeurIPS 2023). They are registered in
:data:`kaseg.losses.registry.LOSSES` beside the stateless losses.

Each is written from its authors' code (named in docs/method.md with the commit) in kaseg's own
form. Where kaseg reads the authors differently it says so with [ours] and why. With
``valid=None`` (and maps of one size) every function computes its source's formula; the random
draws (CIRKD's bank sampling, Af-DCD's feature mask) come from the global CPU generator in the
authors' order, so a seeded run reproduces their numbers step by step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..core.labels import IGNORE_INDEX
from ..core.tensors import at_least_f32, full_precision, kl_from_logits, resize


def common_grid(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps at the smaller of their two sizes, the larger one average-pooled [ours].

    CIRKD compares student and teacher maps position by position at one stride (OS 8 both); a
    student at OS 16 beside a teacher at OS 8 (or 4) is brought to the student's grid, which keeps
    the (positions x positions) relation matrices small. Averaging (not max pooling) keeps a
    pooled embedding the mean of the embeddings it covers, as CIRKD's own pooled variant does."""
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)

    return pooled(fs), pooled(ft)


def _relation_kl(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean over rows of KL(softmax(t / T) || softmax(s / T))``: CIRKD's ``kl_div(...,
    reduction='batchmean')`` over (anchors x contrast) similarity rows."""
    kl = kl_from_logits(t_logits / temperature, s_logits / temperature, dim=-1)
    return temperature**2 * kl.mean()


# --------------------------------------------------------------------------- CIRKD
# bytes the mini-batch term keeps per relation entry for the backward (the log-softmax's output
# and the teacher's probabilities, float32; measured by tests/losses/test_contrastive.py), and
# those its forward holds at its peak besides, for the group being computed (the logits of both
# networks, the teacher's log-probabilities, the per-entry KL)
CIRKD_SAVED_BYTES, CIRKD_PEAK_BYTES = 8, 16


@full_precision
def cirkd_batch_loss(fs: torch.Tensor, ft: torch.Tensor, temperature: float = 0.1,
                     valid: torch.Tensor | None = None, group: int = 2) -> torch.Tensor:
    """CIRKD's mini-batch pixel-to-pixel relation: for every ordered pair (i, j) of images of one
    group (i = j included), the similarities of each position of image i to every position of
    image j, as a distribution, student matched to teacher:

        a_ij = softmax over positions q of j of ( f_i,p . f_j,q / tau )      (unit f)
        L_g  = 1 / |g|^2 * sum_{i,j in g} mean_p KL( a^t_ij,p || a^s_ij,p )
        L    = mean over the groups g of L_g

    tau = 0.1, weight 1 (``--lambda-minibatch-pixel 1``). **Groups**: the authors relate the
    images of one GPU, 2 of them (8 GPUs x 2 = their batch of 16), and average over the GPUs;
    kaseg cuts each process's batch into consecutive groups of ``group`` images (the last one
    may be smaller), so the term means the same on one GPU or eight, and its memory grows as
    B x group x N^2, not B^2 x N^2 (N: positions on the common grid). ``group`` >= the batch
    relates every image with every other. The channel counts may differ (each network's map is
    compared with itself); the maps are put on one grid by :func:`common_grid`. ``valid`` (at
    that grid) [ours]: rows and columns are valid positions only; a pair whose image has no
    valid position is left out of its group's mean, a group without a pair out of the mean.
    """
    if group < 1:
        raise ValueError(f"distill.losses.cirkd_batch.group must be >= 1, got {group}")
    fs, ft = common_grid(at_least_f32(fs), at_least_f32(ft.detach()))
    s = F.normalize(fs, dim=1).flatten(2)  # (B, C, N), unit columns
    t = F.normalize(ft, dim=1).flatten(2)
    v = None if valid is None else valid.flatten(1)
    total, groups = s.new_zeros(()), s.new_zeros(())
    for start in range(0, s.shape[0], group):
        part = slice(start, start + group)
        value, counted = _group_relation(s[part], t[part], temperature,
                                         None if v is None else v[part])
        total, groups = total + value, groups + counted
    return total / groups.clamp(min=1.0)


def cirkd_batch_bytes(batch: int, student_size: tuple[int, int], teacher_size: tuple[int, int],
                      group: int = 2, **_) -> int:
    """Bytes :func:`cirkd_batch_loss` needs on one process for ``batch`` images whose tapped maps
    have these sizes (they meet on the smaller grid): what its backward keeps for every group's
    pairs, and its forward's peak while computing the largest group. A lower bound of what the
    step needs (the networks come on top)."""
    n = min(student_size[0], teacher_size[0]) * min(student_size[1], teacher_size[1])
    full, rest = divmod(batch, group)
    largest = min(group, batch)
    return n * n * (CIRKD_SAVED_BYTES * (full * group**2 + rest**2)
                    + CIRKD_PEAK_BYTES * largest**2)


def _group_relation(s: torch.Tensor, t: torch.Tensor, temperature: float,
                    v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mean over the group's pairs of the relation KL, 1 if the group has a pair else 0).

    Memory: the backward keeps the student's log-softmax and the teacher's probabilities, 8
    bytes an entry, as the authors' ``log_softmax`` / ``softmax`` / ``kl_div`` do. Masked
    columns get the most negative finite logit, not -inf: their probability is exactly 0 on both
    sides, so they add nothing and pass no gradient, and no 0 x inf makes a NaN."""
    ls = torch.einsum("icn,jcm->ijnm", s, s) / temperature  # (g, g, N, N)
    with torch.no_grad():
        lt = torch.einsum("icn,jcm->ijnm", t, t) / temperature
    if v is not None:
        some = v.any(1)  # images with a valid position; the others join no pair (below)
        cols = (v | ~some[:, None])[None, :, None, :]  # (1, g, 1, N): image j's columns
        fill = torch.finfo(ls.dtype).min
        ls, lt = ls.masked_fill(~cols, fill), lt.masked_fill(~cols, fill)
    with torch.no_grad():
        log_pt = lt.log_softmax(-1)
        pt = log_pt.exp()
        del lt
    kl = (pt * (log_pt - ls.log_softmax(-1))).sum(-1)  # (g, g, N): row p of i against image j
    if v is None:
        return kl.mean(), kl.new_ones(())
    rows = v.to(kl.dtype)[:, None, :]  # (g, 1, N): image i's rows
    per_pair = (kl * rows).sum(-1) / rows.sum(-1).clamp(min=1.0)
    ok = (some[:, None] & some[None, :]).to(kl.dtype)
    pairs = ok.sum()
    return (per_pair * ok).sum() / pairs.clamp(min=1.0), (pairs > 0).to(kl.dtype)


class CirkdMemory(nn.Module):
    """CIRKD's memory side: the trained projection head (student -> teacher channels: 1x1 conv,
    BN, ReLU, 1x1 conv, as the authors; plain BatchNorm for their SyncBatchNorm, which DDP
    converts back) and two banks of the teacher's unit embeddings per class: pixels (20,000 per
    class, 16 new per class per image) and regions (the mean embedding of each class segment of
    an image, 2,000 per class). The banks start as random unit vectors, as the authors'. Buffers:
    they are saved and resumed with the run."""

    def __init__(self, student_channels: int, teacher_channels: int, num_classes: int,
                 pixel_memory_size: int = 20000, region_memory_size: int = 2000,
                 pixel_update: int = 16):
        super().__init__()
        for key, value in (("pixel_memory_size", pixel_memory_size),
                           ("region_memory_size", region_memory_size),
                           ("pixel_update", pixel_update)):
            if int(value) < 1:
                raise ValueError(f"distill.losses.cirkd_memory.{key} must be >= 1, "
                                 f"got {value}")
        ct = teacher_channels
        self.project = nn.Sequential(nn.Conv2d(student_channels, ct, 1, bias=False),
                                     nn.BatchNorm2d(ct), nn.ReLU(inplace=True),
                                     nn.Conv2d(ct, ct, 1, bias=False))
        self.pixel_update = int(pixel_update)
        self.register_buffer("region_queue", F.normalize(
            torch.randn(num_classes, int(region_memory_size), ct), dim=2))
        self.register_buffer("region_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("pixel_queue", F.normalize(
            torch.randn(num_classes, int(pixel_memory_size), ct), dim=2))
        self.register_buffer("pixel_ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, t: torch.Tensor, labels: torch.Tensor,
                ignore_index: int = IGNORE_INDEX) -> None:
        """Push each image's teacher embeddings ``t`` (B, C, H, W; unit vectors) into the banks,
        class by class in ascending order: the segment's mean (normalised) into the region bank,
        up to ``pixel_update`` of its positions drawn at random into the pixel bank. Under DDP
        every process pushes every process's images (gathered), as the authors do.

        [ours] The pixels pushed for class k are positions *of class k*: the authors' code draws
        ``randperm(n_k)`` and indexes the whole image with it (``this_feat[:, perm[:K]]``), which
        stores the first n_k positions of the image, of any class, under k. The same random
        numbers are drawn; only the positions they pick differ."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t, labels = _gather(t.contiguous()), _gather(labels.contiguous())
        c = t.shape[1]
        n_pixel, n_region = self.pixel_queue.shape[1], self.region_queue.shape[1]
        for feat, lab in zip(t.reshape(t.shape[0], c, -1), labels.reshape(labels.shape[0], -1)):
            for k in torch.unique(lab).tolist():
                if k == ignore_index or not 0 <= k < self.pixel_queue.shape[0]:
                    continue
                where = (lab == k).nonzero()[:, 0]
                ptr = int(self.region_ptr[k])
                self.region_queue[k, ptr] = F.normalize(feat[:, where].mean(1), dim=0)
                self.region_ptr[k] = (ptr + 1) % n_region
                perm = torch.randperm(where.numel())  # the global CPU generator, as the authors
                n = min(where.numel(), self.pixel_update)
                pix = F.normalize(feat[:, where[perm[:n].to(where.device)]].t(), dim=1)
                ptr = int(self.pixel_ptr[k])
                if ptr + n >= n_pixel:  # the authors' wrap: the last n slots, then from 0
                    self.pixel_queue[k, n_pixel - n:] = pix
                    self.pixel_ptr[k] = 0
                else:
                    self.pixel_queue[k, ptr:ptr + n] = pix
                    self.pixel_ptr[k] = (ptr + n) % n_pixel


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` concatenated along the batch (no gradient)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


@full_precision
def cirkd_memory_loss(memory: CirkdMemory, fs: torch.Tensor, ft: torch.Tensor,
                      labels: torch.Tensor, pixel_contrast_size: int = 4096,
                      region_contrast_size: int = 1024, temperature: float = 0.1,
                      kd_temperature: float = 1.0, region_weight: float = 1.0,
                      ignore_index: int = IGNORE_INDEX, update: bool = True) -> torch.Tensor:
    """CIRKD's memory-based pixel-to-pixel and pixel-to-region relations:

        x_p = unit(project(f^s)_p),  y_p = unit(f^t_p)        (p: a labelled position)
        Q   = pixel_contrast_size // K + 1 bank entries of every class (one random index set
              shared by the classes), R likewise from the region bank
        L_pixel  = T^2 mean_p KL( softmax(y_p . Q / tau / T) || softmax(x_p . Q / tau / T) )
        L_region = the same with R;   L = L_pixel + region_weight * L_region

    tau = 0.1, T = 1, 4,096 pixel and 1,024 region contrasts, weight 0.1 for each term
    (``--lambda-memory-pixel 0.1 --lambda-memory-region 0.1``: here the loss weight 0.1 with
    ``region_weight`` 1). The teacher's embeddings of this batch are pushed into the banks
    *before* the contrasts are drawn (the authors' order), when ``update``. ``labels`` are at the
    maps' common grid (:func:`common_grid`); ignore positions are no anchors and join no bank.
    """
    fs, ft = common_grid(at_least_f32(fs), at_least_f32(ft.detach()))
    x = F.normalize(memory.project(fs), dim=1)
    y = F.normalize(ft, dim=1)
    if update:
        memory.enqueue(y, labels, ignore_index)
    keep = (labels != ignore_index).reshape(-1)
    if not bool(keep.any()):  # no anchor: a zero with a (zero) gradient
        return x.sum() * 0.0
    c = x.shape[1]
    x = x.permute(0, 2, 3, 1).reshape(-1, c)[keep]
    y = y.permute(0, 2, 3, 1).reshape(-1, c)[keep]
    k = memory.pixel_queue.shape[0]
    terms = []
    for bank, size in ((memory.pixel_queue, pixel_contrast_size),
                       (memory.region_queue, region_contrast_size)):
        index = torch.randperm(bank.shape[1])[: int(size) // k + 1].to(bank.device)
        contrast = bank[:, index].reshape(-1, c).to(x.dtype)  # class-major, as the authors
        terms.append(_relation_kl(y @ contrast.t() / temperature, x @ contrast.t() / temperature,
                                  kd_temperature))
    return terms[0] + region_weight * terms[1]


# --------------------------------------------------------------------------- Af-DCD
class EnhancedProjector(nn.Module):
    """Af-DCD's enhanced projector: two 3x3 conv + ReLU blocks in a row, each followed by its own
    3x3 adaptor, the two adaptor outputs averaged."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(True))
        self.block_2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(True))
        self.adaptor_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adaptor_2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.block_1(x)
        x2 = self.block_2(x1)
        return (self.adaptor_1(x1) + self.adaptor_2(x2)) / 2.0


class AfDcdHead(nn.Module):
    """Af-DCD's trained modules: a 1x1 convolution (with bias) from the student's channels to
    the teacher's, and the projector that rebuilds the teacher's map from the masked, aligned
    student map ("enhanced", the authors' Cityscapes setting, or "plain": 3x3 conv, ReLU, 3x3
    conv). Dropped after training."""

    def __init__(self, student_channels: int, teacher_channels: int,
                 projector: str = "enhanced"):
        super().__init__()
        ct = teacher_channels
        # [ours] equal channels: no alignment (the authors' code has no align then, and fails)
        self.align = (nn.Conv2d(student_channels, ct, 1) if student_channels != ct
                      else nn.Identity())
        if projector == "enhanced":
            self.project = EnhancedProjector(ct)
        elif projector == "plain":
            self.project = nn.Sequential(nn.Conv2d(ct, ct, 3, padding=1), nn.ReLU(True),
                                         nn.Conv2d(ct, ct, 3, padding=1))
        else:
            raise ValueError(f"distill.losses.af_dcd.projector must be 'enhanced' or "
                             f"'plain', got {projector!r}")


def af_dcd_check(teacher_channels: int, groups: int = 16, **_) -> str | None:
    """What keeps Af-DCD from running on a teacher map of ``teacher_channels`` (None: nothing)."""
    if groups < 1 or teacher_channels % groups:
        return (f"the teacher's map has {teacher_channels} channels, not a multiple of "
                f"distill.losses.af_dcd.groups={groups}")
    return None


def feature_mask(shape: tuple[int, int, int, int], ratio: float, kind: str,
                 device: torch.device) -> torch.Tensor:
    """Af-DCD's (B, 1, H, W) 0/1 mask of the student map: ``random`` drops each position with
    probability ``ratio`` (drawn on the CPU, as the authors), ``center`` drops the middle third
    of each side."""
    b, _, h, w = shape
    if kind == "random":
        return torch.where(torch.rand((b, 1, h, w)) > 1 - ratio, 0, 1).to(device)
    if kind == "center":
        mask = torch.ones((b, 1, h, w), device=device)
        mask[:, :, h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 0
        return mask
    raise ValueError(f"distill.losses.af_dcd.mask must be 'random' or 'center', got {kind!r}")


def _tokens(x: torch.Tensor, groups: int, ph: int, pw: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * patches, ph * pw * groups, C / groups): each patch's positions, each
    position's channels cut into ``groups`` tokens; token ``p * groups + g`` is group g of
    position p (the authors' order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
    x = x.reshape(b, h // ph, w // pw, groups, c // groups, ph * pw)
    x = x.reshape(b, (h // ph) * (w // pw), groups, c // groups, ph * pw)
    return x.permute(0, 1, 4, 2, 3).reshape(-1, ph * pw * groups, c // groups)


def omni_contrastive_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.07,
                          groups: int = 16, pool: int = 4, patch: int = 4,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """Af-DCD's omni-contrastive term: both maps max-pooled by ``pool``, cut into patches of
    ``patch x patch`` positions and each position's channels into ``groups`` tokens; a student
    token's positive is the teacher token of the same position and group, its negatives the
    teacher tokens of the patch's other groups (at every position of the patch), similarity the
    negative L1 distance:

        L = 1/P * sum_tokens -log softmax([s_pos, s_neg...] / tau)_0     (P: pooled positions)

    Small maps [ours]: the pooling halves until the pooled map holds a patch, the patch shrinks
    to a map smaller than it, and the map is cropped to whole patches from the top left (the
    authors crop CamVid's maps the same way); the authors' own maps need none of this. ``valid``
    [ours]: tokens of invalid positions are no anchors, and P counts valid positions."""
    h, w = x.shape[-2:]
    p = pool
    while p > 1 and (h // p < patch or w // p < patch):
        p //= 2
    if p > 1:
        x, y = F.max_pool2d(x, p), F.max_pool2d(y, p)
        if valid is not None:
            valid = F.max_pool2d(valid[:, None].float(), p)[:, 0] > 0
    h, w = x.shape[-2:]
    ph, pw = min(patch, h), min(patch, w)
    h, w = h // ph * ph, w // pw * pw
    x, y = x[..., :h, :w], y[..., :h, :w]
    xs, ys = _tokens(x, groups, ph, pw), _tokens(y, groups, ph, pw)
    sim = -torch.cdist(xs, ys, p=1) / temperature  # (patches, n, n)
    n = sim.shape[-1]
    group = torch.arange(n, device=sim.device) % groups
    other = group[:, None] != group[None, :]
    pos = sim.diagonal(dim1=1, dim2=2)
    neg = sim.masked_fill(~other, float("-inf"))
    ce = torch.logsumexp(torch.cat([pos[..., None], neg], dim=-1), dim=-1) - pos  # (patches, n)
    if valid is None:
        return ce.sum() / (x.shape[0] * h * w)
    v = valid[:, :h, :w].reshape(-1, h // ph, ph, w // pw, pw).permute(0, 1, 3, 2, 4)
    v = v.reshape(-1, ph * pw).repeat_interleave(groups, dim=1).to(ce.dtype)
    return (ce * v).sum() / (v.sum() / groups).clamp(min=1.0)


@full_precision
def af_dcd_loss(head: AfDcdHead, fs: torch.Tensor, ft: torch.Tensor, fd_weight: float = 2e-6,
                ctr_weight: float = 5e-3, temperature: float = 0.07, groups: int = 16,
                pool: int = 4, patch: int = 4, mask_ratio: float = 0.75, mask: str = "random",
                projector: str = "enhanced",
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Af-DCD (masked feature mimicking + omni-contrastive distillation):

        s = project(mask * align(f^s)),   B: batch size
        L_fd  = 1/B * sum over channels and positions of (s - f^t)^2      (MSE, sum reduction)
        L_ctr = :func:`omni_contrastive_loss` (s, f^t)
        L = fd_weight * L_fd + ctr_weight * L_ctr

    The authors' Cityscapes setting: ``--lambda-fd 0.000002 --lambda-ctr 0.005``, the enhanced
    projector, tau 0.07, 16 groups, pooling 4, 4 x 4 patches, a random 75 % mask (their script's
    ``--rand_mask False`` names no option of their parser, whose ``type=bool`` would read it as
    True). L_fd's sum grows with the map's size and channels: the weight 2e-6 is the authors'
    for a 2048 x 64 x 128 map. The aligned student map is upsampled to the teacher's size
    [ours: the authors' maps share OS 8]. ``projector`` is read by :class:`AfDcdHead`.
    ``valid`` (at the teacher's size) [ours]: L_fd sums valid positions only."""
    del projector
    ft = at_least_f32(ft.detach())
    if ft.shape[1] % groups:
        raise ValueError(f"af_dcd: {af_dcd_check(ft.shape[1], groups)}")
    s = resize(head.align(at_least_f32(fs)), ft.shape[-2:])
    s = head.project(s * feature_mask(tuple(ft.shape), mask_ratio, mask, s.device))
    d = (s - ft).pow(2).sum(1)
    b = ft.shape[0]
    fd = (d.sum() if valid is None else (d * valid.to(d.dtype)).sum()) / b
    ctr = omni_contrastive_loss(s, ft, temperature, groups, pool, patch, valid)
    return fd_weight * fd + ctr_weight * ctr
