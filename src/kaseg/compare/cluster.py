"""``kaseg compare --executor slurm``: a comparison on a Slurm cluster, through submitit.

The comparison's phases become dependent jobs (submitit writes and submits the sbatch scripts;
kaseg only says what each job runs and what it waits for):

1. each unfinished shared stage (teacher, autoencoder(s), shared start), one job each, in order
   (``afterok`` on the one before);
2. one job per tuning seed, its weight scales in lockstep (one array, after the shared jobs);
3. one job per paired seed, all its arms in lockstep so the teacher runs once per batch on the
   cluster too (one array, after every tuning job: a seed job reads the tuned scales when it
   starts);
4. one job that writes the report after all of them, however they ended (``afterany``): a run
   that a failed, cancelled or preempted job left unfinished is listed with that job's log.

A job that fails cancels the jobs waiting on it (``--kill-on-invalid-dep``). A job preempted or
out of time is requeued by submitit (:class:`ComparisonJob` is checkpointable) and resumes from
its run folders' checkpoints. Re-running the same command submits only what is unfinished, and
refuses while an earlier submission still has jobs in the queue: two jobs must never train one
folder. Logs, pickles and ``jobs.json`` (what the last submission holds) are in ``OUT/slurm``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from submitit.core.utils import DelayedSubmission
from submitit.helpers import Checkpointable
from tqdm import tqdm

from .arms import BASELINE
from .runner import CompareSpec, PlannedRun, all_stages, lockstep_groups, run_group
from ..core.config import Config, SlurmConfig
from ..core.errors import KasegError
from ..core.files import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class ComparisonJob(Checkpointable):
    """What one cluster job runs: ``kind`` "shared" (``key``: the stage's folder), "tuning" or
    "seed" (``key``: the seed; its runs in lockstep), or "report". ``procs`` x ``nodes`` > 1:
    the runs train under ``torchrun`` (DDP), ``procs`` processes on each node."""

    out: Path
    cfg: Config
    spec: CompareSpec
    kind: str
    key: str | int | None = None
    force: bool = False
    retry_failed: bool = False
    command: str = "kaseg compare"
    procs: int = 1
    nodes: int = 1
    lockstep: bool = True  # False: a group's runs one after another (the same results)

    @property
    def name(self) -> str:
        return self.kind if self.key is None else f"{self.kind}-{self.key}".replace("/", "-")

    def __call__(self) -> str:
        if self.kind != "report" and self.procs * self.nodes > 1:
            return self.under_torchrun()
        return self.run_here()

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """Preempted or out of time: submitit requeues the job, which resumes its runs (a
        ``--force`` job restarts them only the first time)."""
        return DelayedSubmission(replace(self, force=False))

    def stages(self) -> list[PlannedRun]:
        """The runs this job trains, as the comparison's folders say now (a seed job learns its
        arms' tuned scales here, after the tuning jobs)."""
        first, arms, *_ = all_stages(self.out, self.cfg, self.spec)
        if self.kind == "shared":
            return [s for s in first if s.name == self.key]
        if self.kind == "tuning":
            return [s for s in first if s.phase == "tuning" and s.seed == self.key]
        if arms is None:
            raise KasegError(f"{self.out}: seed {self.key}'s job started before the tuning "
                             "runs finished (see tuning/*/failed.json and the tuning jobs' logs)")
        return [s for s in arms if s.seed == self.key]

    def run_here(self) -> str:
        """This job's runs in this process (the only one, or one rank of torchrun's)."""
        from ..core.distributed import is_main

        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
        logging.getLogger("kaseg").setLevel(logging.INFO if is_main() else logging.WARNING)
        if self.kind == "report":
            from .report import write_report  # the report sits above the engine

            first, arms, *_ = all_stages(self.out, self.cfg, self.spec)
            write_report(self.out, self.cfg, self.spec, self.command, self.cfg.train.device,
                         missing_jobs(self.out, first + (arms or [])))
            return str(self.out / "report.md")
        group = [s for s in self.stages() if self.force or not s.done(self.out)]
        with tqdm(total=len(group), desc=f"{self.kind} {self.key}", unit="run",
                  disable=not is_main()) as bar:
            for part in lockstep_groups(group):
                run_group(self.out, part, self.force, self.lockstep, bar, self.retry_failed)
        return ", ".join(s.name for s in group)

    def under_torchrun(self) -> str:
        """Run this job as ``torchrun`` processes on this node (DDP; ``nodes`` > 1: one torchrun
        per node of the allocation, all meeting at the first node)."""
        task = self.out / "slurm" / "tasks" / f"{self.name}.pkl"
        task.parent.mkdir(parents=True, exist_ok=True)
        tmp = task.with_suffix(f".{socket.gethostname()}.tmp")
        tmp.write_bytes(pickle.dumps(replace(self, procs=1, nodes=1)))
        tmp.replace(task)
        node, head, port = rendezvous()
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={self.nodes}",
               f"--node-rank={node}", f"--nproc-per-node={self.procs}",
               f"--master-addr={head}", f"--master-port={port}", "-m", "kaseg.compare.cluster",
               str(task)]
        log.info("%s", " ".join(cmd))
        subprocess.run(cmd, check=True)
        return self.name


def rendezvous() -> tuple[int, str, int]:
    """(this node's rank, the first node's address, a port) for torchrun: from the Slurm
    allocation inside a job, else this machine alone."""
    if "SLURM_JOB_ID" in os.environ:
        from submitit import JobEnvironment

        env = JobEnvironment()
        return env.node, env.hostnames[0], 20_000 + int(env.raw_job_id) % 20_000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return 0, "127.0.0.1", s.getsockname()[1]


@dataclass
class PlannedJob:
    """One job of a submission: ``runs`` it trains, the jobs it waits for (``after``, by name)
    and how (``afterok``; the report: ``afterany``); ``array``: the array it is a task of."""

    name: str
    job: ComparisonJob
    runs: list[str]
    after: list[str] = field(default_factory=list)
    dependency: str = "afterok"
    array: str | None = None
    job_id: str | None = None
    log: str | None = None


def plan_jobs(out: Path, cfg: Config, spec: CompareSpec, force: bool = False,
              retry_failed: bool = False, command: str = "kaseg compare",
              lockstep: bool = True) -> list[PlannedJob]:
    """The jobs that finish the comparison, in submission order (nothing when every run is
    done or has diverged and is not retried)."""
    first, arms, *_ = all_stages(out, cfg, spec)
    s_ = spec.slurm
    procs = s_.gpus_per_node if s_.gpus_per_node > 1 else 1

    def job(kind, key=None) -> ComparisonJob:
        return ComparisonJob(out, cfg, spec, kind, key, force, retry_failed, command, procs,
                             s_.nodes, lockstep)

    def todo(s: PlannedRun) -> bool:
        return force or not (s.done(out) or (s.failure(out) and not retry_failed))

    jobs, after = [], []
    for s in first:
        if s.phase == "shared" and not s.done(out):
            jobs.append(PlannedJob(f"shared {s.name}", job("shared", s.name), [s.name], after))
            after = [jobs[-1].name]
    tuning = [g for g in lockstep_groups([s for s in first if s.phase == "tuning"])
              if any(todo(s) for s in g)]
    jobs += [PlannedJob(f"tuning seed {g[0].seed}", job("tuning", g[0].seed),
                        [s.name for s in g if todo(s)], after, array="tuning") for g in tuning]
    after = [j.name for j in jobs if j.array == "tuning"] or after
    for seed in spec.seeds:
        if arms is None:  # named once the tuning has chosen their scales
            runs = [f"{a.name} (seed {seed}{_budgets_of(a.name, spec)})" for a in spec.arms]
        else:
            runs = [s.name for s in arms if s.seed == seed and todo(s)]
        if runs:
            jobs.append(PlannedJob(f"seed {seed}", job("seed", seed), runs, after,
                                   array="seeds"))
    if jobs:
        jobs.append(PlannedJob("report", job("report"), ["report.md", "results.json"],
                               [j.name for j in jobs], "afterany"))
    return jobs


def _budgets_of(arm: str, spec: CompareSpec) -> str:
    """An arm's budgets in words, before the tuning has named its runs."""
    if spec.budgets is None:
        return ""
    words = ", budgets " + " ".join(f"{b:g}" for b in spec.budgets)
    return words + (" and at each run's cost" if arm == BASELINE else "")


def describe(jobs: list[PlannedJob], slurm: SlurmConfig, out: Path) -> list[str]:
    """The jobs and what they wait for, one line each (``--dry-run`` prints this)."""
    number = {j.name: j.job_id or f"#{i + 1}" for i, j in enumerate(jobs)}
    ask = (f"{slurm.nodes} node(s) x {slurm.gpus_per_node} GPU(s), {slurm.cpus_per_task} CPUs, "
           f"{slurm.mem_gb:g} GB, {slurm.time_min} min"
           + (f", partition {slurm.partition}" if slurm.partition else "")
           + (f", account {slurm.account}" if slurm.account else ""))
    lines = [f"{len(jobs)} Slurm job(s), each asking for {ask}; logs in {out / 'slurm'}:"]
    for j in jobs:
        wait = ("after " + " ".join(number[a] for a in j.after) +
                (" (however they end)" if j.dependency == "afterany" else " (each succeeded)")
                if j.after else "at once")
        kind = f"array {j.array}, " if j.array else ""
        runs = ", ".join(j.runs)
        lines.append(f"  {number[j.name]:>8}  {j.name:<22} {kind}{wait}: {runs}")
    if jobs and jobs[-1].job.procs * jobs[-1].job.nodes > 1:
        lines.append(f"  each training job runs under torchrun: {jobs[-1].job.procs} "
                     f"process(es) per node on {jobs[-1].job.nodes} node(s); the report job: "
                     "one process, one GPU")
    return lines


def submit(out: Path, jobs: list[PlannedJob], slurm: SlurmConfig) -> None:
    """Submit ``jobs`` through submitit (arrays for the tuning and seed jobs) and record them in
    ``OUT/slurm/jobs.json``."""
    import submitit

    ex = submitit.SlurmExecutor(folder=out / "slurm", max_num_timeout=3)
    common = dict(time=slurm.time_min, nodes=slurm.nodes, ntasks_per_node=1,
                  cpus_per_task=slurm.cpus_per_task, mem=f"{slurm.mem_gb:g}GB",
                  partition=slurm.partition, account=slurm.account,
                  gpus_per_node=slurm.gpus_per_node or None, setup=list(slurm.setup),
                  array_parallelism=slurm.array_parallelism,
                  additional_parameters={"kill-on-invalid-dep": "yes"})
    ids: dict[str, str] = {}
    try:
        _submit_in_order(ex, jobs, common, slurm, ids)
    except Exception as e:  # sbatch refused one: none of this submission stays queued
        if ids:
            subprocess.run(["scancel", *ids.values()], capture_output=True)
        failed = next((j.name for j in jobs if j.job_id is None), "?")
        raise KasegError(f"{out}: Slurm refused job '{failed}' "
                         f"({' '.join(str(e).split())[:300]}); nothing was left submitted")
    record = [{"name": j.name, "job_id": j.job_id, "kind": j.job.kind, "key": j.job.key,
               "runs": j.runs, "after": j.after, "log": j.log} for j in jobs]
    atomic_write_text(out / "slurm" / "jobs.json", json.dumps(record, indent=1))


def _submit_in_order(ex, jobs: list[PlannedJob], common: dict, slurm: SlurmConfig,
                     ids: dict[str, str]) -> None:
    """Each job (an array for consecutive ones of one array) after the jobs it waits for;
    ``ids``: each submitted job's Slurm id (an array's, for its tasks)."""
    i = 0
    while i < len(jobs):
        batch = [jobs[i]]
        while (batch[0].array and i + len(batch) < len(jobs)
               and jobs[i + len(batch)].array == batch[0].array):
            batch.append(jobs[i + len(batch)])
        after = sorted({ids[a] for a in batch[0].after}, key=int)
        params = dict(common, job_name=f"kaseg-{batch[0].array or batch[0].job.name}",
                      dependency=f"{batch[0].dependency}:{':'.join(after)}" if after else None)
        if batch[0].job.kind == "report":  # one process: one node, at most one GPU
            params.update(nodes=1, gpus_per_node=1 if slurm.gpus_per_node else None)
        ex.update_parameters(**params)
        if len(batch) == 1:
            done = [ex.submit(batch[0].job)]
        else:
            with ex.batch():
                done = [ex.submit(j.job) for j in batch]
        for j, s in zip(batch, done):
            j.job_id, j.log = s.job_id, str(s.paths.stderr)
            ids[j.name] = s.job_id.split("_")[0]
        i += len(batch)


def submitted(out: Path) -> list[dict]:
    """The jobs of the last submission (``OUT/slurm/jobs.json``), [] when none."""
    path = out / "slurm" / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else []


def in_queue(job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` (array tasks by their array) Slurm still has pending or running."""
    if not job_ids:
        return []
    try:
        got = subprocess.run(["squeue", "-h", "-o", "%F %i", "-u", getpass.getuser()],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise KasegError(f"squeue: {e}; is this a Slurm login node?") from None
    if got.returncode != 0:
        raise KasegError(f"squeue failed: {got.stderr.strip() or got.returncode}")
    queued = set(got.stdout.split())  # each job's array id (its own id if none) and id
    bases = {i.split("_")[0] for i in job_ids}
    return sorted(b for b in bases if b in queued)


def missing_jobs(out: Path, stages: list[PlannedRun]) -> dict[str, str]:
    """``{run: "job ID (log PATH)"}``: the job of the last submission that was to train each
    of ``stages`` (a report lists it beside a run left unfinished)."""
    by_key = {(j["kind"], str(j["key"])): j for j in submitted(out)}
    notes = {}
    for s in stages:
        kind, key = (("shared", s.name) if s.phase == "shared" else
                     ("tuning" if s.phase == "tuning" else "seed", str(s.seed)))
        j = by_key.get((kind, key))
        if j is not None:
            notes[s.name] = f"job {j['job_id']} (log {j['log']})"
    return notes


def run_on_slurm(out: Path, cfg: Config, spec: CompareSpec, command: str, force: bool = False,
                 retry_failed: bool = False, dry_run: bool = False, wait: bool = False,
                 lockstep: bool = True) -> int:
    """``kaseg compare --executor slurm``: submit what is unfinished (``dry_run``: print it);
    ``wait``: until every job has ended, then print the report."""
    alive = [] if dry_run else in_queue([j["job_id"] for j in submitted(out)])
    if alive:
        raise KasegError(f"{out}: job(s) {', '.join(alive)} of the last submission are still "
                         "queued or running (squeue); wait for them or scancel them, then "
                         "re-run this command")
    jobs = plan_jobs(out, cfg, spec, force, retry_failed, command, lockstep)
    if dry_run:
        print("\n".join(describe(jobs, spec.slurm, out) if jobs else
                        ["nothing to submit: every run has finished (or diverged)"]))
        print("--dry-run: nothing submitted")
        return 0
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    if not jobs:
        print("nothing to submit: every run has finished (or diverged); the report:")
        ComparisonJob(out, cfg, spec, "report", command=command).run_here()
        print((out / "report.md").read_text())
        return 0
    submit(out, jobs, spec.slurm)
    print("\n".join(describe(jobs, spec.slurm, out)))
    print(f"the report: {out / 'report.md'} when job {jobs[-1].job_id} ends; re-run this "
          "command to resubmit what did not finish")
    if wait:
        wait_for(out, [j.job_id for j in jobs])
        print((out / "report.md").read_text())
    return 0


def wait_for(out: Path, job_ids: list[str], every_s: float = 2.0) -> None:
    """Until none of ``job_ids`` is queued or running (progress: how many are left)."""
    with tqdm(total=len({i.split('_')[0] for i in job_ids}), desc="slurm jobs",
              unit="job") as bar:
        while True:
            left = in_queue(job_ids)
            bar.n = bar.total - len(left)
            bar.refresh()
            if not left:
                return
            time.sleep(every_s)


if __name__ == "__main__":  # one rank of a job under torchrun (ComparisonJob.under_torchrun)
    from kaseg.core.distributed import init_from_env

    init_from_env()
    pickle.loads(Path(sys.argv[1]).read_bytes()).run_here()
