"""``kaseg predict RUN_OR_CHECKPOINT INPUT... --out DIR``: segment images with a trained model and
write, per image, a colour-palette mask (``NAME.png``, class index = pixel value, with the
dataset's palette) and an overlay on the image (``NAME_overlay.png``).

Inputs are image files or folders (searched recursively). Any image PIL reads works: grey, RGBA,
palette, 16-bit, any size. A file that cannot be read is reported and skipped; the others go on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..nets.checkpoint import load_model, resolve_weights
from ..core.config import IMAGENET_MEAN, IMAGENET_STD
from ..data.io import IMAGE_EXTS, default_palette, read_image
from ..data.transforms import image_tensor, normalize
from ..core.errors import KasegError
from ..core.runtime import autocast
from ..nets.inference import predict


def collect_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """``(file, output name without suffix)`` for every image under ``inputs``; a folder's images
    keep their relative paths (so equal names in subfolders do not collide)."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTS)
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise KasegError(f"{item}: no such file or folder")
    if not found:
        raise KasegError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def normalisation(weights: Path, meta: dict) -> tuple[tuple, tuple]:
    """The mean/std the model was trained with: from its weights' metadata, else the run's
    config.yaml beside them, else ImageNet's (kaseg's default)."""
    if "mean" in meta and "std" in meta:
        return tuple(meta["mean"]), tuple(meta["std"])
    cfg = weights.parent / "config.yaml"
    if cfg.is_file():
        import yaml

        data = (yaml.safe_load(cfg.read_text()) or {}).get("data", {})
        if "mean" in data and "std" in data:
            return tuple(data["mean"]), tuple(data["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def palette_image(labels: np.ndarray, palette: list) -> Image.Image:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def overlay(image: np.ndarray, labels: np.ndarray, palette: list, alpha: float) -> Image.Image:
    colours = np.asarray(palette, dtype=np.float32)[labels]
    blend = image.astype(np.float32) * (1 - alpha) + colours * alpha
    return Image.fromarray(blend.round().clip(0, 255).astype(np.uint8))


@torch.no_grad()
def predict_files(checkpoint: str | Path, inputs: list[str | Path], out: str | Path,
                  device: str | torch.device = "cpu", which: str = "best",
                  scales=(1.0,), flip: bool = False, window=None, stride=None,
                  alpha: float = 0.5, amp: bool = False, progress: bool = True) -> dict:
    """Segment every input image; returns ``{"written": [...], "failed": {path: error}}``."""
    weights = resolve_weights(checkpoint, which)
    device = torch.device(device)
    model, meta = load_model(weights, device=device)
    palette = [tuple(c) for c in meta.get("palette") or default_palette(model.num_classes)]
    if len(palette) < model.num_classes:
        palette += default_palette(model.num_classes)[len(palette):]
    mean, std = normalisation(weights, meta)
    files = collect_inputs(inputs)
    out = Path(out)
    written, failed = [], {}
    for path, name in tqdm(files, desc="predict", disable=not progress):
        try:
            image = read_image(path)
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise KasegError(f"{path}: image has zero size")
        except KasegError as e:
            failed[str(path)] = str(e)
            tqdm.write(f"kaseg: error: {e} (skipped)", file=sys.stderr)
            continue
        x = normalize(image_tensor(image), mean, std)[None].to(device)
        with autocast(device, amp):
            scores = predict(model, x, scales, flip, window, stride,
                             [tuple(p) for p in meta.get("flip_pairs") or ()])
        labels = scores.float().argmax(1)[0].cpu().numpy()
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        palette_image(labels, palette).save(target.with_suffix(".png"))
        overlay(image, labels, palette, alpha).save(
            target.with_name(target.name + "_overlay.png"))
        written.append(str(target.with_suffix(".png")))
    summary = {"checkpoint": str(weights), "written": written, "failed": failed,
               "classes": meta.get("class_names")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    return summary
