"""Pictures of results: colour-coded predictions with a legend, and training curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def colorize(mask: np.ndarray, palette, ignore_color=(255, 255, 255)) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8; ignore (255) and unknown labels get ``ignore_color``."""
    lut = np.tile(np.array(ignore_color, np.uint8), (256, 1))
    lut[: len(palette)] = np.array(palette, np.uint8)
    return lut[mask.astype(np.uint8)]


def prediction_grid(path: str | Path, images: list[np.ndarray], columns: dict[str, list[np.ndarray]],
                    class_names, palette, dpi: int = 100) -> None:
    """One row per image: the input, then one colour-coded mask per named column; a legend."""
    names = ["input", *columns]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(names), figsize=(2.2 * len(names), 2.2 * rows + 0.8),
                             squeeze=False)
    for r, img in enumerate(images):
        axes[r][0].imshow(img)
        for c, name in enumerate(columns, start=1):
            axes[r][c].imshow(colorize(columns[name][r], palette))
        for c, name in enumerate(names):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(name, fontsize=9)
    handles = [Patch(color=np.array(col) / 255, label=n) for n, col in zip(class_names, palette)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def read_history(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a run's history.jsonl."""
    train, val = [], []
    path = Path(run) / "history.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            (val if "val" in rec else train).append(rec)
    return train, val


def training_curves(path: str | Path, runs: dict[str, str | Path], dpi: int = 100) -> None:
    """Every logged loss term (one panel each) and val mIoU over iterations, one line per run."""
    histories = {name: read_history(run) for name, run in runs.items()}
    terms = sorted({k for tr, _ in histories.values() for rec in tr for k in rec
                    if k not in ("iter", "lr", "loss") and not k.endswith("_ratio")})
    panels = [*terms, "val mIoU"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, term in zip(axes[0], panels):
        for idx, (name, (tr, val)) in enumerate(histories.items()):
            if term == "val mIoU":
                pts = [(r["iter"], r["val"]["miou"]) for r in val if "miou" in r["val"]]
            else:
                pts = [(r["iter"], r[term]) for r in tr if term in r]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, label=name, color=f"C{idx % 10}",  # one colour per run everywhere
                        marker="o" if term == "val mIoU" else None, ms=3)
        ax.set_title(term)
        ax.set_xlabel("iteration")
        if term in ("ce", "recon"):
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
