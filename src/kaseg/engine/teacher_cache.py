"""The teacher paid once: its outputs on a fixed pool of augmented views, stored for every run.

In a distillation step the teacher's forward is most of the work, and a comparison recomputes
it on the same images for every seed, tuning seed and budget. A cache draws ``views`` augmented
views of every training image once (:mod:`kaseg.data.views`: their parameters recorded), runs
the teacher on each once, and stores the outputs the runs read (the logits on the teacher's own
grid; the tapped feature map for feature terms) as memory-mapped ``.npy`` arrays, float16 by
default. A run from the cache re-cuts its view from the recorded parameters and takes the
teacher's outputs from disk: its step runs no teacher.

A cache folder holds ``views.npy`` (n, V, 7), one ``ENTRY.npy`` (n, V, ...) per output and
``meta.json``, written last: a cache without it is unfinished and never read. While it is built,
``build.json`` records how far it got, so a killed build resumes where it stopped. ``meta.json``
records what a run must agree with (the teacher's weights, the data and augmentation, the
images' names and sizes, the memory format, the entries): a run that differs is a one-line
error naming what, before anything trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.config import Config, to_dict
from ..core.errors import KasegError
from ..core.files import atomic_write_text
from ..core.runtime import autocast, resolve_device
from ..data.transforms import View
from ..data.views import PoolViews, draw_views
from ..losses.registry import LOSSES, resolve_losses
from ..nets.cost import flop_counter

log = logging.getLogger(__name__)

META, PROGRESS, VIEWS = "meta.json", "build.json", "views.npy"
FORMAT = 1
DTYPES = ("float16", "float32")
# the data keys that decide the views and the images (not where the files are: a moved dataset
# with the same images, names and sizes keeps its cache)
DATA_KEYS = ("dataset", "train_split", "image_size", "train_count", "data_seed", "crop_size",
             "scale_min", "scale_max", "flip", "jitter", "mean", "std", "labeled_count",
             "labeled_fraction")


@dataclass
class CacheOptions:
    """``distill.teacher_cache``: ``views`` per image, the stored ``dtype``, the pool's ``seed``,
    the folder (``path``; ``kaseg compare`` sets it to its shared stage), the ``outputs`` stored
    (None: what the config's terms read) and the teacher's batch while building."""

    views: int = 16
    dtype: str = "float16"
    seed: int = 0
    path: str | None = None
    outputs: list[str] | None = None
    batch_size: int | None = None  # None: train.batch_size (at least 2)


def cache_options(cfg: Config, source: str = "config") -> CacheOptions | None:
    """The config's ``distill.teacher_cache`` (None: no cache); an unknown key or a bad value is
    a one-line error naming it."""
    raw = cfg.distill.teacher_cache
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise KasegError(f"{source}: distill.teacher_cache must be a mapping, e.g. "
                         "{views: 16, dtype: float16}")
    known = {f.name for f in fields(CacheOptions)}
    for key in raw:
        if key not in known:
            raise KasegError(f"{source}: unknown key distill.teacher_cache.{key}; known: "
                             f"{', '.join(sorted(known))}")
    opts = CacheOptions(**raw)
    if isinstance(opts.views, bool) or not isinstance(opts.views, int) or opts.views < 1:
        raise KasegError(f"{source}: distill.teacher_cache.views must be an integer >= 1, got "
                         f"{opts.views!r}")
    if opts.dtype not in DTYPES:
        raise KasegError(f"{source}: distill.teacher_cache.dtype must be one of "
                         f"{', '.join(DTYPES)}, got {opts.dtype!r}")
    return opts


def needed_entries(cfg: Config) -> list[str]:
    """The teacher outputs the config's terms read: ``head_logits`` (the logits on the
    teacher's own grid: always, they are small), ``logits`` (at the input's size) for a logit
    term on ``grid: input``, ``features.TAP`` for every term that reads the tapped map."""
    entries = {"head_logits"}
    for name, (_, options) in resolve_losses(cfg.distill.losses).items():
        if "grid" in LOSSES[name].options:  # a logit term
            entries.add("logits" if options.get("grid") == "input" else "head_logits")
        else:
            entries.add(f"features.{cfg.teacher.tap}")
    return sorted(entries)


def pick(out: dict, entry: str) -> torch.Tensor:
    """The output ``entry`` names in a network's output dict."""
    if entry.startswith("features."):
        return out["features"][entry.split(".", 1)[1]]
    return out[entry]


def teacher_digest(teacher: torch.nn.Module) -> str:
    """A hash of the teacher's weights and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _key(cfg: Config, opts: CacheOptions, teacher, train_set, entries: list[str]) -> dict:
    """What the cache's content depends on; a run must agree with every item."""
    data = to_dict(cfg.data)
    return {"format": FORMAT, "teacher": teacher_digest(teacher), "teacher_name": cfg.teacher.name,
            "data": {k: data[k] for k in DATA_KEYS},
            "views": opts.views, "seed": opts.seed, "dtype": opts.dtype, "entries": entries,
            "channels_last": cfg.train.channels_last,
            "names": [train_set.name(i) for i in range(len(train_set))]}


def _describe(what: str, a, b) -> str:
    if what == "names":
        diff = sorted(set(a) ^ set(b))
        return (f"the training images differ ({len(b)} cached, {len(a)} now; e.g. "
                f"'{diff[0]}')" if diff else "the training images are in another order")
    if what == "data":
        keys = [k for k in a if a.get(k) != b.get(k)]
        return "the data config differs (" + ", ".join(
            f"data.{k}: cached {b.get(k)!r}, now {a.get(k)!r}" for k in keys) + ")"
    return {"teacher": "the teacher's weights differ"}.get(
        what, f"{what} differs (cached {b!r}, now {a!r})")


def _check_key(folder: Path, want: dict, have: dict) -> None:
    """Every item of ``want`` equal to the cache's, its entries among those stored."""
    for what in want:
        if what == "entries":
            missing = [e for e in want[what] if e not in have.get(what, [])]
            if missing:
                raise KasegError(f"{folder}: the teacher cache has no {', '.join(missing)} "
                                 f"(it stores {', '.join(have.get(what, []))}): rebuild it "
                                 "with distill.teacher_cache.outputs listing them")
        elif want[what] != have.get(what):
            raise KasegError(f"{folder}: this teacher cache was built for another run: "
                             f"{_describe(what, want[what], have.get(what))}; rebuild it "
                             "(delete the folder) or point distill.teacher_cache.path elsewhere")


def open_cache(cfg: Config, train_set, teacher, source: str = "distill") -> PoolViews:
    """The training split as the cache's views with the teacher's stored outputs, after checking
    that the cache is finished and was built for this teacher, data, images and memory format,
    with the entries this config's terms read."""
    opts = cache_options(cfg, source)
    if not opts.path:
        raise KasegError(f"{source}: distill.teacher_cache.path is not set: build a cache with "
                         "`kaseg cache-teacher --config X --out DIR` and set it to DIR")
    folder = Path(opts.path)
    if not (folder / META).exists():
        state = "is not finished (resume it: kaseg cache-teacher)" if (
            folder / PROGRESS).exists() else "does not exist"
        raise KasegError(f"{source}: the teacher cache {folder} {state}")
    meta = json.loads((folder / META).read_text())
    _check_key(folder, _key(cfg, opts, teacher, train_set, needed_entries(cfg)), meta)
    outputs = {e: np.load(folder / f"{e}.npy", mmap_mode="r") for e in meta["entries"]}
    return PoolViews(train_set, np.load(folder / VIEWS), outputs, meta["sizes"],
                     f"teacher cache {folder}")


def cache_meta(folder: str | Path) -> dict | None:
    """A finished cache's record (its size, its one-off cost), or None."""
    path = Path(folder) / META
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class _Build:
    """An open build: its arrays (memory-mapped) and how far it got."""

    folder: Path
    views: np.ndarray
    outputs: dict[str, np.ndarray]
    sizes: list
    done: int  # images finished


def build_cache(cfg: Config, teacher, train_set, out: str | Path, *,
                entries: list[str] | None = None, max_gb: float | None = None) -> dict:
    """Build (or resume, or find finished) the cache of ``cfg``'s teacher on ``train_set`` (the
    training split with its augmentation) in ``out``; -> its ``meta.json`` record. Its size is
    printed before anything is written; more than ``max_gb`` GB, or more than the disk has
    free, is a one-line error before writing."""
    opts = cache_options(cfg, "cache-teacher") or CacheOptions()
    folder = Path(out)
    device = resolve_device(cfg.train.device)
    teacher = teacher.to(device).eval()
    entries = sorted(entries or opts.outputs or needed_entries(cfg))
    key = _key(cfg, opts, teacher, train_set, entries)
    if (folder / META).exists():
        meta = json.loads((folder / META).read_text())
        _check_key(folder, key, meta)
        return meta
    shapes, view_flops = _probe(cfg, teacher, entries, device)
    item = np.dtype(opts.dtype).itemsize
    per_view = sum(int(np.prod(s)) for s in shapes.values()) * item
    total = per_view * len(train_set) * opts.views
    print(f"teacher cache: {len(train_set)} images x {opts.views} views x "
          f"{per_view / 1e6:.3g} MB ({', '.join(f'{e} {list(s)}' for e, s in shapes.items())}, "
          f"{opts.dtype}) = {total / 1e9:.3g} GB in {folder}", flush=True)
    if max_gb is not None and total > max_gb * 1e9:
        raise KasegError(f"{folder}: the teacher cache needs {total / 1e9:.3g} GB, more than "
                         f"--max-gb {max_gb:g}: fewer views, float16, or fewer outputs")
    b = _open_build(folder, key, shapes, opts, len(train_set), total)
    t0 = time.perf_counter()
    _fill(b, cfg, teacher, train_set, opts, entries, device)
    meta = dict(key, sizes=b.sizes, shapes={e: list(s) for e, s in shapes.items()},
                bytes=total, images=len(train_set),
                teacher_gflops=view_flops * len(train_set) * opts.views / 1e9,
                build_seconds=time.perf_counter() - t0, device=str(device))
    for a in (b.views, *b.outputs.values()):
        a.flush()
    atomic_write_text(folder / META, json.dumps(meta))  # last: the cache is now readable
    (folder / PROGRESS).unlink(missing_ok=True)
    return meta


def _probe(cfg: Config, teacher, entries: list[str], device) -> tuple[dict, int]:
    """The shape of each entry for one view and the teacher's FLOPs per view (a forward on a
    stand-in batch of two crops)."""
    crop = cfg.data.crop_size
    h, w = (crop, crop) if isinstance(crop, int) else tuple(crop)
    x = _layout(torch.zeros(2, 3, h, w, device=device), cfg)
    counter = flop_counter()
    with torch.no_grad(), autocast(device, cfg.train.amp), counter:
        out = teacher(x)
    try:
        shapes = {e: tuple(pick(out, e).shape[1:]) for e in entries}
    except KeyError as e:
        raise KasegError(f"the teacher {cfg.teacher.name} has no output {e}: "
                         "distill.teacher_cache.outputs names what it stores") from None
    return shapes, counter.get_total_flops() // 2


def _layout(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else x


def _open_build(folder: Path, key: dict, shapes: dict, opts: CacheOptions, n: int,
                total: int) -> _Build:
    """The arrays of a build: those of an unfinished build of the same key (resumed), else new
    ones, after checking the disk has room."""
    progress = folder / PROGRESS
    resume = progress.exists() and json.loads(progress.read_text())["key"] == key
    names = [VIEWS] + [f"{e}.npy" for e in shapes]
    if resume and all((folder / f).exists() for f in names):
        state = json.loads(progress.read_text())
        mode, done, sizes = "r+", state["done"], state["sizes"]
        log.info("resuming the teacher cache %s at image %d of %d", folder, done, n)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if total > free:
            raise KasegError(f"{folder}: the teacher cache needs {total / 1e9:.3g} GB and the "
                             f"disk has {free / 1e9:.3g} GB free: fewer views, float16, or "
                             "another --out")
        mode, done, sizes = "w+", 0, []
        atomic_write_text(progress, json.dumps({"key": key, "done": 0, "sizes": []}))

    def array(name: str, dtype, shape):
        path = folder / name
        if mode == "r+":
            return np.lib.format.open_memmap(path, mode="r+")
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    views = array(VIEWS, np.float64, (n, opts.views, 7))
    outputs = {e: array(f"{e}.npy", np.dtype(opts.dtype), (n, opts.views, *s))
               for e, s in shapes.items()}
    return _Build(folder, views, outputs, sizes, done)


def _fill(b: _Build, cfg: Config, teacher, train_set, opts: CacheOptions, entries: list[str],
          device) -> None:
    """Every image from where the build stopped: its views drawn and cut, the teacher run on
    them (in batches of at least two: a network's output for an image then does not depend on
    its batch companions on the CPU, so a cached run equals a live one bit for bit), the
    outputs written; the progress saved every few seconds (arrays flushed first)."""
    tf, n = train_set.transform, len(train_set)
    batch = max(2, opts.batch_size or cfg.train.batch_size)
    saved = time.perf_counter()
    bar = tqdm(total=n, initial=b.done, desc="teacher cache", unit="image", dynamic_ncols=True)
    try:
        for i in range(b.done, n):
            image, mask = train_set.raw(i)  # read once for all its views
            b.views[i] = draw_views(tf, *mask.shape[:2], opts.views, opts.seed, i)
            if len(b.sizes) == i:
                b.sizes.append(list(mask.shape[:2]))
            imgs = torch.stack([tf.apply(image, mask, View.from_row(row))[0]
                                for row in b.views[i]])
            for s in range(0, opts.views, batch):
                x = imgs[s:s + batch]
                pad = x.shape[0] == 1
                x = torch.cat([x, x]) if pad else x
                with torch.no_grad(), autocast(device, cfg.train.amp):
                    out = teacher(_layout(x.to(device), cfg))
                for e in entries:
                    y = pick(out, e)[:1 if pad else None].float().cpu().numpy()
                    b.outputs[e][i, s:s + y.shape[0]] = y.astype(opts.dtype)
            bar.update(1)
            if time.perf_counter() - saved > 10 or i == n - 1:
                _save_progress(b, i + 1)
                saved = time.perf_counter()
    finally:
        bar.close()


def _save_progress(b: _Build, done: int) -> None:
    for a in (b.views, *b.outputs.values()):
        a.flush()
    state = json.loads((b.folder / PROGRESS).read_text())
    atomic_write_text(b.folder / PROGRESS, json.dumps(dict(state, done=done, sizes=b.sizes)))
