"""The Python API: a torchvision teacher distilled into an SMP student on a folder dataset, and a
user's own Dataset; plus a teacher given as the user's own .pth on the command line."""

import json
from pathlib import Path

import pytest
import torch

from kaseg import api
from kaseg.nets.checkpoint import load_model
from kaseg.cli import main
from kaseg.core.config import AEConfig, DataConfig, DistillConfig, TrainConfig
from kaseg.data import build_dataset
from kaseg.core.errors import KasegError
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model
from kaseg.core.runtime import seeded
from kaseg.engine.stages import CONTROL_SEED_OFFSET

ROOT = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(iters=2, batch_size=2, val_every=2, val_batch_size=2, device="cpu",
                    log_every=1)


def test_torchvision_teacher_into_an_smp_student_on_a_folder_dataset(tmp_path, folder_dataset):
    data = DataConfig(dataset="folder", root=str(folder_dataset), crop_size=32)
    train_set = build_dataset(data, "train", train=True)
    val_set = build_dataset(data, "val", train=False)
    teacher = build_model("torchvision:lraspp_mobilenet_v3_large", train_set.num_classes)
    student = build_model("tiny-student", train_set.num_classes)
    ae = api.autoencoder(teacher, student, train_set, val_set, tmp_path / "ae",
                         ae=AEConfig(epochs=1.0, min_iters=0), train=TRAIN)
    assert (ae.in_channels, ae.latent_channels, ae.strides) == (128, 64, (2, 1, 1))  # OS 8 -> 16
    result = api.distill(student, teacher, train_set, val_set, tmp_path / "d", autoencoder=ae,
                         train=TRAIN, distill=DistillConfig(losses={"adapt": {}, "affinity": {}, "kd": {}}))
    assert result["iters"] == 2 and 0 <= result["best_miou"] <= 1
    logged = [json.loads(l) for l in (tmp_path / "d" / "history.jsonl").read_text().splitlines()
              if "loss" in l]
    assert {"ce", "adapt", "affinity", "kd"} <= set(logged[0])
    model, meta = load_model(tmp_path / "d")  # the student alone, rebuilt by name
    assert meta["spec"]["name"] == "tiny-student"
    assert meta["class_names"] == ["background", "road", "car"]
    history = (tmp_path / "d" / "history.jsonl").read_text()
    again = api.distill(student, teacher, train_set, val_set, tmp_path / "d", autoencoder=ae,
                        train=TRAIN, distill=DistillConfig(losses={"adapt": {}, "affinity": {}, "kd": {}}))
    assert again == result and (tmp_path / "d" / "history.jsonl").read_text() == history
    with pytest.raises(KasegError, match="different config"):  # another experiment, same folder
        api.distill(student, teacher, train_set, val_set, tmp_path / "d", autoencoder=ae,
                    train=TRAIN)
    with pytest.raises(KasegError, match="pass autoencoder="):
        api.distill(student, teacher, train_set, val_set, tmp_path / "e", train=TRAIN)


class Plain(torch.utils.data.Dataset):
    """A user's own dataset: tensors only, no class names or palette."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), torch.randint(0, 2, (32, 32), generator=g)


def test_a_plain_torch_dataset_and_kd_without_an_autoencoder(tmp_path):
    teacher, student = build_model("tiny-teacher", 2), build_model("tiny-student", 2)
    result = api.distill(student, teacher, Plain(), Plain(), tmp_path / "d", train=TRAIN,
                         distill=DistillConfig(losses={"kd": {}}))
    assert result["iters"] == 2
    _, meta = load_model(tmp_path / "d")
    assert meta["class_names"] == ["class_0", "class_1"] and len(meta["palette"]) == 2


def test_a_teacher_from_the_users_own_pth(tmp_path, capsys):
    teacher = build_model("tiny-teacher", 8)
    torch.save({"state_dict": teacher.net.state_dict()}, tmp_path / "mine.pth")
    args = ["distill", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
            str(tmp_path / "d"), "data.image_size=32", "data.crop_size=32", "data.train_count=8",
            "data.val_count=2", "train.iters=1", "train.val_every=1", "train.batch_size=2",
            "train.device=cpu", "teacher.name=tiny-teacher", "distill.losses={kd: {}}"]
    assert main(args + [f"teacher.weights={tmp_path / 'mine.pth'}"]) == 0
    state = teacher.net.state_dict()
    del state["segmentation_head.0.bias"]
    torch.save(state, tmp_path / "broken.pth")
    assert main(args + [f"teacher.weights={tmp_path / 'broken.pth'}", "--force"]) == 2
    assert "missing ['segmentation_head.0.bias']" in capsys.readouterr().err


def _captured_task(monkeypatch, **distill):
    """The task api.distill builds (training itself is not needed to check it)."""
    seen = {}
    monkeypatch.setattr(api, "fit_distillation", lambda task, *a, **k: seen.setdefault("t", task))
    teacher, student = build_model("tiny-teacher", 2), build_model("tiny-student", 2)
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    api.distill(student, teacher, Plain(), Plain(), "unused", autoencoder=ae, train=TRAIN,
                seed=3, distill=DistillConfig(**distill))
    return seen["t"], ae


def test_api_distill_runs_the_negative_control_like_the_command_line(monkeypatch):
    task, ae = _captured_task(monkeypatch, control="random_encoder")
    with seeded(3 + CONTROL_SEED_OFFSET):
        untrained = FeatureAutoencoder(64, 16, ae_strides(4))
    used = task.encoder.inner.state_dict()
    assert all(torch.equal(v, untrained.encoder.state_dict()[k]) for k, v in used.items())
    assert not all(torch.equal(v, ae.encoder.state_dict()[k]) for k, v in used.items())
    task, ae = _captured_task(monkeypatch)  # the method itself: the autoencoder it was given
    assert task.encoder.inner is ae.encoder


def test_api_distill_refuses_an_autoencoder_made_for_another_student_stride(monkeypatch):
    monkeypatch.setattr(api, "fit_distillation", lambda *a, **k: None)
    teacher, student = build_model("tiny-teacher", 2), build_model("tiny-student", 2)
    ae = FeatureAutoencoder(64, 16, ae_strides(2))  # for a student at OS 8, not 16
    with pytest.raises(KasegError, match="strides"):
        api.distill(student, teacher, Plain(), Plain(), "unused", autoencoder=ae, train=TRAIN)
