import json
import os

import pytest
import torch

from kaseg.nets.checkpoint import load_model, load_state, save_model, save_state
from kaseg.core.files import atomic_write_bytes
from kaseg.core.errors import KasegError
from kaseg.nets.models import build_model


def test_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-student", 4, output_stride=8)
    # move BN statistics away from their defaults so they must be saved too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 48, 40)
    path = save_model(model, tmp_path / "best", {"class_names": list("abcd")})
    loaded, meta = load_model(tmp_path)
    assert meta["class_names"] == list("abcd") and meta["spec"]["output_stride"] == 8
    assert json.loads((tmp_path / "best.json").read_text())["spec"]["name"] == "tiny-student"
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], loaded(x)["logits"])
    assert path.suffix == ".safetensors"


def test_architecture_mismatch_lists_keys(tmp_path):
    model = build_model("tiny-student", 4)
    path = save_model(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m.json").read_text())
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(1)
    meta_text = json.dumps(meta)
    save_file(state, str(path), metadata={"kaseg": meta_text})
    with pytest.raises(KasegError, match=r"does not match the model architecture: missing \['net\.") as e:
        load_model(path)
    assert "unexpected ['extra.weight']" in str(e.value)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(KasegError, match="not a safetensors checkpoint"):
        load_model(bad)
    pt = tmp_path / "c.pt"
    pt.write_bytes(b"garbage")
    with pytest.raises(KasegError, match="not a readable kaseg training checkpoint"):
        load_state(pt)
    with pytest.raises(KasegError, match="checkpoint not found"):
        load_model(tmp_path / "missing.safetensors")


def test_training_state_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(KasegError, match="not a readable"):
        load_state(path)
    save_state(tmp_path / "ok.pt", {"iter": 3, "t": torch.ones(2)})
    assert load_state(tmp_path / "ok.pt")["iter"] == 3


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind
