import numpy as np
import pytest
from PIL import Image

from kaseg.core.config import DataConfig
from kaseg.data import build_dataset
from kaseg.data.folder import FolderDataset
from kaseg.data.io import default_palette
from kaseg.core.errors import KasegError


def test_split_lists_classes_and_tensors(folder_dataset):
    train = FolderDataset(folder_dataset, "train")
    val = FolderDataset(folder_dataset, "val")
    assert len(train) == 6 and len(val) == 2
    assert train.class_names == ["background", "road", "car"] and train.palette[1] == (128, 64, 128)
    img, mask = train.raw(0)
    assert img.shape == (24, 32, 3) and mask.shape == (24, 32) and mask[0, 0] == 255
    ds = build_dataset(DataConfig(dataset="folder", root=str(folder_dataset), crop_size=16), "train", True)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    v = build_dataset(DataConfig(dataset="folder", root=str(folder_dataset)), "val", False)
    assert v[0][0].shape == (3, 24, 32)


def test_split_folders_and_fallback(tmp_path):
    root = tmp_path / "d"
    for split, n in (("train", 3), ("val", 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / "images" / split / f"{i}.png")
            Image.new("L", (8, 8)).save(root / "masks" / split / f"{i}.png")
    (root / "classes.json").write_text('{"names": ["a", "b"]}')
    assert len(FolderDataset(root, "train")) == 3 and len(FolderDataset(root, "val")) == 1
    assert FolderDataset(root, "val").palette == default_palette(2)
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    for i in range(20):
        Image.new("RGB", (8, 8)).save(flat / "images" / f"{i:02d}.png")
        Image.new("L", (8, 8)).save(flat / "masks" / f"{i:02d}.png")
    (flat / "classes.yaml").write_text("[a, b]")
    assert len(FolderDataset(flat, "train")) == 18 and len(FolderDataset(flat, "val")) == 2


def test_grayscale_rgba_and_16bit_images_are_read_as_rgb(folder_dataset):
    img_dir = folder_dataset / "images"
    Image.fromarray(np.full((24, 32), 7, np.uint8), "L").save(img_dir / "img0.png")
    (img_dir / "img0.jpg").unlink()
    Image.new("RGBA", (32, 24), (1, 2, 3, 4)).save(img_dir / "img1.png")
    (img_dir / "img1.jpg").unlink()
    Image.fromarray(np.full((24, 32), 1000, np.uint16)).save(img_dir / "img2.png")
    (img_dir / "img2.jpg").unlink()
    ds = FolderDataset(folder_dataset, "train")
    assert ds.raw(0)[0].shape == (24, 32, 3) and ds.raw(0)[0][0, 0].tolist() == [7, 7, 7]
    assert ds.raw(1)[0][0, 0].tolist() == [1, 2, 3]
    assert ds.raw(2)[0][0, 0].tolist() == [255, 255, 255]


def test_bad_inputs_name_the_file(folder_dataset):
    root = folder_dataset
    with pytest.raises(KasegError, match="dataset folder not found"):
        FolderDataset(root / "nope", "train")
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(KasegError, match=r"img1\.jpg: has no mask"):
        FolderDataset(root, "train")
    Image.new("L", (10, 10)).save(root / "masks" / "img1.png")
    ds = FolderDataset(root, "train")
    with pytest.raises(KasegError, match=r"img1\.png: mask is 10x10 but its image is 32x24"):
        ds.raw(1)
    bad = np.zeros((24, 32), np.uint8)
    bad[3, 3], bad[4, 4] = 7, 255
    Image.fromarray(bad, "L").save(root / "masks" / "img2.png")
    with pytest.raises(KasegError, match=r"img2\.png: label values \[7\] are outside 0..2"):
        ds.raw(2)
    (root / "images" / "img3.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(KasegError, match=r"img3\.jpg: unreadable image"):
        ds.raw(3)
    Image.new("RGB", (32, 24)).save(root / "masks" / "img4.png")
    with pytest.raises(KasegError, match=r"img4\.png: mask has mode RGB"):
        ds.raw(4)
    (root / "classes.yaml").unlink()
    with pytest.raises(KasegError, match="no classes file"):
        FolderDataset(root, "train")


def test_split_list_naming_a_missing_image(folder_dataset):
    (folder_dataset / "splits" / "val.txt").write_text("img6\nghost\n")
    with pytest.raises(KasegError, match=r"val\.txt: lists 'ghost'"):
        FolderDataset(folder_dataset, "val")
