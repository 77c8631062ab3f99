"""Every distillation loss kaseg trains with, in one registry (:data:`LOSSES`): the method's two
terms (``adapt``, ``affinity``; their formulas are :mod:`kaseg.losses.method`) and the field's other
segmentation-distillation losses, on the same footing: same networks, data, recipe and loop, each
term selected, weighted and configured the same way (``distill.losses: {name: {weight, option:
value}}``) and combinable with any other.

Every function is a pure loss on tensors. Teacher tensors get no gradient (callers pass them from a
frozen teacher; the functions also detach them). ``valid`` is an optional ``(B, H, W)`` bool mask at
the loss's own resolution (:func:`valid_mask` makes it from the labels): positions outside it
(ignore pixels) take no part in the loss. With ``valid=None`` every function is its source's formula
exactly; the mask is [ours], so that a label the dataset marks as "unknown" never steers training.

Default weights are those the methods' authors (or the CIRKD code base, CVPR 2022, which re-ran
them all on Cityscapes with one recipe) used; each is given with its source below.

**Adding a loss** is one function and one entry in :data:`LOSSES` at the end of this file: the
entry names what the term reads from the student and teacher outputs (:class:`Outputs`), its
default weight and options, and (if it trains a module of its own, like FitNet's regressor or the
method's adapters) how to build that module. The config then knows it (``distill.losses: {name:
{weight: 2.0, option: value}}``) and the distillation task computes it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.labels import IGNORE_INDEX
from .method import (ADAPT_REDUCTIONS, AFFINITY_IMPLS, AFFINITY_REDUCTIONS, Adapter,
                     adaptation_loss, affinity_loss, to_latent_size)
from .contrastive import (AfDcdHead, CirkdMemory, af_dcd_check, af_dcd_loss,
                                 cirkd_batch_loss, cirkd_memory_loss)
from ..core.tensors import at_least_f32, full_precision, kl_from_logits, masked_mean, resize


def labels_at(targets: torch.Tensor, size: tuple[int, int], stride: int | None = None,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(B, H, W)`` labels on the grid of a ``size`` map.

    With ``stride`` (the map's stride in input pixels): by the geometry the networks have. They pad
    the image on the bottom and right to their divisor, so position ``j`` of the map starts at pixel
    ``j * stride`` of the image; it takes that pixel's label, and ``ignore_index`` where the pixel
    lies in the padding. Without ``stride``: nearest sampling from H x W onto ``size`` (IFVD's rule;
    the same as the geometric one when H = h * stride, off by up to a stride otherwise).
    """
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets
    if stride is None:
        return F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()
    h, w = size
    grid = targets[:, : h * stride : stride, : w * stride : stride]  # pixels j * stride inside
    ph, pw = h - grid.shape[-2], w - grid.shape[-1]
    return F.pad(grid, (0, pw, 0, ph), value=ignore_index) if ph or pw else grid


def valid_mask(targets: torch.Tensor, size: tuple[int, int],
               ignore_index: int = IGNORE_INDEX, stride: int | None = None) -> torch.Tensor:
    """Bool mask of the non-ignore positions at ``size`` (``stride``: see :func:`labels_at`)."""
    return labels_at(targets, size, stride, ignore_index) != ignore_index


@full_precision
def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise logit distillation (Hinton et al., 2015; per pixel as in Liu et al., CVPR 2019):

        L_kd = T^2 * 1/|V| * sum_{i in V} KL( softmax(z_t,i / T) || softmax(z_s,i / T) )

    V: the valid pixels. The T^2 keeps the gradient's size independent of T (Hinton et al.).
    At T = 1 with a one-hot teacher this is exactly the cross-entropy with the teacher's labels.
    Student logits are upsampled to the teacher's size. Default weight 1 (Hinton et al.; CIRKD
    ``--lambda-kd 1``); He et al. compare T = 2, 4, 6.
    """
    s = resize(at_least_f32(s_logits), t_logits.shape[-2:]) / temperature
    t = at_least_f32(t_logits.detach()) / temperature
    return temperature**2 * masked_mean(kl_from_logits(t, s, dim=1), valid)


@full_precision
def fitnet_loss(fs: torch.Tensor, ft: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """FitNet hint regression (Romero et al., ICLR 2015), as He et al. compare it:

        L_fit = 1/(|V| C) * sum_{i in V} || up(r(F_s))_i - F_t,i ||_2^2

    ``fs`` is the student's feature map *after* the regressor r (:class:`FitNetRegressor`, a 1x1
    conv to the teacher's channels), upsampled (bilinear) to the teacher's size: a mean squared
    error over channels and valid positions. Default weight 1 (CIRKD ``--lambda-fitnet 1``).
    """
    ft = at_least_f32(ft.detach())
    d = (resize(at_least_f32(fs), ft.shape[-2:]) - ft).pow(2).mean(1)
    return masked_mean(d, valid)


class FitNetRegressor(nn.Conv2d):
    """FitNet's regressor r: a 1x1 convolution, student channels -> teacher channels (no bias,
    as in CIRKD). Trained with the student and dropped after training."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__(student_channels, teacher_channels, kernel_size=1, bias=False)


def _pool_nodes(f: torch.Tensor, valid: torch.Tensor | None, pool: int):
    """Max-pool positions into ``pool x pool`` nodes (ceil mode); a node is valid if any of its
    positions is. Invalid positions never win the max."""
    if valid is None:
        return F.max_pool2d(f, pool, pool, ceil_mode=True), None
    neg = torch.finfo(f.dtype).min
    f = f.masked_fill(~valid[:, None], neg)
    nodes = F.max_pool2d(f, pool, pool, ceil_mode=True)
    node_valid = F.max_pool2d(valid[:, None].float(), pool, pool, ceil_mode=True)[:, 0] > 0
    return nodes.masked_fill(~node_valid[:, None], 0.0), node_valid


def _max_pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at ``size`` by adaptive max pooling (unchanged when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.adaptive_max_pool2d(x, size)


@full_precision
def skd_pairwise_loss(fs: torch.Tensor, ft: torch.Tensor, pool: int = 2,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """SKD pair-wise distillation (Liu et al., "Structured Knowledge Distillation for Semantic
    Segmentation", CVPR 2019): features are max-pooled into nodes (``pool x pool`` positions each),
    and the two networks' node-to-node cosine-similarity matrices are matched:

        a_ij = f_i . f_j / (||f_i|| ||f_j||),   L_pa = 1/N^2 * sum_{i,j} (a^s_ij - a^t_ij)^2

    averaged over the batch (N nodes; with a mask, the mean over valid node pairs). The channel
    counts of the two maps may differ. Pool 2 and weight 10 follow CIRKD's re-implementation
    (``--lambda-skd 10``); the SKD code pools a quarter of the map per node (a 2 x 2 node grid).

    Resolution [ours]: both maps are brought to the *smaller* of their two sizes, the larger one by
    max pooling (SKD's own node rule), before the nodes are formed. CIRKD distils SKD where
    teacher and student maps share OS 8; the paper pair's teacher map is at stride 4, and
    upsampling the student to it would make 9,409 nodes at a 769 crop (a 354 MB matrix per
    image). ``valid`` may be at either map's size: it is reduced the same way (a position is valid
    if any position it pools is).
    """
    ft = at_least_f32(ft.detach())
    fs = at_least_f32(fs)
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
    fs, ft = _max_pool_to(fs, size), _max_pool_to(ft, size)
    if valid is not None and tuple(valid.shape[-2:]) != size:
        valid = _max_pool_to(valid[:, None].float(), size)[:, 0] > 0
    ns, node_valid = _pool_nodes(fs, valid, pool)
    nt, _ = _pool_nodes(ft, valid, pool)
    s = F.normalize(ns.flatten(2), dim=1)  # (B, C, N), unit columns
    t = F.normalize(nt.flatten(2), dim=1)
    d = (s.transpose(1, 2) @ s - t.transpose(1, 2) @ t).pow(2)  # (B, N, N)
    if node_valid is None:
        return d.mean()
    v = node_valid.flatten(1).to(d.dtype)
    pairs = v[:, :, None] * v[:, None, :]
    return (d * pairs).sum() / pairs.sum().clamp(min=1.0)


@full_precision
def cwd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
    Prediction", ICCV 2021): each channel becomes a distribution over positions, and the
    student's is matched to the teacher's:

        phi(y_c)_i = exp(y_c,i / T) / sum_j exp(y_c,j / T)
        L_cwd = T^2 / (B C) * sum_{b,c} sum_i phi(y^t_c)_i log( phi(y^t_c)_i / phi(y^s_c)_i )

    On logits (C = classes), the student's upsampled to the teacher's size; with a mask the
    softmax runs over valid positions only. T = 4 and weight 3 on logits: the authors' setting
    for segmentation (also CIRKD ``--lambda-cwd-logit 3``, temperature 4).
    """
    s = resize(at_least_f32(s_logits), t_logits.shape[-2:]).flatten(2) / temperature
    t = at_least_f32(t_logits.detach()).flatten(2) / temperature
    if valid is not None:
        v = valid.flatten(1)
        some = v.any(1, keepdim=True)  # an image without a valid position is left out below
        out = (~v & some)[:, None]
        s, t = s.masked_fill(out, float("-inf")), t.masked_fill(out, float("-inf"))
    kl = kl_from_logits(t, s, dim=-1)  # (B, C)
    if valid is None:
        return temperature**2 * kl.mean()
    # mean over the (image, channel) pairs of the images that have a valid position
    some = some.to(kl.dtype)
    return temperature**2 * (kl * some).sum() / (some.sum() * kl.shape[1]).clamp(min=1.0)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (rows: (N, K) ->
    (N,)), the form DIST's code uses: centred rows, their dot product over the product of their
    norms plus ``eps``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@full_precision
def dist_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0,
              inter_weight: float = 1.0, intra_weight: float = 1.0,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): match
    *relations* of the class probabilities, not their values. With ``P`` the softmax(z / T) of
    every pixel, a matrix of (pixels x classes):

        inter = 1 - mean over pixels of pearson(P^s_i, P^t_i)        (each pixel's class ranking)
        intra = 1 - mean over classes of pearson(P^s_:,c, P^t_:,c)   (each class over the pixels)
        L_dist = T^2 * (inter_weight * inter + intra_weight * intra)

    The pixels are every position of every image of the batch together (the authors' code
    reshapes (B, C, H, W) to (B*H*W, C)); their segmentation setting is T = 1, both weights 1 and
    a loss weight of 1 (``--lambda-kd 1``). The student's logits are upsampled to the teacher's
    size (both are at OS 8 in the authors' code). [ours] ``valid``: only valid pixels are rows.
    """
    s = resize(at_least_f32(s_logits), t_logits.shape[-2:]) / temperature
    t = at_least_f32(t_logits.detach()) / temperature
    k = s.shape[1]
    ps = s.softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    pt = t.softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    if valid is not None:
        keep = valid.reshape(-1)
        if not keep.any():
            return s.sum() * 0.0  # no valid pixel: nothing to match, a zero gradient
        ps, pt = ps[keep], pt[keep]
    inter = 1.0 - _pearson_rows(ps, pt).mean()
    intra = 1.0 - _pearson_rows(ps.t(), pt.t()).mean()
    return temperature**2 * (inter_weight * inter + intra_weight * intra)


def class_prototype_similarity(f: torch.Tensor, labels: torch.Tensor, num_classes: int,
                               valid: torch.Tensor | None = None) -> torch.Tensor:
    """IFVD's intra-class feature variation map: the cosine similarity of each position's feature
    to its class prototype (the mean feature of that class in the same image). ``labels`` are at
    the feature's size; invalid positions get similarity 0 (and are left out by the loss)."""
    b, c = f.shape[:2]
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    lab = torch.where(valid, labels, torch.zeros_like(labels)).clamp(0, num_classes - 1)
    onehot = F.one_hot(lab.flatten(1), num_classes).to(f.dtype)
    onehot = onehot * valid.flatten(1)[..., None].to(f.dtype)  # (B, HW, K)
    flat = f.flatten(2)  # (B, C, HW)
    protos = (flat @ onehot) / onehot.sum(1, keepdim=True).clamp(min=1.0)  # (B, C, K)
    per_pixel = protos @ onehot.transpose(1, 2)  # (B, C, HW): each position's class prototype
    sim = F.cosine_similarity(flat, per_pixel, dim=1, eps=1e-8)
    return sim.view(b, *f.shape[-2:])


@full_precision
def ifvd_loss(fs: torch.Tensor, ft: torch.Tensor, targets: torch.Tensor, num_classes: int,
              ignore_index: int = IGNORE_INDEX, stride: int | None = None) -> torch.Tensor:
    """Intra-class feature variation distillation (Wang et al., ECCV 2020):

        p_k = mean of f_i over the positions i of class k (per image),
        M_i = cos(f_i, p_{y_i}),   L_ifv = 1/|V| * sum_{i in V} (M^s_i - M^t_i)^2

    Labels are brought to the teacher's feature grid (:func:`labels_at`: by the map's ``stride``
    when given, else nearest sampling as in IFVD's code), the student's features upsampled to it; ignore pixels join no prototype and no mean (the
    source keeps them at similarity 1 in both maps, so only its mean's denominator differs).
    Default weight 200 (IFVD's ``lambda_ifv``; also CIRKD).
    """
    ft = at_least_f32(ft.detach())
    fs = resize(at_least_f32(fs), ft.shape[-2:])
    targets = labels_at(targets, ft.shape[-2:], stride, ignore_index)
    valid = (targets != ignore_index) & (targets >= 0) & (targets < num_classes)
    ms = class_prototype_similarity(fs, targets, num_classes, valid)
    mt = class_prototype_similarity(ft, targets, num_classes, valid)
    return masked_mean((ms - mt).pow(2), valid)


# --------------------------------------------------------------------------- the registry
@dataclasses.dataclass
class Outputs:
    """What one distillation step offers a loss: both networks' logits and tapped feature maps,
    the labels and the valid pixels, and the loss's own trained module (None if it has none).

    ``labels`` are class indices (``ignore_index`` where unknown), or None on images without
    labels (an unlabelled batch without pseudo-labels): a loss that reads them must say so
    (``LossSpec.needs_labels``) and is then left out of such a batch. ``valid`` marks the real
    pixels that count, on every batch. Both are at the input's size; :meth:`labels_on` and
    :meth:`valid_on` put them on the grid of any map the step offers, by its stride.
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_features: torch.Tensor
    teacher_features: torch.Tensor
    labels: torch.Tensor | None
    valid: torch.Tensor
    ignore_index: int = IGNORE_INDEX
    module: nn.Module | None = None
    student_stride: int | None = None  # the tapped maps' strides in input pixels
    teacher_stride: int | None = None
    # E(F_t), the trained encoder's code of the teacher's map (the method's target): computed
    # on first use and shared by every term of the step that reads it
    teacher_latent: Callable[[], torch.Tensor] | None = None

    def latent(self) -> torch.Tensor:
        """The teacher's map in the autoencoder's latent space (``LossSpec.needs_autoencoder``)."""
        if self.teacher_latent is None:
            raise ValueError("this step has no autoencoder: a loss that reads its latent needs "
                             "LossSpec(needs_autoencoder=True)")
        return self.teacher_latent()

    def _stride(self, like: torch.Tensor) -> int | None:
        """The stride of a map of ``like``'s size: 1 at the input's size, else the tapped map's
        of the same size (None: unknown, nearest sampling)."""
        size = tuple(like.shape[-2:])
        if size == tuple(self.valid.shape[-2:]):
            return 1
        for f, stride in ((self.teacher_features, self.teacher_stride),
                          (self.student_features, self.student_stride)):
            if size == tuple(f.shape[-2:]) and stride is not None:
                return stride
        return None

    def valid_on(self, like: torch.Tensor) -> torch.Tensor:
        """The valid-pixel mask on the grid of ``like`` (a map of this step)."""
        v = self.valid.to(torch.uint8)
        return labels_at(v, like.shape[-2:], self._stride(like), 0) > 0

    def labels_on(self, like: torch.Tensor) -> torch.Tensor:
        """The labels on the grid of ``like``; invalid pixels are ``ignore_index``."""
        if self.labels is None:
            raise ValueError("this batch has no labels: a loss that reads them needs "
                             "LossSpec(needs_labels=True)")
        labels = self.labels.masked_fill(~self.valid, self.ignore_index)
        return labels_at(labels, like.shape[-2:], self._stride(like), self.ignore_index)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One selectable distillation loss.

    Args:
        compute: ``compute(outputs: Outputs, **options) -> scalar tensor``.
        weight: the default weight (its source in the loss's docstring).
        options: the default options, passed to ``compute`` as keyword arguments.
        module: builds the module the loss trains (or keeps, like CIRKD's memory banks) with
            the student, from (student channels, teacher channels) of the tapped maps, and of
            ``num_classes`` and the loss's options those its signature names
            (:func:`build_loss_module`); dropped after training. None: no module.
        needs_labels: the loss uses class labels (not only the valid-position mask): on
            unlabelled images it runs only with pseudo-labels.
        check: ``check(teacher_channels, **options) -> message or None``: what keeps the loss
            from running on a teacher map of that many channels, asked before anything trains.
        validate: ``validate(**options) -> message or None``: what is wrong with the options'
            values, asked when a config is read.
        needs_autoencoder: the loss reads the trained autoencoder's latent code of the teacher's
            map (:meth:`Outputs.latent`; the method's terms): a run with it needs ``ae.weights``.
    """

    compute: Callable[..., torch.Tensor]
    weight: float
    options: dict = dataclasses.field(default_factory=dict)
    module: Callable[..., nn.Module] | None = None
    needs_labels: bool = False
    check: Callable[..., str | None] | None = None
    validate: Callable[..., str | None] | None = None
    needs_autoencoder: bool = False


def build_loss_module(name: str, student_channels: int, teacher_channels: int, num_classes: int,
                      options: dict, latent_channels: int | None = None) -> nn.Module:
    """The module of loss ``name``, given what its factory's signature asks for (channels
    always; ``num_classes``, ``latent_channels`` and any of the loss's options by name)."""
    factory = LOSSES[name].module
    params = inspect.signature(factory).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    context = {"num_classes": num_classes, "latent_channels": latent_channels, **options}
    kwargs = {k: v for k, v in context.items() if takes_all or k in params}
    return factory(student_channels, teacher_channels, **kwargs)


# names the distillation task gives its own logged entries: a loss may not take them (it would
# overwrite the entry, or swallow its config keys)
RESERVED_NAMES = frozenset({"loss", "ce", "pseudo", "distill", "warmup_factor", "skipped", "lr",
                            "iter", "weight"})


class LossRegistry(dict):
    """``{name: LossSpec}``; a name the task's own entries use is refused (``RESERVED_NAMES``)."""

    def __setitem__(self, name: str, spec: LossSpec) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a loss name must be an identifier, not {name!r}")
        if name in RESERVED_NAMES or name.startswith("ce_") or name.endswith(("_ratio", "_unlabeled")):
            raise ValueError(f"the loss name '{name}' is reserved for the task's own entries "
                             f"({', '.join(sorted(RESERVED_NAMES))}, ce_*, *_ratio, *_unlabeled)")
        if not isinstance(spec, LossSpec):
            raise ValueError(f"loss '{name}': expected a LossSpec, got {type(spec).__name__}")
        super().__setitem__(name, spec)

    def update(self, *args, **kwargs) -> None:
        for name, spec in dict(*args, **kwargs).items():
            self[name] = spec

    def setdefault(self, name, spec=None):
        if name not in self:
            self[name] = spec
        return self[name]


def register_loss(name: str, spec: LossSpec) -> LossSpec:
    """Add a loss to :data:`LOSSES` (a name already registered, reserved or not an identifier
    is a ``ValueError``)."""
    if name in LOSSES:
        raise ValueError(f"a loss named '{name}' is already registered")
    LOSSES[name] = spec
    return spec


def _adapter(student_channels: int, teacher_channels: int, latent_channels: int) -> Adapter:
    """C_f or C_a: the student's map to the autoencoder's latent channels."""
    return Adapter(student_channels, latent_channels)


def _adapt(o: Outputs, reduction: str, p: float, q: float) -> torch.Tensor:
    zt = o.latent()
    zs = to_latent_size(o.module(o.student_features), zt.shape[-2:])
    return adaptation_loss(zs, zt, p, q, reduction)


def _affinity(o: Outputs, reduction: str, impl: str, dense_max_positions: int) -> torch.Tensor:
    zt = o.latent()
    zs = to_latent_size(o.module(o.student_features), zt.shape[-2:])
    return affinity_loss(zs, zt, reduction, impl, dense_max_positions)


def _one_of(key: str, value, allowed) -> str | None:
    return None if value in allowed else f"{key} must be one of {tuple(allowed)}, got {value!r}"


def _check_adapt(reduction: str, p: float, q: float) -> str | None:
    if p < 1 or q < 1:
        return f"p and q must be >= 1 (norms), got p={p}, q={q}"
    return _one_of("reduction", reduction, ADAPT_REDUCTIONS)


def _check_affinity(reduction: str, impl: str, dense_max_positions: int) -> str | None:
    if dense_max_positions < 1:
        return f"dense_max_positions must be >= 1, got {dense_max_positions}"
    return (_one_of("reduction", reduction, AFFINITY_REDUCTIONS)
            or _one_of("impl", impl, AFFINITY_IMPLS))


LOSSES: LossRegistry = LossRegistry()
LOSSES.update({
    # the method (He et al., CVPR 2019): the adapted student map matched to E(F_t), and the
    # pairwise affinity of the two; each term trains its own adapter. Weights: docs/method.md,
    # "Magnitudes" (the paper's 50 and 1 pair with reduction "paper")
    "adapt": LossSpec(_adapt, weight=50.0, module=_adapter, validate=_check_adapt,
                      needs_autoencoder=True,
                      options={"reduction": "element", "p": 2.0, "q": 2.0}),
    "affinity": LossSpec(_affinity, weight=30.0, module=_adapter, validate=_check_affinity,
                         needs_autoencoder=True,
                         options={"reduction": "mse", "impl": "auto",
                                  "dense_max_positions": 1024}),
    "kd": LossSpec(lambda o, temperature: kd_loss(o.student_logits, o.teacher_logits, temperature,
                                                  o.valid_on(o.teacher_logits)),
                   weight=1.0, options={"temperature": 4.0}),
    "fitnet": LossSpec(lambda o: fitnet_loss(o.module(o.student_features), o.teacher_features,
                                             o.valid_on(o.teacher_features)),
                       weight=1.0, module=FitNetRegressor),
    "skd": LossSpec(lambda o, pool: skd_pairwise_loss(o.student_features, o.teacher_features, pool,
                                                      o.valid_on(o.teacher_features)),
                    weight=10.0, options={"pool": 2}),
    "cwd": LossSpec(lambda o, temperature: cwd_loss(o.student_logits, o.teacher_logits,
                                                    temperature, o.valid_on(o.teacher_logits)),
                    weight=3.0, options={"temperature": 4.0}),
    "dist": LossSpec(lambda o, temperature, inter_weight, intra_weight: dist_loss(
        o.student_logits, o.teacher_logits, temperature, inter_weight, intra_weight,
        o.valid_on(o.teacher_logits)),
        weight=1.0, options={"temperature": 1.0, "inter_weight": 1.0, "intra_weight": 1.0}),
    # CIRKD: its arm adds logit KD at T = 1 beside these two, as the authors combine them
    "cirkd_batch": LossSpec(lambda o, temperature: cirkd_batch_loss(
        o.student_features, o.teacher_features, temperature, _valid_on_common_grid(o)),
        weight=1.0, options={"temperature": 0.1}),
    "cirkd_memory": LossSpec(
        lambda o, pixel_memory_size, region_memory_size, pixel_update, **opts: cirkd_memory_loss(
            o.module, o.student_features, o.teacher_features, _labels_on_common_grid(o),
            ignore_index=o.ignore_index, update=o.module.training, **opts),
        weight=0.1, module=CirkdMemory, needs_labels=True,
        options={"pixel_memory_size": 20000, "region_memory_size": 2000, "pixel_update": 16,
                 "pixel_contrast_size": 4096, "region_contrast_size": 1024, "temperature": 0.1,
                 "kd_temperature": 1.0, "region_weight": 1.0}),
    # Af-DCD: its arm adds logit KD at T = 1, as the authors combine them
    "af_dcd": LossSpec(lambda o, **opts: af_dcd_loss(
        o.module, o.student_features, o.teacher_features, **opts,
        valid=o.valid_on(o.teacher_features)),
        weight=1.0, module=AfDcdHead, check=af_dcd_check,
        options={"fd_weight": 2e-6, "ctr_weight": 5e-3, "temperature": 0.07, "groups": 16,
                 "pool": 4, "patch": 4, "mask_ratio": 0.75, "mask": "random",
                 "projector": "enhanced"}),
    "ifvd": LossSpec(lambda o: ifvd_loss(o.student_features, o.teacher_features,
                                         o.labels_on(o.teacher_features),
                                         o.teacher_logits.shape[1], o.ignore_index),
                     weight=200.0, needs_labels=True),
})


def _common_grid_like(o: Outputs) -> torch.Tensor:
    """A tensor of the size :func:`~kaseg.losses.contrastive.common_grid` brings both maps to
    (the smaller map itself when it is smaller both ways)."""
    fs, ft = o.student_features, o.teacher_features
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
    for f in (fs, ft):
        if tuple(f.shape[-2:]) == size:
            return f
    return fs.new_empty((0, 0, *size))


def _valid_on_common_grid(o: Outputs) -> torch.Tensor:
    return o.valid_on(_common_grid_like(o))


def _labels_on_common_grid(o: Outputs) -> torch.Tensor:
    return o.labels_on(_common_grid_like(o))


def resolve_losses(losses: dict | None) -> dict[str, tuple[float, dict]]:
    """``{name: (weight, options)}`` of the terms ``distill.losses`` selects (``{name: {weight:
    w, option: value}}``, an empty entry: the loss's defaults), in the registry's order, those
    weighted 0 left out (switched off). An unknown name or option, or a bad value, is a
    ``ValueError`` naming the key and what it takes."""
    out = {}
    for name, entry in (losses or {}).items():
        where = f"distill.losses.{name}"
        if name not in LOSSES:
            raise ValueError(f"distill.losses: unknown loss '{name}'; known: {sorted(LOSSES)}")
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping (weight, options), got {entry!r}")
        spec = LOSSES[name]
        bad = sorted(set(entry) - {"weight", *spec.options})
        if bad:
            raise ValueError(f"{where}: unknown option {bad}; {name} takes weight and "
                             f"{', '.join(spec.options) or 'no options'}")
        weight = entry.get("weight", spec.weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{where}.weight must be a number >= 0, got {weight!r}")
        options = {**spec.options, **{k: _option(f"{where}.{k}", v, spec.options[k])
                                      for k, v in entry.items() if k != "weight"}}
        problem = spec.validate and spec.validate(**options)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if weight > 0:
            out[name] = (float(weight), options)
    return {name: out[name] for name in LOSSES if name in out}


def _option(key: str, value, default):
    """An option's value, of its default's type (an int where a float is expected is read as
    one); another type is a ``ValueError`` naming the key."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, float) and number:
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) \
            and value.is_integer():
        return int(value)
    if default is not None and not isinstance(value, type(default)) or (
            isinstance(value, bool) and not isinstance(default, bool)):
        raise ValueError(f"{key} must be {type(default).__name__}, got {value!r}")
    return value


def canonical_losses(losses: dict | None) -> dict[str, dict]:
    """``distill.losses`` written out in full: every selected term with its weight and every
    option, in the registry's order, those weighted 0 dropped. Two configs that train the same
    terms then read the same, whatever defaults either left unsaid."""
    return {name: {"weight": w, **o} for name, (w, o) in resolve_losses(losses).items()}


def needs_autoencoder(losses: dict | None) -> bool:
    """Whether ``distill.losses`` selects a term that reads the autoencoder's latent code (the
    method's): the one test of "this run needs a trained autoencoder"."""
    return any(LOSSES[name].needs_autoencoder for name in resolve_losses(losses))


def method_terms(losses: dict | None) -> list[str]:
    """The selected terms that read the autoencoder's latent code: the method's, whose weights a
    comparison tunes together."""
    return [name for name in resolve_losses(losses) if LOSSES[name].needs_autoencoder]


def listing() -> str:
    """Every registered term with its default weight and options: what ``kaseg info --losses``
    prints, i.e. what ``distill.losses`` takes."""
    lines = ["distill.losses terms (weight, options; * reads the autoencoder, the method's):"]
    for name, spec in LOSSES.items():
        opts = ", ".join(f"{k}: {v}" for k, v in spec.options.items())
        mark = "*" if spec.needs_autoencoder else " "
        lines.append(f" {mark}{name:<13} weight {spec.weight:g}" + (f"; {opts}" if opts else ""))
    return "\n".join(lines)
