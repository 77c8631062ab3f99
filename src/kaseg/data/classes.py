"""Class files as people write them, and classes that come in left/right pairs.

A folder dataset's ``classes.yaml`` (or ``.yml`` / ``.json``) may be any of::

    names: [background, road, car]        # kaseg's form (optionally palette, flip_pairs)
    classes: [background, road, car]      # the mmsegmentation form
    [background, road, car]               # a plain list
    {0: background, 1: road, 2: car}      # an index -> name mapping (also under names:)

``flip_pairs: [[arm_l, arm_r], [3, 4]]`` (names or indices) lists classes that a horizontal flip
turns into each other: training flips swap their labels, and flip test-time augmentation swaps
the mirrored prediction's channels back. Without it, a flip teaches the network that left and
right are the same thing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..core.errors import KasegError
from .io import default_palette

log = logging.getLogger(__name__)
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


@dataclass
class ClassFile:
    names: list[str]
    palette: list[tuple[int, int, int]]
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    form: str = "names"  # which of the accepted forms was read


def _names_from(value, path: Path) -> list[str] | None:
    """A list of names, or an {index: name} mapping with indices 0..n-1; None: neither."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and value:
        try:
            by_index = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            return None
        if sorted(by_index) != list(range(len(by_index))):
            raise KasegError(f"{path}: class indices must be 0..{len(by_index) - 1} without gaps, "
                             f"got {sorted(by_index)[:8]}")
        return [by_index[i] for i in range(len(by_index))]
    return None


def parse_class_file(data, path: Path) -> ClassFile:
    """Names, palette and flip pairs from a parsed class file (any accepted form)."""
    form, names = None, None
    if isinstance(data, dict) and ("names" in data or "classes" in data):
        key = "names" if "names" in data else "classes"
        names = _names_from(data[key], path)
        form = key + (" mapping" if isinstance(data[key], dict) else "")
    elif isinstance(data, (list, dict)):
        names = _names_from(data, path)
        form = "plain list" if isinstance(data, list) else "index mapping"
        data = {}
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise KasegError(f"{path}: no class names; write 'names: [background, ...]' (or "
                         "'classes: [...]', a plain list, or an {index: name} mapping)")
    palette = data.get("palette") or default_palette(len(names))
    if len(palette) != len(names) or not all(
        isinstance(c, (list, tuple)) and len(c) == 3 for c in palette
    ):
        raise KasegError(f"{path}: 'palette' must hold one [r, g, b] per class ({len(names)})")
    pairs = resolve_flip_pairs(data.get("flip_pairs") or [], names, str(path))
    return ClassFile(names, [tuple(int(v) for v in c) for c in palette], pairs, form)


def read_class_file(root: Path) -> ClassFile:
    for fname in CLASS_FILES:
        path = root / fname
        if path.is_file():
            break
    else:
        raise KasegError(
            f"{root}: no classes file; add {root / 'classes.yaml'} with 'names: [background, ...]'"
        )
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise KasegError(f"{path}: cannot be parsed ({str(e).splitlines()[0]})") from None
    info = parse_class_file(data, path)
    log.info("%s: %d classes (%s form)%s", path, len(info.names), info.form,
             f", flip pairs {info.flip_pairs}" if info.flip_pairs else "")
    return info


def resolve_flip_pairs(pairs, names: list[str], source: str) -> list[tuple[int, int]]:
    """``[[a, b], ...]`` of names or indices -> index pairs, each class in at most one pair."""
    if not isinstance(pairs, list):
        raise KasegError(f"{source}: 'flip_pairs' must be a list of [left, right] pairs")
    out, seen = [], set()
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise KasegError(f"{source}: each flip pair must be [left, right], got {pair!r}")
        idx = []
        for c in pair:
            if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
                idx.append(c)
            elif isinstance(c, str) and c in names:
                idx.append(names.index(c))
            else:
                raise KasegError(f"{source}: flip pair {list(pair)}: '{c}' is not a class "
                                 f"(names or indices 0..{len(names) - 1})")
        if idx[0] == idx[1] or seen & set(idx):
            raise KasegError(f"{source}: flip pair {list(pair)}: a class may appear in one pair, "
                             "with another class")
        seen |= set(idx)
        out.append((idx[0], idx[1]))
    return out


def flip_permutation(num_classes: int, pairs) -> list[int]:
    """``perm[c]``: the class ``c`` becomes in a mirrored image (its partner, else itself)."""
    perm = list(range(num_classes))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def flip_label_lut(num_classes: int, pairs) -> np.ndarray | None:
    """A 256-entry lookup table that swaps the paired labels (255 and unknown values stay);
    None when there is nothing to swap."""
    if not pairs:
        return None
    lut = np.arange(256, dtype=np.int64)
    lut[:num_classes] = flip_permutation(num_classes, pairs)
    return lut


_SIDES = (("left", "right"), ("l", "r"))


def looks_paired(names: list[str]) -> list[tuple[str, str]]:
    """Pairs of class names that differ only by a left/right marker (``arm_l``/``arm_r``,
    ``Left-Leg``/``Right-Leg``, ``leftEye``/``rightEye``): likely flip pairs."""
    lower = {n.lower(): n for n in names}
    found = []
    for n in names:
        tokens = re.split(r"([_\-\s.])", n.lower())
        for a, b in _SIDES:
            for i, tok in enumerate(tokens):
                variants = []
                if tok == a:
                    variants.append(tokens[:i] + [b] + tokens[i + 1:])
                elif a == "left" and tok.startswith("left") and len(tok) > 4:
                    variants.append(tokens[:i] + ["right" + tok[4:]] + tokens[i + 1:])
                for v in variants:
                    other = lower.get("".join(v))
                    if other and other != n and (n, other) not in found:
                        found.append((n, other))
    return found
