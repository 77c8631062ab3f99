"""Where the demo's time goes: each stage's step time and achieved GFLOP/s (kaseg's FLOP counter,
torch's with a grouped convolution's backward counted right, over forward + backward), beside what this machine's cores reach on a plain convolution and a
matmul in the same run; and the data loader's images/s beside what each step consumes.

    python benchmarks/stage_throughput.py [--runs 5] [--size 96] [--batch 8]

Stages (the demo's networks and batch): teacher training, autoencoder training, the CE start
(the student alone), one distilling arm (the method), the demo's four arms in lockstep (one
teacher forward for all, :func:`kaseg.engine.tasks.share_frozen`), evaluation; each in the default
memory layout and channels-last. Every ratio is measured in one process.
"""

from __future__ import annotations

import argparse
import time

import torch

from kaseg.engine.bench import lockstep_iteration
from kaseg.nets.cost import flop_counter, median_seconds
from kaseg.data.synthetic import SyntheticScenes
from kaseg.data.transforms import TrainTransform
from kaseg.core.config import DistillConfig
from kaseg.losses.method import FeatureAutoencoder, ae_strides
from kaseg.nets.models import build_model
from kaseg.engine.tasks import AutoencoderTask, DistillTask, SegmentationTask, share_frozen
from kaseg.engine.train import InfiniteSampler, SeededSamples

KD = {"kd": {"temperature": 2.0}}  # distill.losses of logit KD at T = 2


def peak(runs: int) -> dict[str, float]:
    """GFLOP/s of reference kernels on this machine: what the cores can do."""
    out = {}
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    dw = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    x = torch.randn(8, 64, 96, 96)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    with torch.no_grad():
        for name, fn, flops in [
                ("conv 3x3, 64 ch, 96 px, batch 8", lambda: conv(x), 2 * 64 * 64 * 9 * 96 * 96 * 8),
                ("conv 3x3 channels-last", lambda: conv(xc), 2 * 64 * 64 * 9 * 96 * 96 * 8),
                ("depthwise 3x3, same map", lambda: dw(x), 2 * 64 * 9 * 96 * 96 * 8),
                ("matmul 2048", lambda: a @ b, 2 * 2048 ** 3)]:
            if "channels-last" in name:
                conv.to(memory_format=torch.channels_last)
                xc = x.contiguous(memory_format=torch.channels_last)
            out[name] = flops / median_seconds(fn, "cpu", runs) / 1e9
    return out


def stages(size: int) -> dict:
    """name -> (list of tasks trained on one batch, shared frozen networks?)."""
    torch.manual_seed(0)
    teacher = build_model("tiny-teacher", 8).eval()
    ti = teacher.feature_info["pre_logits"]
    si = build_model("tiny-student", 8).feature_info["pre_logits"]
    ae = FeatureAutoencoder(ti.channels, max(1, ti.channels // 2),
                            ae_strides(si.stride // ti.stride))

    def student():
        torch.manual_seed(1)
        return build_model("tiny-student", 8)

    def arm(**losses):
        return DistillTask(student=student(), teacher=teacher, encoder=ae.encoder,
                           latent_channels=ae.latent_channels,
                           config=DistillConfig(losses=losses))

    method = {"adapt": {}, "affinity": {}}
    return {
        "teacher training": ([SegmentationTask(build_model("tiny-teacher", 8))], False),
        "autoencoder training": ([AutoencoderTask(teacher, ae)], False),
        "CE start (student alone)": ([SegmentationTask(student())], False),
        "one distilling arm (the method)": ([arm(**method)], False),
        "4 demo arms, one after another": ([arm(), arm(**KD), arm(**method),
                                            arm(**method, **KD)], False),
        "4 demo arms in lockstep": ([arm(), arm(**KD), arm(**method), arm(**method, **KD)],
                                    True),
    }


def step_cost(tasks, shared: bool, batches, runs: int, channels_last: bool):
    """(median s per iteration, FLOPs per iteration) of the tasks' steps on one new batch."""
    if shared:
        share_frozen(tasks)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    run = lockstep_iteration(tasks, batches, torch.device("cpu"), memory_format=fmt)
    seconds = median_seconds(run, "cpu", runs)
    counter = flop_counter()
    with counter:
        run()
    return seconds, counter.get_total_flops()


def eval_cost(size: int, batch: int, runs: int, channels_last: bool):
    torch.manual_seed(1)
    net = build_model("tiny-student", 8).eval()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run():
        net(x)["logits"].argmax(1)

    seconds = median_seconds(run, "cpu", runs)
    counter = flop_counter()
    with counter, torch.inference_mode():
        net(x)
    return seconds, counter.get_total_flops()


def loader_rate(size: int, batch: int, workers: int, n: int = 15) -> float:
    """Training images per second from the demo's data pipeline (synthetic scenes, the demo's
    augmentation), ``workers`` loader processes (0: in the training process)."""
    ds = SyntheticScenes("train", 1024, size, transform=TrainTransform(
        (size, size), 0.5, 1.0, True, 0.2))
    loader = torch.utils.data.DataLoader(
        SeededSamples(ds, 0), batch_size=batch, num_workers=workers,
        sampler=InfiniteSampler(len(ds), 0, positions=True), persistent_workers=workers > 0)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return batch * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    size, batch = args.size, args.batch
    print(f"tiny pair at {size} px, batch {batch}, CPU, {torch.get_num_threads()} torch threads; "
          f"median of {args.runs}")
    print("\nthis machine's reference kernels (fp32):")
    ref = peak(args.runs)
    for name, g in ref.items():
        print(f"  {name:<34} {g:>7.1f} GFLOP/s")
    conv_peak = ref["conv 3x3 channels-last"]
    data = [(torch.randn(batch, 3, size, size), torch.randint(0, 8, (batch, size, size)))
            for _ in range(7)]
    batches = iter(data * 1000)
    print(f"\n{'stage':<34} {'layout':<14} {'ms/iter':>8} {'GFLOP/iter':>11} {'GFLOP/s':>8} "
          f"{'% of conv peak':>15} {'images/s needed':>16}")
    for name, (tasks, shared) in stages(size).items():
        for cl in (False, True):
            s, flops = step_cost(tasks, shared, batches, args.runs, cl)
            print(f"{name:<34} {'channels-last' if cl else 'default':<14} {1e3 * s:>8.1f} "
                  f"{flops / 1e9:>11.2f} {flops / s / 1e9:>8.1f} "
                  f"{100 * flops / s / 1e9 / conv_peak:>14.0f}% {batch / s:>16.0f}")
    for cl in (False, True):
        s, flops = eval_cost(size, 64, args.runs, cl)
        print(f"{'evaluation (student, batch 64)':<34} {'channels-last' if cl else 'default':<14} "
              f"{1e3 * s:>8.1f} {flops / 1e9:>11.2f} {flops / s / 1e9:>8.1f} "
              f"{100 * flops / s / 1e9 / conv_peak:>14.0f}% {64 / s:>16.0f}")
    print("\ndata loader alone (the demo's scenes and augmentation):")
    for workers in (0, 1, 2):
        print(f"  {workers} worker(s): {loader_rate(size, batch, workers):>6.0f} images/s")


if __name__ == "__main__":
    main()
