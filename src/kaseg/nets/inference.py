"""Inference as the field evaluates: whole image, sliding window, multi-scale + flip.

- whole image: one forward pass at full resolution (any size: the model pads and crops);
- sliding window (``window``, ``stride``): overlapping crops, logits averaged where they overlap,
  for images larger than the training crop (Cityscapes 1024 x 2048 with 769 or 512 x 1024 crops);
- multi-scale + flip (``scales``, ``flip``): the image resized by each scale (and mirrored), the
  softmax probabilities brought back to full size and averaged (DeepLab; 0.5 to 1.75 in the field).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.classes import flip_permutation

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _pair(v: int | Sequence[int] | None) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


def whole(model, images: torch.Tensor) -> torch.Tensor:
    return model(images)["logits"].float()


def sliding_window(model, images: torch.Tensor, window, stride=None) -> torch.Tensor:
    """Logits from overlapping ``window`` crops every ``stride`` pixels (default: 2/3 of the
    window), averaged where crops overlap. The last crop in each direction is aligned to the
    border, so every pixel is covered and no crop is padded unless the image is smaller."""
    wh, ww = _pair(window)
    sh, sw = _pair(stride) or (max(1, wh * 2 // 3), max(1, ww * 2 // 3))
    n, _, h, w = images.shape
    rows = max(h - wh + sh - 1, 0) // sh + 1
    cols = max(w - ww + sw - 1, 0) // sw + 1
    total = count = None
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + wh, h), min(c * sw + ww, w)
            y1, x1 = max(y2 - wh, 0), max(x2 - ww, 0)
            logits = whole(model, images[:, :, y1:y2, x1:x2])
            if total is None:
                total = logits.new_zeros(n, logits.shape[1], h, w)
                count = logits.new_zeros(1, 1, h, w)
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def predict(model, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
            window=None, stride=None, flip_pairs: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """Class scores ``(N, K, H, W)`` at the input's size. Single scale without flip returns the
    logits themselves; otherwise the mean of softmax probabilities over scales and flips.
    ``flip_pairs``: left/right classes; a mirrored prediction's channels are swapped back."""
    run = (lambda x: sliding_window(model, x, window, stride)) if window else (
        lambda x: whole(model, x))
    scales = tuple(scales)
    if scales == (1.0,) and not flip:
        return run(images)
    h, w = images.shape[-2:]
    total = None
    for s in scales:
        x = images if s == 1.0 else F.interpolate(
            images, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
            align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            logits = run(x.flip(-1) if mirrored else x)
            if mirrored:
                logits = logits.flip(-1)
                if flip_pairs:
                    logits = logits[:, flip_permutation(logits.shape[1], flip_pairs)]
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def protocol_name(scales: Sequence[float] = (1.0,), flip: bool = False, window=None,
                  stride=None) -> str:
    """A short description for results files: ``single-scale`` (whole image),
    ``ms(0.5,...,1.75)+flip``, ``single-scale+slide(769x769/512x512)``, ..."""
    scales = tuple(scales)
    parts = ["single-scale" if scales == (1.0,) else
             "ms(" + ",".join(f"{s:g}" for s in scales) + ")"]
    if flip:
        parts.append("flip")
    if window:
        wh, ww = _pair(window)
        sh, sw = _pair(stride) or (max(1, wh * 2 // 3), max(1, ww * 2 // 3))
        parts.append(f"slide({wh}x{ww}/{sh}x{sw})")
    return "+".join(parts)
