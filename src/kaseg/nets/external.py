"""Networks kaseg did not write: torchvision's segmentation models by name, and any ``nn.Module``.

:class:`TappedModel` turns a segmentation module into a kaseg model: its forward returns
``{"logits", "features"}`` like every kaseg model, the features captured by forward hooks on the
modules the user names (the *taps*), and ``feature_info`` (channels, stride of each tap) found by
one dry run at construction. A tap is ``"path.to.module"`` (its output), ``"path:input"`` (its
first input: the map a classifier conv reads) or ``"path:key"`` (one entry of a dict output, as
torchvision's backbones return).

``torchvision:NAME`` builds torchvision's models with their pre-classifier map as ``pre_logits``
and the backbone's output as ``encoder``; ``model.pretrained=true`` means torchvision's own
weights (COCO images, the 21 Pascal VOC classes), fetched only when asked; for another number of
classes the last classifier conv is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import KasegError
from .specs import FeatureInfo, ModelSpec

log = logging.getLogger(__name__)

# the tap of this name is no feature: it is the logits on the classifier's own grid, before the
# network upsamples them to the input (``head_logits``, what the field's logit terms read);
# without it, the module's own logits are (at input size when it upsamples them itself)
HEAD_LOGITS = "head_logits"
_DEEPLAB = {"pre_logits": "classifier.4:input", "encoder": "backbone:out",
            HEAD_LOGITS: "classifier.4"}
# name -> (torchvision builder, taps, the classifier convs that give the classes)
TORCHVISION: dict[str, tuple[str, dict[str, str], list[str]]] = {
    "deeplabv3_resnet50": ("deeplabv3_resnet50", _DEEPLAB, ["classifier.4"]),
    "deeplabv3_resnet101": ("deeplabv3_resnet101", _DEEPLAB, ["classifier.4"]),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", _DEEPLAB, ["classifier.4"]),
    "fcn_resnet50": ("fcn_resnet50", _DEEPLAB, ["classifier.4"]),
    "fcn_resnet101": ("fcn_resnet101", _DEEPLAB, ["classifier.4"]),
    # LR-ASPP: logits = low_classifier(low) + high_classifier(x); x (OS 8, 128 channels, after
    # the attention and upsampling) is its last map before a classifier
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large",
                                  {"pre_logits": "classifier.high_classifier:input",
                                   "encoder": "backbone:high"},
                                  ["classifier.low_classifier", "classifier.high_classifier"]),
}
VOC_CLASSES_WITH_WEIGHTS = 21


def _logits_of(output) -> torch.Tensor:
    """The class scores of a segmentation module's output: a tensor, a dict with ``out`` (torchvision)
    or ``logits`` (transformers), or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ("out", "logits"):
            if key in output:
                return output[key]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise KasegError(f"cannot find the logits in a module output of type {type(output).__name__}; "
                     "pass logits=<function of the output>")


class TappedModel(nn.Module):
    """Any segmentation ``nn.Module`` as a kaseg model (taps: see the module docstring).

    Args:
        module: the network; its forward takes an image batch and returns its logits (a tensor,
            a dict with ``out``/``logits``, or a tuple whose first element they are).
        taps: ``{feature name: tap}``, e.g. ``{"pre_logits": "classifier.4:input"}``; a
            ``pre_logits`` tap is what distillation uses by default; a ``head_logits`` tap
            (e.g. ``"classifier.4"``) names the logits before the module upsamples them.
        name: recorded in checkpoints (``torchvision:...`` names can be rebuilt from them).
        logits: how to get the logits from the output, if not one of the forms above.
        probe_size: the dry run's input side (a multiple of every stride).
    """

    def __init__(self, module: nn.Module, taps: dict[str, str], name: str | None = None,
                 logits: Callable | None = None, probe_size: int = 256):
        super().__init__()

        if not taps:
            raise KasegError("TappedModel: name at least one tap, e.g. "
                             "{'pre_logits': 'classifier.4:input'}")
        self.net, self.taps, self._logits = module, dict(taps), logits or _logits_of
        self._captured: dict[str, torch.Tensor] = {}
        for feature, tap in self.taps.items():
            path, _, part = tap.partition(":")
            try:
                target = module.get_submodule(path)
            except AttributeError:
                raise KasegError(f"tap '{feature}': {type(module).__name__} has no submodule "
                                 f"'{path}'") from None
            target.register_forward_hook(self._hook(feature, part))
        was = module.training
        module.eval()
        with torch.no_grad():
            out = self._run(torch.zeros(1, 3, probe_size, probe_size))
        module.train(was)
        missing = [f for f in self.taps if f not in out["features"] and f != HEAD_LOGITS]
        if missing:
            raise KasegError(f"taps {missing} were never reached by a forward pass")
        self.feature_info: dict[str, FeatureInfo] = {}
        for feature, fmap in out["features"].items():
            side = fmap.shape[-1]
            if fmap.dim() != 4 or probe_size % side:
                raise KasegError(f"tap '{feature}' gives shape {tuple(fmap.shape)}, not a map "
                                 f"whose side divides the {probe_size}-px probe")
            self.feature_info[feature] = FeatureInfo(int(fmap.shape[1]), probe_size // side)
        self.spec = ModelSpec(name=name or f"custom:{type(module).__name__}",
                              num_classes=int(out["logits"].shape[1]))
        side = out["head_logits"].shape[-1]
        if probe_size % side:
            raise KasegError(f"the logits on their own grid have shape "
                             f"{tuple(out['head_logits'].shape)}, not a map whose side divides "
                             f"the {probe_size}-px probe")
        self.logit_stride = probe_size // side  # the stride of ``head_logits``
        self.logit_corners = False  # torchvision and kaseg upsample with align_corners=False

    def _hook(self, feature: str, part: str):
        def hook(mod, inputs, output):
            if part == "input":
                value = inputs[0]
            elif part:
                if not isinstance(output, dict) or part not in output:
                    raise KasegError(f"tap '{feature}': the output of {type(mod).__name__} has "
                                     f"no key '{part}'")
                value = output[part]
            else:
                value = output
            self._captured[feature] = value
        return hook

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def _run(self, x: torch.Tensor) -> dict:
        self._captured = {}
        logits = self._logits(self.net(x))
        features, self._captured = self._captured, {}
        head_logits = features.pop(HEAD_LOGITS, logits)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "head_logits": head_logits, "features": features}

    def forward(self, x: torch.Tensor) -> dict:
        return self._run(x)


def build_torchvision(name: str, num_classes: int, pretrained: bool = False) -> TappedModel:
    """``torchvision:NAME`` (see :data:`TORCHVISION`) as a kaseg model."""
    import torchvision.models.segmentation as tvseg

    short = name.split(":", 1)[1]
    if short not in TORCHVISION:
        raise KasegError(f"unknown torchvision model '{short}'; known: {', '.join(TORCHVISION)}")
    builder, taps, heads = TORCHVISION[short]
    fn = getattr(tvseg, builder)
    if pretrained:
        try:  # torchvision's own weights (COCO, the VOC classes) and their aux head
            net = fn(weights="DEFAULT")
        except Exception as e:  # network and hub failures
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise KasegError(f"model '{name}': could not fetch torchvision's pretrained weights "
                             f"({type(e).__name__}: {reason}); check the network or set "
                             "model.pretrained=false") from None
        if num_classes != VOC_CLASSES_WITH_WEIGHTS:
            for path in heads:  # a fresh last conv for the user's classes
                parent, _, leaf = path.rpartition(".")
                old = net.get_submodule(path)
                setattr(net.get_submodule(parent), leaf,
                        nn.Conv2d(old.in_channels, num_classes, 1))
            log.info("%s: torchvision's weights with a new %d-class classifier", name, num_classes)
    else:  # nothing downloaded: no weights, not even the backbone's
        net = fn(weights=None, weights_backbone=None, num_classes=num_classes)
    net.aux_classifier = None  # the auxiliary head is not part of the segmenter
    return TappedModel(net, taps, name=name)
