"""`kaseg compare --executor slurm`: its settings checked, `--dry-run`'s jobs and dependencies,
a seed's arms in lockstep under torchrun (DDP) bit for bit as each alone, and a tiny comparison
on a real one-node Slurm (munged, slurmctld, slurmd started here) whose report equals the local
one, with a job killed midway resubmitted and resumed by re-running the command."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kaseg.cli import main
from kaseg.compare.cluster import ComparisonJob, wait_for
from kaseg.compare.runner import spec_from
from kaseg.core.errors import KasegError
from kaseg.engine.experiment import load_config, read_section

SLURM = {"time_min": 10, "cpus_per_task": 2, "mem_gb": 1, "gpus_per_node": 0,
         "array_parallelism": 2}


def _config(tmp_path: Path, root: Path, iters: int = 30, **compare) -> Path:
    """CE, KD and the method, 2 paired seeds, the method's weight tuned on one seed."""
    cfg = {
        "data": {"dataset": "folder", "root": str(root), "crop_size": 24, "scale_min": 1.0,
                 "scale_max": 1.0},
        "model": {"name": "tiny-student"},
        "teacher": {"name": "tiny-teacher", "iters": 4, "lr": 0.05},
        "ae": {"min_iters": 3, "patience": None},
        "train": {"iters": iters, "batch_size": 2, "val_every": 5, "val_batch_size": 1,
                  "device": "cpu", "lr": 0.02, "log_every": 1},
        "compare": {"arms": ["baseline", "kd_t2", "ka"], "seeds": 2, "tune_seeds": [100],
                    "weight_scales": [0.3, 1], "slurm": SLURM, **compare},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _table(report: Path) -> list[str]:
    return [ln for ln in report.read_text().splitlines() if ln.startswith("| ")]


def _same_weights(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "runs").iterdir())
    assert names == sorted(p.name for p in (b / "runs").iterdir())
    for name in names:
        x, y = (load_file(str(d / "runs" / name / "last.safetensors")) for d in (a, b))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def test_slurm_settings_are_checked_like_every_other_key():
    spec = spec_from({"slurm": {"partition": "gpu", "gpus_per_node": 4, "setup": ["module "
                                                                                  "load cuda"]}})
    assert (spec.slurm.partition, spec.slurm.gpus_per_node, spec.slurm.setup) == (
        "gpu", 4, ["module load cuda"])
    assert spec.slurm.nodes == 1 and spec.slurm.account is None
    with pytest.raises(KasegError, match=r"exp.yaml: unknown config key 'compare.slurm.gpus'"):
        spec_from({"slurm": {"gpus": 2}}, "exp.yaml")
    with pytest.raises(KasegError, match=r"exp.yaml: compare: slurm.nodes must be >= 1, got 0"):
        spec_from({"slurm": {"nodes": 0}}, "exp.yaml")
    with pytest.raises(KasegError, match=r"'compare.slurm.setup' must be a list"):
        spec_from({"slurm": {"setup": "module load cuda"}}, "exp.yaml")
    with pytest.raises(KasegError, match=r"'compare.slurm.mem_gb' must be float"):
        spec_from({"slurm": {"mem_gb": "lots"}}, "exp.yaml")


def test_dry_run_prints_each_job_and_what_it_waits_for_and_submits_nothing(
        tmp_path, folder_dataset, capsys):
    config = _config(tmp_path, folder_dataset, slurm={**SLURM, "partition": "gpu"})
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--out", str(out), "--executor", "slurm",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"6 Slurm job(s), each asking for 1 node(s) x 0 GPU(s), 2 CPUs, 1 GB, "
                        f"10 min, partition gpu; logs in {out / 'slurm'}:")
    jobs = [re.split(r"\s{2,}", ln.strip()) for ln in lines[1:7]]
    assert jobs == [
        ["#1", "shared teacher", "at once: teacher"],
        ["#2", "shared ae", "after #1 (each succeeded): ae"],
        ["#3", "tuning seed 100", "array tuning, after #2 (each succeeded): "
         "tuning/ka-x0.3-s100, tuning/ka-x1-s100"],
        ["#4", "seed 0", "array seeds, after #3 (each succeeded): baseline (seed 0), "
         "kd_t2 (seed 0), ka (seed 0)"],
        ["#5", "seed 1", "array seeds, after #3 (each succeeded): baseline (seed 1), "
         "kd_t2 (seed 1), ka (seed 1)"],
        ["#6", "report", "after #1 #2 #3 #4 #5 (however they end): report.md, results.json"]]
    assert lines[7] == "--dry-run: nothing submitted" and not out.exists()
    # finished stages are not submitted again: with the teacher done, the autoencoder's job
    # starts at once
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "metrics.json").write_text("{}")
    assert main(["compare", "--config", str(config), "--out", str(out), "--executor", "slurm",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("5 Slurm job(s)")
    assert re.split(r"\s{2,}", lines[1].strip()) == ["#1", "shared ae", "at once: ae"]
    assert main(["compare", "--config", str(config), "--out", str(out), "--dry-run"]) == 2
    assert "--dry-run goes with --executor slurm" in capsys.readouterr().err
    assert main(["compare", "--config", str(config), "--out", str(out), "--executor", "slurm",
                 "--export-best"]) == 2
    assert "run the same command with --report --export-best" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_seeds_arms_in_lockstep_under_torchrun_equal_each_arm_alone_under_torchrun(
        tmp_path, folder_dataset):
    """The job a cluster runs with gpus_per_node=2 (torchrun, 2 gloo processes) trains CE, KD
    and the method in lockstep; each ends with the weights of the same arm trained alone by the
    same job with ``--no-lockstep``, bit for bit."""
    config = _config(tmp_path, folder_dataset, iters=4)
    cfg = load_config(config, ["train.val_every=2", "train.batch_size=4"])  # 2 images a process
    spec = spec_from(read_section(config, "compare"), str(config), weight_scales=[1.0])
    alone, together = tmp_path / "alone", tmp_path / "together"
    for shared in ("teacher", "ae"):  # one process; then the same shared stages for both
        ComparisonJob(alone, cfg, spec, "shared", shared)()
        shutil.copytree(alone / shared, together / shared)
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ComparisonJob(alone, cfg, spec, "seed", 0, procs=2, lockstep=False)()
        ComparisonJob(together, cfg, spec, "seed", 0, procs=2)()
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before
    assert sorted(p.name for p in (together / "runs").iterdir()) == [
        "baseline-s0", "ka-x1-s0", "kd_t2-s0"]
    _same_weights(alone, together)


# ---------------------------------------------------------------- a real one-node Slurm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(check, timeout: float, what: str, every: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


SLURM_CONF = """\
ClusterName=kaseg-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=600
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm on this machine: munged (unless one already answers),
    slurmctld and slurmd on localhost with a minimal slurm.conf (this machine's CPUs, half its
    memory). Starts and stops the daemons and installs nothing (``.ci/run`` installs Debian's
    slurm-wlm and munge); skipped, saying why, where they cannot start."""
    tools = {b: _binary(b) for b in ("munged", "munge", "slurmctld", "slurmd", "sbatch",
                                     "squeue", "scancel", "sinfo", "runuser")}
    missing = [b for b, p in tools.items() if p is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} not found; Debian: apt-get install "
                    "slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("starting munged, slurmctld and slurmd on this machine needs root")
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    procs = []
    log = open(d / "daemons.log", "w")

    def stop():
        subprocess.run([tools["scancel"], "--user", "root"], env=env, capture_output=True)
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()

    def munge_ok() -> bool:
        return subprocess.run([tools["munge"], "-n"], capture_output=True).returncode == 0

    host = socket.gethostname().split(".")[0]
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 ** 21
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, d=d, ctld_port=_free_port(),
                                      d_port=_free_port(), cpus=os.cpu_count(), mem_mb=mem_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        if not munge_ok():
            Path("/run/munge").mkdir(exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            procs.append(subprocess.Popen([tools["runuser"], "-u", "munge", "--",
                                           tools["munged"], "--foreground"], stdout=log,
                                          stderr=log))
            _until(munge_ok, 10, "munged")
        procs.append(subprocess.Popen([tools["slurmctld"], "-D", "-c", "-i"], env=env,
                                      stdout=log, stderr=log))
        procs.append(subprocess.Popen([tools["slurmd"], "-D", "-c", "-N", host], env=env,
                                      stdout=log, stderr=log))
        _until(lambda: subprocess.run([tools["sinfo"], "-h", "-o", "%t"], env=env,
                                      capture_output=True, text=True).stdout.strip() == "idle",
               30, "an idle node", every=0.5)
    except (AssertionError, OSError, LookupError) as e:
        stop()
        tail = "".join(f.read_text()[-600:] for f in d.glob("*.log") if f.exists())
        pytest.skip(f"the Slurm daemons did not start ({e}): {tail}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    yield d
    stop()
    if old is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = old


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_comparison_on_slurm_gives_the_local_report_and_resumes_a_job_killed_midway(
        slurm_cluster, tmp_path, folder_dataset, capsys):
    bad = _config(tmp_path, folder_dataset, slurm={**SLURM, "partition": "nope"})
    assert main(["compare", "--config", str(bad), "--out", str(tmp_path / "bad"), "--executor",
                 "slurm"]) == 2
    assert "Slurm refused job 'shared teacher' (" in capsys.readouterr().err
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == ""

    config = _config(tmp_path, folder_dataset, iters=15, weight_scales=[1])
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["compare", "--config", str(config), "--out", str(local)]) == 0
    cmd = ["compare", "--config", str(config), "--out", str(remote), "--executor", "slurm"]
    assert main(cmd) == 0
    jobs = {j["name"]: j for j in json.loads((remote / "slurm" / "jobs.json").read_text())}
    assert list(jobs) == ["shared teacher", "shared ae", "seed 0", "seed 1", "report"]
    seed1 = jobs["seed 1"]
    capsys.readouterr()
    assert main(cmd) == 2  # while they are queued, a second submission is refused
    assert "still queued or running" in capsys.readouterr().err

    # seed 1's job killed once its runs have saved a checkpoint: frozen there at once (Slurm
    # takes seconds to kill a cancelled job's processes), then cancelled
    _until(lambda: len(list((remote / "runs").glob("*-s1/checkpoint.pt"))) == 3, 300,
           "a checkpoint of each of seed 1's runs")
    subprocess.run(["scontrol", "suspend", seed1["job_id"]], check=True)
    subprocess.run(["scancel", seed1["job_id"]], check=True)
    wait_for(remote, [j["job_id"] for j in jobs.values()], every_s=0.5)
    killed = sorted((remote / "runs").glob("*-s1"))
    assert len(killed) == 3 and not any((r / "metrics.json").exists() for r in killed)
    report = (remote / "report.md").read_text()  # the report job ran all the same
    assert Path(seed1["log"]).exists()
    for run in killed:
        assert f"- `runs/{run.name}`: job {seed1['job_id']} (log {seed1['log']})" in report
    finished = {r.name: (r / "last.safetensors").stat().st_mtime_ns
                for r in (remote / "runs").glob("*-s0")}

    # re-running the command submits seed 1 (resumed) and the report, nothing else
    assert main([*cmd, "--wait"]) == 0
    again = json.loads((remote / "slurm" / "jobs.json").read_text())
    assert [j["name"] for j in again] == ["seed 1", "report"]
    assert finished == {r.name: (r / "last.safetensors").stat().st_mtime_ns
                        for r in (remote / "runs").glob("*-s0")}
    resumed = Path(again[0]["log"]).read_text()
    for run in killed:
        assert re.search(rf"resuming {re.escape(str(run))} from iteration [1-9]", resumed)
    _same_weights(local, remote)
    assert _table(remote / "report.md") == _table(local / "report.md")
    assert "Unfinished" not in (remote / "report.md").read_text()


def test_the_docs_dry_run_is_what_the_code_prints(tmp_path, capsys, monkeypatch):
    """docs/scale.md's `--dry-run` output is the current code's, for configs/compare_folder.yaml
    with the docs' `slurm:` block."""
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "scale.md").read_text()
    section = doc[doc.index("## A comparison on your cluster"):]
    block = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    shown = section.split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    cfg = yaml.safe_load((root / "configs" / "compare_folder.yaml").read_text())
    cfg["compare"]["slurm"] = block["compare"]["slurm"]
    (tmp_path / "my_experiment.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert shown[0] == ("$ kaseg compare --config my_experiment.yaml --out cmp --executor slurm "
                        "--dry-run")
    assert main(shown[0].split()[2:]) == 0
    assert capsys.readouterr().out.splitlines() == shown[1:]


def test_the_suite_and_the_processes_it_starts_use_the_same_thread_count(tmp_path):
    """Slurm's jobs (and torchrun's processes) inherit OMP_NUM_THREADS; the test process must
    run with that same count, or a bit-for-bit comparison of their weights fails. Checked in a
    pytest of its own, alone (no -n), with the variable set to 1 and unset; and with -n 2 each
    worker has 1 thread (not the 2 the controller gives itself: 4 busy threads on 2 cores made
    the suite several times slower)."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("import os, torch\n\ndef test_threads():\n"
                     "    assert torch.get_num_threads() == int(os.environ['OMP_NUM_THREADS'])\n")
    shutil.copy(Path(__file__).resolve().parents[1] / "conftest.py", tmp_path / "conftest.py")
    for value in ("1", None):
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "PYTEST_XDIST_WORKER", "KASEG_TEST_THREADS")}
        if value:
            env["OMP_NUM_THREADS"] = value
        got = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist",
                              "-p", "no:cacheprovider", str(probe)], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert got.returncode == 0, (value, got.stdout[-2000:])
    probe.write_text("import os, torch\n\ndef test_threads():\n"
                     "    assert torch.get_num_threads() == 1\n"
                     "    assert os.environ['OMP_NUM_THREADS'] == '1'\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "PYTEST_XDIST_WORKER", "KASEG_TEST_THREADS")}
    got = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p",
                          "no:cacheprovider", str(probe)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert got.returncode == 0, got.stdout[-2000:]


def test_dry_run_lists_a_seeds_budget_runs_in_its_one_job(tmp_path, folder_dataset, capsys,
                                                           monkeypatch):
    """With budgets, a seed's job holds every arm at every budget and CE only at each run's
    cost; before the tuning has named the runs, the job says the budgets in words."""
    import kaseg.compare.runner as runner_mod

    # fixed step costs (the seconds of a real estimate vary): KD 3x CE only in FLOPs, 1.5x in s
    monkeypatch.setattr(runner_mod, "estimate_step_flops",
                        lambda c: 3 if c.distill.losses else 1)
    monkeypatch.setattr(runner_mod, "estimate_step_seconds",
                        lambda c: 1.5 if c.distill.losses else 1.0)
    config = _config(tmp_path, folder_dataset, iters=10, arms=["baseline", "kd_t2"],
                     weight_scales=[1], budgets=[1, 3])
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(config), "--out", str(out), "--executor", "slurm",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    seed0 = re.split(r"\s{2,}", next(ln for ln in lines if "seed 0" in ln).strip())
    # KD at 1 costs 3 (CE at 3 in FLOPs, 2 in seconds), at 3 costs 9 (16 and 8 on the grid)
    assert seed0[2].endswith(": runs/baseline-s0, runs/baseline-b2-s0, runs/baseline-b3-s0, "
                             "runs/baseline-b8-s0, runs/baseline-b16-s0, runs/kd_t2-s0, "
                             "runs/kd_t2-b3-s0")
    config = _config(tmp_path, folder_dataset, iters=10, arms=["baseline", "kd_t2"],
                     weight_scales=[1], budgets=[1, 3], max_ce_budget=8)
    assert main(["compare", "--config", str(config), "--out", str(out), "--executor", "slurm",
                 "--dry-run"]) == 0
    seed0 = next(ln for ln in capsys.readouterr().out.splitlines() if "seed 0" in ln)
    assert "runs/baseline-b8-s0, runs/kd_t2-s0" in seed0 and "b16" not in seed0  # capped
    config = _config(tmp_path, folder_dataset, iters=10, arms=["baseline", "kd_t2", "ka"],
                     budgets=[1, 3])
    assert main(["compare", "--config", str(config), "--out", str(out), "--executor", "slurm",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    seed0 = next(ln for ln in lines if "  seed 0" in ln)
    assert seed0.endswith("baseline (seed 0, budgets 1 3 and at each run's cost), kd_t2 (seed 0, "
                          "budgets 1 3), ka (seed 0, budgets 1 3)")
