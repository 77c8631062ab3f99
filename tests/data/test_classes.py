"""Class files in the forms people write, and left/right class pairs under flips."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaseg.cli import main
from kaseg.core.config import DataConfig
from kaseg.data import build_dataset
from kaseg.data.classes import (flip_label_lut, flip_permutation, looks_paired,
                                parse_class_file, read_class_file)
from kaseg.data.transforms import random_flip
from kaseg.core.errors import KasegError
from kaseg.nets.inference import predict

P = Path("classes.yaml")


@pytest.mark.parametrize("data,form", [
    ({"names": ["bg", "road", "car"]}, "names"),
    ({"classes": ["bg", "road", "car"]}, "classes"),
    (["bg", "road", "car"], "plain list"),
    ({0: "bg", 1: "road", 2: "car"}, "index mapping"),
    ({"2": "car", "0": "bg", "1": "road"}, "index mapping"),  # JSON keys are strings
    ({"names": {0: "bg", 1: "road", 2: "car"}}, "names mapping"),
])
def test_every_common_class_file_form_reads_the_same_names(data, form):
    info = parse_class_file(data, P)
    assert info.names == ["bg", "road", "car"] and info.form == form
    assert len(info.palette) == 3 and info.flip_pairs == []


def test_bad_class_files_name_the_problem():
    with pytest.raises(KasegError, match="0..2 without gaps"):
        parse_class_file({0: "a", 1: "b", 3: "c"}, P)
    with pytest.raises(KasegError, match="no class names"):
        parse_class_file({"labels": ["a"]}, P)
    with pytest.raises(KasegError, match="'arm' is not a class"):
        parse_class_file({"names": ["bg", "arm_l", "arm_r"], "flip_pairs": [["arm", "arm_r"]]}, P)
    with pytest.raises(KasegError, match="one pair"):
        parse_class_file({"names": ["bg", "a", "b"], "flip_pairs": [["a", "b"], [1, 2]]}, P)


def test_flip_pairs_by_name_or_index_and_the_permutation():
    info = parse_class_file({"names": ["bg", "arm_l", "arm_r", "leg_l", "leg_r"],
                             "flip_pairs": [["arm_l", "arm_r"], [4, 3]]}, P)
    assert info.flip_pairs == [(1, 2), (4, 3)]
    assert flip_permutation(5, info.flip_pairs) == [0, 2, 1, 4, 3]
    assert flip_label_lut(5, []) is None


def test_a_flipped_mask_has_its_pairs_swapped_exactly():
    mask = torch.tensor([[0, 1, 2, 3, 255]])
    img = torch.arange(5.0).view(1, 1, 5).expand(3, 1, 5)
    swap = torch.from_numpy(flip_label_lut(4, [(1, 2)]))
    out_img, out = random_flip(img, mask, p=1.0, swap=swap)
    assert out.tolist() == [[255, 3, 1, 2, 0]]  # mirrored, then 1 <-> 2; ignore stays
    assert out_img[0, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]
    _, kept = random_flip(img, mask, p=0.0, swap=swap)
    assert kept.tolist() == mask.tolist()  # no flip: no swap


def _paired_folder(root: Path, flip_pairs: bool) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((8, 10), np.uint8)
    mask[:, :5], mask[:, 5:] = 1, 2  # arm_l on the left, arm_r on the right
    ramp = np.broadcast_to((np.arange(10) * 20).astype(np.uint8)[None, :, None], (8, 10, 3))
    for name in ("a", "b"):  # the image brightens to the right: a mirror shows
        Image.fromarray(np.ascontiguousarray(ramp)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "train.txt").write_text("a\n")
    (root / "val.txt").write_text("b\n")
    text = "names: [background, arm_l, arm_r]\n"
    if flip_pairs:
        text += "flip_pairs: [[arm_l, arm_r]]\n"
    (root / "classes.yaml").write_text(text)
    return root


def test_training_flips_of_a_folder_dataset_keep_left_on_the_left(tmp_path):
    root = _paired_folder(tmp_path / "ds", flip_pairs=True)
    cfg = DataConfig(dataset="folder", root=str(root), crop_size=[8, 10], scale_min=1.0,
                     scale_max=1.0, jitter=0.0, flip=True)
    ds = build_dataset(cfg, "train", train=True)
    _, original = ds.raw(0)
    mirrored = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, m = ds[0]
        mirrored += bool(image[0, 0, 0] > image[0, 0, -1])
        # a mirror that swaps the pair leaves this mask as it was: left stays arm_l
        assert m.tolist() == original.tolist()
    assert 0 < mirrored < 12
    assert read_class_file(root).flip_pairs == [(1, 2)]
    # without flip_pairs, a flip puts arm_r on the left in some samples
    plain = build_dataset(DataConfig(dataset="folder", root=str(_paired_folder(
        tmp_path / "plain", False)), crop_size=[8, 10], scale_min=1.0, scale_max=1.0,
        jitter=0.0), "train", train=True)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        seen.add(int(plain[0][1][0, 0]))
    assert seen == {1, 2}


class LeftRight(torch.nn.Module):
    """Scores class 1 on the left half and class 2 on the right half, whatever the image: a
    model that knows left from right."""

    num_classes = 3

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, 3, h, w)
        logits[:, 1, :, : w // 2] = 3.0
        logits[:, 2, :, w // 2:] = 3.0
        return {"logits": logits + 0 * x.mean()}


def test_flip_evaluation_swaps_the_mirrored_channels_back():
    model = LeftRight()
    x = torch.rand(1, 3, 6, 8)
    x = (x + x.flip(-1)) / 2  # a left/right-symmetric image
    single = predict(model, x).argmax(1)
    swapped = predict(model, x, scales=(1.0, 0.5), flip=True, flip_pairs=[(1, 2)]).argmax(1)
    assert torch.equal(swapped, single)
    plain = predict(model, x, flip=True)
    # without the pairs, each half averages "left" and "right" to a tie: no longer the truth
    assert torch.allclose(plain[:, 1], plain[:, 2])


def test_names_that_look_paired():
    names = ["background", "Left-Arm", "Right-Arm", "leftEye", "rightEye", "hand_L", "hand_R",
             "lane", "road", "l", "r"]
    assert looks_paired(names) == [("Left-Arm", "Right-Arm"), ("leftEye", "rightEye"),
                                   ("hand_L", "hand_R"), ("l", "r")]
    assert looks_paired(["background", "lane", "rail", "leftover"]) == []


def test_data_check_warns_on_paired_names_without_flip_pairs(tmp_path, capsys):
    root = _paired_folder(tmp_path / "ds", flip_pairs=False)
    assert main(["data", "check", str(root), "--dataset", "folder", "--quiet"]) == 0
    assert "warning: classes [arm_l, arm_r] look like left/right pairs" in capsys.readouterr().out
    (root / "classes.yaml").write_text("names: [background, arm_l, arm_r]\n"
                                       "flip_pairs: [[arm_l, arm_r]]\n")
    assert main(["data", "check", str(root), "--dataset", "folder", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_data_check_suggests_every_pair_it_found(tmp_path, capsys):
    """An atlas with eight left/right pairs: the suggestion a user pastes holds all eight."""
    root = _paired_folder(tmp_path / "ds", flip_pairs=False)
    parts = ["arm", "leg", "eye", "ear", "hand", "foot", "knee", "hip"]
    names = ["background"] + [f"{p}_{side}" for p in parts for side in ("l", "r")]
    (root / "classes.yaml").write_text(f"names: [{', '.join(names)}]\n")
    assert main(["data", "check", str(root), "--dataset", "folder", "--quiet"]) == 0
    out = capsys.readouterr().out
    suggestion = out[out.index("'flip_pairs: ["):]
    for p in parts:
        assert f"[{p}_l, {p}_r]" in suggestion
    assert "(8 in all)" in out
