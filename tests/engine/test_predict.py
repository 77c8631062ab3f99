"""``kaseg predict``: masks and overlays for every readable image, whatever its mode and size;
bad files reported and skipped, exit code 1 at the end."""

import json

import numpy as np
import torch
from PIL import Image

from kaseg.nets.checkpoint import save_model
from kaseg.cli import main
from kaseg.data.transforms import normalize
from kaseg.nets.models import build_model

PALETTE = [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _model(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-student", 3)
    model.train()(torch.randn(2, 3, 32, 32))  # non-trivial BN statistics
    save_model(model.eval(), tmp_path / "m" / "best",
               {"class_names": ["a", "b", "c"], "palette": PALETTE, "mean": MEAN, "std": STD})
    return model, tmp_path / "m"


def _inputs(root):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(root / "odd.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(root / "grey.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 4), dtype=np.uint8)).save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (21, 17), dtype=np.uint16)).save(root / "deep.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "sub" / "odd.png")
    good = root / "trunc.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:100])
    (root / "empty.png").write_bytes(b"")


def test_predict_writes_masks_and_overlays_and_skips_bad_files(tmp_path, capsys):
    model, ckpt = _model(tmp_path)
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--device", "cpu"])
    assert code == 1  # two files failed
    err = capsys.readouterr().err
    assert "trunc.png: unreadable image" in err and "empty.png: unreadable image" in err
    sizes = {"odd": (53, 37), "grey": (24, 20), "rgba": (24, 20), "deep": (17, 21),
             "sub/odd": (16, 16)}
    for name, size in sizes.items():
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == size, name
        assert mask.getpalette()[:9] == [c for rgb in PALETTE for c in rgb]
        assert np.asarray(mask).max() < 3
        ov = Image.open(out / f"{name}_overlay.png")
        assert ov.mode == "RGB" and ov.size == size
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["written"]) == 5 and len(summary["failed"]) == 2
    # the mask is the model's argmax on the image normalised as the model was trained
    img = np.asarray(Image.open(tmp_path / "in" / "odd.jpg").convert("RGB"))
    x = normalize(torch.from_numpy(img).permute(2, 0, 1).float() / 255, MEAN, STD)[None]
    with torch.no_grad():
        expected = model(x)["logits"].argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "odd.png")), expected)
    # overlay: half image, half class colour
    ov = np.asarray(Image.open(out / "odd_overlay.png")).astype(float)
    blend = img * 0.5 + np.asarray(PALETTE, float)[expected] * 0.5
    assert np.abs(ov - blend).max() <= 0.5 + 1e-9


def test_predict_single_file_with_sliding_window(tmp_path):
    _, ckpt = _model(tmp_path)
    _inputs(tmp_path / "in")
    out = tmp_path / "o2"
    assert main(["predict", str(ckpt / "best.safetensors"), str(tmp_path / "in" / "odd.jpg"),
                 "--out", str(out), "--window", "16", "16", "--device", "cpu"]) == 0
    assert Image.open(out / "odd.png").size == (53, 37)
    assert main(["predict", str(ckpt), str(tmp_path / "nope.png"), "--out", str(out)]) == 2
