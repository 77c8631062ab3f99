"""What lockstep saves: the per-iteration time of k distilling arms (the method, KD T = 2, the
method + KD) trained side by side on one batch (one teacher and encoder forward, shared through
:func:`kaseg.engine.tasks.share_frozen`), against the same arms one after another (each runs the teacher),
and against the floor: one teacher + encoder forward and k CE-only student steps.

    python benchmarks/compare_cost.py [--pairs tiny paper] [--device auto] [--runs 5]
        [--unlabeled N] [--budgets 3 --ce-runs 4]

``--budgets B --ce-runs C`` adds a budgets row per pair: a seed's runs of a frontier while all
are active (KD T = 2 at B budgets, CE only at C budgets: ``kaseg compare --budgets``) in
lockstep, against the same runs one after another (each KD run its own teacher forward) and
against the floor of one teacher forward + the B + C student steps. Goal: lockstep / floor <=
1.05.

``--unlabeled N``: each step also carries N unlabelled images (the limited-labels regime); the
encoder then runs on the labelled and on the unlabelled half of the teacher's map, and the
table's last columns show how many of the shared encoder's calls the memo served and the lockstep
time with a one-entry encoder memo (kaseg before the memo held both halves: no call served).
The floor's students are CE-only, on the labelled images alone.

Defaults: the tiny pair at 96 px (batch 8, the demo) and the paper pair at 128 px (batch 2).
Each row is measured in one process; every batch is new (a memo hit across iterations would
flatter lockstep). Goal: lockstep / floor <= 1.15.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from kaseg.engine.bench import lockstep_iteration
from kaseg.nets.cost import median_seconds
from kaseg.core.config import DistillConfig
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model
from kaseg.core.runtime import resolve_device
from kaseg.engine.tasks import DistillTask, SegmentationTask, share_frozen, unshare_frozen

PAIRS = {"tiny": ("tiny-teacher", "tiny-student", 96, 8),
         "paper": ("paper-teacher", "paper-student", 128, 2)}
KD = {"kd": {"temperature": 2.0}}
METHOD = {"adapt": {}, "affinity": {}}
ARMS = {"ka": METHOD, "kd_t2": KD, "ka_kd": {**METHOD, **KD}}  # distill.losses of each arm


def arms(teacher, ae, student_name: str, k: int, names: list[str] | None = None) -> list:
    """k distillation tasks (``names``: these arms of :data:`ARMS`, repeats allowed), each with
    its own student (the same initial weights) and its own copy of the teacher and encoder (as
    arms trained alone load them)."""
    tasks = []
    for name in names or list(ARMS)[:k]:
        torch.manual_seed(0)
        student = build_model(student_name, 8)
        t = build_model(teacher.spec.name, 8)
        t.load_state_dict(teacher.state_dict())
        enc = FeatureAutoencoder(ae.in_channels, ae.latent_channels, ae.strides)
        enc.load_state_dict(ae.state_dict())
        tasks.append(DistillTask(student=student, teacher=t, encoder=enc.encoder,
                                 latent_channels=ae.latent_channels,
                                 config=DistillConfig(losses=ARMS[name])))
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arms", type=int, default=3, choices=[1, 2, 3])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--unlabeled", type=int, default=0, metavar="N")
    ap.add_argument("--budgets", type=int, default=0, metavar="B",
                    help="a budgets row: KD at B budgets and CE only at --ce-runs budgets")
    ap.add_argument("--ce-runs", type=int, default=4, metavar="C")
    args = ap.parse_args()
    runs, device, k = args.runs, resolve_device(args.device), args.arms
    print(f"{k} distilling arms (ka, kd_t2, ka_kd) per iteration, {device}, "
          f"{torch.get_num_threads()} torch threads; median of {runs} iterations")
    print(f"{'pair':<6} {'size':>5} {'batch':>5} {'one after another ms':>21} "
          f"{'lockstep ms':>12} {'floor ms':>9} {'lockstep / alone':>17} "
          f"{'lockstep / floor':>17} {'goal':>5} {'encoder memo hits':>18} "
          f"{'1-entry memo ms':>16}")
    for name in args.pairs:
        t_name, s_name, size, batch = PAIRS[name]
        torch.manual_seed(0)
        teacher = build_model(t_name, 8).to(device).eval()
        ti = teacher.feature_info["pre_logits"]
        si = build_model(s_name, 8).feature_info["pre_logits"]
        ae = FeatureAutoencoder(ti.channels, max(1, ti.channels // 2),
                                ae_strides(si.stride // ti.stride))
        unl = args.unlabeled
        data = [(torch.randn(batch, 3, size, size, device=device),
                 torch.randint(0, 8, (batch, size, size), device=device),
                 *((torch.randn(unl, 3, size, size, device=device),
                    torch.zeros(unl, size, size, dtype=torch.long, device=device)) if unl else ()))
                for _ in range(7)]
        batches = itertools.cycle(data)  # 7 batches: never the one the memo holds

        memo = {}

        def timed(shared: bool, encoder_memo: int = 2) -> float:
            tasks = arms(teacher, ae, s_name, k)
            if shared:
                share_frozen(tasks)
                tasks[0].encoder.memo.size = encoder_memo
            ms = 1e3 * median_seconds(lockstep_iteration(tasks, batches, device, swap_rng=True),
                                      device, runs)
            if shared:
                m = tasks[0].encoder.memo
                memo.setdefault("hits", f"{m.hits}/{m.calls}")  # the default (2-entry) memo's
            unshare_frozen(tasks)
            return ms

        alone, lockstep = timed(False), timed(True)
        one_entry = f"{timed(True, 1):.1f}" if unl else "-"
        # the floor: one teacher + encoder forward, and k CE-only student steps
        enc = ae.encoder.to(device).eval()

        @torch.no_grad()
        def frozen_forward():
            x, _, *u = next(batches)
            enc(teacher(torch.cat([x, *u[:1]]))["features"]["pre_logits"])

        fwd = 1e3 * median_seconds(frozen_forward, device, runs)
        torch.manual_seed(0)
        ce = [SegmentationTask(build_model(s_name, 8)) for _ in range(k)]
        ce_batches = ((x, y) for x, y, *_ in batches)  # CE only uses no unlabelled image
        floor = fwd + 1e3 * median_seconds(lockstep_iteration(ce, ce_batches, device), device,
                                           runs)
        ratio = lockstep / floor
        print(f"{name:<6} {size:>5} {batch:>5} {alone:>21.1f} {lockstep:>12.1f} {floor:>9.1f} "
              f"{lockstep / alone:>17.3f} {ratio:>17.3f} {'ok' if ratio <= 1.15 else 'MISSED':>5} "
              f"{memo['hits']:>18} {one_entry:>16}")
        if args.budgets:
            budgets_row(name, teacher, ae, s_name, size, batch, batches, device, runs,
                        args.budgets, args.ce_runs)


def budgets_row(name, teacher, ae, s_name, size, batch, batches, device, runs: int, b: int,
                c: int) -> None:
    """KD at ``b`` budgets and CE only at ``c``, all active: lockstep, one after another, and the
    floor (one teacher forward + every student's CE step)."""
    ce_batches = ((x, y) for x, y, *_ in batches)

    @torch.no_grad()
    def teacher_forward():
        teacher(next(ce_batches)[0])

    fwd_ms = 1e3 * median_seconds(teacher_forward, device, runs)

    def group(shared: bool) -> list:
        kd = arms(teacher, ae, s_name, b, ["kd_t2"] * b)
        if shared:
            share_frozen(kd)
        torch.manual_seed(0)
        return kd + [SegmentationTask(build_model(s_name, 8)) for _ in range(c)]

    def timed(shared: bool) -> float:
        tasks = group(shared)
        ms = 1e3 * median_seconds(lockstep_iteration(tasks, ce_batches, device, swap_rng=True),
                                  device, runs)
        unshare_frozen([t for t in tasks if isinstance(t, DistillTask)])
        return ms

    alone, lockstep = timed(False), timed(True)
    torch.manual_seed(0)
    ce = [SegmentationTask(build_model(s_name, 8)) for _ in range(b + c)]
    floor = fwd_ms + 1e3 * median_seconds(lockstep_iteration(ce, ce_batches, device), device, runs)
    ratio = lockstep / floor
    print(f"{name + f' budgets: KD x{b} + CE x{c}':<6} {size:>5} {batch:>5} {alone:>21.1f} "
          f"{lockstep:>12.1f} {floor:>9.1f} {lockstep / alone:>17.3f} {ratio:>17.3f} "
          f"{'ok' if ratio <= 1.05 else 'MISSED':>5}")


if __name__ == "__main__":
    main()
