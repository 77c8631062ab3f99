"""Distillation on unlabelled images: the task's terms on both batches, pseudo-labels, and a
run with an unlabelled folder that is killed and resumed."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaseg.core.config import DistillConfig
from kaseg.engine.tasks import DistillTask, pseudo_labels
from kaseg.nets.models import build_model

ROOT = Path(__file__).resolve().parents[2]

def test_pseudo_labels_below_the_threshold_are_ignored():
    # two classes, four positions: confident 0, confident 1, unsure, confident but padding
    logits = torch.tensor([[[[2.0, -2.0, 0.1, 3.0]], [[0.0, 0.0, 0.0, 0.0]]]])  # (1, 2, 1, 4)
    valid = torch.tensor([[[0, 0, 0, 255]]])
    # p(class 0) = sigmoid(2) = 0.881, sigmoid(-2) = 0.119, sigmoid(0.1) = 0.525
    assert pseudo_labels(logits, valid, 0.6).tolist() == [[[0, 1, 255, 255]]]
    assert pseudo_labels(logits, valid, 0.0).tolist() == [[[0, 1, 0, 255]]]

def _task(**kw):
    torch.manual_seed(3)
    from kaseg.losses.method import FeatureAutoencoder, ae_strides

    teacher, student = build_model("tiny-teacher", 3), build_model("tiny-student", 3)
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    teacher.train()(torch.randn(2, 3, 64, 64))  # non-trivial BN statistics
    losses = {"adapt": {"weight": 5.0}, "affinity": {"weight": 2.0},
              "kd": {"weight": 1.0, "temperature": 2.0}, "cwd": {"weight": 3.0, "temperature": 4.0},
              "fitnet": {"weight": 1.0}, "skd": {"weight": 10.0, "pool": 2}, "ifvd": {"weight": 200.0}}
    return DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                       config=DistillConfig(losses=losses, **kw))

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
    # each label-free term: the mean over the step's 5 images (2 labelled, 3 unlabelled); IFVD
    # (labels only) and CE as without them
    u_share = 3 / 5
    mixed = sum(w * ((1 - u_share) * both[n] + u_share * both[f"{n}_unlabeled"])
                for n, w in weights.items())
    torch.testing.assert_close(both["loss"], both["ce"] + 200.0 * both["ifvd"] + mixed)
    torch.testing.assert_close(alone["loss"], alone["ce"] + 200.0 * alone["ifvd"] + sum(
        w * alone[n] for n, w in weights.items()))
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
    task.config = replace(task.config, pseudo_threshold=0.999999)
    assert float(task(x, y, u, valid)["ce_pseudo_unlabeled"]) == 0.0

def _distill_args(teacher, out, unlabeled):
    return ["distill", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out", str(out),
            "data.image_size=32", "data.crop_size=32", "data.train_count=16", "data.val_count=4",
            "train.iters=4", "train.val_every=2", "train.batch_size=4", "train.val_batch_size=4",
            "train.log_every=1", "train.device=cpu", "deterministic=true", f"teacher.weights={teacher}",
            "distill.losses={kd: {}}",
            "distill.unlabeled_batch_size=2", "distill.pseudo_labels=true",
            "distill.pseudo_threshold=0.3", f"data.unlabeled_root={unlabeled}", "data.labeled_count=8"]

def test_distill_with_an_unlabelled_folder_trains_both_streams_and_resumes_in_place(
        tmp_path, monkeypatch):
    import kaseg.engine.train as train
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
