"""How big is each weighted distillation term next to CE at the start of distillation?

docs/method.md ("Magnitudes"): the paper's weights (50, 1) mean something only with a reduction. This
prints, for every reduction, the term's value, weight x value / CE, and how it moves when the
resolution doubles, so a default pair can be chosen by measurement. The field's other losses
(:mod:`kaseg.losses.registry`) are measured beside them, each at its authors' default weight.

    python benchmarks/magnitudes.py [--teacher paper-teacher|WEIGHTS] [--student paper-student]
                                    [--ae AE_RUN] [--sizes 128 256] [--classes 21] [--json]

Without trained weights the networks are freshly initialised (state it when quoting numbers);
with ``--teacher RUN --ae RUN`` it measures the real start of ``kaseg distill``.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from kaseg.nets.checkpoint import load_model
from kaseg.data.synthetic import SyntheticScenes
from kaseg.data.transforms import EvalTransform
from kaseg.losses.registry import LOSSES, Outputs
from kaseg.losses.method import Adapter, FeatureAutoencoder, adaptation_loss, ae_strides, affinity_loss
from kaseg.nets.models import build_model
from kaseg.engine.stages import load_autoencoder

WEIGHTS = {"adapt": 50.0, "affinity_paper": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", default="paper-teacher")
    ap.add_argument("--student", default="paper-student")
    ap.add_argument("--ae")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--affinity-weight", type=float, default=30.0, help="weight shown for mse")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.teacher.endswith((".safetensors",)) or "/" in args.teacher:
        teacher, meta = load_model(args.teacher)
        classes = teacher.num_classes
    else:
        teacher, classes = build_model(args.teacher, args.classes).eval(), args.classes
    student = build_model(args.student, classes).eval()
    t_info, s_info = teacher.feature_info["pre_logits"], student.feature_info["pre_logits"]
    if args.ae:
        ae, _ = load_autoencoder(args.ae)
    else:
        ae = FeatureAutoencoder(t_info.channels, t_info.channels // 2,
                                ae_strides(s_info.stride // t_info.stride)).eval()
    adapter = Adapter(s_info.channels, ae.latent_channels).eval()
    others = {name: (spec, spec.module(s_info.channels, t_info.channels).eval()
                     if spec.module else None) for name, spec in LOSSES.items()}
    rows = []
    for size in args.sizes:
        ds = SyntheticScenes("val", args.batch, size, transform=EvalTransform())
        x = torch.stack([ds[i][0] for i in range(args.batch)])
        y = torch.stack([ds[i][1] for i in range(args.batch)]).clamp(max=classes - 1)
        with torch.no_grad():
            out = student(x)
            ce = F.cross_entropy(out["logits"], y).item()
            t_out = teacher(x)
            ft, fs = t_out["features"]["pre_logits"], out["features"]["pre_logits"]
            zt = ae.encoder(ft)
            zs = adapter(out["features"]["pre_logits"])
            zs = F.interpolate(zs, size=zt.shape[-2:], mode="bilinear") if zs.shape != zt.shape else zs
            row = {"size": size, "positions": zt.shape[-2] * zt.shape[-1], "ce": ce}
            for red in ("paper", "element"):
                v = adaptation_loss(zs, zt, reduction=red).item()
                row[f"adapt_{red}"] = v
                row[f"adapt_{red}_ratio"] = 50.0 * v / ce
            for red, w in (("paper", 1.0), ("mse", args.affinity_weight), ("element", 1.0)):
                v = affinity_loss(zs, zt, red, impl="gram").item()
                row[f"affinity_{red}"] = v
                row[f"affinity_{red}_ratio"] = w * v / ce
            given = dict(student_logits=out["logits"], teacher_logits=t_out["logits"],
                         student_features=fs, teacher_features=ft, labels=y, valid=y != 255,
                         student_stride=student.feature_info["pre_logits"].stride,
                         teacher_stride=teacher.feature_info["pre_logits"].stride)
            for name, (spec, module) in others.items():  # each at its authors' weight
                v = spec.compute(Outputs(**given, module=module), **spec.options).item()
                row[name] = v
                row[f"{name}_ratio"] = spec.weight * v / ce
        rows.append(row)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(f"teacher {args.teacher} -> student {args.student}, {classes} classes, batch {args.batch}")
    print(f"{'size':>5} {'m':>6} {'CE':>6} | {'50*adapt paper':>15} {'50*adapt element':>17} | "
          f"{'1*aff paper':>12} {f'{args.affinity_weight:g}*aff mse':>12} (ratios to CE)")
    for r in rows:
        print(f"{r['size']:>5} {r['positions']:>6} {r['ce']:>6.3f} | {r['adapt_paper_ratio']:>15.3f} "
              f"{r['adapt_element_ratio']:>17.3f} | {r['affinity_paper_ratio']:>12.4f} "
              f"{r['affinity_mse_ratio']:>12.4f}")
    print("\nthe field's other losses at their default weights (ratios to CE):")
    print(f"{'size':>5} " + " ".join(f"{f'{spec.weight:g}*{k}':>11}"
                                     for k, (spec, _) in others.items()))
    for r in rows:
        print(f"{r['size']:>5} " + " ".join(f"{r[f'{k}_ratio']:>11.4f}" for k in others))


if __name__ == "__main__":
    main()
