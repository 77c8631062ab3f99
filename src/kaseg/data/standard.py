"""The field's public datasets, read from their standard on-disk layouts, so that ``data.root`` can
point at the folder a user already has (no conversion step).

- ``voc``: Pascal VOC 2012 (``VOCdevkit/VOC2012``), splits ``train`` / ``val`` / ``trainval`` and
  ``trainaug`` (the SBD-augmented 10,582 images, masks in ``SegmentationClassAug``).
- ``cityscapes``: ``leftImg8bit`` + ``gtFine``; labelIds mapped to the 19 trainIds on the fly, or
  pre-converted ``*_labelTrainIds.png`` used as they are.
- ``context`` / ``context60``: Pascal Context in the mmsegmentation layout (``VOC2010`` +
  ``SegmentationClassContext``), 59 classes (0 = background -> ignore) or 60 (background a class).
- ``ade20k``: ``ADEChallengeData2016``, 150 classes, reduce-zero-label (0 -> ignore, k -> k - 1).
- ``camvid``: the SegNet layout (``train/``, ``trainannot/``, ...), 11 classes, 11 -> ignore.

Each layout is described by a :class:`Layout`: how to list ``(image, mask)`` pairs of a split, the
class names and palette, and a lookup table from the file's label values to training ids.
:func:`scan` lists pairs without reading them (``kaseg data check`` reports every defect);
:class:`StandardDataset` reads them, one clear error per bad file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import KasegError
from .base import SegmentationDataset
from .io import IMAGE_EXTS, check_mask_size, default_palette, read_image, read_label_file
from ..core.labels import IGNORE_INDEX

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

# Cityscapes: (name, id, trainId) for every label of the official table (cityscapesScripts
# labels.py); trainId 255 = ignored in training and evaluation. License plate (id -1) is stored
# as 255 in 8-bit labelId files.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
    ("bus", 28, 15), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18), ("license plate", -1, 255),
)
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                      "truck", "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
                      (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
                      (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
                      (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230),
                      (119, 11, 32))

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
                  "car", "pedestrian", "bicyclist")
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192))


def identity_lut(num_classes: int) -> np.ndarray:
    """Values 0..num_classes-1 stay, 255 stays ignore, anything else -> 256 (= invalid, reported)."""
    lut = np.full(256, 256, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def reduce_zero_lut(num_classes: int) -> np.ndarray:
    """Reduce-zero-label (ADE20K, Pascal Context 59): 0 -> ignore, k -> k - 1."""
    lut = np.full(256, 256, dtype=np.int16)
    lut[0] = IGNORE_INDEX
    lut[1 : num_classes + 1] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def cityscapes_lut() -> np.ndarray:
    """labelId -> trainId for every id of the official table (ids outside it are invalid)."""
    lut = np.full(256, 256, dtype=np.int16)
    for _, label_id, train_id in CITYSCAPES_LABELS:
        lut[label_id % 256] = train_id
    return lut


@dataclass
class Pair:
    image: Path
    mask: Path  # may not exist: ``scan`` reports it, :class:`StandardDataset` refuses it
    lut: np.ndarray | None = None  # file value -> training id; None: the layout's default


@dataclass
class Layout:
    """How one public dataset lies on disk."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    lut: np.ndarray
    splits: tuple[str, ...]
    find_root: Callable[[Path], Path]  # the user's folder -> the dataset's own root
    pairs: Callable[[Path, str], list[Pair]]  # (dataset root, split) -> pairs
    notes: str = ""
    context_classes: tuple[int, ...] = field(default_factory=tuple)


def _descend(root: Path, chain: tuple[str, ...]) -> Path:
    """Accept the dataset folder itself or a parent on ``chain`` (e.g. a folder holding
    ``VOCdevkit/VOC2012``): the longest existing path wins."""
    for start in range(len(chain)):
        candidate = root.joinpath(*chain[start:])
        if candidate.is_dir():
            return candidate
    return root


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise KasegError(f"{path}: split list not found")
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            # some lists hold "image_path mask_path"; the name is the first file's stem
            names.append(Path(line.split()[0]).stem)
    return names


# --------------------------------------------------------------------------- Pascal VOC 2012
AUG_LISTS = ("trainaug.txt", "train_aug.txt", "aug.txt")


def _voc_root(root: Path) -> Path:
    return _descend(root, ("VOCdevkit", "VOC2012"))


def _voc_pairs(root: Path, split: str) -> list[Pair]:
    sets = root / "ImageSets" / "Segmentation"
    if split == "trainaug":
        masks = root / "SegmentationClassAug"
        if not masks.is_dir():
            raise KasegError(f"{masks}: not found; 'trainaug' needs the SBD-augmented masks "
                             "(SegmentationClassAug, as in the DeepLab setup)")
        for name in AUG_LISTS:
            if (sets / name).is_file():
                names = _read_list(sets / name)
                break
        else:  # no list: every augmented mask, minus the val images (the usual definition)
            val = set(_read_list(sets / "val.txt")) if (sets / "val.txt").is_file() else set()
            names = sorted(p.stem for p in masks.glob("*.png") if p.stem not in val)
    else:
        masks = root / "SegmentationClass"
        names = _read_list(sets / f"{split}.txt")
    return [Pair(root / "JPEGImages" / f"{n}.jpg", masks / f"{n}.png") for n in names]


# --------------------------------------------------------------------------- Cityscapes
def _cityscapes_root(root: Path) -> Path:
    return _descend(root, ("cityscapes",))


def _cityscapes_pairs(root: Path, split: str) -> list[Pair]:
    images = root / "leftImg8bit" / split
    if not images.is_dir():
        raise KasegError(f"{images}: not found (Cityscapes layout: leftImg8bit/{split}/<city>/)")
    pairs = []
    for img in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        gt = root / "gtFine" / split / img.parent.name
        train_ids = gt / f"{stem}_gtFine_labelTrainIds.png"
        if train_ids.is_file():  # pre-converted (cityscapesScripts createTrainIdLabelImgs)
            pairs.append(Pair(img, train_ids, identity_lut(19)))
        else:
            pairs.append(Pair(img, gt / f"{stem}_gtFine_labelIds.png"))
    return pairs


# --------------------------------------------------------------------------- Pascal Context
def _context_root(root: Path) -> Path:
    return _descend(root, ("VOCdevkit", "VOC2010"))


def _context_pairs(root: Path, split: str) -> list[Pair]:
    names = _read_list(root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    return [Pair(root / "JPEGImages" / f"{n}.jpg", root / "SegmentationClassContext" / f"{n}.png")
            for n in names]


# --------------------------------------------------------------------------- ADE20K
ADE_SPLITS = {"train": "training", "val": "validation"}


def _ade_root(root: Path) -> Path:
    return _descend(root, ("ADEChallengeData2016",))


def _ade_pairs(root: Path, split: str) -> list[Pair]:
    sub = ADE_SPLITS.get(split, split)
    images = root / "images" / sub
    if not images.is_dir():
        raise KasegError(f"{images}: not found (ADE20K layout: images/{{training,validation}}/)")
    return [Pair(p, root / "annotations" / sub / f"{p.stem}.png")
            for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_EXTS]


# --------------------------------------------------------------------------- CamVid
def _camvid_root(root: Path) -> Path:
    return _descend(root, ("CamVid",))


def _camvid_pairs(root: Path, split: str) -> list[Pair]:
    images = root / split
    if not images.is_dir():
        raise KasegError(f"{images}: not found (CamVid SegNet layout: {split}/ + {split}annot/)")
    return [Pair(p, root / f"{split}annot" / p.name)
            for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_EXTS]


def _camvid_lut() -> np.ndarray:
    lut = identity_lut(11)
    lut[11] = IGNORE_INDEX  # "unlabelled"
    return lut


LAYOUTS: dict[str, Layout] = {
    "voc": Layout("voc", VOC_CLASSES, tuple(default_palette(21)), identity_lut(21),
                  ("train", "val", "trainval", "trainaug"), _voc_root, _voc_pairs,
                  "VOCdevkit/VOC2012: JPEGImages, SegmentationClass[Aug], ImageSets/Segmentation"),
    "cityscapes": Layout("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, cityscapes_lut(),
                         ("train", "val", "test"), _cityscapes_root, _cityscapes_pairs,
                         "leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/.../"
                         "*_gtFine_labelIds.png (or *_labelTrainIds.png)"),
    "context": Layout("context", CONTEXT59_CLASSES, tuple(default_palette(60)[1:]),
                      reduce_zero_lut(59), ("train", "val"), _context_root, _context_pairs,
                      "VOCdevkit/VOC2010: JPEGImages, SegmentationClassContext, "
                      "ImageSets/SegmentationContext (59 classes, background ignored)"),
    "context60": Layout("context60", ("background", *CONTEXT59_CLASSES), tuple(default_palette(60)),
                        identity_lut(60), ("train", "val"), _context_root, _context_pairs,
                        "as 'context', with background as class 0 (60 classes)"),
    "ade20k": Layout("ade20k", ADE20K_CLASSES, tuple(default_palette(151)[1:]),
                     reduce_zero_lut(150), ("train", "val"), _ade_root, _ade_pairs,
                     "ADEChallengeData2016: images/{training,validation}, annotations/..."),
    "camvid": Layout("camvid", CAMVID_CLASSES, CAMVID_PALETTE, _camvid_lut(),
                     ("train", "val", "test"), _camvid_root, _camvid_pairs,
                     "CamVid (SegNet): train/, trainannot/, val/, valannot/, test/, testannot/"),
}


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise KasegError(f"unknown dataset '{name}'; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def scan(name: str, root: str | Path, split: str) -> tuple[Path, list[Pair]]:
    """``(dataset root, pairs of split)`` without reading any file."""
    layout = get_layout(name)
    root = Path(root)
    if not root.is_dir():
        raise KasegError(f"{root}: dataset folder not found (set data.root)")
    if split not in layout.splits:
        raise KasegError(f"{name}: unknown split '{split}'; known: {', '.join(layout.splits)}")
    base = layout.find_root(root)
    return base, layout.pairs(base, split)


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """File label values -> training ids through ``lut``; values the layout does not know are an
    error naming the file."""
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise KasegError(f"{path}: label values up to {int(raw.max())} do not fit 8 bits")
        raw = raw.astype(np.uint8)
    out = lut[raw]
    if (out == 256).any():
        bad = np.unique(raw[out == 256])
        raise KasegError(f"{path}: label values {bad[:8].tolist()} are not in this dataset's label "
                         "set")
    return out.astype(np.uint8)


class StandardDataset(SegmentationDataset):
    """A public dataset's split, read from its standard layout (see :data:`LAYOUTS`)."""

    def __init__(self, name: str, root: str | Path, split: str = "train", transform=None):
        layout = get_layout(name)
        self.base, self.pairs = scan(name, root, split)
        if not self.pairs:
            raise KasegError(f"{self.base}: split '{split}' of {name} has no images "
                             f"(expected layout: {layout.notes})")
        for p in self.pairs:
            if not p.image.is_file():
                raise KasegError(f"{p.image}: image not found (listed in split '{split}')")
            if not p.mask.is_file():
                raise KasegError(f"{p.image}: has no mask (expected {p.mask})")
        self.layout, self.split, self.transform = layout, split, transform
        self.class_names, self.palette = list(layout.class_names), list(layout.palette)
        self.context_classes = layout.context_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index].image.stem

    def image(self, index: int) -> np.ndarray:
        return read_image(self.pairs[index].image)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.pairs[index]
        image = read_image(p.image)
        mask = map_labels(read_label_file(p.mask), self.layout.lut if p.lut is None else p.lut,
                          p.mask)
        check_mask_size(p.mask, mask.shape, image.shape)
        return image, mask


