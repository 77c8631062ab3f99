import json

import pytest
import torch

from kaseg.core.config import Config, TrainConfig
from kaseg.engine.experiment import load_config
from kaseg.data.synthetic import SyntheticScenes
from kaseg.data.transforms import EvalTransform
from kaseg.core.errors import KasegError
from kaseg.nets.models import build_model
from kaseg.engine.supervised import train_segmenter
from kaseg.engine.tasks import SegmentationTask
from kaseg.engine.train import InfiniteSampler, fit, poly_lr


def tiny_config(**over) -> Config:
    items = ["data.image_size=32", "data.crop_size=32", "data.train_count=16", "data.val_count=8",
             "train.iters=6", "train.batch_size=4", "train.val_every=3", "train.val_batch_size=8",
             "train.log_every=1", "train.device=cpu", "train.lr=0.02"]
    items += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, items)


def test_poly_schedule():
    f = poly_lr(100, 0.9)
    assert f(0) == 1.0 and f(100) == 0.0
    assert f(50) == pytest.approx(0.5 ** 0.9)


def test_infinite_sampler_resumes_in_place():
    full = InfiniteSampler(5, seed=1)
    it = iter(full)
    seq = [next(it) for _ in range(13)]
    assert sorted(seq[:5]) == list(range(5)) and sorted(seq[5:10]) == list(range(5))
    resumed = iter(InfiniteSampler(5, seed=1, start=7))
    assert [next(resumed) for _ in range(6)] == seq[7:13]
    shard = iter(InfiniteSampler(6, seed=1, rank=1, world=2))
    assert len({next(shard) for _ in range(3)}) == 3


def test_loss_falls_on_a_batch_the_model_overfits(tmp_path):
    torch.manual_seed(0)
    ds = SyntheticScenes("train", count=2, size=32, transform=EvalTransform())
    model = build_model("tiny-student", 8, output_stride=8)
    cfg = TrainConfig(iters=60, batch_size=2, lr=0.05, val_every=1000, log_every=1, device="cpu")
    fit(SegmentationTask(model), ds, cfg, tmp_path, seed=0, validate=lambda: {"miou": 0.0},
        export=lambda which: None)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "history.jsonl").read_text().splitlines()
              if "loss" in l]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


class Crash(SegmentationTask):
    """Fails on its n-th call, like a killed run."""

    def __init__(self, model, n):
        super().__init__(model)
        self.calls, self.n = 0, n

    def forward(self, images, targets):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("killed")
        return super().forward(images, targets)


def test_resume_continues_from_last_checkpoint(tmp_path):
    cfg = tiny_config()
    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    model = build_model("tiny-student", 8)
    calls = []
    with pytest.raises(RuntimeError, match="killed"):
        fit(Crash(model, 5), ds, cfg.train, tmp_path, seed=0,
            validate=lambda: calls.append(1) or {"miou": 0.1 * len(calls)}, export=lambda w: None)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iter"] == 3
    task = Crash(build_model("tiny-student", 8), 100)
    out = fit(task, ds, cfg.train, tmp_path, seed=0,
              validate=lambda: calls.append(1) or {"miou": 0.1 * len(calls)}, export=lambda w: None)
    assert task.calls == 3  # iterations 4..6 only
    assert out["iters"] == 6 and out["best_iter"] == 6
    iters = [json.loads(l)["iter"] for l in (tmp_path / "history.jsonl").read_text().splitlines()
             if "loss" in l]
    assert iters == [1, 2, 3, 4, 5, 6]  # the crashed run's iteration 4 was trimmed and redone


def test_train_segmenter_writes_a_complete_run(tmp_path):
    run = tmp_path / "run"
    result = train_segmenter(tiny_config(), run)
    for name in ("config.yaml", "best.safetensors", "last.safetensors", "best.json",
                 "checkpoint.pt", "metrics.json", "history.jsonl"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir())
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_miou"] == result["best_miou"] == result["val"]["miou"]
    assert 0 <= saved["best_miou"] <= 1
    # same command again: nothing left to do, same result
    assert train_segmenter(tiny_config(), run)["best_miou"] == result["best_miou"]


def test_validating_midway_changes_no_weight(tmp_path):
    """Checkpoints (and validations) may be added to a long run without moving its numbers: the
    study's long regimes rely on it."""
    from safetensors.torch import load_file

    end, midway = tmp_path / "end", tmp_path / "midway"
    train_segmenter(tiny_config(**{"train.val_every": 6}), end)
    train_segmenter(tiny_config(**{"train.val_every": 2}), midway)
    a, b = load_file(end / "last.safetensors"), load_file(midway / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vals = [json.loads(l)["iter"] for l in (midway / "history.jsonl").read_text().splitlines()
            if '"val"' in l]
    assert vals == [2, 4, 6]


def test_nonfinite_loss_names_term_and_iteration(tmp_path):
    class NaNTask(SegmentationTask):
        def forward(self, images, targets):
            out = super().forward(images, targets)
            return {"loss": out["loss"] * float("nan"), "ce": out["ce"]}

    ds = SyntheticScenes("train", count=4, size=32, transform=EvalTransform())
    with pytest.raises(KasegError, match="loss term 'loss' is nan at iteration 1"):
        fit(NaNTask(build_model("tiny-student", 8)), ds, tiny_config().train, tmp_path, seed=0,
            validate=lambda: {"miou": 0}, export=lambda w: None)


def test_changed_config_is_refused_and_nothing_overwritten(tmp_path):
    run = tmp_path / "run"
    train_segmenter(tiny_config(), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(KasegError, match=r"different config \(train.lr\)"):
        train_segmenter(tiny_config(**{"train.lr": 0.5}), run)
    with pytest.raises(KasegError, match="unknown model"):
        train_segmenter(tiny_config(**{"model.name": "nope"}), run, force=True)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert before == after


def test_augmentation_depends_on_sample_position_only_not_on_workers_or_resume():
    from torch.utils.data import DataLoader

    from kaseg.data.transforms import TrainTransform
    from kaseg.engine.train import SeededSamples

    ds = SyntheticScenes("train", count=6, size=32, transform=TrainTransform(24, 0.5, 2.0, True, 0.2))

    def batches(workers, start=0, n=4):
        loader = DataLoader(SeededSamples(ds, seed=3), batch_size=2, num_workers=workers,
                            sampler=InfiniteSampler(6, 3, start, positions=True),
                            generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        return [next(it) for _ in range(n)]

    torch.manual_seed(123)
    before = torch.get_rng_state()
    ref = batches(0)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is not touched
    for other in (batches(2), batches(0, start=4, n=2)):
        offset = len(ref) - len(other)
        for (x, y), (x2, y2) in zip(ref[offset:], other):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(ref[0][0], ref[1][0])  # different samples, different augmentation


def test_skip_nonfinite_skips_and_counts(tmp_path):
    class SometimesNaN(SegmentationTask):
        calls = 0

        def forward(self, images, targets):
            out = super().forward(images, targets)
            SometimesNaN.calls += 1
            if SometimesNaN.calls in (2, 4):
                return {"loss": out["loss"] * float("inf"), "ce": out["ce"]}
            return out

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    model = build_model("tiny-student", 8)
    snapshots = []

    class Spy(SometimesNaN):
        def forward(self, images, targets):
            snapshots.append(next(model.parameters()).detach().clone())
            return super().forward(images, targets)

    cfg = tiny_config(**{"train.skip_nonfinite": "true"}).train
    out = fit(Spy(model), ds, cfg, tmp_path, seed=0, validate=lambda: {"miou": 0.5},
              export=lambda w: None)
    assert out["skipped"] == 2
    assert torch.equal(snapshots[2], snapshots[1])  # step 2 skipped: no update before step 3
    assert not torch.equal(snapshots[1], snapshots[0])  # step 1 did update
    logged = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in logged if "loss" in r] == [0, 1, 1, 2, 2, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _train_cmd(out, *extra):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return [sys.executable, "-m", "kaseg", "train", "--config",
            str(root / "configs" / "synthetic_tiny.yaml"), "--out", str(out),
            "data.image_size=32", "data.crop_size=32", "data.train_count=32", "data.val_count=8",
            "train.iters=15", "train.val_every=3", "train.batch_size=4", "train.val_batch_size=8",
            "train.log_every=1", "train.device=cpu", "deterministic=true", "data.num_workers=1",
            *extra]


# Runs `kaseg train` with the first checkpoint save followed by a marker file and a wait: the
# test kills the process at exactly that point, however loaded the machine is.
_PAUSE_AFTER_FIRST_CHECKPOINT = """
import sys, time
from pathlib import Path
import kaseg.engine.train as train
real_save = train.save_state
def save_then_wait(path, state):
    real_save(path, state)
    Path(sys.argv[1]).write_text(str(state["iter"]))
    time.sleep(600)
train.save_state = save_then_wait
from kaseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    env = dict(os.environ)  # both runs with the same threads (conftest.py's)
    ref, killed, marker = tmp_path / "ref", tmp_path / "killed", tmp_path / "saved"
    subprocess.run(_train_cmd(ref), check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-c", _PAUSE_AFTER_FIRST_CHECKPOINT, str(marker),
                             *_train_cmd(killed)[3:]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not marker.exists():  # written after the checkpoint's atomic rename
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before a checkpoint"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert state["iter"] == 3 == int(marker.read_text())  # the first checkpoint, of 5
    subprocess.run(_train_cmd(killed), check=True, env=env, capture_output=True)  # resumes
    a, b = load_file(ref / "last.safetensors"), load_file(killed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "metrics.json").read_text() == (killed / "metrics.json").read_text()
    losses = [[json.loads(l) for l in (r / "history.jsonl").read_text().splitlines()]
              for r in (ref, killed)]
    assert losses[0] == losses[1]


def test_channels_last_trains_like_the_default_layout(tmp_path):
    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    histories = []
    for i, cl in enumerate((False, True)):
        torch.manual_seed(0)
        task = SegmentationTask(build_model("tiny-student", 8))
        cfg = tiny_config(**{"train.channels_last": str(cl).lower()}).train
        fit(task, ds, cfg, tmp_path / str(i), seed=0, validate=lambda: {"miou": 0.0},
            export=lambda w: None)
        histories.append([json.loads(l)["loss"] for l in
                          (tmp_path / str(i) / "history.jsonl").read_text().splitlines()
                          if "loss" in l])
    # same first step (later steps drift apart by rounding, amplified by training)
    assert histories[1][0] == pytest.approx(histories[0][0], rel=1e-4)
    # and the same gradients from the same weights, in either memory layout (eval-mode BatchNorm:
    # train-mode batch statistics are reduced in another order, which moves fresh-init gradients
    # by up to ~2% through BatchNorm's backward)
    torch.manual_seed(0)
    model = build_model("tiny-student", 8).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 8, (2, 32, 32))
    grads = []
    for cl in (False, True):
        model.zero_grad()
        m = model.to(memory_format=torch.channels_last) if cl else model
        inp = x.contiguous(memory_format=torch.channels_last) if cl else x
        torch.nn.functional.cross_entropy(m(inp)["logits"], y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


def test_a_non_finite_diagnostic_does_not_stop_a_finite_step(tmp_path):
    """Only the back-propagated loss decides a step's fate: an inf diagnostic (a ratio to a CE of
    exactly 0) is logged, and the run trains on."""
    class InfDiagnostic(SegmentationTask):
        def forward(self, images, targets):
            out = super().forward(images, targets)
            return {**out, "kd_ratio": torch.tensor(float("inf"))}

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    model = build_model("tiny-student", 8)
    before = next(model.parameters()).detach().clone()
    out = fit(InfDiagnostic(model), ds, tiny_config().train, tmp_path, seed=0,
              validate=lambda: {"miou": 0.5}, export=lambda w: None)
    assert out["iters"] == 6 and out["skipped"] == 0
    assert not torch.equal(next(model.parameters()).detach(), before)


def test_a_non_finite_loss_names_the_term_that_made_it(tmp_path):
    class BadTerm(SegmentationTask):
        def forward(self, images, targets):
            out = super().forward(images, targets)
            bad = out["ce"] * float("nan")
            return {"loss": out["loss"] + bad, "ce": out["ce"], "affinity": bad}

    ds = SyntheticScenes("train", count=4, size=32, transform=EvalTransform())
    with pytest.raises(KasegError, match="loss term 'affinity' is nan at iteration 1"):
        fit(BadTerm(build_model("tiny-student", 8)), ds, tiny_config().train, tmp_path, seed=0,
            validate=lambda: {"miou": 0}, export=lambda w: None)


def test_a_batch_without_a_labelled_pixel_is_zero_not_nan():
    model = build_model("tiny-student", 4)
    x = torch.randn(2, 3, 32, 32)
    y = torch.full((2, 32, 32), 255)
    out = SegmentationTask(model)(x, y)
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)


def _dropout_student(seed: int = 0):
    """tiny-student with its ASPP dropout switched on (0.5): its training draws from the
    global RNG, so anything else that draws from it changes the weights."""
    torch.manual_seed(seed)
    model = build_model("tiny-student", 8)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops
    for m in drops:
        m.p = 0.5
    return model


def _weights_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_draws_nothing_from_the_global_rng(tmp_path):
    """A dropout student ends with the same weights whether it validates every 2 iterations or
    only at the end: evaluation's loader has its own generator."""
    from kaseg.engine.evaluate import evaluate

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    val = SyntheticScenes("val", count=4, size=32, transform=EvalTransform())
    weights = []
    for every in (6, 2):
        model = _dropout_student()
        cfg = tiny_config(**{"train.val_every": every}).train
        fit(SegmentationTask(model), ds, cfg, tmp_path / f"v{every}", seed=0,
            validate=lambda m=model: evaluate(m, val, 4), export=lambda w: None)
        weights.append(_weights_of(model))
    assert _same(*weights)


def test_a_fresh_job_after_a_resumed_one_starts_from_the_callers_rng(tmp_path):
    """TrainingRun.rng=None means the caller's RNG state, whatever the job before it resumed to: a
    fresh dropout job beside a resumed one ends as it does alone."""
    from kaseg.engine.train import TrainingRun, fit_lockstep, rng_state, set_rng_state

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    cfg = tiny_config(**{"train.val_every": 3}).train
    ok = dict(validate=lambda: {"miou": 0.0}, export=lambda w: None)
    fit(SegmentationTask(_dropout_student(1)), ds, tiny_config(**{"train.iters": 3}).train,
        tmp_path / "a", seed=0, **ok)  # a checkpoint at iteration 3 to resume from
    alone, fresh = _dropout_student(2), _dropout_student(2)
    resumed = SegmentationTask(_dropout_student(1))
    torch.manual_seed(123)
    caller = rng_state()
    fit(SegmentationTask(alone), ds, cfg, tmp_path / "alone", seed=0, **ok)
    set_rng_state(caller)
    jobs = [TrainingRun(resumed, tmp_path / "a", **ok), TrainingRun(SegmentationTask(fresh), tmp_path / "b", **ok)]
    fit_lockstep(jobs, ds, cfg, seed=0)
    assert jobs[0].progress.iter == 6
    assert _same(_weights_of(fresh), _weights_of(alone))


class _Overflowing(SegmentationTask):
    """CE plus a finite term 'kd' whose weight overflows float32 from iteration ``at`` on."""

    def __init__(self, model, at: int, weight: float = 1e300):
        super().__init__(model)
        self.at, self.weight, self.steps = at, weight, 0

    def term_weights(self):
        return {"kd": (self.weight, "distill.losses.kd.weight")}

    def forward(self, images, targets):
        out = super().forward(images, targets)
        self.steps += 1
        w = self.weight if self.steps >= self.at else 0.0
        kd = out["ce"] * 0 + 0.5
        return {"loss": out["loss"] + w * kd, "ce": out["ce"], "kd": kd,
                "kd_ratio": (w * kd / out["ce"]).detach()}


def test_a_weight_that_overflows_is_named_with_its_term_not_a_diagnostic(tmp_path):
    ds = SyntheticScenes("train", count=4, size=32, transform=EvalTransform())
    with pytest.raises(KasegError, match=r"loss term 'kd' is 0.5 but its weight "
                       r"distill.losses.kd.weight=1e\+300 times it .* overflows the loss at "
                       r"iteration 2: lower distill.losses.kd.weight") as e:
        fit(_Overflowing(build_model("tiny-student", 8), at=2), ds, tiny_config().train,
            tmp_path, seed=0, validate=lambda: {"miou": 0}, export=lambda w: None)
    assert "kd_ratio" not in str(e.value) and "train.lr" not in str(e.value)
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["term"] == "kd" and failed["iter"] == 2 and failed["weight"] == 1e300
    assert failed["values"]["kd"] == 0.5 and failed["values"]["loss"] == float("inf")


def test_a_diverging_job_stops_alone_and_the_others_finish_as_they_would_alone(tmp_path):
    from kaseg.engine.train import TrainingRun, fit_lockstep

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    cfg = tiny_config(**{"train.val_every": 3}).train
    ok = dict(validate=lambda: {"miou": 0.0}, export=lambda w: None)
    torch.manual_seed(0)
    alone = build_model("tiny-student", 8)
    fit(SegmentationTask(alone), ds, cfg, tmp_path / "alone", seed=0, **ok)
    torch.manual_seed(0)
    healthy = build_model("tiny-student", 8)
    torch.manual_seed(0)
    bad = _Overflowing(build_model("tiny-student", 8), at=5)
    jobs = [TrainingRun(bad, tmp_path / "bad", **ok), TrainingRun(SegmentationTask(healthy), tmp_path / "ok",
                                                  **ok)]
    summaries = fit_lockstep(jobs, ds, cfg, seed=0)
    assert summaries[0]["failed"]["iter"] == 5 and summaries[0]["iters"] == 4
    assert "failed" not in summaries[1] and summaries[1]["iters"] == 6
    assert _same(_weights_of(healthy), _weights_of(alone))
    assert json.loads((tmp_path / "bad" / "failed.json").read_text())["term"] == "kd"
    assert not (tmp_path / "ok" / "failed.json").exists()


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_history(tmp_path):
    """The records of an attempt killed before its first checkpoint are redone, not kept."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text("".join(json.dumps({"iter": i, "loss": 9.0}) + "\n"
                                               for i in (1, 2)))
    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    torch.manual_seed(0)
    fit(SegmentationTask(build_model("tiny-student", 8)), ds, tiny_config().train, run, seed=0,
        validate=lambda: {"miou": 0.0}, export=lambda w: None)
    iters = [json.loads(ln)["iter"] for ln in (run / "history.jsonl").read_text().splitlines()
             if '"val"' not in ln]
    assert iters == [1, 2, 3, 4, 5, 6]
    assert all(json.loads(ln).get("loss") != 9.0
               for ln in (run / "history.jsonl").read_text().splitlines())


def test_runs_of_other_lengths_share_the_stream_and_end_as_each_alone_even_after_a_kill(
        tmp_path, monkeypatch):
    """Budgets in lockstep: runs of 3, 5 and 8 iterations (each its own poly decay and
    validations; dropout draws from the global RNG) share one batch stream, the shorter ones
    leaving the group at their own end, and each ends with the weights it has trained alone; a
    group killed at iteration 5 resumes to the same weights."""
    from dataclasses import replace

    import kaseg.engine.train as train_mod
    from kaseg.engine.train import TrainingRun, fit_lockstep, rng_state

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    base = tiny_config(**{"train.val_every": 2}).train
    lengths = {3: 3, 5: 2, 8: 4}  # iterations: validation period
    ok = dict(validate=lambda: {"miou": 0.0}, export=lambda w: None)
    alone = {}
    for n, every in lengths.items():
        model = _dropout_student(n)
        fit(SegmentationTask(model), ds, replace(base, iters=n, val_every=every),
            tmp_path / f"alone{n}", seed=0, **ok)
        alone[n] = _weights_of(model)

    def group(folder, die_at=None):
        models, states = {}, {}
        for n in lengths:  # the same init, and the RNG state it leaves, as alone
            models[n] = _dropout_student(n)
            states[n] = rng_state()
        runs = [TrainingRun(SegmentationTask(models[n]), tmp_path / folder / str(n), **ok,
                            cfg=replace(base, iters=n, val_every=every), rng=states[n])
                for n, every in lengths.items()]
        for r in runs:
            r.folder.mkdir(parents=True, exist_ok=True)
        summaries = fit_lockstep(runs, ds, base, seed=0)
        return models, summaries

    models, summaries = group("together")
    assert [s["iters"] for s in summaries] == [3, 5, 8]
    assert all(_same(_weights_of(models[n]), alone[n]) for n in lengths)

    real_step = train_mod._step

    def dies(t, batch, it, progress):
        if it == 5:
            raise KeyboardInterrupt
        return real_step(t, batch, it, progress)

    monkeypatch.setattr(train_mod, "_step", dies)
    with pytest.raises(KeyboardInterrupt):
        group("killed")
    monkeypatch.setattr(train_mod, "_step", real_step)
    models, summaries = group("killed")  # resumes: 3 is done, 5 from 4, 8 from 4
    assert [s["iters"] for s in summaries] == [3, 5, 8]
    assert all(_same(_weights_of(models[n]), alone[n]) for n in lengths)


def test_a_lockstep_run_of_another_batch_size_is_refused(tmp_path):
    from dataclasses import replace

    from kaseg.engine.train import TrainingRun, fit_lockstep

    ds = SyntheticScenes("train", count=8, size=32, transform=EvalTransform())
    base = tiny_config().train
    ok = dict(validate=lambda: {"miou": 0.0}, export=lambda w: None)
    runs = [TrainingRun(SegmentationTask(build_model("tiny-student", 8)), tmp_path / n, **ok,
                        cfg=replace(base, batch_size=b)) for n, b in (("a", 2), ("b", 4))]
    with pytest.raises(KasegError, match=r"b: batch size 4 in a lockstep group of batch size 2"):
        fit_lockstep(runs, ds, replace(base, batch_size=2), seed=0)
