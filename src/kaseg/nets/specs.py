"""What a model is, without building it: its feature maps' channels and strides, and the spec
stored beside its weights. Below both :mod:`kaseg.nets.models` and :mod:`kaseg.nets.external`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FeatureInfo:
    channels: int
    stride: int  # input pixels per feature-map pixel


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model without its config (stored beside its weights)."""

    name: str
    num_classes: int
    output_stride: int | None = None
    decoder_channels: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)
