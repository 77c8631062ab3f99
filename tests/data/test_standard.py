"""Public datasets in their real layouts: small fake trees with the real file names, no download."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kaseg.core.config import DataConfig
from kaseg.data import build_dataset
from kaseg.data.standard import (ADE20K_CLASSES, CITYSCAPES_LABELS, CONTEXT59_CLASSES, LAYOUTS,
                                 StandardDataset, cityscapes_lut, map_labels)
from kaseg.core.errors import KasegError

from fake_layouts import (COUNTS, MAKERS, NUM_CLASSES, H, W, write_mask, make_ade, make_cityscapes,
                          make_camvid, make_context, make_voc)


@pytest.mark.parametrize("name", list(MAKERS))
def test_samples_per_split_and_classes(tmp_path, name):
    root = MAKERS[name](tmp_path)
    for split, n in COUNTS[name].items():
        ds = StandardDataset(name, root, split)
        assert len(ds) == n, split
        assert ds.num_classes == NUM_CLASSES[name] == len(ds.palette)
        image, mask = ds.raw(0)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert mask.shape == (H, W) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= set(range(ds.num_classes)) | {255}


def test_voc_ignore_and_trainaug(tmp_path):
    root = make_voc(tmp_path)
    ds = StandardDataset("voc", root / "VOCdevkit", "train")  # any parent of VOC2012 works
    _, mask = ds.raw(0)
    assert sorted(np.unique(mask)) == [0, 15, 20, 255]  # the palette PNG's indices, 255 kept
    aug = StandardDataset("voc", root, "trainaug")  # every augmented mask except val's
    assert "2007_000033" not in {aug.name(i) for i in range(len(aug))}
    assert aug.pairs[0].mask.parent.name == "SegmentationClassAug"
    lst = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train_aug.txt"
    lst.write_text("2011_003276\n2011_003279\n")  # a list, when there is one, decides
    assert len(StandardDataset("voc", root, "trainaug")) == 2


def test_cityscapes_every_official_label_id_maps_to_its_train_id(tmp_path):
    lut = cityscapes_lut()
    for name, label_id, train_id in CITYSCAPES_LABELS:
        raw = np.full((1, 1), label_id % 256, dtype=np.uint8)
        assert map_labels(raw, lut, Path("x.png"))[0, 0] == train_id, name
    assert sum(1 for *_, t in CITYSCAPES_LABELS if t != 255) == 19
    root = make_cityscapes(tmp_path)
    ds = StandardDataset("cityscapes", root, "train")
    by_name = {ds.name(i): i for i in range(len(ds))}
    _, mask = ds.raw(by_name["aachen_000000_000019_leftImg8bit"])
    flat = mask.ravel()
    ids = [lab[1] for lab in CITYSCAPES_LABELS]
    for k, (_, _, train_id) in enumerate(CITYSCAPES_LABELS):  # the file cycles through the ids
        assert flat[k] == train_id, ids[k]
    _, pre = ds.raw(by_name["bremen_000000_000019_leftImg8bit"])  # labelTrainIds preferred
    assert sorted(np.unique(pre)) == [18, 255]
    with pytest.raises(KasegError, match=r"values \[34\] are not in"):
        map_labels(np.array([[34]], dtype=np.uint8), lut, Path("bad.png"))


def test_reduce_zero_label_ade20k_and_context(tmp_path):
    make_ade(tmp_path)
    _, mask = StandardDataset("ade20k", tmp_path, "train").raw(0)
    assert sorted(np.unique(mask)) == [0, 149, 255]  # 1 -> 0, 150 -> 149, 0 -> ignore
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    make_context(tmp_path)
    _, m59 = StandardDataset("context", tmp_path, "train").raw(0)
    assert sorted(np.unique(m59)) == [0, 58, 255]
    _, m60 = StandardDataset("context60", tmp_path, "train").raw(0)
    assert sorted(np.unique(m60)) == [0, 1, 59]
    assert len(CONTEXT59_CLASSES) == 59
    bad = tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png"
    write_mask(bad, [151])
    with pytest.raises(KasegError, match=f"{bad}: label values \\[151\\]"):
        StandardDataset("ade20k", tmp_path, "train").raw(1)


def test_camvid_void_is_ignored(tmp_path):
    make_camvid(tmp_path)
    _, mask = StandardDataset("camvid", tmp_path, "test").raw(0)
    assert sorted(np.unique(mask)) == [0, 10, 255]


def test_build_dataset_with_rectangular_crop_and_clear_errors(tmp_path):
    make_cityscapes(tmp_path)
    cfg = DataConfig(dataset="cityscapes", root=str(tmp_path), crop_size=(8, 12), scale_min=1.0,
                     scale_max=1.0)
    image, mask = build_dataset(cfg, "train", train=True)[0]
    assert image.shape == (3, 8, 12) and mask.shape == (8, 12) and mask.dtype == torch.int64
    val = build_dataset(cfg, "val", train=False)
    assert val[0][0].shape == (3, H, W) and val.class_names[0] == "road"
    with pytest.raises(KasegError, match="unknown split 'trainaug'"):
        build_dataset(cfg, "trainaug", train=False)
    with pytest.raises(KasegError, match="data.root must be set for the voc dataset"):
        build_dataset(DataConfig(dataset="voc"), "train", train=False)
    gt = tmp_path / "cityscapes" / "gtFine" / "val" / "frankfurt"
    (gt / "frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(KasegError, match="frankfurt_000000_000294_leftImg8bit.png: has no mask"):
        build_dataset(cfg, "val", train=False)
    assert set(LAYOUTS) == set(MAKERS)
