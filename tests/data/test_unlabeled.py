"""Few labels and unlabelled images: the subsets, the sources, the validity mask, the checks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaseg.cli import main
from kaseg.core.config import DataConfig
from kaseg.engine.experiment import load_config
from kaseg.data import build_dataset, build_unlabeled
from kaseg.data.synthetic import make_scene
from kaseg.data.unlabeled import UnlabeledImages, labeled_indices
from kaseg.core.errors import KasegError

def test_labeled_count_keeps_the_first_n_of_one_fixed_order():
    a, b = labeled_indices(100, 10, seed=3), labeled_indices(100, 10, seed=3)
    assert a == b and len(a) == 10 == len(set(a))
    assert set(labeled_indices(100, 5, seed=3)) < set(a)  # the first 5 are among the first 10
    assert labeled_indices(100, 10, seed=4) != a  # the data seed chooses the subset
    assert len(labeled_indices(10, fraction=0.25)) == 3  # ceil(2.5)
    with pytest.raises(KasegError, match="only 10 samples"):
        labeled_indices(10, 11)
    cfg = DataConfig(image_size=32, crop_size=32, train_count=40, labeled_count=6, data_seed=2)
    kept = build_dataset(cfg, "train", train=True)
    assert len(kept) == 6
    chosen = labeled_indices(40, 6, seed=2)
    for i, index in enumerate(chosen):  # exactly those scenes, with their masks
        image, mask = kept.raw(i)
        ref_image, ref_mask = make_scene(32, 2, "train", index)
        assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
    assert len(build_dataset(cfg, "val", train=False)) == cfg.val_count  # val untouched

def test_unlabelled_split_is_the_rest_and_extra_scenes_are_new():
    cfg = DataConfig(image_size=32, crop_size=32, train_count=12, labeled_count=5,
                     unlabeled_split="train", scale_min=1.0, scale_max=1.0, jitter=0.0, flip=False)
    labeled = build_dataset(cfg, "train", train=True)
    rest = build_unlabeled(cfg, labeled)
    assert len(rest) == 7
    assert sorted(labeled.indices + rest.dataset.indices) == list(range(12))
    image, valid = rest[0]
    assert image.shape == (3, 32, 32) and valid.unique().tolist() == [0]  # no label is read
    extra = build_unlabeled(DataConfig(image_size=32, crop_size=32, unlabeled_count=3), labeled)
    train_images = [make_scene(32, 0, "train", i)[0] for i in range(3)]
    assert all(not np.array_equal(extra.image(i), train_images[i]) for i in range(3))

def test_padding_is_marked_invalid_in_unlabelled_samples(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "a.png")
    cfg = DataConfig(crop_size=40, scale_min=1.0, scale_max=1.0, flip=False, jitter=0.0,
                     unlabeled_root=str(tmp_path))
    ds = build_unlabeled(cfg, build_dataset(DataConfig(image_size=16), "val", train=False))
    image, valid = ds[0]
    assert image.shape == (3, 40, 40)
    assert (valid[:20, :30] == 0).all() and (valid[20:] == 255).all() and (valid[:, 30:] == 255).all()

def test_unlabelled_folder_is_recursive_and_bad_files_are_named(tmp_path, caplog):
    (tmp_path / "cam1" / "day").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cam1" / "day" / "x.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "y.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    ds = UnlabeledImages(tmp_path, ["a", "b"], [(0, 0, 0), (1, 1, 1)])
    assert [ds.name(i) for i in range(len(ds))] == ["cam1/day/x", "y"]
    assert ds.image(1).shape == (8, 8, 3)  # grey read as RGB
    assert len(ds.unreadable) == 1 and "broken.png: unreadable image" in ds.unreadable[0]
    assert "broken.png" in caplog.text and "skipped" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KasegError, match=f"{empty}: no readable images"):
        UnlabeledImages(empty, ["a"], [(0, 0, 0)])
    with pytest.raises(KasegError, match="not found"):
        UnlabeledImages(tmp_path / "missing", ["a"], [(0, 0, 0)])

@pytest.mark.parametrize("over,match", [
    (["data.labeled_count=4", "data.labeled_fraction=0.5"], "not both"),
    (["data.unlabeled_count=4", "data.unlabeled_split=train"], "one source"),
    (["distill.pseudo_labels=true"], "needs unlabelled images"),
    (["data.unlabeled_count=4", "distill.pseudo_threshold=1.5"], "pseudo_threshold"),
    (["data.dataset=folder", "data.root=x", "data.unlabeled_count=4"], "unlabeled_root"),
])
def test_unlabelled_settings_are_checked_when_read(over, match):
    with pytest.raises(KasegError, match=match):
        load_config(None, over)


def test_data_check_counts_and_reads_the_unlabelled_images(tmp_path, folder_dataset, capsys):
    pictures = tmp_path / "pictures"
    (pictures / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(pictures / name)
    assert main(["data", "check", str(folder_dataset), "--dataset", "folder", "--quiet",
                 "--unlabeled", str(pictures)]) == 0
    assert "unlabeled: 2 samples, ok" in capsys.readouterr().out
    good = (pictures / "a.png").read_bytes()
    (pictures / "sub" / "c.png").write_bytes(good[: len(good) // 2])  # header fine, data cut
    (pictures / "d.png").write_bytes(b"garbage")
    assert main(["data", "check", str(folder_dataset), "--dataset", "folder", "--quiet",
                 "--unlabeled", str(pictures)]) == 1
    out = capsys.readouterr().out
    assert "unlabeled: 4 samples, 2 defect(s)" in out
    assert f"{pictures / 'd.png'}: unreadable image" in out
    assert f"{pictures / 'sub' / 'c.png'}: unreadable image" in out
