"""Few labels, many pictures (kaseg.data.unlabeled and the unlabelled stream of distillation)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaseg.config import DataConfig, load_config
from kaseg.data import build_dataset, build_unlabeled
from kaseg.data.synthetic import make_scene
from kaseg.data.unlabeled import UnlabeledImages, labeled_indices
from kaseg.errors import KasegError
from kaseg.method import DistillTask, pseudo_labels
from kaseg.models import build_model

ROOT = Path(__file__).resolve().parents[1]


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


def test_pseudo_labels_below_the_threshold_are_ignored():
    # two classes, four positions: confident 0, confident 1, unsure, confident but padding
    logits = torch.tensor([[[[2.0, -2.0, 0.1, 3.0]], [[0.0, 0.0, 0.0, 0.0]]]])  # (1, 2, 1, 4)
    valid = torch.tensor([[[0, 0, 0, 255]]])
    # p(class 0) = sigmoid(2) = 0.881, sigmoid(-2) = 0.119, sigmoid(0.1) = 0.525
    assert pseudo_labels(logits, valid, 0.6).tolist() == [[[0, 1, 255, 255]]]
    assert pseudo_labels(logits, valid, 0.0).tolist() == [[[0, 1, 0, 255]]]


def _task(**kw):
    torch.manual_seed(3)
    from kaseg.method import FeatureAutoencoder, ae_strides

    teacher, student = build_model("tiny-teacher", 3), build_model("tiny-student", 3)
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    teacher.train()(torch.randn(2, 3, 64, 64))  # non-trivial BN statistics
    return DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                       adapt_weight=5.0, affinity_weight=2.0,
                       extra={"kd": (1.0, {"temperature": 2.0}), "cwd": (3.0, {"temperature": 4.0}),
                              "fitnet": (1.0, {}), "skd": (10.0, {"pool": 2}), "ifvd": (200.0, {})},
                       **kw)


LABEL_FREE = ["adapt", "affinity", "kd", "cwd", "fitnet", "skd"]


def test_an_unlabelled_batch_adds_every_label_free_term_and_no_ce():
    task = _task().eval()  # eval-mode BatchNorm: each image's outputs do not depend on the batch
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    u, valid = torch.randn(3, 3, 64, 64), torch.zeros(3, 64, 64, dtype=torch.long)
    alone, both = task(x, y), task(x, y, u, valid)
    assert set(both) - set(alone) == {f"{n}_unlabeled" for n in LABEL_FREE}  # no CE, no IFVD
    for name in ["ce", "ifvd", *LABEL_FREE]:
        torch.testing.assert_close(both[name], alone[name])
    weights = {"adapt": 5.0, "affinity": 2.0, "kd": 1.0, "cwd": 3.0, "fitnet": 1.0, "skd": 10.0}
    extra = sum(w * both[f"{n}_unlabeled"] for n, w in weights.items())
    torch.testing.assert_close(both["loss"], alone["loss"] + extra)
    # the unlabelled terms are those of the unlabelled images on their own
    as_labeled = task(u, valid)
    for name in LABEL_FREE:
        torch.testing.assert_close(both[f"{name}_unlabeled"], as_labeled[name])


def test_unlabelled_copies_of_the_labelled_images_give_the_same_terms():
    task = _task().train()  # training mode: both batches in one pass, BatchNorm over both
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))  # no ignore pixel
    out = task(x, y, x.clone(), torch.zeros_like(y))
    for name in LABEL_FREE:
        torch.testing.assert_close(out[f"{name}_unlabeled"], out[name], rtol=1e-4, atol=1e-6)


def test_pseudo_labels_add_a_ce_term_and_ifvd_on_unlabelled_images():
    task = _task(pseudo_labels=True, pseudo_threshold=0.0).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    u, valid = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long)
    out = task(x, y, u, valid)
    assert "ifvd_unlabeled" in out
    with torch.no_grad():
        labels = task.teacher(u)["logits"].argmax(1)
        s = task.student(u)["logits"]
    torch.testing.assert_close(out["ce_pseudo_unlabeled"],
                               torch.nn.functional.cross_entropy(s, labels))
    # every position below the threshold: the term is 0, not NaN
    task.pseudo_threshold = 0.999999
    assert float(task(x, y, u, valid)["ce_pseudo_unlabeled"]) == 0.0


def _distill_args(teacher, out, unlabeled):
    return ["distill", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out", str(out),
            "data.image_size=32", "data.crop_size=32", "data.train_count=16", "data.val_count=4",
            "train.iters=4", "train.val_every=2", "train.batch_size=4", "train.val_batch_size=4",
            "train.log_every=1", "train.device=cpu", "deterministic=true", f"teacher.weights={teacher}",
            "distill.adapt_weight=0", "distill.affinity_weight=0", "distill.extra_losses=[kd]",
            "distill.unlabeled_batch_size=2", "distill.pseudo_labels=true",
            "distill.pseudo_threshold=0.3", f"data.unlabeled_root={unlabeled}", "data.labeled_count=8"]


def test_distill_with_an_unlabelled_folder_trains_both_streams_and_resumes_in_place(
        tmp_path, monkeypatch):
    import kaseg.train as train
    from safetensors.torch import load_file

    from kaseg.cli import main

    teacher = tmp_path / "teacher"
    assert main(["train", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(teacher), "data.image_size=32", "data.crop_size=32", "data.train_count=16",
                 "data.val_count=4", "train.iters=2", "train.val_every=2", "train.batch_size=4",
                 "train.device=cpu", "model.name=tiny-teacher"]) == 0
    pictures = tmp_path / "pictures"
    (pictures / "more").mkdir(parents=True)
    for i in range(5):  # real image files of other sizes than the labelled scenes
        arr = (np.random.default_rng(i).random((40 + i, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(pictures / ("more" if i % 2 else "") / f"p{i}.png")
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert main(_distill_args(teacher, ref, pictures)) == 0
    logged = [json.loads(l) for l in (ref / "history.jsonl").read_text().splitlines() if "loss" in l]
    assert {"ce", "kd", "kd_unlabeled", "ce_pseudo_unlabeled"} <= set(logged[0])
    assert all(r["kd_unlabeled"] > 0 for r in logged)

    real_save = train.save_state

    def save_then_crash(path, state):  # the run dies right after its first checkpoint
        real_save(path, state)
        raise SystemError("killed")

    monkeypatch.setattr(train, "save_state", save_then_crash)
    with pytest.raises(SystemError):
        main(_distill_args(teacher, killed, pictures))
    monkeypatch.setattr(train, "save_state", real_save)
    assert main(_distill_args(teacher, killed, pictures)) == 0  # resumes from iteration 2
    a, b = load_file(ref / "last.safetensors"), load_file(killed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "history.jsonl").read_text() == (killed / "history.jsonl").read_text()
