"""Paired comparisons: every arm of a seed starts from the same student, the warm-up schedule,
the negative controls, and the paired table."""

from pathlib import Path

import pytest
import torch

import kaseg.engine.stages as stages
from kaseg.compare.arms import ARMS, arm_config
from kaseg.compare.tables import context_table, markdown_table, paired_rows
from kaseg.core.config import DistillConfig
from kaseg.engine.experiment import load_config
from kaseg.engine.tasks import DistillTask
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model
from kaseg.engine.supervised import train_segmenter

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.image_size=32", "data.crop_size=32", "data.train_count=16", "data.val_count=4",
        "train.iters=2", "train.val_every=2", "train.batch_size=4", "train.val_batch_size=4",
        "train.device=cpu", "teacher.iters=2", "ae.epochs=0.5", "ae.min_iters=0"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A trained (2-iteration) teacher and autoencoder, and a config pointing at them."""
    out = tmp_path_factory.mktemp("shared")
    cfg = load_config(ROOT / "configs/synthetic_pipeline.yaml", TINY)
    train_segmenter(stages.teacher_training_config(cfg), out / "teacher")
    cfg = load_config(ROOT / "configs/synthetic_pipeline.yaml",
                      TINY + [f"teacher.weights={out / 'teacher'}"])
    stages.train_autoencoder(cfg, out / "ae")
    return load_config(ROOT / "configs/synthetic_pipeline.yaml",
                       TINY + [f"teacher.weights={out / 'teacher'}", f"ae.weights={out / 'ae'}"])


def _initial_tasks(cfg, arms, seed, tmp_path, monkeypatch):
    """The task each arm would train, captured before its first step."""
    seen = {}

    def capture(task, *args, **kwargs):
        seen["task"] = task
        raise StopIteration

    monkeypatch.setattr(stages, "fit", capture)
    tasks = {}
    for arm in arms:
        # other networks built first must not move the student's initial weights
        build_model("tiny-student", 3)
        with pytest.raises(StopIteration):
            stages.distill(arm_config(cfg, arm, seed), tmp_path / f"{arm}-{seed}")
        tasks[arm] = seen.pop("task")
    return tasks


def test_every_arm_of_a_seed_starts_from_the_same_student(shared, tmp_path, monkeypatch):
    arms = ["baseline", "kd_t2", "fitnet", "ka", "adapt", "ctrl_random_ae", "ctrl_constant"]
    tasks = _initial_tasks(shared, arms, 3, tmp_path, monkeypatch)
    ref = tasks["baseline"].student.state_dict()
    for arm, task in tasks.items():
        state = task.student.state_dict()
        assert all(torch.equal(ref[k], state[k]) for k in ref), arm
    # the adapters too, wherever an arm has them
    a = tasks["ka"].loss_modules["adapt"].state_dict()
    b = tasks["adapt"].loss_modules["adapt"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another seed: another student
    other = _initial_tasks(shared, ["baseline"], 4, tmp_path, monkeypatch)["baseline"]
    assert not torch.equal(other.student.state_dict()["net.segmentation_head.0.weight"],
                           ref["net.segmentation_head.0.weight"])


def test_controls(shared, tmp_path, monkeypatch):
    tasks = _initial_tasks(shared, ["ka", "ctrl_random_ae", "ctrl_constant"], 0, tmp_path,
                           monkeypatch)
    trained = tasks["ka"].encoder.inner.state_dict()
    random = tasks["ctrl_random_ae"].encoder.inner.state_dict()
    assert not torch.equal(trained["0.0.weight"], random["0.0.weight"])
    assert tasks["ctrl_constant"].config.control == "constant_target"
    # a constant target: the adaptation loss is the distance of each position's unit vector to
    # the normalised all-ones vector, whatever the teacher
    task = tasks["ctrl_constant"].eval()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    out = task(x, y)
    zs = task.loss_modules["adapt"](task.student(x)["features"]["pre_logits"])
    u = zs / zs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    c = torch.full_like(u, 1 / u.shape[1] ** 0.5)
    torch.testing.assert_close(out["adapt"], (u - c).pow(2).mean())


def test_warmup_ramps_every_distillation_weight():
    torch.manual_seed(0)
    teacher, student = build_model("tiny-teacher", 3), build_model("tiny-student", 3)
    ae = FeatureAutoencoder(64, 16, ae_strides(4))
    task = DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                       config=DistillConfig(losses={"adapt": {"weight": 50.0},
                                                    "affinity": {"weight": 10.0}, "kd": {}},
                                            warmup_iters=4)).train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    for it, scale in [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (5, 1.0)]:
        out = task(x, y)
        assert int(task.step) == it and out["warmup_factor"].item() == scale
        total = out["ce"] + scale * (50 * out["adapt"] + 10 * out["affinity"] + out["kd"])
        torch.testing.assert_close(out["loss"], total)
    task.eval()(x, y)  # evaluation does not move the schedule
    assert int(task.step) == 5
    with pytest.raises(ValueError, match="warmup_iters"):
        DistillTask(student=student, teacher=teacher, encoder=ae.encoder, latent_channels=16,
                    config=DistillConfig(warmup_iters=-1))


def test_paired_rows_and_table():
    records = [{"arm": a, "seed": s, "miou": v / 100, "context_iou": None}
               for a, vals in {"baseline": [10, 20, 30], "ka": [12, 21, 33]}.items()
               for s, v in enumerate(vals)]
    rows = paired_rows(records, ["baseline", "ka", "kd"])
    assert [r["arm"] for r in rows] == ["baseline", "ka"]
    d = rows[1]["diff"]  # differences 2, 1, 3: mean 2, sd 1, t(2) = 4.302653
    assert d["mean"] == pytest.approx(2.0) and d["sd"] == pytest.approx(1.0)
    assert d["low"] == pytest.approx(2 - 4.302653 / 3**0.5)
    assert rows[1]["verdict"] == "no resolved difference"  # the CI spans 0
    table = markdown_table(rows)
    assert table[3] == ("| CE + the method (adaptation + affinity) | `ka` | 3 | 22.00 ± 10.54 | +2.00 | "
                        "[-0.48, +4.48] | no resolved difference |")
    assert "20.00 ± 10.00" in table[2]
    assert set(ARMS) >= {"baseline", "kd_t2", "cwd", "adapt", "ka", "ka_kd", "ctrl_random_ae",
                         "ctrl_constant"}
    assert context_table(rows, "T:") == ["T:", "", *markdown_table(rows, "context IoU")]
    zeros = paired_rows([dict(r, miou=0.0) for r in records], ["baseline", "ka"])
    assert context_table(zeros, "T:") == [
        "T: 0.00 in every arm and seed (no student separates the twins yet)."]


def test_a_partial_table_puts_every_row_over_the_same_seeds():
    """CE only has seeds 0-3, the method 0-2, KD 0, 1 and 3: every row is over seeds 0 and 1
    (the mean and the Δ of the same students), n is shown, seeds 2 and 3 are listed as left
    out with the arms that lack them."""
    vals = {"baseline": {0: 10, 1: 20, 2: 30, 3: 40}, "ka": {0: 12, 1: 21, 2: 33},
            "kd_t2": {0: 15, 1: 26, 3: 41}}
    records = [{"arm": a, "seed": s, "miou": v / 100} for a, by in vals.items()
               for s, v in by.items()]
    rows = {r["arm"]: r for r in paired_rows(records, ["baseline", "ka", "kd_t2"])}
    for r in rows.values():
        assert r["seeds"] == [0, 1] and r["n"] == 2
        assert r["left_out"] == {2: ["kd_t2"], 3: ["ka"]}
    assert rows["baseline"]["summary"]["mean"] == pytest.approx(15.0)  # not 25 over 4 seeds
    assert rows["ka"]["summary"]["mean"] == pytest.approx(16.5)  # not 22 over 3 seeds
    assert rows["ka"]["diff"]["mean"] == pytest.approx(1.5) and rows["ka"]["diff"]["n"] == 2
    assert rows["kd_t2"]["diff"]["mean"] == pytest.approx(5.5)
    table = markdown_table(list(rows.values()))
    assert table[0].startswith("| arm | | n |")
    assert all(ln.split(" | ")[2] == "2" for ln in table[2:])
    from kaseg.compare.report import _left_out_lines

    lines = _left_out_lines({"failed": {"runs/ka-x1-s3": {"message": "loss term 'adapt' is nan"}},
                             "missing": ["runs/ka-x1-s3", "runs/kd_t2-s2"]},
                            list(rows.values()))
    text = "\n".join(lines)
    assert "**Diverged (1)**" in text and "`runs/ka-x1-s3`: loss term 'adapt' is nan" in text
    assert "Unfinished (1): `runs/kd_t2-s2`." in text
    assert "seed 2: no finished run of `kd_t2`; seed 3: no finished run of `ka`" in text


def test_few_label_arms_change_the_data_and_start_from_the_same_student(shared, tmp_path,
                                                                      monkeypatch):
    from dataclasses import replace

    few = replace(shared, data=replace(shared.data, labeled_count=6, unlabeled_split="train"))
    assert arm_config(few, "all_labels", 0).data.labeled_count is None
    assert arm_config(few, "all_labels", 0).data.unlabeled_split is None
    assert arm_config(few, "ka_labeled", 0).data.unlabeled_split is None
    assert arm_config(few, "ka_labeled", 0).data.labeled_count == 6
    assert arm_config(few, "ka", 0).data == few.data
    pseudo = arm_config(few, "pseudo", 0).distill
    assert pseudo.pseudo_labels and pseudo.losses == {}
    arms = ["baseline", "pseudo", "ka", "ka_labeled", "all_labels"]
    tasks = _initial_tasks(few, arms, 2, tmp_path, monkeypatch)
    ref = tasks["baseline"].student.state_dict()
    for arm, task in tasks.items():
        assert all(torch.equal(ref[k], v) for k, v in task.student.state_dict().items()), arm


def test_reports_name_the_cpu_kind(tmp_path, monkeypatch):
    """The same seed gives other numbers on another CPU kind: a report says which it ran on."""
    import kaseg.compare.tables as compare

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13\n"
                    "processor\t: 1\nmodel name\t: AMD  EPYC 7B13\n")
    assert compare.cpu_name(info) == "AMD EPYC 7B13"
    monkeypatch.setattr(compare.platform, "processor", lambda: "x86_64")
    assert compare.cpu_name(tmp_path / "missing") == "x86_64"
    monkeypatch.setattr(compare, "cpu_name", lambda: "Some CPU")
    monkeypatch.setattr(compare.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(compare.torch, "get_num_threads", lambda: 2)
    assert compare.machine("cpu") == "CPU (Some CPU, 2 cores, 2 torch threads)"
    monkeypatch.setattr(compare, "cpu_name", lambda: "")
    assert compare.machine("cpu") == "CPU (2 cores, 2 torch threads)"


class _Reached(Exception):
    """A forward on the meta device was checked (meta computes no values: stop there)."""


@pytest.fixture
def device_guard(monkeypatch):
    """Every forward of a module with weights: its inputs must be on its weights' device. The
    run's device is ``meta`` here, a second device a CPU machine has (as a GPU machine has
    CUDA): a model left on the CPU, or inputs left there, fail; a forward that gets as far as
    meta on both sides has passed the check and stops with :class:`_Reached`."""
    def hook(module, args):
        params = list(module.parameters(recurse=False))
        if not params:
            return
        where = params[0].device
        for a in args:
            if isinstance(a, torch.Tensor) and a.device != where:
                raise AssertionError(f"{type(module).__name__} on {where} fed a tensor on "
                                     f"{a.device}")
        if where.type == "meta":
            raise _Reached

    import contextlib

    import kaseg.engine.evaluate

    real = kaseg.engine.evaluate.autocast  # meta has no autocast: off there, whatever kaseg does
    monkeypatch.setattr(kaseg.engine.evaluate, "autocast", lambda device, enabled: (
        contextlib.nullcontext() if torch.device(device).type == "meta" else
        real(device, enabled)))
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    yield
    handle.remove()


def test_evaluation_costs_and_pictures_put_a_model_and_its_inputs_on_the_runs_device(
        tmp_path, device_guard):
    from kaseg.compare.arms import get_arm
    from kaseg.nets.checkpoint import save_model
    from kaseg.compare.report import _costs, _predictions
    from kaseg.compare.runner import CompareSpec
    from kaseg.data.synthetic import SyntheticScenes
    from kaseg.data.transforms import EvalTransform
    from kaseg.engine.evaluate import evaluate

    val = SyntheticScenes("val", count=4, size=32, transform=EvalTransform())
    cfg = load_config(None, ["train.device=meta", "data.crop_size=32"])
    torch.manual_seed(0)
    teacher, student = build_model("tiny-teacher", 8), build_model("tiny-student", 8)
    with pytest.raises(_Reached):  # loaded on the CPU, evaluated on the run's device
        evaluate(build_model("tiny-teacher", 8), val, 2, device="meta")
    save_model(student, tmp_path / "runs" / "b" / "last")
    spec = CompareSpec([get_arm("baseline")], seeds=[0])
    got = {"val": val, "cfg": cfg, "teacher": teacher,
           "records": [{"arm": "baseline", "run": "runs/b", "seed": 0}]}
    with pytest.raises(_Reached):  # FLOPs where the model is, latency on the run's device
        _costs(tmp_path, cfg, [], teacher)
    with pytest.raises(_Reached):  # the teacher the costs left there, fed images there
        _predictions(tmp_path, got, spec)
    with pytest.raises(_Reached):  # a student loaded from its run folder, placed there too
        _predictions(tmp_path, dict(got, teacher=None), spec)


def test_the_pictures_show_images_spread_over_the_validation_set(tmp_path):
    """An ordered folder (slices of one scan, frames of one video) shows one region in its
    first images: the report pictures images spread evenly, first and last included, and says
    which."""
    from kaseg.compare.arms import get_arm
    from kaseg.nets.checkpoint import save_model
    from kaseg.compare.report import _predictions
    from kaseg.compare.runner import CompareSpec
    from kaseg.data.synthetic import SyntheticScenes
    from kaseg.data.transforms import EvalTransform
    from kaseg.engine.visualize import spread_indices

    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(3, 4) == [0, 1, 2] and spread_indices(1, 4) == [0]
    assert spread_indices(101, 5) == [0, 25, 50, 75, 100]
    val = SyntheticScenes("val", count=10, size=32, transform=EvalTransform())
    save_model(build_model("tiny-student", val.num_classes), tmp_path / "runs" / "b" / "last")
    got = {"val": val, "cfg": load_config(None, ["train.device=cpu"]), "teacher": None,
           "records": [{"arm": "baseline", "run": "runs/b", "seed": 0}]}
    assert _predictions(tmp_path, got, CompareSpec([get_arm("baseline")], seeds=[0])) == [
        0, 3, 6, 9]
    assert (tmp_path / "predictions.png").stat().st_size > 1000


def test_every_distillation_run_records_what_its_step_costs(shared, tmp_path, monkeypatch):
    """cost.json: a KD step costs the CE step plus the teacher's forward (and the KD term, a
    softmax or two: well under 10% of the teacher); the method's adds the encoder and adapters.
    Recording draws nothing: the run's weights are those of a run that records nothing."""
    import json as _json

    from safetensors.torch import load_file

    from kaseg.nets.cost import count_flops

    costs = {}
    for arm in ("baseline", "kd_t2", "ka"):
        stages.distill(arm_config(shared, arm, 0), tmp_path / arm)
        costs[arm] = _json.loads((tmp_path / arm / "cost.json").read_text())
    base, kd, ka = (costs[a]["train_gflops_per_iter"] * 1e9 for a in ("baseline", "kd_t2", "ka"))
    teacher = build_model("tiny-teacher", 8)
    batch, size = shared.train.batch_size, (shared.data.crop_size,) * 2
    t_fwd = batch * count_flops(teacher, size)
    assert t_fwd <= kd - base <= 1.1 * t_fwd
    assert ka - base > t_fwd  # the teacher, the encoder, the adapters and their backward
    student = build_model("tiny-student", 8)
    s_fwd = batch * count_flops(student, size)
    assert 2 * s_fwd <= base <= 3.5 * s_fwd  # forward + backward (weights and activations)
    assert costs["baseline"]["iters"] == shared.train.iters and costs["ka"]["batch"] == batch
    assert costs["ka"]["seconds_per_iter_alone"] > 0
    # the same run without recording: the same weights
    monkeypatch.setattr(stages, "record_cost", lambda job, time_it=True: {})
    stages.distill(arm_config(shared, "ka", 0), tmp_path / "again")
    a, b = load_file(tmp_path / "ka" / "last.safetensors"), load_file(
        tmp_path / "again" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
