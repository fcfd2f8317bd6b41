"""Command line: ``python -m infd_core {sample,layout,encode,render,info,import-authors} ...``.

Examples::

    python -m infd_core sample --seed 0 --size 4096 --out out.png
    python -m infd_core sample --preset cpu --seed 0 --size 4096 --out random.png   # untrained
    python -m infd_core render --latent out.latent.safetensors --size 8192 --region 0.4,0.4,0.6,0.6 --out crop.png
    python -m infd_core layout --layout boxes.json --seed 0 --size 2048 --out guided.png
    python -m infd_core encode photo.jpg --refine 100 --size 2048 --out photo-2k.png   # zoom into a photo
    python -m infd_core import-authors ffhq.pth --out models/ffhq

A layout file is a JSON list of regions, or {"global_prompt": ..., "regions": [...]}; a region is
{"box": [x0, y0, x1, y1] (fractions of the image), "prompt": "a cat", "kind": "text"|"color"|"keep",
"weight": 1.0, "color": [r, g, b]} (see infd_core.layout; keep regions hold what --init shows there).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from .authors import import_authors
from .checkpoint import CheckpointError, load_latent, save_latent
from .configs import PRESETS, preset
from .geometry import Box, box_to_pixels
from .images import read_photo
from .pipeline import Pipeline, check_size
from .tiling import RENDER_MODES


def _pipeline(args: argparse.Namespace) -> Pipeline:
    kw = dict(device=args.device, precision=args.precision)
    if getattr(args, "preset", None):
        return Pipeline.from_config(preset(args.preset), **kw)
    return Pipeline.load(args.model, **kw)


def _size(args: argparse.Namespace) -> tuple[int, int]:
    h, w = args.height or args.size, args.width or args.size
    check_size(h, w)
    return h, w


def _steps(args: argparse.Namespace, pipe: Pipeline) -> int:
    """--steps, or the model's own number (the authors' models: 200)."""
    if args.steps is not None:
        return args.steps
    return pipe.cfg.diffusion.steps if pipe.cfg.diffusion is not None else 50


def _region(args: argparse.Namespace, h: int, w: int):
    if not args.region:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in args.region.split(","))
    except ValueError:
        raise ValueError(f"--region must be x0,y0,x1,y1 fractions of the image, got {args.region!r}") from None
    return box_to_pixels(Box(x0, y0, x1, y1).check_inside(), h, w)


def _write_image(pipe: Pipeline, z: torch.Tensor, args: argparse.Namespace) -> None:
    h, w = _size(args)
    region = _region(args, h, w)
    field = pipe.field(z)
    n_tiles = None
    with tqdm(desc=f"render {w}x{h}", unit="tile", disable=args.quiet) as bar:
        def progress(k: int, n: int) -> None:
            nonlocal n_tiles
            if n_tiles is None:
                n_tiles = bar.total = n
            bar.update(1)

        if args.render_mode == "authors-patchwise":
            img = pipe.render_authors_patchwise(field, h, w, region, progress=progress)
        else:
            img = pipe.render(field, h, w, region, tile=args.tile, progress=progress)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(args.out)
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")


def cmd_sample(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    _size(args)  # fail on a bad size before sampling, not after
    steps = _steps(args, pipe)
    with tqdm(total=steps, desc=f"{args.sampler} seed {args.seed}", unit="step", disable=args.quiet) as bar:
        z = pipe.sample(args.seed, steps=steps, sampler=args.sampler, eta=args.eta, callback=lambda s: bar.update(1))
    save_latent(Path(args.out).with_suffix(".latent.safetensors"), z, {"model": pipe.cfg.name, "seed": args.seed})
    _write_image(pipe, z, args)


def cmd_layout(args: argparse.Namespace) -> None:
    from .guidance import guided_sample
    from .layout import KINDS, Layout
    from .scorers import load_scorer

    try:
        layout = Layout.from_json(json.loads(Path(args.layout).read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.layout}: malformed JSON ({e})") from e
    pipe = _pipeline(args)
    _size(args)
    scorer = load_scorer(args.scorer, device=pipe.device) if layout.needs_scorer else None
    if scorer is not None:
        print(f"scorer: {scorer.name}")
    init = load_latent(args.init) if args.init else None
    steps = _steps(args, pipe)
    with tqdm(total=steps, desc=f"guided seed {args.seed}", unit="step", disable=args.quiet) as bar:
        z, report = guided_sample(pipe, layout, seed=args.seed, steps=steps, scale=args.scale, scorer=scorer,
                                  init_latent=init, callback=lambda s: bar.update(1))
    for r in report["regions"]:
        what, result = KINDS[r["kind"]].summarize(r)
        print(f"  {r['kind']:5s} {r['box']}: {what}: {result}")
    out = Path(args.out)
    save_latent(out.with_suffix(".latent.safetensors"), z, {"model": pipe.cfg.name, "seed": args.seed})
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    _write_image(pipe, z, args)


def cmd_encode(args: argparse.Namespace) -> None:
    from .inversion import encode_photo

    if args.refine < 0:
        raise ValueError(f"--refine must be >= 0, got {args.refine}")
    image = read_photo(args.image)
    pipe = _pipeline(args)
    _size(args)
    with tqdm(total=args.refine, desc="refine", unit="step", disable=args.quiet or not args.refine) as bar:
        z = encode_photo(pipe, image, args.refine, lr=args.lr,
                         callback=lambda i, n, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
    save_latent(Path(args.out).with_suffix(".latent.safetensors"), z,
                {"model": pipe.cfg.name, "image": Path(args.image).name, "refine": args.refine})
    _write_image(pipe, z, args)


def cmd_render(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    _write_image(pipe, load_latent(args.latent), args)


def cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(_pipeline(args).describe(), indent=2))


def cmd_import_authors(args: argparse.Namespace) -> None:
    report = import_authors(args.checkpoint, args.out, ema=not args.no_ema)
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infd_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model folder (default: the embedded model, or $INFD_MODEL)")
        p.add_argument("--preset", choices=sorted(PRESETS), help="use randomly initialised weights of a preset instead")
        p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps")
        p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                       help="fp32 (exact, default), bf16, or auto: per part, what measures faster here (cached)")
        p.add_argument("--quiet", action="store_true")

    def image_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", type=int, default=1024, help="output side in pixels (square)")
        p.add_argument("--height", type=int)
        p.add_argument("--width", type=int)
        p.add_argument("--region", help="render only x0,y0,x1,y1 (fractions of the image) of that size")
        p.add_argument("--tile", type=int, default=256)
        p.add_argument("--render-mode", default="fixed-statistics", choices=list(RENDER_MODES),
                       help="fixed-statistics: exact tiles (deep zoom); authors-patchwise: the authors' 256² patches "
                            "with 8-px padding (their published samples)")
        p.add_argument("--out", required=True)

    p = sub.add_parser("sample", help="generate an image from a seed")
    model_args(p), image_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=None, help="DDIM η (default: the model's own)")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("layout", help="guided generation from a layout file of boxes and prompts")
    model_args(p), image_args(p)
    p.add_argument("--layout", required=True, help="JSON layout file (see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    p.add_argument("--scale", type=float, default=1.0, help="guidance strength (0 = unguided)")
    p.add_argument("--scorer", default=None, help="auto | offline | clip:ARCH:PRETRAINED (tag or local file)")
    p.add_argument("--init", help="latent file of the current image (for keep regions)")
    p.set_defaults(fn=cmd_layout)

    p = sub.add_parser("encode", help="encode a photo (resized to 256²) into a latent and render it at any size")
    model_args(p), image_args(p)
    p.add_argument("image", help="the photo (any size; squashed to a square like in training)")
    p.add_argument("--refine", type=int, default=0,
                   help="refine the encoder's latent by this many gradient steps (about 0.7 s each on 2 CPU cores)")
    p.add_argument("--lr", type=float, default=0.01, help="refinement step size")
    p.set_defaults(fn=cmd_encode)

    p = sub.add_parser("render", help="render a saved latent at any size or region")
    model_args(p), image_args(p)
    p.add_argument("--latent", required=True)
    p.set_defaults(fn=cmd_render)

    p = sub.add_parser("info", help="print a model's sizes")
    model_args(p)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("import-authors", help="convert an authors' .pth checkpoint to an infd model folder")
    p.add_argument("checkpoint", help="the authors' .pth (read as weights only; nothing is downloaded)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true", help="import the UNet's raw weights (z_dm), not the EMA ones")
    p.set_defaults(fn=cmd_import_authors)

    args = ap.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, TypeError, CheckpointError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
