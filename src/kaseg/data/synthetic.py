"""Synthetic scenes: a built-in, deterministic segmentation dataset that needs no files or network.

Each image is drawn from ``(data_seed, split, index)`` alone, so any count and size is available
and the train/val split is fixed. The scenes are built to make distillation measurable:

- textured regions (grass, water) on a noisy, smoothly varying background;
- thin structures (wires, 1-2 px) and small objects (dots), which a large output stride blurs;
- two *context classes*, ``twin-red`` and ``twin-blue``: objects that look exactly alike; their
  class is given only by the colour of a beacon band along the far edge of the image. Telling them apart
  needs a receptive field that spans the image, which a large teacher has and a compact student
  must learn (the long-range structure affinity distillation transfers).
"""

from __future__ import annotations

import functools

import numpy as np

from .base import SegmentationDataset

CLASS_NAMES = ("background", "grass", "water", "wire", "dot", "twin-red", "twin-blue", "beacon")
PALETTE = (
    (0, 0, 0),
    (60, 160, 60),
    (40, 90, 200),
    (230, 230, 230),
    (250, 210, 40),
    (220, 40, 40),
    (40, 200, 220),
    (200, 60, 200),
)
CONTEXT_CLASSES = (5, 6)  # told apart only by the beacon's colour, far away
# "extra": a stream of scenes disjoint from the others, the built-in unlabelled pictures
_SPLITS = {"train": 0, "val": 1, "test": 2, "extra": 3}


def _ellipse(h: int, w: int, rng: np.random.Generator, rmin: float, rmax: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(rmin, rmax, size=2) * min(h, w)
    t = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _line(h: int, w: int, rng: np.random.Generator, width: float) -> np.ndarray:
    """A straight wire across the image: pixels within ``width/2`` of a random line."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    t = rng.uniform(0, np.pi)
    dist = np.abs((xx - cx) * np.sin(t) - (yy - cy) * np.cos(t))
    return dist <= width / 2


def make_scene(size: int, seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 HxWx3, mask uint8 HxW)``, a pure function of its arguments.
    Its parts are drawn in a fixed order from one generator, so every scene is the same in
    every run."""
    if split not in _SPLITS:
        raise ValueError(f"synthetic scenes have splits {list(_SPLITS)}, not '{split}'")
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    s = size / 64.0  # sizes below are given for 64 px and scale with the image
    img, mask = _background(size, rng)
    _textured_regions(img, mask, rng, s)
    mode, side, b = _beacon(img, mask, rng, s)
    _twins(img, mask, rng, s, mode, side, b)
    _thin_and_small(img, mask, rng, s)
    img = img + rng.normal(0, 0.03, size=(size, size, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32) / size


def _background(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour gradient with grain, and an all-background mask."""
    yy, xx = _grid(size)
    c0, c1 = rng.uniform(0.25, 0.6, size=(2, 3))
    g = rng.uniform(0, 1) * xx + (1 - rng.uniform(0, 1)) * yy
    img = c0 + (c1 - c0) * g[..., None] / max(float(g.max()), 1e-6)
    img = img + rng.normal(0, 0.04, size=(size, size, 3))
    return img, np.zeros((size, size), np.uint8)


def _textured_regions(img, mask, rng, s: float) -> None:
    """Grass (green, fine grain) and water (blue, horizontal waves) ellipses."""
    h, w = mask.shape
    yy, _ = _grid(h)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, 3))
        region = _ellipse(h, w, rng, 0.15, 0.4)
        if cls == 1:  # grass: green with strong fine grain
            tex = np.array([0.25, 0.6, 0.25]) + rng.normal(0, 0.12, size=(h, w, 1))
        else:  # water: blue with horizontal waves
            period = rng.uniform(3, 5) * s
            wave = 0.12 * np.sin(2 * np.pi * (yy * h) / period + rng.uniform(0, 6.3))
            tex = np.array([0.15, 0.3, 0.75]) + wave[..., None]
        img[region] = tex[region] if tex.ndim == 3 else tex
        mask[region] = cls


def _beacon(img, mask, rng, s: float) -> tuple[int, int, int]:
    """The context: a band along one edge whose colour names the twins' class. -> (mode, side,
    band width)."""
    h, w = mask.shape
    mode = int(rng.integers(0, 2))  # 0 -> twin-red, 1 -> twin-blue
    b = max(2, int(round(4 * s)))
    side = int(rng.integers(0, 4))  # 0 top, 1 bottom, 2 left, 3 right
    band = (slice(0, b), slice(None)) if side == 0 else (slice(h - b, h), slice(None)) \
        if side == 1 else (slice(None), slice(0, b)) if side == 2 else (slice(None), slice(w - b, w))
    img[band] = (0.9, 0.1, 0.1) if mode == 0 else (0.1, 0.8, 0.9)
    mask[band] = 7
    return mode, side, b


def _twins(img, mask, rng, s: float, mode: int, side: int, b: int) -> None:
    """Identical grey checkered boxes, kept in the half of the image away from the beacon."""
    h, w = mask.shape
    twin_cls = CONTEXT_CLASSES[mode]
    far_y = (h // 2, h) if side == 0 else (0, h // 2) if side == 1 else (b, h - b)
    far_x = (w // 2, w) if side == 2 else (0, w // 2) if side == 3 else (b, w - b)
    for _ in range(rng.integers(1, 3)):
        th, tw = (int(v) for v in rng.integers(int(6 * s), int(14 * s) + 1, size=2))
        y0 = int(rng.integers(far_y[0], max(far_y[0] + 1, far_y[1] - th)))
        x0 = int(rng.integers(far_x[0], max(far_x[0] + 1, far_x[1] - tw)))
        y1, x1 = min(far_y[1], y0 + th), min(far_x[1], x0 + tw)
        cy, cx = np.mgrid[y0:y1, x0:x1]
        check = ((cy // max(1, int(2 * s)) + cx // max(1, int(2 * s))) % 2).astype(np.float32)
        img[y0:y1, x0:x1] = 0.45 + 0.2 * check[..., None]
        mask[y0:y1, x0:x1] = twin_cls


def _thin_and_small(img, mask, rng, s: float) -> None:
    """Wires and small dots, drawn last so they are never hidden."""
    h, w = mask.shape
    for _ in range(rng.integers(1, 4)):
        wire = _line(h, w, rng, width=rng.uniform(1.0, 2.0) * s)
        img[wire] = 0.92
        mask[wire] = 3
    for _ in range(rng.integers(2, 6)):
        dot = _ellipse(h, w, rng, 0.025, 0.05)
        img[dot] = (0.98, 0.85, 0.1)
        mask[dot] = 4


# Scenes are pure functions of their arguments and cost ~2 ms each; runs in one process (the demo's
# many students) see the same images, so keep them (4096 scenes at 96 px: ~150 MB at most).
_cached_scene = functools.lru_cache(maxsize=4096)(make_scene)


class SyntheticScenes(SegmentationDataset):
    """Map-style dataset over :func:`make_scene`; ``transform(image, mask)`` gives tensors."""

    class_names = CLASS_NAMES
    palette = PALETTE
    context_classes = CONTEXT_CLASSES

    def __init__(self, split: str = "train", count: int = 512, size: int = 64, data_seed: int = 0,
                 transform=None):
        if split not in _SPLITS:
            raise ValueError(f"synthetic scenes have splits {list(_SPLITS)}, not '{split}'")
        self.split, self.count, self.size, self.data_seed = split, count, size, data_seed
        self.transform = transform

    def __len__(self) -> int:
        return self.count

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        image, mask = _cached_scene(self.size, self.data_seed, self.split, index)
        return image.copy(), mask.copy()  # callers may write into them

    def name(self, index: int) -> str:
        return f"synthetic-{self.split}-{index:05d}"
