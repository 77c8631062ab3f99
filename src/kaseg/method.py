"""The method of He et al., "Knowledge Adaptation for Efficient Semantic Segmentation" (CVPR 2019),
in one file: the feature autoencoder, the adapters, the two distillation losses and the two
training tasks (stage 1: autoencoder; stage 2: distillation) that :func:`kaseg.train.fit` runs.

Notation: F_t teacher feature map, F_s student feature map, E / D the autoencoder's encoder /
decoder, C_f / C_a the feature and affinity adapters, m = h * w positions. [paper] marks what the
paper states, [ours] a documented choice where it is silent (docs/method.md in the repository).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .config import DistillConfig
from .runtime import IGNORE_INDEX
from .kd_losses import LOSSES, Outputs, at_least_f32, resize

log = logging.getLogger(__name__)

ADAPT_REDUCTIONS = ("element", "paper")
AFFINITY_REDUCTIONS = ("mse", "paper", "element")
AFFINITY_IMPLS = ("auto", "dense", "gram")
CONTROLS = ("none", "random_encoder", "constant_target")


# --------------------------------------------------------------------------- frozen networks
class Frozen(nn.Module):
    """A frozen network (the teacher, the trained encoder E), held *outside* the module tree.

    Why: it must never train. Its weights are not in ``parameters()`` (no optimizer, no DDP, no
    gradients), not in ``state_dict()`` (checkpoints stay small), and it runs in eval mode without
    autograd, so BatchNorm statistics cannot drift even when a wrapper calls ``.train()``.
    ``.to(device)`` / ``.half()`` still reach it.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        module.eval().requires_grad_(False)
        self.__dict__["inner"] = module  # not registered as a submodule, on purpose

    def _apply(self, fn, recurse=True):
        self.inner._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        self.inner.eval()
        return self

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        self.inner.eval()
        return self.inner(*args, **kwargs)


# --------------------------------------------------------------------------- stage 1: autoencoder
def ae_strides(ratio: int) -> tuple[int, int, int]:
    """Encoder strides so that E(F_t) has the student's spatial size [ours].

    ``ratio`` = student feature stride / teacher feature stride: 4 -> (2, 2, 1), 2 -> (2, 1, 1),
    1 -> (1, 1, 1), 8 -> (2, 2, 2).
    """
    table = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2)}
    if ratio not in table:
        raise ValueError(
            f"the student's feature stride must be 1, 2, 4 or 8 times the teacher's, got {ratio}"
        )
    return table[ratio]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _deconv(cin: int, cout: int, stride: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 3, stride, 1, output_padding=stride - 1, bias=False)


class FeatureAutoencoder(nn.Module):
    """E: three 3x3 convolutions (strides from :func:`ae_strides`); D: three symmetric transposed
    convolutions [paper]. BN + ReLU between layers, the last decoder layer linear [ours]."""

    def __init__(self, in_channels: int, latent_channels: int, strides: tuple[int, int, int]):
        super().__init__()
        self.in_channels, self.latent_channels, self.strides = in_channels, latent_channels, tuple(strides)
        c, z = in_channels, latent_channels
        s0, s1, s2 = strides
        self.encoder = nn.Sequential(_conv_bn_relu(c, z, s0), _conv_bn_relu(z, z, s1),
                                     _conv_bn_relu(z, z, s2))
        self.decoder = nn.Sequential(
            _deconv(z, z, s2), nn.BatchNorm2d(z), nn.ReLU(inplace=True),
            _deconv(z, z, s1), nn.BatchNorm2d(z), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(z, c, 3, s0, 1, output_padding=s0 - 1),
        )

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (latent E(f), reconstruction D(E(f)) at f's size)."""
        z = self.encoder(f)
        r = self.decoder(z)
        # a side that is not a multiple of the total stride: the strided convs round up, so the
        # decoder's output is larger. Transposed-conv output 2j sits on input j, so the aligned
        # reconstruction is the top-left crop (a resize would shift it by up to a stride).
        h, w = f.shape[-2:]
        if r.shape[-2] < h or r.shape[-1] < w:
            raise ValueError(f"autoencoder: reconstruction {tuple(r.shape[-2:])} smaller than "
                             f"its input {(h, w)}")
        return z, r[..., :h, :w]


def autoencoder_loss(f: torch.Tensor, recon: torch.Tensor, z: torch.Tensor, alpha: float = 1e-7):
    """``L_ae = ||F_t - D(E(F_t))||_2^2 + alpha * ||E(F_t)||_1`` [paper], alpha = 1e-7.

    Reductions [ours]: mean over elements for both terms (so the loss does not grow with the
    feature map's size). Returns ``(total, reconstruction term, l1 term)``.
    """
    rec = (f - recon).pow(2).mean()
    l1 = z.abs().mean()
    return rec + alpha * l1, rec, l1


# --------------------------------------------------------------------------- stage 2: adapters
class Adapter(nn.Sequential):
    """C_f / C_a: 3x3 conv, stride 1, padding 1, BN, ReLU [paper for C_f; ours: C_a the same]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _safe_root(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``x ** (1/p)`` with zero gradient where x <= 0: the root's derivative is infinite at 0
    (two coinciding unit vectors, or two zero ones), and rounding can make x < 0."""
    pos = x > 0
    safe = torch.where(pos, x, torch.ones_like(x))
    root = torch.sqrt(safe) if p == 2 else safe.pow(1.0 / p)
    return torch.where(pos, root, torch.zeros_like(x))


def _unit(f: torch.Tensor, q: float, eps: float = 1e-12) -> torch.Tensor:
    """Normalise each position's channel vector (dim 1) to unit q-norm; zero vectors stay zero."""
    return f / f.norm(p=q, dim=1, keepdim=True).clamp_min(eps)


def adaptation_loss(zs: torch.Tensor, zt: torch.Tensor, p: float = 2.0, q: float = 2.0,
                    reduction: str = "element") -> torch.Tensor:
    """Knowledge-adaptation loss [paper]:

    ``L_adapt = 1/|I| sum_{j in I} || E(F_t)_j / ||E(F_t)_j||_q - C_f(F_s)_j / ||C_f(F_s)_j||_q ||_p``

    ``zs`` = C_f(F_s), ``zt`` = E(F_t), both N x C x h x w; j runs over positions and the batch.

    - ``reduction="paper"``: the literal reading above, the mean over positions of the p-norm.
    - ``reduction="element"`` (default, [ours]): the mean over all elements of |difference|^p,
      i.e. the paper's per-position sum of |d|^p divided by C and without the 1/p root. With
      weight 50 it starts at 0.1x to 1x the CE loss (docs/method.md, "Magnitudes"); "paper" starts at
      ~20x.
    """
    if zs.shape != zt.shape:
        raise ValueError(f"adaptation: student {tuple(zs.shape)} and teacher {tuple(zt.shape)} differ")
    with torch.autocast(zs.device.type, enabled=False):
        d = _unit(at_least_f32(zs), q) - _unit(at_least_f32(zt), q)
        if reduction == "element":
            return d.abs().pow(p).mean()
        if reduction == "paper":
            per_position = d.abs().pow(p).sum(1)
            return _safe_root(per_position, p).mean()
    raise ValueError(f"adaptation reduction must be one of {ADAPT_REDUCTIONS}, not '{reduction}'")


# --------------------------------------------------------------------------- affinity
def _positions(f: torch.Tensor) -> torch.Tensor:
    """N x C x h x w -> N x m x C unit vectors (at least float32, whatever autocast says)."""
    n, c = f.shape[:2]
    return _unit(at_least_f32(f).reshape(n, c, -1), 2.0).transpose(1, 2)


def affinity_matrix(f: torch.Tensor) -> torch.Tensor:
    """``A_ij = (F_i . F_j) / (||F_i|| ||F_j||) / m`` [paper]: cosine similarity, spatially
    normalised by the number of positions m. N x C x h x w -> N x m x m."""
    s = _positions(f)
    return s @ s.transpose(1, 2) / s.shape[1]


def affinity_loss_dense(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "mse") -> torch.Tensor:
    """Affinity distillation, the reference form: builds both m x m matrices (O(m^2) memory).

    - ``"paper"``: ``L_aff = 1/m sum_i ||A_s(i,:) - A_t(i,:)||_2`` [paper], A as in
      :func:`affinity_matrix`. Shrinks like 1/sqrt(m) for the same maps at a larger resolution.
    - ``"mse"`` (default, [ours]): ``1/m^2 sum_ij (cos_s(i,j) - cos_t(i,j))^2``; resolution-free.
    - ``"element"``: ``1/m^2 sum_ij (A_s(i,j) - A_t(i,j))^2`` = mse / m^2.

    Averaged over the batch.
    """
    with torch.autocast(fs.device.type, enabled=False):
        s, t = _positions(fs), _positions(ft)
        m = s.shape[1]
        d = s @ s.transpose(1, 2) - t @ t.transpose(1, 2)  # cos_s - cos_t
        if reduction == "mse":
            return d.pow(2).mean()
        if reduction == "element":
            return d.pow(2).mean() / m**2
        if reduction == "paper":
            return (_safe_root(d.pow(2).sum(-1)) / m).mean()
    raise ValueError(f"affinity reduction must be one of {AFFINITY_REDUCTIONS}, not '{reduction}'")


def _unit_columns(f: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """C x k -> (columns scaled to unit l2 norm, their clamped norms)."""
    norm = f.norm(dim=0).clamp_min(eps)
    return f / norm, norm


def _chunks(m: int, c: int):
    step = max(1, 2**20 // max(c, 1))  # ~1M elements of scratch per chunk
    return [(i, min(m, i + step)) for i in range(0, m, step)]


class _GramAffinity(torch.autograd.Function):
    """Affinity loss from C x C Gram matrices, in chunks of positions, forward and backward.

    Only the inputs, the Gram matrices and (``paper``) one value per position are kept for the
    backward pass, which recomputes the unit vectors chunk by chunk: no m x m matrix and no m x C
    intermediate beyond the gradients themselves.

    Unit vectors S, T (C x m, one column per position) and their difference Δ = S - T. Because
    ``cos_s(i,j) - cos_t(i,j) = Δ_i . s_j + t_i . Δ_j``, every quantity is written with Δ in it,
    so nothing of size 1 cancels when the two maps nearly agree (the plain form
    ``||S^T S||^2 - 2 ||S^T T||^2 + ||T^T T||^2`` loses all float32 digits there). Grams:
    A = S S^T, D = T T^T, E = Δ Δ^T, P = S Δ^T, Q = Δ T^T.

    - ``r_i = ||cos_s(i,:) - cos_t(i,:)||^2 = Δ_i^T A Δ_i + 2 Δ_i^T P t_i + t_i^T E t_i``
    - ``sum_i r_i = <E, A + D> + 2 <P, Q>``

    Gradients, with w_i = dL/dr_i and the weighted Grams M_s = sum w s s^T, M_sd = sum w s Δ^T,
    M_t = sum w t t^T, M_dt = sum w Δ t^T:
    ``dL/ds_i = 2 [w_i (A Δ_i + P t_i) + M_s Δ_i + M_sd t_i]``,
    ``dL/dt_i = -2 [w_i (D Δ_i + Q^T s_i) + M_t Δ_i + M_dt^T s_i]``; for ``mse`` (w = 1/m^2) the
    second halves equal the first and the pair is ``±(4/m^2) (A Δ_i + P t_i)``,
    ``(D Δ_i + Q^T s_i)``. Then through the normalisation: ``dL/df = (g - s (s . g)) / ||f||``.
    """

    @staticmethod
    def _pairs(fs, ft, b, c, m):
        for i0, i1 in _chunks(m, c):
            s, ns = _unit_columns(fs[b, :, i0:i1])
            t, nt = _unit_columns(ft[b, :, i0:i1])
            yield i0, i1, s, t, s - t, ns, nt

    @staticmethod
    def forward(ctx, fs: torch.Tensor, ft: torch.Tensor, reduction: str) -> torch.Tensor:
        n, c, m = fs.shape
        grams, rows, total = [], [], fs.new_zeros(())
        for b in range(n):
            a, d, e, p, q = fs.new_zeros(5, c, c).unbind(0)
            for _, _, s, t, dl, _, _ in _GramAffinity._pairs(fs, ft, b, c, m):
                a.addmm_(s, s.T)
                d.addmm_(t, t.T)
                e.addmm_(dl, dl.T)
                p.addmm_(s, dl.T)
                q.addmm_(dl, t.T)
            grams.append(torch.stack([a, d, e, p, q]))
            if reduction == "paper":
                r = fs.new_empty(m)
                for i0, i1, s, t, dl, _, _ in _GramAffinity._pairs(fs, ft, b, c, m):
                    r[i0:i1] = (((a @ dl) * dl).sum(0) + 2 * ((p @ t) * dl).sum(0)
                                + ((e @ t) * t).sum(0))
                r.clamp_(min=0)
                rows.append(r)
                total = total + r.sqrt().sum() / m**2
            else:
                sq = ((e * (a + d)).sum() + 2 * (p * q).sum()).clamp(min=0) / m**2
                total = total + (sq if reduction == "mse" else sq / m**2)
        ctx.reduction = reduction
        ctx.save_for_backward(fs, ft, torch.stack(grams), *rows)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        fs, ft, grams, *rows = ctx.saved_tensors
        n, c, m = fs.shape
        need_s, need_t = ctx.needs_input_grad[:2]
        gfs = torch.zeros_like(fs) if need_s else None
        gft = torch.zeros_like(ft) if need_t else None
        scale = grad_out / n
        for b in range(n):
            a, d, _, p, q = grams[b]
            if ctx.reduction == "paper":
                r = rows[b]
                pos = r > 0
                w = torch.where(pos, scale / (2 * m**2 * torch.where(pos, r, 1).sqrt()), 0)
                ms, msd, mt, mdt = fs.new_zeros(4, c, c).unbind(0)
                for i0, i1, s, t, dl, _, _ in _GramAffinity._pairs(fs, ft, b, c, m):
                    wi = w[i0:i1]
                    ms.addmm_(s * wi, s.T)
                    msd.addmm_(s * wi, dl.T)
                    mt.addmm_(t * wi, t.T)
                    mdt.addmm_(dl * wi, t.T)
            else:
                k = scale * (2 / m**2 if ctx.reduction == "mse" else 2 / m**4)
            for i0, i1, s, t, dl, ns, nt in _GramAffinity._pairs(fs, ft, b, c, m):
                gs = gt = None
                if ctx.reduction == "paper":
                    wi = w[i0:i1]
                    if need_s:
                        gs = 2 * ((a @ dl + p @ t) * wi + ms @ dl + msd @ t)
                    if need_t:
                        gt = -2 * ((d @ dl + q.T @ s) * wi + mt @ dl + mdt.T @ s)
                else:
                    if need_s:
                        gs = 2 * k * (a @ dl + p @ t)
                    if need_t:
                        gt = -2 * k * (d @ dl + q.T @ s)
                if need_s:
                    gfs[b, :, i0:i1] = (gs - s * (s * gs).sum(0)) / ns
                if need_t:
                    gft[b, :, i0:i1] = (gt - t * (t * gt).sum(0)) / nt
        return gfs, gft, None


def affinity_loss_gram(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "mse") -> torch.Tensor:
    """The same values and gradients as :func:`affinity_loss_dense`, without the m x m matrices.

    With unit position vectors stacked as S, T (m x C) and C x C Gram matrices:

    - row i: ``||cos_s(i,:) - cos_t(i,:)||^2 = s_i^T (S^T S) s_i - 2 s_i^T (S^T T) t_i + t_i^T (T^T T) t_i``
    - all:   ``sum_ij (cos_s - cos_t)^2 = ||S^T S||_F^2 - 2 ||S^T T||_F^2 + ||T^T T||_F^2``

    O(m C^2) time; O(C^2 + m) memory besides the inputs and their gradients (positions are
    processed in chunks, forward and backward, see :class:`_GramAffinity`). Computed in float32
    (autocast off; float64 stays float64) from the *difference* of the unit vectors, so that it
    stays accurate when the two maps nearly agree (late in training), where the plain
    Gram identity above cancels away every digit.
    """
    if fs.shape != ft.shape:
        raise ValueError(f"affinity (Gram form): student {tuple(fs.shape)} and teacher "
                         f"{tuple(ft.shape)} need the same shape")
    if reduction not in AFFINITY_REDUCTIONS:
        raise ValueError(f"affinity reduction must be one of {AFFINITY_REDUCTIONS}, not '{reduction}'")
    n, c = fs.shape[:2]
    with torch.autocast(fs.device.type, enabled=False):
        dtype = torch.promote_types(at_least_f32(fs).dtype, at_least_f32(ft).dtype)
        return _GramAffinity.apply(fs.reshape(n, c, -1).to(dtype), ft.reshape(n, c, -1).to(dtype),
                                   reduction)


def affinity_loss(fs: torch.Tensor, ft: torch.Tensor, reduction: str = "mse", impl: str = "auto",
                  dense_max_positions: int = 1024) -> torch.Tensor:
    """Affinity distillation loss; ``impl="auto"`` picks dense up to ``dense_max_positions``
    positions (faster for small maps) and the Gram form above (memory-light). Both maps must have
    the same shape (the adapted student map and the encoded teacher map do), whatever the impl
    and the size: the same inputs give the same answer, or the same error, at every size."""
    if impl not in AFFINITY_IMPLS:
        raise ValueError(f"affinity impl must be one of {AFFINITY_IMPLS}, not '{impl}'")
    if fs.shape != ft.shape:  # checked here, so that every impl and size answers alike
        raise ValueError(f"affinity: student {tuple(fs.shape)} and teacher {tuple(ft.shape)} "
                         "need the same shape")
    m = fs.shape[-2] * fs.shape[-1]
    if impl == "dense" or (impl == "auto" and m <= dense_max_positions):
        return affinity_loss_dense(fs, ft, reduction)
    return affinity_loss_gram(fs, ft, reduction)


# --------------------------------------------------------------------------- the two tasks
class AutoencoderTask(nn.Module):
    """Stage 1: reconstruct the frozen teacher's feature map ``tap`` through the autoencoder."""

    def __init__(self, teacher: nn.Module, autoencoder: FeatureAutoencoder, tap: str = "pre_logits",
                 alpha: float = 1e-7):
        super().__init__()
        self.teacher, self.autoencoder = Frozen(teacher), autoencoder
        self.tap, self.alpha = tap, alpha

    def forward(self, images, targets=None) -> dict:
        f = self.teacher(images)["features"][self.tap].float()
        z, r = self.autoencoder(f)
        total, rec, l1 = autoencoder_loss(f, r.float(), z.float(), self.alpha)
        return {"loss": total, "recon": rec, "l1": l1}


class DistillTask(nn.Module):
    """Stage 2: ``L = L_ce + beta * L_adapt + gamma * L_aff`` [paper], plus any of the field's
    other losses (:data:`kaseg.kd_losses.LOSSES`), so that every method and every combination
    trains in the same loop.

    Trained: the student, C_f, C_a (and the modules of the other losses, e.g. FitNet's regressor).
    Frozen, without autograd: the teacher and E. A term whose weight is 0 is neither built nor
    computed (ablations). Returns every term and, for each weighted term, its ratio to CE
    (``*_ratio``), which the first iterations also log. :func:`kaseg.stages.build_distill_task` builds
    one from a config.

    Args:
        student: the network trained (a :class:`~kaseg.models.SegModel`).
        teacher: the trained teacher; frozen here.
        encoder: the trained autoencoder's encoder E; frozen here.
        latent_channels: E's output channels (the adapters' output).
        teacher_tap, student_tap: the distilled feature maps.
        adapt_weight, affinity_weight: beta and gamma; 0 switches a term off.
        adapt_reduction, affinity_reduction: see :func:`adaptation_loss`, :func:`affinity_loss`.
        p, q: the adaptation loss's difference norm and per-position normalisation (>= 1).
        affinity_impl, dense_max_positions: dense or Gram affinity (:func:`affinity_loss`).
        ignore_index: the label that takes no part in CE and the masked losses.
        extra: ``{name: (weight, options)}`` of the other losses
            (:func:`kaseg.kd_losses.resolve_losses`).
        warmup_iters: every distillation weight ramps from 0 over this many steps.
        control: ``"none"``, or a negative control (``"random_encoder"`` is set up by the
            caller; ``"constant_target"`` replaces E(F_t) by a constant map).
        pseudo_labels, pseudo_threshold: on unlabelled images, CE against the teacher's argmax
            where its confidence reaches the threshold (self-training); IFVD then uses them too.
        unlabeled_weight: with unlabelled images, each label-free term is
            ``(1 - u) * term(labelled batch) + u * term(unlabelled batch)``; None (default): u is
            the unlabelled batch's share of the step's images, so the term is its mean over every
            image and turning unlabelled images on leaves the distillation-to-CE balance as it was.

    Every default is :class:`kaseg.config.DistillConfig`'s: a task built here and one built from
    a config are the same task.
    """

    def __init__(self, *, student: nn.Module, teacher: nn.Module, encoder: nn.Module,
                 latent_channels: int, teacher_tap: str = "pre_logits",
                 student_tap: str = DistillConfig.student_tap,
                 adapt_weight: float = DistillConfig.adapt_weight,
                 affinity_weight: float = DistillConfig.affinity_weight,
                 adapt_reduction: str = DistillConfig.adapt_reduction,
                 affinity_reduction: str = DistillConfig.affinity_reduction,
                 p: float = DistillConfig.p, q: float = DistillConfig.q,
                 affinity_impl: str = DistillConfig.affinity_impl,
                 dense_max_positions: int = DistillConfig.dense_max_positions,
                 ignore_index: int = IGNORE_INDEX,
                 extra: dict[str, tuple[float, dict]] | None = None,
                 warmup_iters: int = DistillConfig.warmup_iters,
                 control: str = DistillConfig.control,
                 pseudo_labels: bool = DistillConfig.pseudo_labels,
                 pseudo_threshold: float = DistillConfig.pseudo_threshold,
                 unlabeled_weight: float | None = DistillConfig.unlabeled_weight):
        super().__init__()
        check_distill_options(adapt_reduction=adapt_reduction,
                              affinity_reduction=affinity_reduction, affinity_impl=affinity_impl,
                              p=p, q=q, warmup_iters=warmup_iters, control=control)
        unknown = sorted(set(extra or {}) - set(LOSSES))
        if unknown:
            raise ValueError(f"distill.extra_losses: unknown {unknown}; known: {sorted(LOSSES)}")
        self.student = student
        self.teacher, self.encoder = Frozen(teacher), Frozen(encoder)
        cs = student.feature_info[student_tap].channels
        ct = teacher.feature_info[teacher_tap].channels
        self.adapter = Adapter(cs, latent_channels) if adapt_weight > 0 else None
        self.affinity_adapter = Adapter(cs, latent_channels) if affinity_weight > 0 else None
        self.teacher_tap, self.student_tap = teacher_tap, student_tap
        self.adapt_weight, self.affinity_weight = adapt_weight, affinity_weight
        self.adapt_reduction, self.affinity_reduction = adapt_reduction, affinity_reduction
        self.p, self.q, self.affinity_impl = p, q, affinity_impl
        self.dense_max_positions, self.ignore_index = dense_max_positions, ignore_index
        self.extra = {k: (float(w), dict(o)) for k, (w, o) in (extra or {}).items() if w > 0}
        self.loss_modules = nn.ModuleDict({name: LOSSES[name].module(cs, ct)
                                           for name in self.extra if LOSSES[name].module})
        self.warmup_iters, self.control = warmup_iters, control
        self.pseudo_labels, self.pseudo_threshold = pseudo_labels, pseudo_threshold
        if unlabeled_weight is not None and not 0.0 <= unlabeled_weight <= 1.0:
            raise ValueError(f"distill.unlabeled_weight must be in [0, 1] (or null), got "
                             f"{unlabeled_weight}")
        self.unlabeled_weight = unlabeled_weight
        self.student_stride = student.feature_info[student_tap].stride
        self.teacher_stride = teacher.feature_info[teacher_tap].stride
        # training steps taken: in the state dict, so a resumed run continues the warm-up
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.calls = 0

    @property
    def uses_teacher(self) -> bool:
        """Whether any term needs the teacher (and so can learn from unlabelled images)."""
        return (self.adapter is not None or self.affinity_adapter is not None
                or bool(self.extra) or self.pseudo_labels)

    def distill_scale(self) -> float:
        """The warm-up factor of every distillation weight at this step: ``min(1, step / N)``,
        the step counted from 1 (the first step already distils a little)."""
        if self.warmup_iters <= 0:
            return 1.0
        return min(1.0, int(self.step) / self.warmup_iters)

    def _at_latent_size(self, z: torch.Tensor, size) -> torch.Tensor:
        """The adapter's output at the latent's size. Only the rounding of odd input sizes may
        differ (the student's and the encoder's strided convolutions round differently): at
        most one position per side. More means the autoencoder was made for another pair."""
        if max(abs(a - b) for a, b in zip(z.shape[-2:], size)) > 1:
            raise ValueError(f"distill: the student's adapted map is {tuple(z.shape[-2:])} but the "
                             f"autoencoder's latent is {tuple(size)}: the autoencoder was trained "
                             "for a student of another feature stride")
        return resize(z, size)

    def _method_terms(self, fs: torch.Tensor, teacher_map: torch.Tensor) -> dict:
        """The paper's two terms (those switched on), unweighted."""
        zt = self.encoder(teacher_map)
        if self.control == "constant_target":  # the same vector at every position
            zt = torch.ones_like(zt)
        terms = {}
        if self.adapter is not None:
            zs = self._at_latent_size(self.adapter(fs), zt.shape[-2:])
            terms["adapt"] = adaptation_loss(zs, zt, self.p, self.q, self.adapt_reduction)
        if self.affinity_adapter is not None:
            zs = self._at_latent_size(self.affinity_adapter(fs), zt.shape[-2:])
            terms["affinity"] = affinity_loss(zs, zt, self.affinity_reduction,
                                              self.affinity_impl, self.dense_max_positions)
        return terms

    def forward(self, images, targets, unlabeled=None, unlabeled_valid=None) -> dict:
        """Losses of one step. ``unlabeled`` (optional): images without labels, and their
        validity mask (0 = a real pixel, ignore = padding); both batches go through each network
        in one pass, and every label-free term is computed on each batch (``*_unlabeled``), the
        two mixed by ``unlabeled_weight``."""
        if self.training:
            self.step += 1
        scale = self.distill_scale()
        n = images.shape[0]
        both = images if unlabeled is None else torch.cat([images, unlabeled])
        out = self.student(both)
        ce = ce_or_zero(out["logits"][:n], targets, self.ignore_index)
        losses, total = {"ce": ce}, ce
        t_out = self.teacher(both) if self.uses_teacher else None
        parts = [("", slice(0, n), targets != self.ignore_index, targets)]
        share = 0.0
        if unlabeled is not None:
            labels = None
            if self.pseudo_labels:
                labels = pseudo_labels(t_out["logits"][n:], unlabeled_valid,
                                       self.pseudo_threshold, self.ignore_index)
                losses["ce_pseudo_unlabeled"] = ce_or_zero(out["logits"][n:], labels,
                                                           self.ignore_index)
                total = total + losses["ce_pseudo_unlabeled"]
            parts.append(("_unlabeled", slice(n, None), unlabeled_valid != self.ignore_index,
                          labels))
            m = unlabeled.shape[0]
            share = m / (n + m) if self.unlabeled_weight is None else self.unlabeled_weight
        for suffix, part, valid, labels in parts:
            terms = self._distill_terms(out, t_out, part, valid, labels)
            for name, (weight, term) in terms.items():
                losses[name + suffix] = term
                if not suffix:
                    losses[f"{name}_ratio"] = ratio(weight * term, ce)
                mix = 1.0 if len(parts) == 1 else (share if suffix else 1.0 - share)
                if name not in self._labelled_only:
                    total = total + scale * weight * mix * term
                elif not suffix:  # a term that needs labels has no unlabelled counterpart
                    total = total + scale * weight * term
        if self.warmup_iters > 0:
            losses["distill_scale"] = torch.tensor(scale)
        losses["loss"] = total
        self.calls += 1
        if self.training and self.calls in (1, 10):
            log.info("distill iteration %d: CE %.4f%s", self.calls, float(ce.detach()), "".join(
                f", {k.replace('_ratio', '')} x weight / CE = {float(v):.3f}"
                for k, v in losses.items() if k.endswith("_ratio")))
        return losses

    @property
    def _labelled_only(self) -> set[str]:
        """Terms that need class labels and so have no label-free counterpart to mix with, unless
        pseudo-labels give the unlabelled batch labels too."""
        if self.pseudo_labels:
            return set()
        return {name for name in self.extra if LOSSES[name].needs_labels}

    def _distill_terms(self, out: dict, t_out: dict | None, part: slice, valid: torch.Tensor,
                       labels: torch.Tensor | None) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, unweighted term)}`` on the samples ``part`` of the batch. ``valid``
        marks the real pixels (input size); ``labels`` (None: none) is what a term that needs
        classes (IFVD) uses; without it that term is left out of this batch."""
        weighted: dict[str, tuple[float, torch.Tensor]] = {}
        if t_out is None:
            return weighted
        fs = out["features"][self.student_tap][part]
        ft = t_out["features"][self.teacher_tap][part]
        if self.adapter is not None or self.affinity_adapter is not None:
            for name, term in self._method_terms(fs, ft).items():
                weighted[name] = (getattr(self, f"{name}_weight"), term)
        for name, (weight, options) in self.extra.items():
            spec = LOSSES[name]
            if spec.needs_labels and labels is None:
                continue
            given = Outputs(out["logits"][part], t_out["logits"][part], fs, ft,
                            labels if spec.needs_labels else None, valid, self.ignore_index,
                            self.loss_modules[name] if name in self.loss_modules else None,
                            self.student_stride, self.teacher_stride)
            weighted[name] = (weight, spec.compute(given, **options))
        return weighted


def ratio(weighted_term: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """A diagnostic: ``weight * term / CE``, 0 where CE is 0 (a confident student on an easy
    batch), so that a diagnostic is never inf or NaN. Detached: nothing trains on it."""
    w, c = weighted_term.detach(), ce.detach()
    return torch.where(c > 0, w / torch.where(c > 0, c, torch.ones_like(c)), torch.zeros_like(w))


def pseudo_labels(teacher_logits: torch.Tensor, valid: torch.Tensor, threshold: float = 0.0,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The teacher's argmax as labels, ``ignore_index`` where its softmax confidence is below
    ``threshold`` or the position is not a real pixel (``valid == ignore_index``)."""
    prob = teacher_logits.detach().float().softmax(1)
    conf, labels = prob.max(1)
    labels[(conf < threshold) | (valid == ignore_index)] = ignore_index
    return labels


def ce_or_zero(logits: torch.Tensor, labels: torch.Tensor,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the labelled positions (float32); 0, with a finite (zero) gradient,
    when there is none: PyTorch's mean would be 0/0 = NaN and stop a healthy run. The same value
    as ``F.cross_entropy(..., ignore_index=...)`` otherwise, without a host sync."""
    x = logits.float()
    summed = F.cross_entropy(x, labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum()
    return summed / count.clamp(min=1).to(summed.dtype)


def check_distill_options(*, adapt_reduction: str, affinity_reduction: str, affinity_impl: str,
                          p: float, q: float, warmup_iters: int, control: str) -> None:
    """The method's options, checked where a config is read and again where a task is built."""
    if adapt_reduction not in ADAPT_REDUCTIONS:
        raise ValueError(f"distill.adapt_reduction must be one of {ADAPT_REDUCTIONS}")
    if affinity_reduction not in AFFINITY_REDUCTIONS:
        raise ValueError(f"distill.affinity_reduction must be one of {AFFINITY_REDUCTIONS}")
    if affinity_impl not in AFFINITY_IMPLS:
        raise ValueError(f"distill.affinity_impl must be one of {AFFINITY_IMPLS}")
    if p < 1 or q < 1:
        raise ValueError(f"distill.p and distill.q must be >= 1 (norms), got p={p}, q={q}")
    if warmup_iters < 0:
        raise ValueError(f"distill.warmup_iters must be >= 0, got {warmup_iters}")
    if control not in CONTROLS:
        raise ValueError(f"distill.control must be one of {CONTROLS}, not '{control}'")
