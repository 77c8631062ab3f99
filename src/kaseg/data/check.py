"""``kaseg data check ROOT --dataset NAME``: read every file of a dataset once, without training,
and report what would break (or silently spoil) a run: counts per split, images without masks,
unreadable files, image/mask size mismatches, label values outside the class set, and the class
pixel histogram."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.errors import KasegError
from .classes import looks_paired, read_class_file
from .folder import split_images
from .io import check_mask_size, read_image, read_label_file
from .standard import Pair, get_layout, identity_lut, map_labels, scan
from ..core.labels import IGNORE_INDEX


@dataclass
class SplitReport:
    split: str
    count: int = 0
    defects: list[str] = field(default_factory=list)  # one line each, naming the file
    histogram: np.ndarray | None = None  # pixels per training id
    ignored: int = 0  # ignore pixels

    @property
    def ok(self) -> bool:
        return not self.defects


def _folder_pairs(root: Path, split: str) -> list[Pair]:
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise KasegError(f"{root}: a folder dataset needs images/ and masks/")
    images = split_images(root, split)
    return [Pair(p, masks_dir / p.relative_to(images_dir).with_suffix(".png")) for p in images]


def check_split(pairs: list[Pair], lut: np.ndarray, num_classes: int, split: str,
                progress: bool = True) -> SplitReport:
    rep = SplitReport(split, len(pairs), histogram=np.zeros(num_classes, dtype=np.int64))
    if not pairs:
        rep.defects.append(f"split '{split}' is empty")
    for p in tqdm(pairs, desc=f"check {split}", disable=not progress, leave=False):
        if not p.image.is_file():
            rep.defects.append(f"{p.image}: image not found")
            continue
        if not p.mask.is_file():
            rep.defects.append(f"{p.image}: has no mask (expected {p.mask})")
            continue
        try:  # decode every file whole (a truncated one fails here), then its labels and size
            image = read_image(p.image)
            mask = map_labels(read_label_file(p.mask), lut if p.lut is None else p.lut, p.mask)
            check_mask_size(p.mask, mask.shape, image.shape)
        except KasegError as e:
            rep.defects.append(str(e))
            continue
        valid = mask[mask != IGNORE_INDEX]
        rep.histogram += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
        rep.ignored += int(mask.size - valid.size)
    return rep


def class_warnings(name: str, root: str | Path) -> list[str]:
    """What is not a defect but likely spoils training: class names that look like left/right
    pairs in a folder dataset whose classes file gives no ``flip_pairs`` (a training flip, on
    by default, would teach that the two are one class)."""
    if name != "folder":
        return []
    info = read_class_file(Path(root))
    if info.flip_pairs:
        return []
    suspects = looks_paired(info.names)
    if not suspects:
        return []
    # the whole suggestion, every pair: a user who pastes a shortened one still trains the
    # pairs left out flipped wrong
    pairs = ", ".join(f"[{a}, {b}]" for a, b in suspects)
    return [f"classes {pairs} look like left/right pairs ({len(suspects)} in all) but the classes "
            f"file gives no flip_pairs; with data.flip (the default) add "
            f"'flip_pairs: [{pairs}]' to it"]


def check_unlabeled(root: str | Path, progress: bool = True) -> SplitReport:
    """Every image under ``root`` (``data.unlabeled_root``) decoded whole; the unreadable ones
    named (training skips a file whose header is bad and stops on one that breaks later)."""
    from .unlabeled import list_images

    root = Path(root)
    if not root.is_dir():
        return SplitReport("unlabeled", defects=[f"{root}: unlabelled image folder not found"])
    good, bad = list_images(root)
    rep = SplitReport("unlabeled", len(good) + len(bad), defects=list(bad))
    for path in tqdm(good, desc="check unlabeled", disable=not progress, leave=False):
        try:
            read_image(path)
        except KasegError as e:
            rep.defects.append(str(e))
    if not good:
        rep.defects.append(f"{root}: no readable images in this folder or below")
    return rep


def check_dataset(name: str, root: str | Path, splits: list[str] | None = None,
                  progress: bool = True) -> tuple[list[str], list[SplitReport]]:
    """``(class names, one report per split)``; splits default to every split the layout knows
    that is present on disk."""
    root = Path(root)
    if not root.is_dir():
        raise KasegError(f"{root}: dataset folder not found")
    if name == "folder":
        names = read_class_file(root).names
        lut = identity_lut(len(names))
        lister = _folder_pairs
        known = splits or ["train", "val"]
    else:
        layout = get_layout(name)
        names, lut = list(layout.class_names), layout.lut
        lister = None
        known = splits or list(layout.splits)
    reports = []
    for split in known:
        try:
            pairs = lister(root, split) if lister else scan(name, root, split)[1]
        except KasegError as e:
            if splits:  # asked for by name: its absence is a defect
                reports.append(SplitReport(split, defects=[str(e)]))
            continue
        reports.append(check_split(pairs, lut, len(names), split, progress))
    if not reports:
        raise KasegError(f"{root}: no split of {name} found")
    return names, reports


def format_report(name: str, root: str | Path, names: list[str],
                  reports: list[SplitReport]) -> str:
    lines = [f"{name} at {root}"]
    for r in reports:
        status = "ok" if r.ok else f"{len(r.defects)} defect(s)"
        lines.append(f"  {r.split}: {r.count} samples, {status}")
        for d in r.defects[:20]:
            lines.append(f"    - {d}")
        if len(r.defects) > 20:
            lines.append(f"    ... and {len(r.defects) - 20} more")
    total = sum(r.histogram for r in reports if r.histogram is not None)
    if isinstance(total, np.ndarray) and total.sum():
        lines.append("  class pixels (all splits checked):")
        frac = total / total.sum()
        for i, n in enumerate(names):
            lines.append(f"    {i:>3} {n:<24} {int(total[i]):>14} {100 * frac[i]:6.2f}%")
        lines.append(f"    ignore: {sum(r.ignored for r in reports)} pixels")
    return "\n".join(lines)

