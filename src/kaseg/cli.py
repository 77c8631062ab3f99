"""The ``kaseg`` command line. Errors in user input print one line (``--debug``: traceback)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from .core.config import COMPARE_SEEDS, QUICK_SEEDS, TUNE_SEEDS, WEIGHT_SCALES
from .core.errors import KasegError

log = logging.getLogger("kaseg")


def _cmd_train(args) -> int:
    from .engine.experiment import load_config
    from .engine.metrics import format_table
    from .engine.supervised import train_segmenter

    cfg = load_config(args.config, args.overrides)
    result = train_segmenter(cfg, args.out, force=args.force)
    print(format_table(result["val"], f"{args.out}: best val at iteration {result['best_iter']}"))
    return 0


def _stage(args, name: str) -> dict:
    """Run the stage ``kaseg.engine.stages.NAME`` on the command's config, folder and overrides."""
    from .engine import stages
    from .engine.experiment import load_config

    return getattr(stages, name)(load_config(args.config, args.overrides), args.out, args.force)


def _cmd_train_ae(args) -> int:
    result = _stage(args, "train_autoencoder")
    v = result["val"]
    print(f"{args.out}: autoencoder {result['in_channels']} -> {result['latent_channels']} "
          f"channels, strides {result['strides']}; val reconstruction error "
          f"{v['rel_error']:.4f} of the feature variance (mse {v['mse']:.4g})")
    return 0


def _cmd_train_masks(args) -> int:
    result = _stage(args, "train_masks")
    v = result["val"]
    print(f"{args.out}: {result['tokens']} receptive tokens on {result['channels']} classes, "
          f"{result['iters']} iterations; val mask loss {v['loss']:.4f} (CE {v['ce']:.4f}, "
          f"diversity {v['diversity']:.4f}) at iteration {result['best_iter']}")
    return 0


def _cmd_distill(args) -> int:
    from .engine.metrics import format_table

    result = _stage(args, "distill")
    print(format_table(result["val"], f"{args.out}: best val at iteration {result['best_iter']}"))
    return 0


def _cmd_cache_teacher(args) -> int:
    from .engine.experiment import load_config
    from .engine.stages import cache_teacher

    meta = cache_teacher(load_config(args.config, args.overrides), args.out, args.max_gb)
    print(f"{args.out}: the teacher's {', '.join(meta['entries'])} on {meta['images']} images x "
          f"{meta['views']} views ({meta['dtype']}, {meta['bytes'] / 1e9:.3g} GB; "
          f"{meta['teacher_gflops']:.4g} teacher GFLOPs once); train from it with "
          f"distill.teacher_cache.path={args.out}")
    return 0


def _args_cache(t) -> None:
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="the cache's folder; re-running resumes a "
                   "killed build")
    t.add_argument("--max-gb", type=float, default=None,
                   help="refuse, before writing, a cache larger than this")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. "
                   "distill.teacher_cache.views=16")


def _cmd_pipeline(args) -> int:
    from .engine.experiment import load_config
    from .engine.stages import pipeline

    results = pipeline(load_config(args.config, args.overrides), args.out, args.force)
    print(f"{'stage':<12} {'val mIoU':>9}")
    for name, r in results.items():
        if "best_miou" in r:
            print(f"{name:<12} {100 * r['best_miou']:9.2f}")
        else:
            print(f"{name:<12} rel. reconstruction error {r['val']['rel_error']:.4f}")
    return 0


def _cmd_demo(args) -> int:
    if args.limited_labels and args.all_methods:
        raise KasegError("--all-methods is not an option of --limited-labels (its arms are fixed: "
                         "CE, pseudo-labels, KD and the method, with and without the unlabelled "
                         "images); run them separately")
    if args.limited_labels:
        from .presets.limited_labels import run_limited_labels

        run_limited_labels(args.out, args.quick, args.seeds, args.device, args.force,
                           not args.no_lockstep, args.retry_failed)
        print((Path(args.out) / "limited-labels" / "report.md").read_text())
        return 0
    from .presets.demo import run_demo

    run_demo(args.out, args.quick, args.seeds, args.device, args.force, args.all_methods,
             not args.no_lockstep, args.retry_failed)
    print((Path(args.out) / "report.md").read_text())
    return 0


def _cmd_compare(args) -> int:
    from .compare.report import export_best, write_report
    from .compare.runner import plan, run, spec_from
    from .engine.experiment import load_config, read_section

    cfg = load_config(args.config, args.overrides)
    spec = spec_from(read_section(args.config, "compare"), args.config, args.arms, args.seeds,
                     args.tune_seeds, args.weight_scales, args.controls, args.init_iters,
                     args.budgets, args.cost, args.max_ce_budget)
    out = Path(args.out)
    command = "kaseg " + " ".join(shlex.quote(a) for a in args.argv)
    if (args.dry_run or args.wait) and args.executor != "slurm":
        raise KasegError(f"--{'dry-run' if args.dry_run else 'wait'} goes with --executor slurm "
                         "(--plan lists the runs left to do for any scheduler)")
    if args.executor == "slurm" and args.export_best and not args.report:
        raise KasegError("--export-best reads the finished runs: once the Slurm jobs have ended, "
                         "run the same command with --report --export-best")
    if args.executor == "slurm" and not (args.plan or args.report):
        from .compare.cluster import run_on_slurm

        return run_on_slurm(out, cfg, spec, command, args.force, args.retry_failed,
                            args.dry_run, args.wait, not args.no_lockstep)
    if args.plan:
        lines = plan(out, cfg, spec)
        todo = sum(1 for ln in lines if not ln.startswith("#"))
        print(f"{out / 'plan.txt'}: {todo} run(s) to do")
        print("\n".join(lines))
        return 0
    if not args.report:
        run(out, cfg, spec, args.force, lockstep=not args.no_lockstep,
            retry_failed=args.retry_failed)
    jobs = None
    if (out / "slurm" / "jobs.json").exists():  # a comparison run on a cluster
        from .compare.cluster import missing_jobs
        from .compare.runner import all_stages

        first, arms, *_ = all_stages(out, cfg, spec)
        jobs = missing_jobs(out, first + (arms or []))
    got = write_report(out, cfg, spec, command, cfg.train.device, jobs)
    print((out / "report.md").read_text())
    if args.export_best:
        best = export_best(out, got, spec, args.format)
        print(f"best arm exported: {best}" if best else
              "--export-best: no arm is resolved better than CE only; nothing exported")
    return 1 if got["missing"] and args.report else 0


def _cmd_study(args) -> int:
    from .presets.study import run_study

    run_study(args.out, args.device, args.seeds, args.regimes, args.force,
              not args.no_lockstep, args.reuse, args.retune, args.retry_failed, args.budgets,
              args.arms, args.max_ce_budget)
    print((Path(args.out) / "study.md").read_text())
    return 0


def _cmd_eval(args) -> int:
    from .nets.checkpoint import load_model, resolve_weights
    from .engine.experiment import load_config
    from .data import build_dataset
    from .engine.evaluate import evaluate
    from .nets.inference import MS_SCALES, protocol_name
    from .engine.metrics import format_table
    from .core.runtime import resolve_device

    weights = resolve_weights(args.checkpoint, args.which)
    cfg_path = Path(args.config) if args.config else weights.parent / "config.yaml"
    if not cfg_path.is_file():
        raise KasegError(f"{weights}: no config.yaml beside it; pass --config to name the data")
    cfg = load_config(cfg_path, args.overrides)
    device = resolve_device(args.device or cfg.train.device)
    model, meta = load_model(weights, device=device)
    dataset = build_dataset(cfg.data, args.split or cfg.data.val_split, train=False)
    if dataset.num_classes != model.num_classes:
        raise KasegError(f"{weights}: model has {model.num_classes} classes, "
                         f"dataset has {dataset.num_classes}")
    scales = MS_SCALES if args.ms_flip else tuple(args.scales)
    flip = args.flip or args.ms_flip
    tta = dict(scales=scales, flip=flip, window=args.window, stride=args.stride)
    metrics = evaluate(model, dataset, cfg.train.val_batch_size, device, cfg.train.amp,
                       cfg.data.num_workers, progress=not args.json, **tta)
    metrics.update(checkpoint=str(weights), split=dataset.split, protocol=protocol_name(**tta))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_table(metrics, f"{weights} on {dataset.split} ({metrics['protocol']})"))
    return 0


def _cmd_predict(args) -> int:
    from .nets.inference import MS_SCALES
    from .engine.predict import predict_files
    from .core.runtime import resolve_device

    summary = predict_files(
        args.checkpoint, args.inputs, args.out, resolve_device(args.device), args.which,
        MS_SCALES if args.ms_flip else tuple(args.scales), args.flip or args.ms_flip,
        args.window, args.stride, args.alpha, args.amp, progress=True)
    n, bad = len(summary["written"]), len(summary["failed"])
    print(f"{args.out}: {n} image(s) segmented (mask + overlay each)"
          + (f"; {bad} failed" if bad else ""))
    return 1 if bad else 0


def _cmd_bench(args) -> int:
    from .engine.bench import bench, format_bench
    from .core.runtime import resolve_device

    r = bench(args.teacher, args.student, tuple(args.size), resolve_device(args.device),
              args.batch, args.runs, args.workers, amp=args.amp)
    print(json.dumps(r, indent=2) if args.json else format_bench(r))
    return 0


def _cmd_export(args) -> int:
    from .nets.export import export_onnx

    r = export_onnx(args.checkpoint, args.out, args.which, tuple(args.size), args.opset)
    print(f"{r['path']}: ONNX (opset {r['opset']}), dynamic batch and size; "
          + (f"onnxruntime vs PyTorch max abs difference {r['max_abs_diff']:.2e} at "
             f"{r['checked_size'][0]}x{r['checked_size'][1]}" if r["max_abs_diff"] is not None
             else "not checked: onnxruntime is not installed (pip install onnxruntime)"))
    return 0


def _cmd_data_check(args) -> int:
    from .data.check import check_dataset, format_report

    names, reports = check_dataset(args.dataset, args.root, args.split or None,
                                   progress=not args.quiet)
    if args.unlabeled:
        from .data.check import check_unlabeled

        reports.append(check_unlabeled(args.unlabeled, progress=not args.quiet))
    print(format_report(args.dataset, args.root, names, reports))
    from .data.check import class_warnings

    for warning in class_warnings(args.dataset, args.root):
        print(f"warning: {warning}")
    bad = sum(len(r.defects) for r in reports)
    if bad:
        print(f"{bad} defect(s) found", file=sys.stderr)
    return 1 if bad else 0


def _cmd_info(args) -> int:
    from .nets.cost import model_cost
    from .nets.models import build_model, list_models

    if args.arms:
        from .compare.arms import listing
        print(listing())
        return 0
    if args.losses:
        from .losses.registry import listing
        print(listing())
        return 0
    if args.list or not args.model:
        print("\n".join(list_models()))
        return 0
    model = build_model(args.model, args.num_classes, args.output_stride)
    cost = model_cost(model, tuple(args.size))
    info = {"model": args.model, **cost,
            "features": {k: vars(v) for k, v in model.feature_info.items()},
            "logit_stride": getattr(model, "logit_stride", 1)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{args.model}: {cost['params'] / 1e6:.2f} M params, {cost['gflops']:.2f} GFLOPs "
              f"({cost['gmacs']:.2f} GMACs) at {args.size[0]}x{args.size[1]}")
        for k, v in model.feature_info.items():
            print(f"  feature '{k}': {v.channels} channels, stride {v.stride}")
        print(f"  logits on the classifier's own grid: stride {info['logit_stride']} (where the "
              "logit terms read a teacher)")
    return 0


def _args_run(t) -> None:
    """train, train-ae, distill, pipeline: a config, a run folder, overrides."""
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="run folder; re-running resumes it")
    t.add_argument("--force", action="store_true", help="start the run over")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iters=100")


def _words(values) -> str:
    """Defaults as a user types them: ``0.3 1 3``."""
    return " ".join(f"{v:g}" for v in values)


def _switches(p, **helps: str) -> None:
    """On/off flags, each with its help: ``dry_run="..."`` is ``--dry-run``."""
    for name, text in helps.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=text)


RESTART = ("restart every tuning and arm run (the shared teacher, autoencoder and start are "
           "kept: delete a folder to retrain it)")


def _lockstep_flag(p) -> None:
    """The flags every comparison command shares: lockstep, and what a re-run retries."""
    _switches(p, no_lockstep="train the runs of a seed one after another instead of side by "
              "side (same results, bit for bit; slower: each run pays its own teacher)",
              retry_failed="retry the runs that diverged (their failed.json); by default a "
              "re-run leaves them as they are and the report lists them")


def _args_demo(d) -> None:
    d.add_argument("--out", default="demo_out")
    d.add_argument("--quick", action="store_true",
                   help=f"{QUICK_SEEDS} seeds, short schedules (~4 min on CPU)")
    d.add_argument("--seeds", type=int,
                   help=f"paired seeds; default: {COMPARE_SEEDS} ({QUICK_SEEDS} with --quick)")
    d.add_argument("--device", default="auto")
    _switches(d, force=RESTART)
    _lockstep_flag(d)
    _switches(d, all_methods="also logit KD T = 4, FitNet, CWD, adaptation or affinity alone, "
              "the paper-literal reductions and the two negative controls (default: CE only, KD "
              "T = 2, the method, the method + KD)",
              limited_labels="limited labels, many pictures: students with 64 labelled scenes, "
              "with and without the other 960 as unlabelled images (report in "
              "OUT/limited-labels/report.md)")


def _args_compare(c) -> None:
    c.add_argument("--config", required=True)
    c.add_argument("--out", required=True, help="the comparison's folder; re-running resumes it")
    c.add_argument("--arms", nargs="+", help="arm names (default: the config's compare.arms, "
                   "else baseline kd_t2 ka ka_kd); CE only is always included")
    c.add_argument("--seeds", type=int, help=f"paired seeds 0..N-1 (default {COMPARE_SEEDS})")
    c.add_argument("--tune-seeds", type=int, nargs="+",
                   help="seeds the tuned weights are chosen on, never reported "
                        f"(default {_words(TUNE_SEEDS)})")
    c.add_argument("--weight-scales", type=float, nargs="+",
                   help="x each tuned weight (the method's two, a tuned arm's own), tried on the "
                        f"tuning seeds (default {_words(WEIGHT_SCALES)}; one value: no tuning)")
    c.add_argument("--controls", action="store_true", help="add both negative controls")
    c.add_argument("--init-iters", type=int,
                   help="a shared CE-trained start of N iterations (its own seed) for every arm")
    c.add_argument("--budgets", type=float, nargs="+",
                   help="every arm at train.iters x each budget, and CE only at each run's cost "
                        "(the frontier: which method at my compute?); e.g. 1 3 9")
    c.add_argument("--cost", choices=["flops", "seconds"],
                   help="the accounting the frontier's verdict is judged by (default flops, the "
                        "teacher's forward counted); CE only's budgets meet both")
    c.add_argument("--max-ce-budget", type=float,
                   help="CE only's budgets stop here: a run costing more is reported as not "
                        "reached (default: CE only meets every run)")
    c.add_argument("--plan", action="store_true",
                   help="write OUT/plan.txt, one command per unfinished run, and stop")
    c.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: every run here, in order (default); slurm: submit the runs as "
                        "dependent Slurm jobs through submitit (settings: compare.slurm)")
    _switches(c, dry_run="with --executor slurm: print the jobs and what they wait for; "
              "submit nothing",
              wait="with --executor slurm: wait until every job has ended, then print the "
              "report",
              report="the report from the finished runs only (lists the missing ones)",
              export_best="write the best arm's student to OUT/best/")
    c.add_argument("--format", choices=["onnx"], help="with --export-best: also as ONNX")
    _switches(c, force=RESTART)
    _lockstep_flag(c)
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iters=100")


def _args_study(st) -> None:
    st.add_argument("--out", default="study_out")
    st.add_argument("--device", default="auto")
    st.add_argument("--seeds", type=int, default=COMPARE_SEEDS,
                    help=f"paired seeds per regime (default {COMPARE_SEEDS})")
    st.add_argument("--regimes", nargs="*", help="a subset of the regimes, by name (default: all)")
    _switches(st, force=RESTART)
    st.add_argument("--reuse", metavar="STUDY_JSON",
                    help="an earlier study's study.json: its regimes that this run does not run "
                         "join the report (and lend their weight scale)")
    st.add_argument("--retune", nargs="+", metavar="REGIME",
                    help="regimes that choose their own weight scale on the tuning seeds instead "
                         "of reusing another's (is the reused one still best there?)")
    st.add_argument("--budgets", type=float, nargs="+",
                    help="each regime's arms at its iterations x each budget, CE only also at "
                         "each run's cost: a frontier per regime (kaseg compare --budgets)")
    st.add_argument("--max-ce-budget", type=float,
                    help="with --budgets: CE only's budgets stop here (kaseg compare's)")
    st.add_argument("--arms", nargs="+",
                    help="only these of each regime's arms (CE only always): a smaller study")
    _lockstep_flag(st)


def _args_inference(x) -> None:
    """The evaluation protocols eval and predict share."""
    x.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="multi-scale: average softmax over these input scales")
    x.add_argument("--flip", action="store_true", help="also average the mirrored image")
    x.add_argument("--ms-flip", action="store_true",
                   help="the field's multi-scale protocol: scales 0.5-1.75 + flip")
    x.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                   help="sliding-window inference with this crop (e.g. 769 769 for Cityscapes)")
    x.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                   help="sliding-window stride (default: 2/3 of the window)")


def _args_eval(e) -> None:
    e.add_argument("checkpoint")
    e.add_argument("--which", default="best", choices=["best", "last"])
    e.add_argument("--config", help="data to evaluate on (default: the run's config.yaml)")
    e.add_argument("--split", help="default: data.val_split")
    e.add_argument("--device")
    e.add_argument("--json", action="store_true")
    e.add_argument("overrides", nargs="*")
    _args_inference(e)


def _args_predict(pr) -> None:
    pr.add_argument("checkpoint", help="a run folder or a .safetensors file")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True)
    pr.add_argument("--which", default="best", choices=["best", "last"])
    pr.add_argument("--device", default="auto")
    pr.add_argument("--amp", action="store_true")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    _args_inference(pr)


def _args_bench(b) -> None:
    b.add_argument("--teacher", default="paper-teacher")
    b.add_argument("--student", default="paper-student")
    b.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    b.add_argument("--device", default="auto")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--runs", type=int, default=10, help="timed runs (median) after warm-up")
    b.add_argument("--workers", type=int, default=2, help="data loader workers")
    b.add_argument("--amp", action="store_true")
    b.add_argument("--json", action="store_true")


def _args_export(x) -> None:
    x.add_argument("checkpoint", help="a run folder or a .safetensors file")
    x.add_argument("--format", default="onnx", choices=["onnx"])
    x.add_argument("--out", help="default: next to the weights, .onnx")
    x.add_argument("--which", default="best", choices=["best", "last"])
    x.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"),
                   help="example input size for tracing and the check")
    x.add_argument("--opset", type=int, default=18)


def _args_data(dt) -> None:
    from .data import DATASETS

    dsub = dt.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="read every file of a dataset and report its defects")
    dc.add_argument("root")
    dc.add_argument("--dataset", required=True,
                    help=", ".join(name for name in DATASETS if name != "synthetic"))
    dc.add_argument("--split", nargs="+", help="default: every split found")
    dc.add_argument("--unlabeled", metavar="DIR",
                    help="also count and read the unlabelled images under DIR (data.unlabeled_root)")
    dc.add_argument("--quiet", action="store_true", help="no progress bar")
    dc.set_defaults(fn=_cmd_data_check)


def _args_info(i) -> None:
    i.add_argument("model", nargs="?")
    i.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    i.add_argument("--num-classes", type=int, default=21)
    i.add_argument("--output-stride", type=int)
    i.add_argument("--list", action="store_true")
    i.add_argument("--arms", action="store_true",
                   help="list the comparison's registered arms and arm groups")
    i.add_argument("--losses", action="store_true",
                   help="list the distillation terms (distill.losses), their default weight "
                        "and options")
    i.add_argument("--json", action="store_true")


# (name, help, arguments, what it runs): the one list of commands
COMMANDS = [
    ("train", "train a segmentation model (teacher or student) with CE", _args_run, _cmd_train),
    ("train-ae", "stage 1: train the autoencoder on a frozen teacher", _args_run, _cmd_train_ae),
    ("train-masks", "MasKD's mask stage: receptive tokens on a frozen teacher", _args_run,
     _cmd_train_masks),
    ("distill", "stage 2: distil the teacher into the student", _args_run, _cmd_distill),
    ("cache-teacher", "store the teacher's outputs on a fixed pool of augmented views once, "
     "for every run (distill.teacher_cache)", _args_cache, _cmd_cache_teacher),
    ("pipeline", "teacher -> autoencoder -> student -> distilled student", _args_run,
     _cmd_pipeline),
    ("compare", "does distillation help on my data, and which method? arms x paired seeds on "
     "any config, with a report", _args_compare, _cmd_compare),
    ("demo", "the paper's experiment end to end on built-in data (CPU)", _args_demo, _cmd_demo),
    ("study", "the long paired study: a ladder of regimes x arms x seeds", _args_study,
     _cmd_study),
    ("eval", "evaluate a run folder or a .safetensors checkpoint", _args_eval, _cmd_eval),
    ("predict", "segment images: palette masks and overlays as PNG", _args_predict, _cmd_predict),
    ("bench", "cost of a teacher/student pair: FLOPs, latency, steps", _args_bench, _cmd_bench),
    ("export", "export a trained model to ONNX (dynamic batch and size)", _args_export,
     _cmd_export),
    ("data", "dataset tools", _args_data, None),
    ("info", "params, FLOPs and feature maps of a model", _args_info, _cmd_info),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kaseg", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text, arguments, fn in COMMANDS:
        c = sub.add_parser(name, help=text)
        arguments(c)
        if fn is not None:
            c.set_defaults(fn=fn)
    return p


def _one_line(e: BaseException) -> str:
    msg = str(e).strip()
    if "Original Traceback" in msg:  # re-raised from a DataLoader worker: keep its last line
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg.splitlines()[0] if msg else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for reports' provenance
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)  # kaseg's own messages only
    from .core.distributed import init_from_env, is_main

    init_from_env()  # torchrun: join the process group; otherwise nothing
    if not is_main():  # one process reports; the others only compute
        log.setLevel(logging.WARNING)
        sys.stdout = open(os.devnull, "w")
    try:
        return args.fn(args)
    except KasegError as e:
        if args.debug:
            raise
        print(f"kaseg: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kaseg: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
