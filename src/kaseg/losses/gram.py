"""The affinity loss of :mod:`kaseg.losses.method` without its m x m matrices: an autograd kernel over
C x C Gram matrices, in chunks of positions, forward and backward. Same values and gradients as
:func:`kaseg.losses.method.affinity_loss_dense` (tests compare them in float64); O(C^2 + m) memory."""

from __future__ import annotations

import torch

from ..core.tensors import at_least_f32

AFFINITY_REDUCTIONS = ("mse", "paper", "element")


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
    """The same values and gradients as :func:`kaseg.losses.method.affinity_loss_dense`, without the m x m matrices.

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
