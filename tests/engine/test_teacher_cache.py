import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from kaseg.core.errors import KasegError
from kaseg.data.views import PoolViews
from kaseg.engine import teacher_cache as tc
from kaseg.engine.experiment import load_config
from kaseg.engine.stages import cache_teacher, distill, fit_distillation, prepare_distill
from kaseg.engine.supervised import train_segmenter
from kaseg.nets.checkpoint import read_weights


def _cfg(root, teacher=None, cache=None, *extra):
    over = [f"data.root={root}", "data.dataset=folder", "data.crop_size=16", "data.scale_min=0.75",
            "data.scale_max=1.25", "train.batch_size=2", "train.iters=6", "train.val_every=6",
            "train.log_every=3", "train.device=cpu", "train.lr=0.05",
            "distill.losses={kd: {temperature: 2.0}, fitnet: {}}", *extra]
    if teacher:
        over.append(f"teacher.weights={teacher}")
    if cache:
        over.append(f"distill.teacher_cache={json.dumps(cache)}")
    return load_config(None, over)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, module_folder_dataset):
    """A tiny teacher trained a few steps on the folder dataset the test module writes."""
    base = tmp_path_factory.mktemp("cache")
    root = module_folder_dataset
    cfg = _cfg(root, None, None, "model.name=tiny-teacher", "train.iters=3", "train.val_every=3")
    train_segmenter(cfg, base / "teacher")
    return root, base / "teacher"


def _student(run):
    return read_weights(run / "last")[0] if (run / "last").is_dir() else \
        read_weights(run / "last.safetensors")[0]


def test_a_run_from_a_float32_cache_equals_the_live_teacher_on_the_same_views_bit_for_bit(
        teacher, tmp_path):
    root, t = teacher
    cache = {"views": 3, "dtype": "float32", "path": str(tmp_path / "cache")}
    meta = cache_teacher(_cfg(root, t, cache), tmp_path / "cache")
    assert meta["entries"] == ["features.pre_logits", "head_logits"]
    assert meta["images"] == 6 and meta["views"] == 3
    cached = distill(_cfg(root, t, cache), tmp_path / "cached")
    # the live teacher on the very views the cache recorded: the same pool, no stored outputs
    live_cfg = _cfg(root, t)
    p = prepare_distill(live_cfg, tmp_path / "live")
    views = np.load(tmp_path / "cache" / "views.npy")
    pool = PoolViews(p.train_set, views)
    live = fit_distillation(p.task, pool, p.val_set, p.folder, train=live_cfg.train,
                            seed=live_cfg.seed, record={"live": True})
    a, b = _student(tmp_path / "cached"), _student(tmp_path / "live")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cached["best_miou"] == live["best_miou"]
    cost = json.loads((tmp_path / "cached" / "cost.json").read_text())
    # the cached step runs no teacher: its FLOPs are the live step's less the teacher's forward
    assert cost["teacher_gflops_per_iter"] > cost["train_gflops_per_iter"] > 0
    assert cost["teacher_cache"] == str(tmp_path / "cache")


def test_a_float16_cache_stores_the_teacher_within_float16_rounding(teacher, tmp_path):
    root, t = teacher
    half = cache_teacher(_cfg(root, t, {"views": 2}), tmp_path / "h")
    full = cache_teacher(_cfg(root, t, {"views": 2, "dtype": "float32"}), tmp_path / "f")
    assert half["dtype"] == "float16" and half["bytes"] * 2 == full["bytes"]
    for e in half["entries"]:
        h = np.load(tmp_path / "h" / f"{e}.npy").astype(np.float64)
        f = np.load(tmp_path / "f" / f"{e}.npy").astype(np.float64)
        # float16 keeps 11 significant bits: relative rounding at most 2^-11
        assert np.all(np.abs(h - f) <= 2.0 ** -11 * np.abs(f) + 1e-7)
        assert not np.array_equal(h, f)


def test_a_killed_build_resumes_to_the_same_cache_and_is_never_read_half_written(
        teacher, tmp_path, monkeypatch):
    root, t = teacher
    cfg = _cfg(root, t, {"views": 2, "dtype": "float32", "path": str(tmp_path / "k")})
    whole = cache_teacher(cfg, tmp_path / "whole")
    real = tc._save_progress
    calls = []

    def killed(b, done):
        real(b, done)
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(tc, "_save_progress", killed)
    monkeypatch.setattr(tc.time, "perf_counter", iter(range(0, 10**6, 100)).__next__)
    with pytest.raises(KeyboardInterrupt):
        cache_teacher(cfg, tmp_path / "k")
    assert not (tmp_path / "k" / tc.META).exists()
    with pytest.raises(KasegError, match="is not finished"):
        prepare_distill(cfg, tmp_path / "run")
    monkeypatch.setattr(tc, "_save_progress", real)
    resumed = cache_teacher(cfg, tmp_path / "k")
    assert calls[-1] == 3 and resumed["images"] == 6
    for name in ["views.npy"] + [f"{e}.npy" for e in whole["entries"]]:
        assert np.array_equal(np.load(tmp_path / "k" / name), np.load(tmp_path / "whole" / name))


def test_a_run_whose_teacher_data_images_or_outputs_differ_is_refused_naming_what(
        teacher, tmp_path):
    root, t = teacher
    path = str(tmp_path / "c")
    cache_teacher(_cfg(root, t, {"views": 2, "path": path}), path)
    ok = _cfg(root, t, {"views": 2, "path": path})
    prepare_distill(ok, tmp_path / "fine")  # the same run: accepted
    cases = [
        (_cfg(root, t, {"views": 2, "path": path}, "data.jitter=0.5"), "data.jitter"),
        (_cfg(root, t, {"views": 4, "path": path}), "views differs"),
        (_cfg(_copy(root, tmp_path / "fewer", drop="img5"), t, {"views": 2, "path": path}),
         "training images differ"),
        (_cfg(root, t, {"views": 2, "path": path},
              "distill.losses={kd: {grid: input}}"), "has no logits"),
    ]
    for cfg, what in cases:
        with pytest.raises(KasegError, match=what):
            prepare_distill(cfg, tmp_path / "bad")
    # an image of another size than the one its views were drawn for: named when it is read
    resized = _copy(root, tmp_path / "resized", resize="img1")
    p = prepare_distill(_cfg(resized, t, {"views": 2, "path": path}), tmp_path / "bad")
    with pytest.raises(KasegError, match="image 'img1' is 20 x 30, its views were drawn for 24"):
        p.train_set[1]
    other = tmp_path / "other-teacher"
    train_segmenter(_cfg(root, None, None, "model.name=tiny-teacher", "train.iters=1",
                         "train.val_every=1", "seed=5"), other)
    with pytest.raises(KasegError, match="teacher's weights differ"):
        prepare_distill(_cfg(root, other, {"views": 2, "path": path}), tmp_path / "bad")


def test_a_cache_larger_than_max_gb_or_the_disk_is_refused_before_writing(
        teacher, tmp_path, monkeypatch):
    root, t = teacher
    cfg = _cfg(root, t, {"views": 2})
    with pytest.raises(KasegError, match="more than --max-gb"):
        cache_teacher(cfg, tmp_path / "big", max_gb=1e-6)
    monkeypatch.setattr(tc.shutil, "disk_usage", lambda p: replace_free(0))
    with pytest.raises(KasegError, match="free"):
        cache_teacher(cfg, tmp_path / "full")
    assert not any((tmp_path / "full").glob("*.npy"))
    with pytest.raises(KasegError, match="teacher_cache.view"):
        _cfg(root, t, {"view": 2})
    with pytest.raises(KasegError, match="unlabelled"):
        cache_teacher(_cfg(root, t, {"views": 2}, "data.unlabeled_split=val"),
                      tmp_path / "u")


def _copy(root, to, drop=None, resize=None):
    """The dataset copied to ``to``, without the training image ``drop`` or with ``resize``
    shrunk to 20 x 30."""
    import shutil

    from PIL import Image

    shutil.copytree(root, to)
    if drop:
        names = (to / "splits" / "train.txt").read_text().split()
        (to / "splits" / "train.txt").write_text("\n".join(n for n in names if n != drop))
    if resize:
        for sub, ext in (("images", "jpg"), ("masks", "png")):
            path = to / sub / f"{resize}.{ext}"
            Image.open(path).resize((30, 20), Image.NEAREST).save(path)
    return to


def replace_free(free):
    import collections

    return collections.namedtuple("usage", "total used free")(10**12, 0, free)
