"""Write a small dataset in kaseg's folder layout, the way a user's own data arrives: JPEG images of
a non-square size that is no multiple of the networks' stride (120 x 160), palette-PNG masks, a
class file with names and colours, and split lists. The pictures are the built-in scenes' drawing
code (offline, no download), cropped to 120 x 160; what goes through kaseg is the folder path.

    python tools/make_folder_dataset.py OUT [--train 112] [--val 48]

Then e.g. ``kaseg compare --config configs/compare_folder.yaml --out cmp data.root=OUT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from kaseg.data.synthetic import CLASS_NAMES, PALETTE, make_scene


def write(out: Path, train: int, val: int, height: int = 120, width: int = 160,
          seed: int = 7) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    palette = [v for rgb in PALETTE for v in rgb] + [0] * (768 - 3 * len(PALETTE))
    for split, count in (("train", train), ("val", val)):
        names = []
        for i in range(count):
            image, mask = make_scene(width, seed, split, i)
            top = (width - height) // 2
            image, mask = image[top:top + height], mask[top:top + height]
            name = f"{split}_{i:04d}"
            Image.fromarray(np.ascontiguousarray(image)).save(out / "images" / f"{name}.jpg",
                                                              quality=90)
            m = Image.fromarray(np.ascontiguousarray(mask), mode="P")
            m.putpalette(palette)
            m.save(out / "masks" / f"{name}.png")
            names.append(name)
        (out / f"{split}.txt").write_text("\n".join(names) + "\n")
    colours = ", ".join(f"[{r}, {g}, {b}]" for r, g, b in PALETTE)
    (out / "classes.yaml").write_text(f"names: [{', '.join(CLASS_NAMES)}]\n"
                                      f"palette: [{colours}]\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=112)
    p.add_argument("--val", type=int, default=48)
    args = p.parse_args()
    write(Path(args.out), args.train, args.val)
    print(f"{args.out}: {args.train} train + {args.val} val images of 120 x 160")


if __name__ == "__main__":
    main()
