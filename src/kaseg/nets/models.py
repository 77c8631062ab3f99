"""Segmentation networks by name: any segmentation_models_pytorch architecture and encoder, plus the
paper's pair and tiny CPU-sized variants. Every model returns its logits at input size and its named
feature maps, whose channels and strides are known before any forward pass (``feature_info``).
"""

from __future__ import annotations

import difflib
import logging
import warnings

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import KasegError
from .external import TORCHVISION, build_torchvision
from .specs import FeatureInfo, ModelSpec

log = logging.getLogger(__name__)

# Our few extra names. Each maps to an SMP architecture, an encoder and its defaults.
ALIASES: dict[str, dict] = {
    # the paper's pair (He et al. 2019): DeepLabV3+ Xception-65 OS 8 -> DeepLabV3 MobileNetV2 OS 16
    "paper-teacher": dict(arch="deeplabv3plus", encoder="tu-xception65", output_stride=8),
    "paper-teacher-r50": dict(arch="deeplabv3plus", encoder="resnet50", output_stride=8),
    "paper-teacher-r101": dict(arch="deeplabv3plus", encoder="resnet101", output_stride=8),
    # the paper's student: TF-DeepLab's MobileNetV2 "without ASPP and decoder" [paper]: the
    # backbone at OS 16 up to its last inverted residual (320 channels, no 1x1 expansion to 1280),
    # then an image-pooling branch and a 1x1 branch, concatenated and projected (ImagePoolHead)
    "paper-student": dict(arch="deeplabv3", encoder="mobilenet_v2", output_stride=16,
                          head="image-pool", drop_last_conv=True),
    # SMP's DeepLabV3 on MobileNetV2: a full ASPP (rates 12/24/36) and an extra 3x3 conv
    "paper-student-aspp": dict(arch="deeplabv3", encoder="mobilenet_v2", output_stride=16),
    # CPU-sized pair with the same shape (teacher: decoder, OS 8; student: OS 16): tests and the demo
    "tiny-teacher": dict(
        arch="deeplabv3plus", encoder="tu-resnet10t", output_stride=8, decoder_channels=64
    ),
    # small images give small maps (6 x 6 at 96 px): ASPP rates 1-3 instead of 12-36, no dropout
    "tiny-student": dict(
        arch="deeplabv3", encoder="tu-mobilenetv2_050", output_stride=16, decoder_channels=64,
        kwargs=dict(decoder_atrous_rates=(1, 2, 3), decoder_aspp_dropout=0.0),
    ),
}

# Architectures whose last encoder stage can be dilated (SMP passes output_stride to the encoder).
_DILATABLE = {"deeplabv3", "deeplabv3plus"}


def list_models() -> list[str]:
    """Our aliases and torchvision's models (any SMP ``architecture:encoder`` works too)."""

    return sorted(ALIASES) + [f"torchvision:{n}" for n in TORCHVISION]


def _resolve(name: str) -> tuple[str, str, dict]:
    """Model name -> (SMP architecture, encoder, alias defaults); ("torchvision", its name, {})
    for torchvision's models."""
    if name.startswith("torchvision:"):
    
        short = name.split(":", 1)[1]
        if short not in TORCHVISION:
            close = difflib.get_close_matches(short, list(TORCHVISION), n=1)
            hint = f"; did you mean 'torchvision:{close[0]}'?" if close else ""
            raise KasegError(f"unknown torchvision model '{short}'; known: "
                             f"{', '.join(TORCHVISION)}{hint}")
        return "torchvision", short, {}
    if name in ALIASES:
        d = dict(ALIASES[name])
        return d.pop("arch"), d.pop("encoder"), d
    if ":" not in name:
        close = difflib.get_close_matches(name, list(ALIASES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KasegError(
            f"unknown model '{name}': use an alias ({', '.join(list_models())}) or "
            f"'architecture:encoder', e.g. 'deeplabv3:resnet50'{hint}"
        )
    arch, encoder = name.split(":", 1)
    arch = arch.lower()
    archs = list(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise KasegError(f"unknown architecture '{arch}' in model '{name}'; known: {', '.join(archs)}{hint}")
    _check_encoder(encoder, name)
    return arch, encoder, {}


def check_model_name(name: str, key: str = "model.name") -> None:
    """A one-line error naming ``key`` when ``name`` is not a model kaseg can build (nothing
    is built or downloaded)."""
    try:
        _resolve(name)
    except KasegError as e:
        raise KasegError(f"{key}: {e}") from None


def _check_encoder(encoder: str, model_name: str) -> None:
    if encoder.startswith("tu-"):
        base = encoder[3:].split(".")[0]
        if not timm.is_model(base):
            close = difflib.get_close_matches(base, timm.list_models(), n=1)
            hint = f"; did you mean 'tu-{close[0]}'?" if close else ""
            raise KasegError(f"unknown timm encoder '{encoder}' in model '{model_name}'{hint}")
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else " (timm encoders take the prefix 'tu-')"
        raise KasegError(f"unknown encoder '{encoder}' in model '{model_name}'{hint}")


def _conv1x1_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ImagePoolHead(nn.Module):
    """TF-DeepLab's head for MobileNetV2 (``model_variant=mobilenet_v2`` without ASPP rates or
    decoder): a 1x1 branch and an image-pooling branch (global average, 1x1, broadcast back),
    concatenated, projected by a 1x1 conv and dropped out (keep 0.9), each conv with BN + ReLU.
    Takes SMP's list of encoder features and uses the last one."""

    def __init__(self, in_channels: int, out_channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.branch = _conv1x1_bn_relu(in_channels, out_channels)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv1x1_bn_relu(in_channels, out_channels))
        self.project = _conv1x1_bn_relu(2 * out_channels, out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.dropout(self.project(torch.cat([self.branch(x), pooled], 1)))


def _drop_last_conv(encoder: nn.Module, name: str) -> None:
    """MobileNetV2 ends in a 1x1 expansion to 1280 channels that TF-DeepLab's feature extractor
    stops before (its ``layer_18``, the last inverted residual: 320 channels)."""
    if not (hasattr(encoder, "features") and hasattr(encoder, "_out_channels")):
        raise KasegError(f"model '{name}': drop_last_conv needs a MobileNetV2 encoder")
    last = encoder.features[-1]
    encoder.features[-1] = nn.Identity()
    encoder._out_channels = list(encoder._out_channels[:-1]) + [last[0].in_channels]


class SegModel(nn.Module):
    """An SMP network whose forward returns ``{"logits", "head_logits", "features": {name: map}}``
    (``head_logits``: the classifier's output on its own grid, stride ``logit_stride``, on the
    padded input).

    Why a wrapper: distillation needs the pre-classifier feature map (the paper's "last feature
    map"), and users feed images of any size; we pad to the encoder's divisor and crop back, so the
    logits always have the input's size.

    Feature taps: ``pre_logits`` (decoder output, input to the classifier) and ``encoder`` (last
    encoder stage).
    """

    def __init__(self, net: nn.Module, spec: ModelSpec):
        super().__init__()
        self.net = net
        self.spec = spec
        head = net.segmentation_head
        up = head[1]
        head_stride = int(up.scale_factor) if isinstance(up, nn.Upsample) else 1
        self.feature_info: dict[str, FeatureInfo] = {
            "pre_logits": FeatureInfo(head[0].in_channels, head_stride),
            "encoder": FeatureInfo(net.encoder.out_channels[-1], int(net.encoder.output_stride)),
        }
        self.divisor = int(net.encoder.output_stride) if net.requires_divisible_input_shape else 1
        # the stride of ``head_logits`` (the classifier's own grid), in input pixels, and the
        # geometry the head upsamples it with (SMP's: align_corners=True)
        self.logit_stride = head_stride if isinstance(head, nn.Sequential) and len(head) == 3 else 1
        self.logit_corners = bool(getattr(up, "align_corners", False)) and self.logit_stride > 1

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def forward(self, x: torch.Tensor) -> dict:
        h, w = x.shape[-2:]
        d = self.divisor
        ph, pw = (-h) % d, (-w) % d
        # unconditional (a zero pad is free): no shape-dependent branch, so an exported graph
        # (ONNX, torch.export) keeps working at sizes other than the traced one
        x = F.pad(x, (0, pw, 0, ph))
        feats = self.net.encoder(x)
        if isinstance(feats, tuple):  # transformer encoders (DPT) also return prefix tokens
            dec = self.net.decoder(*feats)
            last = feats[0][-1]
        else:
            dec = self.net.decoder(feats)
            last = feats[-1]
        head_logits, logits = _head(self.net.segmentation_head, dec)
        # to the padded input's size (a copy when the head already upsampled to it)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits[..., :h, :w], "head_logits": head_logits,
                "features": {"pre_logits": dec, "encoder": last}}


def _head(head: nn.Module, dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the classifier's logits on its own grid, the head's output): SMP's head is (conv,
    upsampling, activation); the first is what the field's logit terms read (their authors
    compute them on the networks' own output grid, not at input size). Bit for bit the head's
    own forward; a head of another form gives its output twice."""
    if isinstance(head, nn.Sequential) and len(head) == 3:
        native = head[0](dec)
        return head[2](native), head[2](head[1](native))
    out = head(dec)
    return out, out


def _stride_kwargs(name: str, arch: str, os_: int | None, kwargs: dict) -> int | None:
    """Put the output stride into SMP's keyword arguments; -> the stride to rebuild the encoder
    at when SMP cannot build it directly (DeepLabV3 at 32), else None."""
    if os_ is None:
        return None
    if arch not in _DILATABLE:
        if os_ != 32:
            raise KasegError(f"model '{name}': output_stride {os_} needs a DeepLab architecture; "
                             f"'{arch}' only supports 32")
        return None
    if os_ in (8, 16):
        kwargs["encoder_output_stride"] = os_
        return None
    if os_ == 32 and arch == "deeplabv3":
        # SMP only builds 8/16; build 16 and swap in an undilated encoder
        kwargs["encoder_output_stride"] = 16
        kwargs["upsampling"] = 32
        return 32
    raise KasegError(f"model '{name}': output_stride must be 8, 16 or 32, got {os_}")


def build_model(
    name: str,
    num_classes: int,
    output_stride: int | None = None,
    decoder_channels: int | None = None,
    pretrained: bool = False,
) -> SegModel:
    """Build a model by alias, ``"architecture:encoder"`` (SMP) or ``"torchvision:NAME"``.

    ``pretrained`` fetches ImageNet encoder weights from the hub (the only network access kaseg
    makes); offline it raises a one-line :class:`KasegError`.
    """
    if num_classes < 1:
        raise KasegError(f"model '{name}': num_classes must be >= 1, got {num_classes}")
    arch, encoder, defaults = _resolve(name)
    if arch == "torchvision":
        if output_stride is not None or decoder_channels is not None:
            raise KasegError(f"model '{name}': torchvision's models have a fixed output stride "
                             "and head; leave output_stride and decoder_channels unset")

        return build_torchvision(name, num_classes, pretrained)
    os_ = output_stride if output_stride is not None else defaults.get("output_stride")
    dc = decoder_channels if decoder_channels is not None else defaults.get("decoder_channels")
    kwargs: dict = dict(defaults.get("kwargs", {}))
    if dc is not None and defaults.get("head") is None:
        kwargs["decoder_channels"] = dc
    dilate_to = _stride_kwargs(name, arch, os_, kwargs)
    net = _create_smp(name, arch, encoder, num_classes, pretrained, kwargs, dilate_to,
                      defaults, dc)
    spec = ModelSpec(name=name, num_classes=num_classes, output_stride=output_stride,
                     decoder_channels=decoder_channels)
    return SegModel(net, spec)


def _create_smp(name: str, arch: str, encoder: str, num_classes: int, pretrained: bool,
                kwargs: dict, dilate_to: int | None, defaults: dict, dc: int | None) -> nn.Module:
    """The segmentation_models_pytorch network of an alias or ``arch:encoder`` (a hub failure
    with ``pretrained`` is a one-line error naming the encoder)."""
    weights = (True if encoder.startswith("tu-") else "imagenet") if pretrained else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = smp.create_model(arch, encoder_name=encoder, encoder_weights=weights,
                                   classes=num_classes, **kwargs)
            if dilate_to is not None:
                net.encoder = smp.encoders.get_encoder(encoder, weights=weights, output_stride=dilate_to)
            if defaults.get("drop_last_conv"):
                _drop_last_conv(net.encoder, name)
            if defaults.get("head") == "image-pool":
                net.decoder = ImagePoolHead(net.encoder.out_channels[-1], dc or 256)
                net.segmentation_head[0] = nn.Conv2d(dc or 256, num_classes, 1)
    except KasegError:
        raise
    except Exception as e:  # network, hub and pretrained-tag failures
        if pretrained:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise KasegError(
                f"model '{name}': could not fetch pretrained weights for encoder '{encoder}' "
                f"({type(e).__name__}: {reason}); check the network or set model.pretrained=false"
            ) from None
        raise KasegError(f"model '{name}': could not be built ({type(e).__name__}: {e})") from None
    return net


def build_from_spec(spec: dict | ModelSpec) -> SegModel:
    """Rebuild (never downloading) a model from the spec stored in a checkpoint."""
    if isinstance(spec, dict):
        spec = ModelSpec(**spec)
    return build_model(spec.name, spec.num_classes, spec.output_stride, spec.decoder_channels)
