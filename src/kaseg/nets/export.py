"""``kaseg export RUN --format onnx``: the trained network (the student) as ONNX with a dynamic
batch and spatial size, checked against PyTorch with onnxruntime when it is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model, resolve_weights
from ..core.errors import KasegError


class LogitsOnly(nn.Module):
    """Deployment graph: image -> logits at input size (the feature taps are for training)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["logits"]


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, which: str = "best",
                size: tuple[int, int] = (512, 512), opset: int = 18) -> dict:
    weights = resolve_weights(checkpoint, which)
    model, _ = load_model(weights)
    net = LogitsOnly(model).eval()
    out = Path(out) if out else weights.with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 3, *size)
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        height = torch.export.Dim("height", min=32, max=8192)
        width = torch.export.Dim("width", min=32, max=8192)
        torch.onnx.export(net, (example,), str(out), input_names=["image"],
                          output_names=["logits"], opset_version=opset, dynamo=True,
                          dynamic_shapes={"image": {0: batch, 2: height, 3: width}})
    except ImportError as e:
        raise KasegError(f"ONNX export needs the onnx and onnxscript packages ({e}); "
                         "pip install 'kaseg[export]'") from None
    return {"path": str(out), "opset": opset, **check_onnx(net, out, size)}


def check_onnx(net: nn.Module, path: Path, size: tuple[int, int]) -> dict:
    """Max abs difference between onnxruntime and PyTorch on a batch of 2 at another size than
    the traced one (so the dynamic axes are exercised too); ``None`` without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"max_abs_diff": None, "checked_size": None}
    h, w = size[0] + 17, size[1] - 9  # odd sizes: the model's pad-and-crop must survive export
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        ref = net(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    if got.shape != ref.shape:
        raise KasegError(f"{path}: ONNX output {got.shape} differs from PyTorch's {ref.shape}")
    return {"max_abs_diff": float(np.abs(got - ref).max()), "checked_size": [h, w]}
