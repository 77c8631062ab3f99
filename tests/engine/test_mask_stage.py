"""`kaseg train-masks`: MasKD's receptive tokens trained on a frozen teacher, a run folder like
every stage (resumable, its val loss recorded), and the checks around it."""

import json
from pathlib import Path

import pytest
import torch

from kaseg.cli import main
from kaseg.core.errors import KasegError
from kaseg.engine.mask_stage import load_masks, token_count

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "synthetic_tiny.yaml")


def _args(root, teacher, *extra):
    return ["--config", CONFIG, f"data.root={root}", "data.dataset=folder",
            "data.crop_size=16", "train.batch_size=2", "train.device=cpu",
            f"teacher.weights={teacher}", *extra]


def test_train_masks_trains_saves_resumes_and_checks_the_teacher(folder_dataset, tmp_path,
                                                                   capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--config", CONFIG, "--out", str(teacher),
                 f"data.root={folder_dataset}", "data.dataset=folder", "data.crop_size=16",
                 "train.batch_size=2", "train.iters=2", "train.val_every=2", "train.device=cpu",
                 "model.name=tiny-teacher"]) == 0
    run = tmp_path / "masks"
    args = _args(folder_dataset, teacher, "masks.iters=4", "masks.val_every=2",
                 "masks.patience=null")
    capsys.readouterr()
    assert main(["train-masks", "--out", str(run), *args]) == 0
    out = capsys.readouterr().out
    # 3 classes: the authors' 8 tokens capped at 3
    assert "3 receptive tokens on 3 classes, 4 iterations" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["val"]["loss"] == pytest.approx(m["val"]["ce"] + m["val"]["diversity"])
    tokens = load_masks(run, "tiny-teacher", 3).tokens.detach().clone()
    assert main(["train-masks", "--out", str(run), *args]) == 0  # finished: nothing retrained
    assert torch.equal(load_masks(run, "tiny-teacher", 3).tokens, tokens)
    with pytest.raises(KasegError, match="trained on 'tiny-teacher' \\(3 classes\\); this run's "
                                         "teacher is 'other'"):
        load_masks(run, "other", 3)
    assert main(["train-masks", "--out", str(tmp_path / "bad"),
                 *_args(folder_dataset, teacher, "masks.tokens=5")]) == 2
    assert "masks.tokens=5 but the teacher's logits have 3 channels" in capsys.readouterr().err
    assert token_count(None, 19) == 8 and token_count(4, 19) == 4
