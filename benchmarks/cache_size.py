"""How big a teacher cache is before trying it: bytes per view of each output a run can store
(the logits on the teacher's own grid, the tapped feature map the feature terms read, the logits
at input size), and the whole cache for a number of views, from the configs' networks and crops
(untrained networks: the shapes do not depend on the weights; nothing runs).

    python benchmarks/cache_size.py [--configs configs/paper_cityscapes.yaml ...] [--views 16]
        [--images 2975]
"""

from __future__ import annotations

import argparse
import math

from kaseg.engine.experiment import load_config
from kaseg.nets.models import build_model

CLASSES = {"cityscapes": 19, "voc": 21, "pascal_context": 60, "folder": 8}


def entry_shapes(cfg, num_classes: int) -> dict[str, tuple[int, ...]]:
    t = cfg.teacher
    net = build_model(t.name, num_classes, t.output_stride, t.decoder_channels)
    crop = cfg.data.crop_size
    h, w = (crop, crop) if isinstance(crop, int) else tuple(crop)
    tap = net.feature_info[t.tap]
    s = net.logit_stride
    return {"head_logits": (num_classes, math.ceil(h / s), math.ceil(w / s)),
            f"features.{t.tap}": (tap.channels, math.ceil(h / tap.stride),
                                  math.ceil(w / tap.stride)),
            "logits (grid: input)": (num_classes, h, w)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["configs/paper_cityscapes.yaml",
                                                   "configs/cirkd_cityscapes_r18.yaml"])
    p.add_argument("--overrides", nargs="*", default=[],
                   help="applied to every config, e.g. data.crop_size=[512,1024]")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--images", type=int, default=2975, help="training images (Cityscapes)")
    args = p.parse_args()
    print(f"| config | teacher | crop | output | shape per view | float16 per view | "
          f"{args.views} views x {args.images} images, float16 |")
    print("| --- | --- | --- | --- | --- | ---: | ---: |")
    for path in args.configs:
        cfg = load_config(path, args.overrides)
        k = CLASSES.get(cfg.data.dataset, 19)
        for entry, shape in entry_shapes(cfg, k).items():
            per_view = 2 * math.prod(shape)
            print(f"| {path.split('/')[-1]} | {cfg.teacher.name} | {cfg.data.crop_size} | "
                  f"{entry} | {' x '.join(map(str, shape))} | {per_view / 1e3:,.0f} KB | "
                  f"{per_view * args.views * args.images / 1e9:,.1f} GB |")


if __name__ == "__main__":
    main()
