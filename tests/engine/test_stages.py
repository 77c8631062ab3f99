import json
from pathlib import Path

import pytest

from kaseg.nets.checkpoint import load_model
from kaseg.cli import main
from kaseg.engine.experiment import load_config
from kaseg.core.errors import KasegError
from kaseg.engine.stages import distill, load_autoencoder, pipeline, train_autoencoder

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.image_size=32", "data.crop_size=32", "data.train_count=16", "data.val_count=4",
        "train.iters=2", "train.val_every=2", "train.batch_size=4", "train.val_batch_size=4",
        "train.device=cpu", "teacher.iters=2", "ae.epochs=0.5", "ae.min_iters=0"]


def cfg(*extra):
    return load_config(ROOT / "configs/synthetic_pipeline.yaml", TINY + list(extra))


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_resumes(tmp_path):
    run = tmp_path / "p"
    results = pipeline(cfg(), run)
    assert set(results) == {"teacher", "autoencoder", "student", "distilled"}
    for stage in ("teacher", "student", "distilled"):
        assert (run / stage / "best.safetensors").exists()
    ae, meta = load_autoencoder(run / "ae")
    assert meta["in_channels"] == 64 and meta["latent_channels"] == 32 and meta["strides"] == [2, 2, 1]
    assert results["autoencoder"]["iters"] == 2  # half an epoch of 16 images at batch 4
    assert results["autoencoder"]["val"]["rel_error"] > 0
    # the distilled student is saved alone: it loads like any other student
    student, meta = load_model(run / "distilled")
    assert meta["spec"]["name"] == "tiny-student"
    assert not any(k.startswith(("adapter", "teacher")) for k in student.state_dict())
    hist = {s: (run / s / "history.jsonl").read_text() for s in ("teacher", "ae", "student", "distilled")}
    logged = [json.loads(l) for l in hist["distilled"].splitlines() if "loss" in l]
    assert {"ce", "adapt", "affinity", "adapt_ratio", "affinity_ratio"} <= set(logged[0])
    again = pipeline(cfg(), run)  # finished stages are not redone
    assert {s: (run / s / "history.jsonl").read_text() for s in hist} == hist
    assert again["distilled"]["best_miou"] == results["distilled"]["best_miou"]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"teacher", "student", "distilled", "autoencoder_rel_error"}


def test_a_pipeline_folder_moved_or_copied_elsewhere_resumes_there(tmp_path):
    """Its runs name each other by path (the autoencoder its teacher, the student both): moved,
    or copied to another place, the folder resumes with nothing retrained; a copy whose teacher
    was swapped for other weights is refused, naming the key."""
    import shutil

    first = tmp_path / "first"
    results = pipeline(cfg(), first)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    hist = {s: (moved / s / "history.jsonl").read_text() for s in ("teacher", "ae", "distilled")}
    again = pipeline(cfg(), moved)
    assert {s: (moved / s / "history.jsonl").read_text() for s in hist} == hist
    assert again["distilled"]["best_miou"] == results["distilled"]["best_miou"]
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    assert pipeline(cfg(), copy)["distilled"]["best_miou"] == results["distilled"]["best_miou"]
    assert {s: (copy / s / "history.jsonl").read_text() for s in hist} == hist
    swapped = tmp_path / "swapped"
    shutil.copytree(moved, swapped)
    shutil.copy(swapped / "student" / "best.safetensors", swapped / "teacher" / "best.safetensors")
    with pytest.raises(KasegError, match=r"ae: was started with a different config "
                                         r"\(teacher.weights\)"):
        pipeline(cfg(), swapped)


def test_stage_commands_and_clear_errors(tmp_path, capsys):
    teacher = tmp_path / "t"
    assert main(["train", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(teacher), *TINY, "model.name=tiny-teacher"]) == 0
    with pytest.raises(KasegError, match="teacher.weights must name a trained teacher"):
        train_autoencoder(cfg(), tmp_path / "ae")
    with pytest.raises(KasegError, match="not an autoencoder checkpoint"):
        distill(cfg(f"teacher.weights={teacher}", f"ae.weights={teacher}"), tmp_path / "d")
    assert main(["train-ae", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(tmp_path / "ae"), *TINY, f"teacher.weights={teacher}"]) == 0
    assert "reconstruction error" in capsys.readouterr().out
    # ablation: adaptation only
    assert main(["distill", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(tmp_path / "d"), *TINY, f"teacher.weights={teacher}",
                 f"ae.weights={tmp_path / 'ae'}", "distill.losses.affinity.weight=0"]) == 0
    logged = [json.loads(l) for l in (tmp_path / "d" / "history.jsonl").read_text().splitlines()
              if "loss" in l]
    assert "adapt" in logged[0] and "affinity" not in logged[0]
    # an autoencoder made for an OS 16 student is refused for an OS 8 one, naming both
    with pytest.raises(KasegError, match=r"strides \[2, 2, 1\].*needs \[2, 1, 1\].*student stride 8"):
        distill(cfg(f"teacher.weights={teacher}", f"ae.weights={tmp_path / 'ae'}",
                    "model.output_stride=8"), tmp_path / "d5")
    with pytest.raises(KasegError, match="tap 'pre_logits'.*needs 'encoder'"):
        distill(cfg(f"teacher.weights={teacher}", f"ae.weights={tmp_path / 'ae'}",
                    "teacher.tap=encoder"), tmp_path / "d6")
    assert not (tmp_path / "d5").exists() and not (tmp_path / "d6").exists()
    with pytest.raises(KasegError, match="teacher.tap 'nope'"):
        distill(cfg(f"teacher.weights={teacher}", f"ae.weights={tmp_path / 'ae'}", "teacher.tap=nope"),
                tmp_path / "d2")
    with pytest.raises(KasegError, match=r"distill.losses.adapt: reduction must be one of "
                       r"\('element', 'paper'\), got 'mean'"):
        distill(cfg(f"teacher.weights={teacher}", f"ae.weights={tmp_path / 'ae'}",
                    "distill.losses.adapt.reduction=mean"), tmp_path / "d3")
    assert not (tmp_path / "d2").exists() and not (tmp_path / "d3").exists()
    # the field's other losses, without an autoencoder, and combined with ours
    assert main(["distill", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(tmp_path / "kd"), *TINY, f"teacher.weights={teacher}",
                 "distill.losses={kd: {temperature: 2}, fitnet: {}}"]) == 0
    logged = [json.loads(l) for l in (tmp_path / "kd" / "history.jsonl").read_text().splitlines()
              if "loss" in l]
    assert {"kd", "fitnet"} <= set(logged[0]) and "adapt" not in logged[0]
    load_model(tmp_path / "kd")  # strict load: the student alone, no regressor in its weights
    with pytest.raises(KasegError, match="unknown loss 'nope'"):
        distill(cfg(f"teacher.weights={teacher}", f"ae.weights={tmp_path / 'ae'}",
                    "distill.losses.nope.weight=1"), tmp_path / "d4")


def test_pipeline_rejects_a_bad_distill_setting_before_training_anything(tmp_path, capsys):
    run = tmp_path / "p"
    assert main(["pipeline", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(run), *TINY, "distill.losses.nope.weight=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown loss 'nope'; known: ['adapt', 'af_dcd', 'affinity', 'cirkd_batch', 'cirkd_memory', 'cwd', 'dist', 'fitnet', 'ifvd', 'kd', 'maskd', 'skd']" in err[0]
    assert not run.exists()  # no teacher was trained


# the distill section as kaseg 0.1.0 wrote it into a run folder's config.yaml (before the method's
# terms were registered losses), transcribed from a `kaseg demo` run of that release (ka_kd arm)
OLD_DISTILL = """\
distill:
  student_tap: pre_logits
  adapt_weight: 15.0
  adapt_reduction: element
  p: 2.0
  q: 2.0
  affinity_weight: 9.0
  affinity_reduction: mse
  affinity_impl: auto
  dense_max_positions: 1024
  warmup_iters: 0
  control: none
  extra_losses:
  - kd
  loss_weights: {}
  loss_options:
    kd:
      temperature: 2.0
  unlabeled_batch_size: null
  unlabeled_weight: null
  pseudo_labels: false
  pseudo_threshold: 0.0
"""


def test_a_run_folder_of_the_previous_release_resumes_to_the_same_weights(tmp_path, monkeypatch,
                                                                           caplog):
    """A run killed midway under the old config keys (``distill.adapt_weight``, ...) and the old
    checkpoint names of the adapters (``adapter.*``, ``affinity_adapter.*``) is read by the
    upgrade step and resumes: it ends with the weights of the same run never interrupted."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from kaseg.engine.tasks import DistillTask

    teacher, ae = tmp_path / "t", tmp_path / "ae"
    assert main(["train", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(teacher), *TINY, "model.name=tiny-teacher"]) == 0
    assert main(["train-ae", "--config", str(ROOT / "configs/synthetic_pipeline.yaml"), "--out",
                 str(ae), *TINY, f"teacher.weights={teacher}"]) == 0
    terms = "distill.losses={adapt: {weight: 15.0}, affinity: {weight: 9.0}, kd: {temperature: 2.0}}"
    args = [f"teacher.weights={teacher}", f"ae.weights={ae}", "train.iters=4", "train.val_every=2",
            terms]
    distill(cfg(*args), tmp_path / "whole")
    forward, old = DistillTask.forward, tmp_path / "old"

    def killed_at_3(self, *a, **kw):  # once iteration 2 is checkpointed
        if (old / "checkpoint.pt").exists():
            raise RuntimeError("killed")
        return forward(self, *a, **kw)

    monkeypatch.setattr(DistillTask, "forward", killed_at_3)
    with pytest.raises(RuntimeError, match="killed"):
        distill(cfg(*args), tmp_path / "old")
    monkeypatch.undo()
    saved = yaml.safe_load((old / "config.yaml").read_text())
    assert saved["distill"]["losses"]["kd"] == {"weight": 1.0, "temperature": 2.0, "grid": "teacher",
                                               "standardize": False}
    saved["distill"] = yaml.safe_load(OLD_DISTILL)["distill"]  # as the old release wrote it
    (old / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    assert ckpt["iter"] == 2
    renamed = {k.replace("loss_modules.adapt.", "adapter.").replace(
        "loss_modules.affinity.", "affinity_adapter."): v for k, v in ckpt["task"].items()}
    assert sum(k.startswith("adapter.") for k in renamed) == 6  # conv, BN (weight, bias, 3 stats)
    torch.save({**ckpt, "task": renamed}, old / "checkpoint.pt")
    caplog.set_level("INFO")
    distill(cfg(*args), old)
    assert any("resuming" in r.getMessage() and "iteration 2" in r.getMessage()
               for r in caplog.records)
    assert any("read the old distillation keys adapt_weight" in r.getMessage()
               for r in caplog.records)
    a, b = load_file(tmp_path / "whole" / "last.safetensors"), load_file(old / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_cirkd_batch_that_cannot_fit_the_device_is_refused_before_anything_trains(tmp_path):
    """The mini-batch relation's memory by hand: tiny-student's map at stride 16 and
    tiny-teacher's at 4 meet on the 4 x 4 grid of a 64-px crop (N = 16); 8 images in groups of
    2 keep 4 groups x 4 pairs x N^2 entries at 8 bytes, plus 16 bytes an entry of one group at
    the forward's peak: 256 x (8 x 16 + 16 x 4) = 49,152 bytes."""
    from kaseg.engine.stages import check_memory_fits

    def config(group):
        return load_config(None, ["data.crop_size=64", "train.batch_size=8", "train.device=cpu",
                                  f"distill.losses={{cirkd_batch: {{group: {group}}}}}"])

    check_memory_fits(config(2), available=49152)
    with pytest.raises(KasegError, match=r"^arm 'cirkd': distill.losses.cirkd_batch alone needs "
                       r"about 0.0 GiB for train.batch_size=8 over 1 process\(es\) \(8 images "
                       r"each, in groups of distill.losses.cirkd_batch.group=2, 64 x 64 crops\) "
                       r"and the cpu has 0.0 GiB: lower"):
        check_memory_fits(config(2), "arm 'cirkd'", available=49151)
    # all 8 related (the earlier meaning): 256 x (8 + 16) x 64 bytes, 8x more
    check_memory_fits(config(8), available=393216)
    with pytest.raises(KasegError, match="group=8"):
        check_memory_fits(config(8), available=393215)
    # over 4 processes each has 2 images, one group: 256 x 24 x 4
    check_memory_fits(config(8), processes=4, available=24576)
    with pytest.raises(KasegError, match=r"over 4 process\(es\) \(2 images each"):
        check_memory_fits(config(8), processes=4, available=24575)
    # on this machine's memory: 128 images of 4096 positions all related, about 6,144 GiB
    big = load_config(None, ["data.crop_size=1024", "train.batch_size=128", "train.device=cpu",
                             "distill.losses={cirkd_batch: {group: 128}}"])
    with pytest.raises(KasegError, match="needs about 6144.0 GiB"):
        check_memory_fits(big, "distill")
