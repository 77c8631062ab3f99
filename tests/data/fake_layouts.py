"""Fake trees of the public datasets' real layouts (real file names and folders), for the tests."""

from pathlib import Path

import numpy as np
from PIL import Image

from kaseg.data.io import default_palette
from kaseg.data.standard import CITYSCAPES_LABELS

H, W = 12, 16


def write_image(path: Path, seed: int = 0, size=(H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def write_mask(path: Path, values, size=(H, W), palette=False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.asarray(values, dtype=np.uint8), size[0] * size[1]).reshape(size)
    im = Image.fromarray(arr, mode="L")
    if palette:  # VOC masks are palette PNGs
        im = im.convert("P")
        im.putpalette([c for rgb in default_palette(256) for c in rgb])
    im.save(path)


def make_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    train, val = ["2007_000032", "2007_000039", "2008_000002"], ["2007_000033"]
    for i, n in enumerate(train + val):
        write_image(base / "JPEGImages" / f"{n}.jpg", i)
        write_mask(base / "SegmentationClass" / f"{n}.png", [0, 15, 255, 20], palette=True)
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(train) + "\n")
    (sets / "val.txt").write_text("\n".join(val) + "\n")
    (sets / "trainval.txt").write_text("\n".join(train + val) + "\n")
    for i, n in enumerate(train + val + ["2011_003276", "2011_003279"]):  # SBD adds images
        if not (base / "JPEGImages" / f"{n}.jpg").exists():
            write_image(base / "JPEGImages" / f"{n}.jpg", 10 + i)
        write_mask(base / "SegmentationClassAug" / f"{n}.png", [0, 1, 255])
    return root


def make_cityscapes(root: Path) -> Path:
    base = root / "cityscapes"
    ids = [lab[1] % 256 for lab in CITYSCAPES_LABELS]
    for split, city, frames in [("train", "aachen", ["000000_000019", "000001_000019"]),
                                ("val", "frankfurt", ["000000_000294"])]:
        for f in frames:
            stem = f"{city}_{f}"
            write_image(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            write_mask(base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    # a pre-converted one: trainIds are used as they are
    stem = "bremen_000000_000019"
    write_image(base / "leftImg8bit" / "train" / "bremen" / f"{stem}_leftImg8bit.png")
    write_mask(base / "gtFine" / "train" / "bremen" / f"{stem}_gtFine_labelIds.png", [7])
    write_mask(base / "gtFine" / "train" / "bremen" / f"{stem}_gtFine_labelTrainIds.png", [18, 255])
    return root


def make_context(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2010"
    train, val = ["2008_000002", "2008_000003"], ["2008_000009"]
    for i, n in enumerate(train + val):
        write_image(base / "JPEGImages" / f"{n}.jpg", i)
        write_mask(base / "SegmentationClassContext" / f"{n}.png", [0, 1, 59])
    sets = base / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(train) + "\n")
    (sets / "val.txt").write_text("\n".join(val) + "\n")
    return root


def make_ade(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for sub, names in [("training", ["ADE_train_00000001", "ADE_train_00000002"]),
                       ("validation", ["ADE_val_00000001"])]:
        for n in names:
            write_image(base / "images" / sub / f"{n}.jpg")
            write_mask(base / "annotations" / sub / f"{n}.png", [0, 1, 150])
    return root


def make_camvid(root: Path) -> Path:
    base = root / "CamVid"
    for split, names in [("train", ["0001TP_006690", "0001TP_006720"]), ("val", ["0016E5_07959"]),
                         ("test", ["Seq05VD_f00000", "Seq05VD_f00030", "Seq05VD_f00060"])]:
        for n in names:
            write_image(base / split / f"{n}.png")
            write_mask(base / f"{split}annot" / f"{n}.png", [0, 10, 11])
    return root


MAKERS = {"voc": make_voc, "cityscapes": make_cityscapes, "context": make_context,
          "context60": make_context, "ade20k": make_ade, "camvid": make_camvid}
COUNTS = {"voc": {"train": 3, "val": 1, "trainval": 4, "trainaug": 5},
          "cityscapes": {"train": 3, "val": 1},
          "context": {"train": 2, "val": 1}, "context60": {"train": 2, "val": 1},
          "ade20k": {"train": 2, "val": 1}, "camvid": {"train": 2, "val": 1, "test": 3}}
NUM_CLASSES = {"voc": 21, "cityscapes": 19, "context": 59, "context60": 60, "ade20k": 150,
               "camvid": 11}
