"""Pictures of results: colour-coded predictions with a legend, and training curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

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
                    class_names, palette, dpi: int = 100,
                    row_labels: list[str] | None = None) -> None:
    """One row per image: the input, then one colour-coded mask per named column; a legend.
    ``row_labels``: what each row shows (e.g. which validation image), beside its input."""
    names = ["input", *columns]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(names), figsize=(2.2 * len(names), 2.2 * rows + 0.8),
                             squeeze=False)
    for r, img in enumerate(images):
        axes[r][0].imshow(img)
        if row_labels:
            axes[r][0].set_ylabel(row_labels[r], fontsize=8)
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


def spread_indices(n: int, count: int) -> list[int]:
    """``count`` indices evenly spaced over ``0 .. n-1``, first and last included. Why: a
    folder of ordered images (video frames, slices of a scan) shows one region in its first few;
    images spread over the set show what the set holds."""
    count = min(count, n)
    if count <= 1:
        return list(range(count))
    return [round(i * (n - 1) / (count - 1)) for i in range(count)]


def read_history(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a run's history.jsonl."""
    train, val = [], []
    path = Path(run) / "history.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            (val if "val" in rec else train).append(rec)
    return train, val


def _plot_runs(ax, histories: dict, term: str, colours: dict, style: str = "-") -> None:
    """One line per run of ``term`` (a logged loss, or ``val mIoU``)."""
    for name, (tr, val) in histories.items():
        if term == "val mIoU":
            pts = [(r["iter"], r["val"]["miou"]) for r in val if "miou" in r["val"]]
        else:
            pts = [(r["iter"], r[term]) for r in tr if term in r]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, style, label=name, color=colours[name],
                    marker="o" if term == "val mIoU" else None, ms=3)


def training_curves(path: str | Path, runs: dict[str, str | Path], dpi: int = 100,
                    cols: int = 3, shared: dict[str, str | Path] | None = None) -> None:
    """Every logged loss term of the arms (one panel each, ``cols`` a row) and their val mIoU
    over iterations, one line per run; the shared stages (teacher, autoencoder, start: other
    schedules) in a row of their own above, dashed. One legend names every line."""
    shared = shared or {}
    arms = {name: read_history(run) for name, run in runs.items()}
    stages = {name: read_history(run) for name, run in shared.items()}
    colours = {name: f"C{i % 10}" for i, name in enumerate([*arms, *stages])}
    terms = sorted({k for tr, _ in arms.values() for rec in tr for k in rec
                    if k not in ("iter", "lr", "loss", "skipped") and not k.endswith("_ratio")})
    panels = [*terms, "val mIoU"]
    cols = min(cols, len(panels))
    top = 1 if stages else 0
    rows = top + -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax in axes.flatten():
        ax.axis("off")
    if stages:
        for ax, (term, title) in zip(axes[0], [("loss", "shared stages: training loss"),
                                                ("val mIoU", "shared stages: val mIoU")]):
            ax.axis("on")
            _plot_runs(ax, stages, term, colours, "--")
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.set_yscale("log" if term == "loss" else "linear")
    for ax, term in zip(axes[top:].flatten(), panels):
        ax.axis("on")
        _plot_runs(ax, arms, term, colours)
        ax.set_title(term if term == "val mIoU" else f"arms: {term}")
        ax.set_xlabel("iteration")
        if term in ("ce", "recon"):
            ax.set_yscale("log")
    handles = [plt.Line2D([], [], color=colours[n], ls="--" if n in stages else "-", label=n)
               for n in [*stages, *arms]]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (3.2 * rows + 0.6) + 0.04, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


TARGET_GAIN = 2.5  # He et al.'s gain on Cityscapes test, the dashed line of the gain plots


def gain_range(rows: list[dict], controls=frozenset(), wide: float = 4.0,
               stretch: float = 3.0) -> tuple[float, float]:
    """The x range of a gain panel: 0, the +2.5 line, and the arms' means and 95% intervals.
    Controls (which measure something else) do not count. An interval wider than ``wide`` x the
    median width counts, with its mean, only while the range stays within ``stretch`` x what
    the other arms span: a real but noisy arm is drawn whole, an outlier is not allowed to
    squash every other arm against 0. What falls outside is marked at the edge with its value."""
    arms = [r["diff"] for r in rows if "diff" in r and r["arm"] not in controls]
    widths = sorted(d["high"] - d["low"] for d in arms if d["low"] == d["low"])
    limit = wide * widths[len(widths) // 2] if widths else math.inf
    xs, noisy = [0.0, TARGET_GAIN], []
    for d in arms:
        if d["low"] != d["low"]:
            xs.append(d["mean"])
        elif d["high"] - d["low"] <= limit:
            xs += [d["mean"], d["low"], d["high"]]
        else:
            noisy.append(d)
    lo, hi = min(xs), max(xs)
    span = stretch * (hi - lo)
    for d in sorted(noisy, key=lambda d: d["high"] - d["low"]):
        if max(hi, d["high"]) - min(lo, d["low"]) <= span:
            lo, hi = min(lo, d["low"]), max(hi, d["high"])
    pad = 0.08 * (hi - lo)
    return lo - pad, hi + pad


def _at_edge(ax, d: dict, y: float, xlim: tuple[float, float], color: str) -> str:
    """Mark a gain that runs beyond the axis: an arrow head at each edge it crosses, its value
    written inside, by the edge its mean is nearer."""
    ok = d["low"] == d["low"]
    text = f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" if ok else f"{d['mean']:+.1f}"
    lo, hi = (d["low"], d["high"]) if ok else (d["mean"], d["mean"])
    for crosses, x, head in ((lo < xlim[0], xlim[0], "<"), (hi > xlim[1], xlim[1], ">")):
        if crosses:
            ax.plot([x], [y], head, color=color, clip_on=False)
    right = d["mean"] > (xlim[0] + xlim[1]) / 2
    ax.annotate(text, (xlim[1] if right else xlim[0], y), xytext=(-6 if right else 6, 5),
                textcoords="offset points", ha="right" if right else "left", fontsize=7,
                color=color)
    return text


def paired_gain_plot(path: str | Path, regimes: dict[str, list[dict]], labels: dict[str, str],
                     dpi: int = 100, cols: int = 2, controls=frozenset()) -> dict:
    """One panel per regime: each arm's paired difference to the CE-only student (mean and 95%
    CI, mIoU points) as a horizontal error bar, with 0 and the +2.5 target marked. The axis is
    the arms' (:func:`gain_range`): a control or an outlier beyond it is drawn to the edge and
    its value written there. -> ``{regime: {"xlim": (lo, hi), "edge": {arm: text}}}``."""
    names = list(regimes)
    cols = max(1, min(cols, len(names)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8.5 * cols, 0.6 + 0.42 * max(
        (len(r) for r in regimes.values()), default=1) * rows + 1.4 * rows), squeeze=False)
    flat = axes.flatten()
    for ax in flat[len(names):]:
        ax.axis("off")
    drawn = {}
    for ax, name in zip(flat, names):
        arms = [r for r in regimes[name] if "diff" in r]
        lo_x, hi_x = gain_range(arms, controls)
        edge = {}
        y = np.arange(len(arms))[::-1]
        for yi, r in zip(y, arms):
            d = r["diff"]
            lo, hi = d["low"], d["high"]
            ok = lo == lo  # NaN for a single seed
            color = "C2" if ok and lo > 0 else ("C3" if ok and hi < 0 else "C0")
            ax.errorbar(d["mean"], yi, xerr=[[d["mean"] - lo], [hi - d["mean"]]] if ok else None,
                        fmt="o", color=color, capsize=3)
            if (ok and (lo < lo_x or hi > hi_x)) or not lo_x <= d["mean"] <= hi_x:
                edge[r["arm"]] = _at_edge(ax, d, yi, (lo_x, hi_x), color)
        ax.set_xlim(lo_x, hi_x)
        ax.axvline(0.0, color="0.4", lw=1)
        ax.axvline(TARGET_GAIN, color="C2", lw=1, ls="--")
        ax.set_ylim(-0.7, len(arms) - 0.3)
        ax.set_yticks(y)
        ax.set_yticklabels([labels.get(r["arm"], r["arm"]) for r in arms], fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("paired Δ mIoU vs CE only (points, 95% CI); dashed: +2.5, the paper's "
                      "gain on Cityscapes" + ("\nbeyond the axis: drawn at the edge, its value "
                                              "written there" if edge else ""), fontsize=9)
        drawn[name] = {"xlim": (lo_x, hi_x), "edge": edge}
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # every label inside the picture
    plt.close(fig)
    return drawn


def schedule_plot(path: str | Path, ladders: dict[str, dict[int, list[dict]]],
                  labels: dict[str, str], dpi: int = 100) -> None:
    """One panel per schedule ladder: each arm's paired difference to the CE-only student (mean
    and 95% CI, mIoU points) against the fine-tuning iterations (log scale), so whether a gain
    grows with training, and which arm grows faster, is read at a glance."""
    fig, axes = plt.subplots(1, len(ladders), figsize=(6.0 * len(ladders), 4.2), squeeze=False)
    for ax, (name, lengths) in zip(axes[0], ladders.items()):
        iters = sorted(lengths)
        arms = list(dict.fromkeys(r["arm"] for i in iters for r in lengths[i] if "diff" in r))
        for k, arm in enumerate(arms):
            pts = [(i, r["diff"]) for i in iters for r in lengths[i]
                   if r["arm"] == arm and "diff" in r]
            # arms side by side at each length (a small shift on the log axis), not on top
            xs = [i * 1.06 ** (k - (len(arms) - 1) / 2) for i, _ in pts]
            means = [d["mean"] for _, d in pts]
            err = [[d["mean"] - d["low"] if d["low"] == d["low"] else 0 for _, d in pts],
                   [d["high"] - d["mean"] if d["high"] == d["high"] else 0 for _, d in pts]]
            ax.errorbar(xs, means, yerr=err, fmt="o-", capsize=3, color=f"C{k}",
                        label=labels.get(arm, arm))
            alone = [(x, m) for x, m, (_, d) in zip(xs, means, pts) if d["n"] < 2]
            if alone:  # a single seed: no interval, drawn hollow
                ax.plot(*zip(*alone), "o", color="white", markeredgecolor=f"C{k}", zorder=3)
        if any(d["n"] < 2 for i in iters for r in lengths[i] if "diff" in r for d in [r["diff"]]):
            ax.text(0.99, 0.01, "hollow: one seed, no interval yet", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.3")
        ax.axhline(0.0, color="0.4", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(iters)
        ax.set_xticklabels([str(i) for i in iters])
        ax.minorticks_off()
        ax.set_xlabel("fine-tuning iterations (log scale)")
        ax.set_ylabel("paired Δ mIoU vs CE only (points, 95% CI)")
        ax.set_title(f"ladder: {name}", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def upper_envelope(points: list[tuple[float, float]],
                   same: float = 0.02) -> list[tuple[float, float]]:
    """The best result reachable at each cost: sorted by cost, the points that no other point
    of at most the same cost matches or beats. Costs within ``same`` (relative) of each other
    are one cost: arms at one budget differ in FLOPs by a term's few operations, and the
    envelope should rise to the best of them, not zigzag through each."""
    out = []
    for cost, mean in sorted(set(points)):  # a point given twice is one point
        rivals = [m for c, m in points if c <= cost * (1 + same) and (c, m) != (cost, mean)]
        if all(mean > m for m in rivals):
            out.append((cost, mean))
    return out


def _mean_range(ax, means: list[float], bounds: list[float]) -> bool:
    """The y axis scaled to the means (a two-seed interval can be ten times wider than the
    spread of the means, and would flatten every line); -> whether an interval is cut."""
    if not means:
        return False
    lo, hi = min(means), max(means)
    pad = max(1.0, 0.6 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    return any(b < lo - pad or b > hi + pad for b in bounds)


def frontier_plot(path: str | Path, panels: dict[str, dict[str, list[tuple]]],
                  dpi: int = 100) -> dict[str, list[tuple[float, float]]]:
    """One panel per cost accounting: each line's points ``(cost, mean, low, high)`` (mIoU and
    its 95% CI against training cost, log axis), joined in order of cost, and the upper
    envelope of all of them dashed. -> each panel's envelope."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    drawn = {}
    for ax, (title, lines) in zip(axes[0], panels.items()):
        everything = []
        for k, (name, pts) in enumerate(lines.items()):
            pts = sorted(pts)
            xs, means = [p[0] for p in pts], [p[1] for p in pts]
            err = [[m - lo if lo == lo else 0 for _, m, lo, _ in pts],
                   [hi - m if hi == hi else 0 for _, m, _, hi in pts]]
            ax.errorbar(xs, means, yerr=err, fmt="o-", capsize=3, color=f"C{k % 10}",
                        label=name, lw=1.2, ms=4)
            everything += list(zip(xs, means))
        env = upper_envelope(everything)
        if env:
            ax.plot(*zip(*env), ls="--", color="0.1", lw=2.2, alpha=0.45, zorder=0,
                    label="upper envelope (best at each cost)")
        cut = _mean_range(ax, [m for _, m in everything],
                          [v for pts in lines.values() for p in pts for v in p[2:] if v == v])
        if cut:
            ax.text(0.01, 0.01, "intervals beyond the axis are cut at it", fontsize=7,
                    color="0.3", transform=ax.transAxes, va="bottom")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        ax.set_xlabel(title + " (log scale)", fontsize=9)
        ax.set_ylabel("mIoU % (mean, 95% CI over paired seeds)", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")  # costlier runs sit right and high
        drawn[title] = env
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return drawn
