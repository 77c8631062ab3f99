"""``kaseg data check``: every planted defect is reported, naming its file; a clean tree passes."""

import numpy as np
from PIL import Image

from kaseg.cli import main
from kaseg.data.check import check_dataset

from fake_layouts import H, W, write_image, write_mask, make_ade, make_cityscapes


def test_clean_dataset_passes_with_counts_and_histogram(tmp_path, capsys):
    make_ade(tmp_path)
    names, reports = check_dataset("ade20k", tmp_path, progress=False)
    assert [(r.split, r.count, r.ok) for r in reports] == [("train", 2, True), ("val", 1, True)]
    total = sum(r.histogram for r in reports)
    # masks cycle 0, 1, 150 over H*W pixels: 0 -> ignore, 1 -> class 0, 150 -> class 149
    per_value = np.bincount(np.resize(np.array([0, 1, 2]), H * W), minlength=3)
    assert total[0] == 3 * per_value[1] and total[149] == 3 * per_value[2]
    assert sum(r.ignored for r in reports) == 3 * per_value[0]
    assert main(["data", "check", str(tmp_path), "--dataset", "ade20k", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 samples, ok" in out and "wall" in out


def test_each_planted_defect_is_reported_with_its_file(tmp_path, capsys):
    make_cityscapes(tmp_path)
    base = tmp_path / "cityscapes"
    # 1. missing mask
    city = base / "leftImg8bit" / "train" / "aachen"
    write_image(city / "aachen_000002_000019_leftImg8bit.png")
    # 2. size mismatch
    write_image(city / "aachen_000003_000019_leftImg8bit.png")
    gt = base / "gtFine" / "train" / "aachen"
    write_mask(gt / "aachen_000003_000019_gtFine_labelIds.png", [7], size=(H + 1, W))
    # 3. a label value outside the official table
    write_image(city / "aachen_000004_000019_leftImg8bit.png")
    write_mask(gt / "aachen_000004_000019_gtFine_labelIds.png", [7, 40])
    # 4. an unreadable (truncated) image
    trunc = city / "aachen_000005_000019_leftImg8bit.png"
    write_image(trunc, size=(64, 64))
    trunc.write_bytes(trunc.read_bytes()[:200])
    write_mask(gt / "aachen_000005_000019_gtFine_labelIds.png", [7], size=(64, 64))
    # 5. a colour mask where a label map belongs
    write_image(city / "aachen_000006_000019_leftImg8bit.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(gt / "aachen_000006_000019_gtFine_labelIds.png")

    _, reports = check_dataset("cityscapes", tmp_path, ["train", "val"], progress=False)
    train = reports[0]
    assert train.count == 8 and not train.ok and reports[1].ok
    text = "\n".join(train.defects)
    assert "aachen_000002_000019_leftImg8bit.png: has no mask" in text
    assert "aachen_000003_000019_gtFine_labelIds.png: mask is 16x13 but its image is 16x12" in text
    assert "aachen_000004_000019_gtFine_labelIds.png: label values [40]" in text
    assert "aachen_000005_000019_leftImg8bit.png: unreadable image" in text
    assert "aachen_000006_000019_gtFine_labelIds.png: mask has mode RGB" in text
    assert len(train.defects) == 5
    assert main(["data", "check", str(tmp_path), "--dataset", "cityscapes", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "5 defect(s)" in captured.out and "5 defect(s) found" in captured.err


def test_folder_dataset_and_missing_split(tmp_path, folder_dataset, capsys):
    names, reports = check_dataset("folder", folder_dataset, progress=False)
    assert names == ["background", "road", "car"]
    assert [(r.split, r.count, r.ok) for r in reports] == [("train", 6, True), ("val", 2, True)]
    assert main(["data", "check", str(tmp_path / "nowhere"), "--dataset", "voc"]) == 2  # bad input
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["data", "check", str(folder_dataset), "--dataset", "camvid", "--split", "test",
                 "--quiet"]) == 1
