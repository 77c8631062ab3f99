"""`kaseg compare` end to end on a folder dataset the test writes (class file, flip pairs, one
odd image size): paired initial students, report and results, a bad arm refused before any
training, and --plan + its lines + --report giving the one-shot command's table."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kaseg.compare.arms import (ARM_GROUPS, ARMS, Arm, arm_config, arm_from_yaml, get_arm,
                        tune_weights)
from kaseg.nets.checkpoint import load_model
from kaseg.cli import main
from kaseg.compare.report import export_best
from kaseg.compare.runner import CompareSpec, _last_miou, spec_from
from kaseg.engine.experiment import load_config
from kaseg.core.errors import KasegError
from kaseg.engine.supervised import build_network


def _dataset(root: Path) -> Path:
    """Left/right classes (arm_l on the left half, arm_r on the right), 10 train and 3 val
    images of 32 x 40, one val image of 37 x 45."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = [f"im{i}" for i in range(13)]
    for i, n in enumerate(names):
        h, w = (37, 45) if i == 12 else (32, 40)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4:, : w // 2], mask[h // 4:, w // 2:] = 1, 2
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        img[mask == 1, 0] += 150
        img[mask == 2, 2] += 150
        Image.fromarray(img).save(root / "images" / f"{n}.png")
        Image.fromarray(mask).save(root / "masks" / f"{n}.png")
    (root / "train.txt").write_text("\n".join(names[:10]) + "\n")
    (root / "val.txt").write_text("\n".join(names[10:]) + "\n")
    (root / "classes.yaml").write_text("names: [background, arm_l, arm_r]\n"
                                       "flip_pairs: [[arm_l, arm_r]]\n")
    return root


def _config(tmp_path: Path, arms: dict | None = None) -> Path:
    root = _dataset(tmp_path / "ds")
    cfg = {
        "data": {"dataset": "folder", "root": str(root), "crop_size": 32, "scale_min": 1.0,
                 "scale_max": 1.0},
        "model": {"name": "tiny-student"},
        "teacher": {"name": "tiny-teacher", "iters": 4, "lr": 0.05},
        "ae": {"min_iters": 3, "patience": None},
        "train": {"iters": 3, "batch_size": 2, "val_every": 3, "val_batch_size": 1,
                  "device": "cpu", "lr": 0.02, "log_every": 1},
        "compare": {"arms": arms or {"baseline": None, "kd_t2": None, "ka": None},
                    "seeds": 2, "weight_scales": [0.3]},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _table(report: Path) -> list[str]:
    return [ln for ln in report.read_text().splitlines() if ln.startswith("| ")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compare_end_to_end_and_plan_then_report_give_the_same_table(tmp_path, capsys):
    config = _config(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in results["rows"]] == ["baseline", "kd_t2", "ka"]
    for row in results["rows"]:
        assert row["seeds"] == [0, 1] and len(row["values"]) == 2
        if row["arm"] != "baseline":  # paired: a difference and its interval
            assert row["diff"]["n"] == 2 and row["verdict"] in ("better", "worse",
                                                                "no resolved difference")
            diffs = [v - b for v, b in zip(row["values"], results["rows"][0]["values"])]
            assert row["diff"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert "`kd_t2`" in report and "`ka`" in report and "Verdict" in report
    # one epoch of 10 images at batch 2 is 5 iterations, above the floor (ae.min_iters=3)
    assert "Autoencoder `ae`" in report and "after 5 iterations" in report
    assert f"kaseg compare --config {config} --out {out}" in report
    assert {"teacher", "student"} <= set(results["costs"])
    for name in ("gain.png", "predictions.png"):
        assert (out / name).stat().st_size > 1000
    # the initial student of every arm is the same network, seed by seed
    cfg = load_config(config)
    spec = spec_from({"arms": ["baseline", "kd_t2", "ka"]}, seeds=2)
    for seed in spec.seeds:
        nets = [build_network(arm_config(cfg, a, seed), 3) for a in spec.arms]
        for net in nets[1:]:
            assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(),
                                                          net.state_dict().values()))
    other = build_network(arm_config(cfg, spec.arms[0], 0), 3)  # another seed, another start
    assert not all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(),
                                                     other.state_dict().values()))

    # --export-best: the resolved-better arm with the largest gain (never a control), its best seed
    rows = [dict(r) for r in results["rows"]]
    for r in rows:
        r["verdict"] = {"kd_t2": "better", "ka": "better"}.get(r["arm"], r.get("verdict"))
        if "diff" in r:
            r["diff"] = dict(r["diff"], mean={"kd_t2": 1.0, "ka": 2.0}[r["arm"]])
    got = {"rows": rows, "records": results["records"], "cfg": load_config(config)}
    best = export_best(out, got, spec_from({"arms": ["baseline", "kd_t2", "ka"]}))
    seeds = {r["seed"]: r["miou"] for r in results["records"] if r["arm"] == "ka"}
    assert best["arm"] == "ka" and best["seed"] == max(seeds, key=seeds.get)
    model, meta = load_model(out / "best" / "student.safetensors")
    assert meta["arm"] == "ka" and meta["class_names"] == ["background", "arm_l", "arm_r"]

    # the same comparison spread out: --plan, each line run on its own, then --report
    spread = tmp_path / "spread"
    assert main(["compare", "--config", str(config), "--out", str(spread), "--plan"]) == 0
    lines = (spread / "plan.txt").read_text().splitlines()
    commands = [ln for ln in lines if not ln.startswith("#")]
    assert [c.split()[1] for c in commands] == ["train", "train-ae"] + ["distill"] * 6
    assert commands[0].endswith(f"--out {spread / 'teacher'}")
    assert (spread / "plan-shared.txt").read_text().splitlines() == commands[:2]
    assert (spread / "plan-arms.txt").read_text().splitlines() == commands[2:]
    for c in commands[:4]:  # the shared stages and two runs ...
        args = shlex.split(c)
        assert main(args[1:]) == 0
    # ... the report of what has finished lists what has not
    assert main(["compare", "--config", str(config), "--out", str(spread), "--report"]) == 1
    partial = (spread / "report.md").read_text()
    assert "Unfinished (4)" in partial
    assert main(["compare", "--config", str(config), "--out", str(spread), "--plan"]) == 0
    rest = [ln for ln in (spread / "plan.txt").read_text().splitlines() if not ln.startswith("#")]
    assert rest == commands[4:]  # exactly the unfinished runs
    for c in rest[:1]:  # one as a user's scheduler would: a separate process
        subprocess.run([sys.executable, "-m", "kaseg", *shlex.split(c)[1:]], check=True,
                       capture_output=True)
    for c in rest[1:]:
        assert main(shlex.split(c)[1:]) == 0
    capsys.readouterr()
    assert main(["compare", "--config", str(config), "--out", str(spread), "--report"]) == 0
    assert _table(spread / "report.md") == _table(out / "report.md")


def test_a_bad_arm_is_refused_before_anything_trains(tmp_path, capsys):
    out = tmp_path / "cmp"
    config = _config(tmp_path, arms={"baseline": None, "no_such_arm": None})
    assert main(["compare", "--config", str(config), "--out", str(out)]) == 2
    assert "unknown arm 'no_such_arm'" in capsys.readouterr().err
    assert not out.exists()
    config.write_text(config.read_text().replace(
        "no_such_arm: null", "mine:\n      distill: {losses: {nope: {}}}"))
    assert main(["compare", "--config", str(config), "--out", str(out)]) == 2
    assert "unknown loss 'nope'" in capsys.readouterr().err and not out.exists()
    config.write_text(config.read_text().replace("losses: {nope: {}}", "kd_weight2: 1"))
    assert main(["compare", "--config", str(config), "--out", str(out)]) == 2
    assert "unknown distill key(s) ['kd_weight2']" in capsys.readouterr().err
    config.write_text(config.read_text().replace("kd_weight2: 1", "warmup_iters: 1"))
    assert main(["compare", "--config", str(config), "--out", str(out), "--arms", "baseline",
                 "bogus"]) == 2
    assert "unknown arm 'bogus'" in capsys.readouterr().err and not out.exists()


def test_arms_from_yaml_and_the_spec_rules():
    spec = spec_from({"arms": {"kd_t3": {"label": "KD T=3", "distill": {
        "losses": {"kd": {"temperature": 3.0}}}}, "ka": None}}, controls=True)
    assert [a.name for a in spec.arms] == ["baseline", "kd_t3", "ka", "ctrl_random_ae",
                                           "ctrl_constant", "ce_matched"]
    # a group name stands for its arms, each once
    assert [a.name for a in spec_from({}, arms=["field", "ka", "ifvd"]).arms] == [
        "baseline", "kd_t2", "kd_ls", "cwd", "dist", "cirkd", "af_dcd", "maskd", "ka", "ka_kd", "ifvd"]
    cfg = arm_config(load_config(None), spec.arms[1], 4)
    assert cfg.seed == 4 and cfg.distill.losses == {"kd": {
        "weight": 1.0, "temperature": 3.0, "grid": "teacher", "standardize": False}}
    # an arm written with the old keys (adapt_weight, extra_losses, ...) means what it meant
    old = spec_from({"arms": {"kd_t3": {"distill": {
        "adapt_weight": 0, "affinity_weight": 0, "extra_losses": ["kd"],
        "loss_options": {"kd": {"temperature": 3.0}}}}}}).arms[1]
    assert arm_config(load_config(None), old, 4) == cfg
    ka_only = spec_from({"arms": {"adapt_kd": {"distill": {"affinity_weight": 0,
                                                           "extra_losses": ["kd"]}}}}).arms[1]
    assert list(arm_config(load_config(None), ka_only, 0).distill.losses) == ["adapt", "kd"]
    assert spec.arms[2] is ARMS["ka"] and get_arm("ka").uses_method(load_config(None).distill)
    assert not spec.arms[1].uses_method(load_config(None).distill)
    with pytest.raises(KasegError, match="both reported and tuning seeds"):
        CompareSpec([ARMS["baseline"]], seeds=[0, 100], tune_seeds=[100])
    with pytest.raises(KasegError, match="needs the 'baseline' arm"):
        CompareSpec([ARMS["ka"]])
    with pytest.raises(KasegError, match="unknown autoencoder variant"):
        spec_from({"arms": {"x": {"ae": "huge"}}})
    assert isinstance(spec.arms[1], Arm)


def test_a_moved_comparison_keeps_its_measured_costs_and_another_recipe_is_measured_again(
        tmp_path, monkeypatch):
    """The cost cache compares an arm's config without its weights' paths (a copied or moved
    comparison folder is not re-timed: a new, noisy time could change CE only's budgets), and
    still measures again when anything that changes the step does."""
    from dataclasses import replace

    from kaseg.compare import runner

    calls = []
    monkeypatch.setattr(runner, "estimate_step_seconds",
                        lambda c: calls.append(c.train.batch_size) or 0.1 * c.train.batch_size)
    spec = spec_from({"arms": ["baseline", "kd_t2"]})
    cfg = load_config(None)
    moved = replace(cfg, teacher=replace(cfg.teacher, weights="elsewhere/teacher"),
                    model=replace(cfg.model, init_weights="elsewhere/init.safetensors"))
    first = runner.step_costs(tmp_path, cfg, spec, {}, 1.0, "seconds")
    assert len(calls) == 2 and (tmp_path / "costs.json").exists()
    assert runner.step_costs(tmp_path, moved, spec, {}, 1.0, "seconds") == first
    assert len(calls) == 2
    bigger = replace(cfg, train=replace(cfg.train, batch_size=2 * cfg.train.batch_size))
    again = runner.step_costs(tmp_path, bigger, spec, {}, 1.0, "seconds")
    assert len(calls) == 4 and again["kd_t2"] == pytest.approx(2 * first["kd_t2"])


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "last.safetensors"))


def _histories(out: Path) -> dict:
    return {p.parent.name: [ln for ln in p.read_text().splitlines() if '"val"' not in ln]
            for p in sorted((out / "runs").glob("*/history.jsonl"))}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lockstep_runs_end_bit_identical_to_runs_alone_and_resume_after_a_kill(
        tmp_path, monkeypatch):
    """Five arms of one seed (CE, KD, the method, the method + KD, the untrained-encoder
    control) trained side by side end with the same weights and logged losses as each trained
    alone, with a student whose dropout draws from the global RNG at every step; a group killed
    after its first checkpoint resumes to the same weights. The teacher runs once per batch."""
    import kaseg.engine.train as train_mod
    from kaseg.engine.tasks import ForwardMemo

    arms = {"baseline": None, "kd_t2": None, "ka": None, "ka_kd": None, "ctrl_random_ae": None}
    config = _config(tmp_path, arms)
    common = ["model.name=deeplabv3:tu-mobilenetv2_050", "model.output_stride=16",
              "model.decoder_channels=32", "train.iters=4", "train.val_every=2",
              "compare.seeds=1"]
    solo, together, killed = tmp_path / "solo", tmp_path / "together", tmp_path / "killed"
    assert main(["compare", "--config", str(config), "--out", str(solo), "--seeds", "1",
                 "--no-lockstep", *common[:-1]]) == 0
    memos = {}
    real_call = ForwardMemo.__call__

    def counting(self, module, x):
        memos[id(self)] = self
        return real_call(self, module, x)

    monkeypatch.setattr(ForwardMemo, "__call__", counting)
    assert main(["compare", "--config", str(config), "--out", str(together), "--seeds", "1",
                 *common[:-1]]) == 0
    runs = sorted(p.name for p in (solo / "runs").iterdir())
    assert runs == ["baseline-s0", "ctrl_random_ae-x0.3-s0", "ka-x0.3-s0", "ka_kd-x0.3-s0",
                    "kd_t2-s0"]
    for run in runs:
        a, b = _weights(solo / "runs" / run), _weights(together / "runs" / run)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), run
    assert _histories(solo) == _histories(together)
    # per step: the teacher called by 4 arms (3 reuse its output), the trained encoder by 2
    # (1 reuses), the control's untrained encoder by 1
    assert sorted((m.calls, m.hits) for m in memos.values()) == [(4, 0), (8, 4), (16, 12)]

    # killed at the 3rd iteration (after the checkpoint of iteration 2), then run again
    real_step = train_mod._step

    def dies(t, batch, it, progress):
        if it == 3 and "kd_t2" in str(t.folder):
            raise KeyboardInterrupt
        return real_step(t, batch, it, progress)

    monkeypatch.setattr(train_mod, "_step", dies)
    assert main(["compare", "--config", str(config), "--out", str(killed), "--seeds", "1",
                 *common[:-1]]) == 130  # "interrupted; re-run the same command to resume"
    assert json.loads((killed / "runs" / "ka-x0.3-s0" / "history.jsonl").read_text()
                      .splitlines()[-1])["iter"] == 2
    monkeypatch.setattr(train_mod, "_step", real_step)
    assert main(["compare", "--config", str(config), "--out", str(killed), "--seeds", "1",
                 *common[:-1]]) == 0
    for run in runs:
        a, b = _weights(solo / "runs" / run), _weights(killed / "runs" / run)
        assert all(torch.equal(a[k], b[k]) for k in a), run
    assert _histories(solo) == _histories(killed)


BOOM = {"label": "KD, a weight that overflows", "distill": {"losses": {"kd": {"weight": 1e300}}}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_diverging_arm_stops_alone_in_both_modes_and_is_retried_only_when_asked(tmp_path,
                                                                                capsys):
    """An arm whose weight overflows fails at each seed; CE only and KD finish, with the same
    weights in lockstep and one after another; the report lists the failed runs with why; a
    re-run leaves them alone, --retry-failed runs them again."""
    config = _config(tmp_path, {"baseline": None, "kd_t2": None, "kd_boom": BOOM})
    outs = {mode: tmp_path / mode for mode in ("lockstep", "alone")}
    for mode, out in outs.items():
        flags = ["--no-lockstep"] if mode == "alone" else []
        assert main(["compare", "--config", str(config), "--out", str(out), *flags]) == 0
        for seed in (0, 1):
            boom = out / "runs" / f"kd_boom-s{seed}"
            failed = json.loads((boom / "failed.json").read_text())
            assert failed["term"] == "kd" and failed["iter"] == 1 and failed["weight"] == 1e300
            assert "distill.losses.kd.weight" in failed["message"]
            assert not (boom / "metrics.json").exists()
            for arm in ("baseline", "kd_t2"):
                assert (out / "runs" / f"{arm}-s{seed}" / "metrics.json").exists()
        results = json.loads((out / "results.json").read_text())
        assert sorted(results["failed"]) == ["runs/kd_boom-s0", "runs/kd_boom-s1"]
        assert [(r["arm"], r["n"]) for r in results["rows"]] == [("baseline", 2), ("kd_t2", 2)]
        report = (out / "report.md").read_text()
        assert "**Diverged (2)**" in report and "`runs/kd_boom-s1`: " in report
    for run in ("baseline-s0", "kd_t2-s0", "baseline-s1", "kd_t2-s1"):
        a, b = (_weights(outs[m] / "runs" / run) for m in outs)
        assert all(torch.equal(a[k], b[k]) for k in a), run
    stamp = lambda: (outs["lockstep"] / "runs" / "kd_boom-s0" / "failed.json").stat().st_mtime_ns
    before = stamp()
    assert main(["compare", "--config", str(config), "--out", str(outs["lockstep"])]) == 0
    assert stamp() == before  # not retried
    assert main(["compare", "--config", str(config), "--out", str(outs["lockstep"]),
                 "--retry-failed"]) == 0
    assert stamp() != before  # retried (and diverged again)
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_another_weight_scale_trains_only_the_arms_it_changes_and_force_keeps_shared_stages(
        tmp_path, capsys):
    """Runs whose config depends on the method's weight scale are named by it: a comparison at
    another scale (what a re-tune that picks another one does) trains the method's arms anew and
    reuses CE only, the teacher and the autoencoder; a folder named before the scale was in the
    names is adopted; --force restarts the runs, never a shared stage."""
    config = _config(tmp_path, {"baseline": None, "ka": None})
    out = tmp_path / "cmp"
    base = ["compare", "--config", str(config), "--out", str(out), "--seeds", "1"]
    assert main([*base, "--weight-scales", "0.3"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["baseline-s0", "ka-x0.3-s0"]
    kept = {p: (out / p).stat().st_mtime_ns for p in
            ("teacher/checkpoint.pt", "ae/checkpoint.pt", "runs/baseline-s0/checkpoint.pt")}
    assert main([*base, "--weight-scales", "3"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "baseline-s0", "ka-x0.3-s0", "ka-x3-s0"]
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept  # nothing else retrained
    cfg3 = yaml.safe_load((out / "runs" / "ka-x3-s0" / "config.yaml").read_text())
    assert cfg3["distill"]["losses"]["adapt"]["weight"] == pytest.approx(150.0)
    # a run folder an earlier kaseg named without the scale is adopted, not retrained
    (out / "runs" / "ka-x3-s0").rename(out / "runs" / "ka-s0")
    stamp = (out / "runs" / "ka-s0" / "checkpoint.pt").stat().st_mtime_ns
    assert main([*base, "--weight-scales", "3"]) == 0
    assert (out / "runs" / "ka-x3-s0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert not (out / "runs" / "ka-s0").exists()
    # --force restarts the runs and keeps the shared stages
    assert main([*base, "--weight-scales", "3", "--force"]) == 0
    assert (out / "runs" / "ka-x3-s0" / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert all((out / p).stat().st_mtime_ns == kept[p] for p in kept if "runs" not in p)
    # a shared stage asked with another config is an error naming its folder, even with --force
    capsys.readouterr()
    assert main([*base, "--weight-scales", "3", "--force", "teacher.iters=5"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'teacher'}: this shared stage was trained with a different config" in err
    assert "delete" in err
    assert (out / "teacher" / "checkpoint.pt").stat().st_mtime_ns == kept["teacher/checkpoint.pt"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_field_methods_with_the_compute_matched_control_count_each_arms_cost(
        tmp_path, capsys):
    """The field's methods (those of ``--arms field`` that read features, relations or memory
    banks; CWD and the method + KD, whose costs add nothing new, are left out to keep the test
    short) and the compute-matched CE control, whose schedule is stretched by the largest
    training-FLOPs ratio of a distilling arm (estimated before any run, equal to what the runs
    then record); the table has each arm's cost and its difference to the compute-matched
    control. (``--arms field`` expands as ``spec_from`` shows above.)"""
    config = _config(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--out", str(out), "--arms", "kd_t2",
                 "dist", "cirkd", "af_dcd", "ka", "ce_matched"]) == 0
    results = json.loads((out / "results.json").read_text())
    arms = [r["arm"] for r in results["rows"]]
    assert arms == ["baseline", "kd_t2", "dist", "cirkd", "af_dcd", "ka", "ce_matched"]
    est = {k: v["flops"] for k, v in json.loads((out / "costs.json").read_text()).items()}
    for arm in ("baseline", "kd_t2", "dist", "cirkd", "af_dcd", "ka"):  # the estimate is
        # what the run records
        folder = next((out / "runs").glob(f"{arm}-*s0"))
        assert json.loads((folder / "cost.json").read_text())["train_gflops_per_iter"] * 1e9 \
            == pytest.approx(est[arm], rel=1e-12)
    assert est["ka"] > est["kd_t2"] > est["baseline"]
    ratio = max(est[a] / est["baseline"] for a in ("kd_t2", "dist", "cirkd", "af_dcd", "ka"))
    iters = round(3 * ratio)
    assert iters > 3 and (out / "runs" / f"ce_matched-i{iters}-s1" / "metrics.json").exists()
    assert results["compute_matched"]["iters"] == iters
    assert results["compute_matched"]["ratio"] == pytest.approx(ratio)
    rows = {r["arm"]: r for r in results["rows"]}
    assert rows["ce_matched"]["train_gflops_x"] == pytest.approx(iters / 3, rel=1e-9)
    assert rows["cirkd"]["train_gflops_x"] == pytest.approx(est["cirkd"] / est["baseline"])
    for arm in ("kd_t2", "ka"):
        d = rows[arm]["diff_matched"]
        diffs = [a - b for a, b in zip(rows[arm]["values"], rows["ce_matched"]["values"])]
        assert d["mean"] == pytest.approx(sum(diffs) / 2) and d["n"] == 2
    report = (out / "report.md").read_text()
    assert "Δ vs CE compute-matched [95% CI]" in report and "cost x CE only" in report
    assert f"CE only for {iters} iterations" in report
    assert ("than training the student longer for the compute of the costliest arm (`"
            f"{results['compute_matched']['costliest']}`, {ratio:.2f}x) on this data") in report
    capsys.readouterr()


def test_kaseg_info_lists_the_arms_and_the_groups_beside_them(capsys):
    assert main(["info", "--arms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "arms:" and "groups (--arms NAME):" in lines
    rows = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert set(ARMS) | set(ARM_GROUPS) == set(rows)
    assert rows["field"].split()[1:] == ARM_GROUPS["field"] == [
        "baseline", "kd_t2", "kd_ls", "cwd", "dist", "cirkd", "af_dcd", "maskd", "ka", "ka_kd"]
    assert "CE + CIRKD (cross-image relations) + KD (T = 1)" in rows["cirkd"]
    assert rows["ce_matched"].endswith("[compute-matched control]")


def test_tune_weights_scales_only_the_arms_own_losses_from_their_defaults():
    cfg = arm_config(load_config(None), "cirkd", 0)
    x3 = tune_weights(cfg, ARMS["cirkd"], 3.0).distill
    assert {n: e["weight"] for n, e in x3.losses.items()} == {
        "kd": 1.0, "cirkd_batch": 3.0, "cirkd_memory": pytest.approx(0.3)}  # KD stays at its 1
    assert tune_weights(cfg, ARMS["cirkd"], 1.0) is cfg  # x1: the authors' setting, one run
    with pytest.raises(KasegError, match=r"compare.arms 'my': tuned loss\(es\) \['cwd'\] are not "
                       r"among its distill.losses"):
        arm_from_yaml("my", {"distill": {"losses": {"kd": {}}}, "tuned": ["cwd"]}, "exp.yaml")
    mine = arm_from_yaml("my", {"distill": {"losses": {"kd": {}}}, "tuned": ["kd"]}, "e.yaml")
    assert mine.tuned == ("kd",)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_tuned_arm_trains_at_its_own_best_weight(tmp_path, capsys):
    """With tuning on, DIST's weight is tuned on the tuning seeds like the method's: each scale
    one run per tuning seed, the best mean mIoU chosen, the reported runs trained at it (their
    folder names it), and the report and results.json say so."""
    config = _config(tmp_path, {"baseline": None, "dist": None})
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--out", str(out), "--seeds", "1",
                 "--tune-seeds", "100", "--weight-scales", "0.5", "2"]) == 0
    scores = {}
    for k in ("0.5", "2"):
        run = out / "tuning" / f"dist-x{k}-s100"
        assert yaml.safe_load((run / "config.yaml").read_text())["distill"]["losses"] == {
            "dist": {"weight": float(k), "temperature": 1.0, "inter_weight": 1.0,
                     "intra_weight": 1.0, "grid": "teacher"}}
        scores[k] = _last_miou(run)
    chosen = max(["0.5", "2"], key=scores.get)
    run = out / "runs" / f"dist-x{chosen}-s0"
    assert yaml.safe_load((run / "config.yaml").read_text())["distill"]["losses"]["dist"][
        "weight"] == float(chosen)
    results = json.loads((out / "results.json").read_text())
    assert results["arm_tuning"]["dist"]["scale"] == float(chosen)
    assert results["arm_tuning"]["dist"]["scores"] == {k: [v] for k, v in scores.items()}
    row = next(ln for ln in (out / "report.md").read_text().splitlines()
               if ln.startswith("| `dist` | dist |"))
    assert row.endswith(f"| x{chosen} |") and f"{100 * scores['2']:.2f}" in row
    assert (out / "runs" / "baseline-s0" / "metrics.json").exists()  # CE only: not tuned
    # no arm uses the method: its weights are not tuned and no autoencoder is trained
    assert not (out / "tuning" / "ka-x0.5-s100").exists() and not (out / "ae").exists()
    assert "The method's weights" not in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_budgets_train_in_lockstep_as_alone_and_the_report_draws_the_frontier(
        tmp_path, monkeypatch, capsys):
    """CE only and KD at budgets 1 and 2, CE only also where each KD run's cost needs it: the
    plan lists every budget run, the runs of a seed trained in one lockstep group end with the
    weights each has alone, and results.json holds the frontier in three accountings (the
    teacher's training counted, since the comparison trained it), with frontier.png."""
    import kaseg.compare.runner as runner_mod

    monkeypatch.setattr(runner_mod, "estimate_step_flops", lambda c: 3 if c.distill.losses else 1)
    monkeypatch.setattr(runner_mod, "estimate_step_seconds",
                        lambda c: 1.5 if c.distill.losses else 1.0)
    config = _config(tmp_path, {"baseline": None, "kd_t2": None})
    common = ["--seeds", "2", "--budgets", "1", "2"]
    together, alone = tmp_path / "together", tmp_path / "alone"
    assert main(["compare", "--config", str(config), "--out", str(together), "--plan",
                 *common]) == 0
    plan = (together / "plan-arms.txt").read_text()
    # KD at 1 costs 3 CE iterations-worth: CE at 4 (FLOPs; 3 would be the grid's 4) and 2 (s)
    names = ["baseline-s0", "baseline-b2-s0", "baseline-b4-s0", "baseline-b8-s0",
             "kd_t2-s0", "kd_t2-b2-s0"]
    assert [ln.split("--out ")[1].split("/runs/")[1] for ln in plan.splitlines()
            if ln.endswith("-s0")] == names
    assert main(["compare", "--config", str(config), "--out", str(together), *common]) == 0
    assert main(["compare", "--config", str(config), "--out", str(alone), "--no-lockstep",
                 *common]) == 0
    for run in names:
        a, b = _weights(alone / "runs" / run), _weights(together / "runs" / run)
        assert all(torch.equal(a[k], b[k]) for k in a), run
    assert json.loads((together / "runs" / "baseline-b8-s0" / "cost.json").read_text())[
        "iters"] == 24
    fr = json.loads((together / "results.json").read_text())["frontier"]
    assert fr["budgets"] == [1.0, 2.0] and fr["ce_budgets"] == [1.0, 2.0, 4.0, 8.0]
    kd2 = next(p for p in fr["points"] if (p["arm"], p["budget"]) == ("kd_t2", 2.0))
    assert set(kd2["vs_ce"]) == {"flops", "seconds", "flops_teacher"}
    # planned from the stand-in estimates (3x), judged by the measured cost (8.6x: the tiny
    # teacher's forward): CE only's largest run, 8 units, does not reach it, and says so
    flops = kd2["vs_ce"]["flops"]
    assert (flops["reached"], flops["largest_budget"]) == (False, 8.0)
    kd1 = next(p for p in fr["points"] if (p["arm"], p["budget"]) == ("kd_t2", 1.0))
    assert kd1["vs_ce"]["seconds"]["reached"] and kd1["vs_ce"]["seconds"]["more"] >= 1.0
    assert fr["teacher_training_gflops"] > 0
    assert kd2["cost"]["flops_teacher"] == pytest.approx(kd2["cost"]["flops"] +
                                                         fr["teacher_training_gflops"])
    assert (together / "frontier.png").stat().st_size > 10_000
    report = (together / "report.md").read_text()
    assert "Budget 2 (6 iterations):" in report and "**Frontier verdict" in report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_teacher_cache_is_one_shared_stage_every_run_trains_from_and_the_report_counts_it(
        tmp_path, monkeypatch, capsys):
    """``distill.teacher_cache`` in a comparison: one shared stage (listed by --plan and by
    Slurm's --dry-run, before the seeds) holding every output any arm reads; every run, CE only
    included, trains from its pool of views, lockstep equal to runs alone; the report gives the
    cache's one-off cost and the frontier a fourth accounting, the teacher cached."""
    import kaseg.compare.runner as runner_mod

    monkeypatch.setattr(runner_mod, "estimate_step_flops", lambda c: 3 if c.distill.losses else 1)
    config = _config(tmp_path, {"baseline": None, "kd_t2": None, "ka": None})
    data = yaml.safe_load(config.read_text())
    data["distill"] = {"teacher_cache": {"views": 2, "dtype": "float32"}}
    config.write_text(yaml.safe_dump(data))
    common = ["--seeds", "1", "--budgets", "1", "2"]
    out, alone = tmp_path / "cmp", tmp_path / "alone"
    assert main(["compare", "--config", str(config), "--out", str(out), "--plan", *common]) == 0
    shared = (out / "plan-shared.txt").read_text().splitlines()
    assert [ln.split()[1] for ln in shared] == ["train", "train-ae", "cache-teacher"]
    stage = yaml.safe_load(Path(shared[2].split("--config ")[1].split()[0]).read_text())
    assert stage["distill"]["teacher_cache"]["outputs"] == ["features.pre_logits",
                                                            "head_logits"]
    capsys.readouterr()
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "dry"),
                 "--executor", "slurm", "--dry-run", *common]) == 0
    assert "shared teacher-cache" in capsys.readouterr().out
    assert main(["compare", "--config", str(config), "--out", str(out), *common]) == 0
    assert main(["compare", "--config", str(config), "--out", str(alone), "--no-lockstep",
                 *common]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert "baseline-s0" in runs and "kd_t2-b2-s0" in runs
    for run in runs:
        a, b = _weights(alone / "runs" / run), _weights(out / "runs" / run)
        assert all(torch.equal(a[k], b[k]) for k in a), run
        cost = json.loads((out / "runs" / run / "cost.json").read_text())
        assert cost["teacher_cache"] == str(out / "teacher-cache")
        # CE only runs no teacher live either; KD's step skips the teacher's forward
        assert (cost["teacher_gflops_per_iter"] > 0) == (not run.startswith("baseline"))
    results = json.loads((out / "results.json").read_text())
    cache = results["teacher_cache"]
    assert (cache["images"], cache["views"]) == (10, 2) and cache["teacher_gflops"] > 0
    assert cache["runs"] == [f"runs/{r}" for r in runs]
    kd = next(p for p in results["frontier"]["points"] if (p["arm"], p["budget"]) ==
              ("kd_t2", 1.0))
    assert kd["cost"]["flops_cached"] < kd["cost"]["flops"]
    assert "flops_cached" in kd["vs_ce"]
    report = (out / "report.md").read_text()
    assert "Teacher cache: 10 images x 2 views" in report
    assert "Δ vs CE only at the same FLOPs, teacher cached" in report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_maskd_arm_gets_its_mask_stage_once_as_a_shared_stage_and_trains_from_it(
        tmp_path, capsys):
    """MasKD's receptive tokens are a shared stage (``train-masks``, listed by --plan, trained
    once, until their val loss stops falling), and the arm distils through them; without the
    stage a MasKD run is a one-line error naming the key."""
    config = _config(tmp_path, {"baseline": None, "kd_t2": None})
    out = tmp_path / "cmp"
    # a comparison made before its MasKD arm: adding the arm reuses every finished run
    assert main(["compare", "--config", str(config), "--out", str(out), "--seeds", "2"]) == 0
    before = (out / "runs" / "kd_t2-s0" / "last.safetensors").stat().st_mtime_ns
    data = yaml.safe_load(config.read_text())
    data["compare"]["arms"].update(kd_ls=None, maskd=None)
    data["masks"] = {"iters": 6, "val_every": 2, "patience": 1, "tokens": 8}
    config.write_text(yaml.safe_dump(data))
    # 3 classes cannot hold the authors' 8 tokens: refused before anything trains
    assert main(["compare", "--config", str(config), "--out", str(out), "--seeds", "2"]) == 2
    assert "arm 'maskd': masks.tokens=8 but the teacher's logits have 3 channels" in \
        capsys.readouterr().err
    assert not (out / "masks").exists()
    del data["masks"]["tokens"]  # the default: the authors' 8, at most the 3 classes
    config.write_text(yaml.safe_dump(data))
    assert main(["compare", "--config", str(config), "--out", str(out), "--plan", "--seeds",
                 "2"]) == 0
    shared = (out / "plan-shared.txt").read_text().splitlines()
    assert [ln.split()[1] for ln in shared] == ["train-masks"]  # the teacher is done
    capsys.readouterr()
    assert main(["compare", "--config", str(config), "--out", str(out), "--seeds", "2",
                 "--executor", "slurm", "--dry-run"]) == 0
    assert "shared masks" in capsys.readouterr().out
    assert main(["compare", "--config", str(config), "--out", str(out), "--seeds", "2"]) == 0
    assert (out / "runs" / "kd_t2-s0" / "last.safetensors").stat().st_mtime_ns == before
    rows = {r["arm"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["kd_ls"]["n"] == rows["maskd"]["n"] == 2  # both, on 2 paired seeds
    assert "MasKD's mask stage: 3 receptive tokens on the teacher's 3 logit channels" in (
        out / "report.md").read_text()
    m = json.loads((out / "masks" / "metrics.json").read_text())
    assert (m["tokens"], m["channels"], m["kind"]) == (3, 3, "mask_tokens")
    assert 2 <= m["iters"] <= 6 and m["val"]["loss"] == pytest.approx(-m["val"]["score"])
    history = [json.loads(ln) for ln in (out / "masks" / "history.jsonl").read_text().splitlines()]
    assert {"ce", "diversity"} <= set(next(h for h in history if "ce" in h))
    run = out / "runs" / "maskd-s0"
    assert (run / "metrics.json").exists()
    losses = [json.loads(ln) for ln in (run / "history.jsonl").read_text().splitlines()]
    assert any(h.get("maskd", 0) > 0 for h in losses)
    cfg = load_config(config, [f"teacher.weights={out / 'teacher'}",
                               "distill.losses={maskd: {}}"])
    capsys.readouterr()
    assert main(["distill", "--config", str(config), "--out", str(tmp_path / "alone"),
                 f"teacher.weights={out / 'teacher'}", "distill.losses={maskd: {}}"]) == 2
    assert "masks.weights must name MasKD's trained receptive tokens" in capsys.readouterr().err
    assert cfg.masks.tokens is None
