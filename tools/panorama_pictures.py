"""The README's panorama pictures, from the shipped model:

* ``assets/screenshots/panorama.jpg``: a 3:1 panorama (192x64 cells, MultiDiffusion windows),
  rendered at 1536 x 512, with a 1:1 crop of the same field rendered at 8192 x 2731 beside it;
* ``assets/screenshots/extend.jpg``: a 64 x 64 picture, and the same extended right by 64 cells
  (the old cells kept; a thin line marks where the new ones start, below the picture).

    python tools/panorama_pictures.py [--seed 2] [--steps 30]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infd_core.geometry import PixelRange  # noqa: E402
from infd_core.outpaint import extend  # noqa: E402
from infd_core.pipeline import Pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshots")
    args = ap.parse_args()
    pipe = Pipeline.load(precision="bf16")
    args.out.mkdir(parents=True, exist_ok=True)

    pano = pipe.field(pipe.sample(args.seed, steps=args.steps, cells=(64, 192)))
    small = pipe.render(pano, 512, 1536)
    crop = pipe.render(pano, 2731, 8192, PixelRange(1100, 1612, 4000, 4512))  # 512² at 1:1 of the 8K render
    sheet = Image.new("RGB", (1536 + 8 + 512, 512), "white")
    sheet.paste(Image.fromarray(small), (0, 0))
    sheet.paste(Image.fromarray(crop), (1536 + 8, 0))
    ImageDraw.Draw(sheet).rectangle([4000 * 1536 // 8192, 1100 * 512 // 2731, 4512 * 1536 // 8192,
                                     1612 * 512 // 2731], outline="white", width=2)
    sheet.save(args.out / "panorama.jpg", quality=82)

    z = pipe.sample(args.seed + 1, steps=args.steps)
    wide = extend(pipe, z, right=64, seed=args.seed + 1, steps=args.steps)
    before, after = pipe.render(pipe.field(z), 384, 384), pipe.render(pipe.field(wide), 384, 768)
    pair = Image.new("RGB", (384 + 16 + 768, 384 + 10), "white")
    pair.paste(Image.fromarray(before), (0, 0))
    pair.paste(Image.fromarray(after), (400, 0))
    ImageDraw.Draw(pair).rectangle([400 + 384, 386, 400 + 768, 392], fill=(60, 60, 60))  # the new cells
    pair.save(args.out / "extend.jpg", quality=82)
    print(f"wrote {args.out / 'panorama.jpg'} and {args.out / 'extend.jpg'}")


if __name__ == "__main__":
    main()
