"""Command line: ``python -m infd_core {sample,extend,layout,encode,render,info,import-authors} ...``.

Examples::

    python -m infd_core sample --seed 0 --size 4096 --out out.png
    python -m infd_core sample --composition lake --size 2048 --out lake.png        # the model paints a sketch
    python -m infd_core sample --cells 192x64 --size 8192x2730 --out pano.png      # a 3:1 panorama
    python -m infd_core extend --latent pano.latent.safetensors --right 64 --out wider.png
    python -m infd_core sample --preset cpu --seed 0 --size 4096 --out random.png   # untrained
    python -m infd_core render --latent out.latent.safetensors --size 8192 --region 0.4,0.4,0.6,0.6 --out crop.png
    python -m infd_core layout --layout boxes.json --seed 0 --size 2048 --out guided.png
    python -m infd_core encode photo.jpg --refine 100 --size 2048 --out photo-2k.png   # zoom into a photo
    python -m infd_core import-authors ffhq.pth --out models/ffhq

A layout file is a JSON list of regions, or {"global_prompt": ..., "regions": [...]}; a region is
{"box": [x0, y0, x1, y1] (fractions of the image), "kind": "text"|"image"|"sketch"|"color"|"keep",
"prompt": "a cat", "weight": 1.0, "color": [r, g, b], "image": "sketch.png", "coarseness": 4}
(see infd_core.regions; "image" paths are relative to the layout file; keep regions hold what
--init shows there). A composition from scratch, e.g. a painted landscape held at 4-cell blocks:

    [{"box": [0, 0, 1, 1], "kind": "sketch", "image": "landscape.png"}]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .authors import import_authors
from .checkpoint import CheckpointError, aspect_of, load_latent, picture_metadata, read_latent, save_latent
from .configs import PRESETS, preset
from .diffusion import DEFAULT_STRIDE, METHODS
from .geometry import (Box, Size, aspect_matches, aspect_size, box_to_pixels, canvas_size, cells_aspect_matches,
                       check_cells)
from .images import read_photo
from .pipeline import Pipeline, check_size
from .tiling import RENDER_MODES


def _pipeline(args: argparse.Namespace) -> Pipeline:
    kw = dict(device=args.device, precision=args.precision)
    if getattr(args, "preset", None):
        return Pipeline.from_config(preset(args.preset), **kw)
    return Pipeline.load(args.model, **kw)


def _cells(text: str | None) -> Size | None:
    """``--cells COLSxROWS``: the latent's extent, width first like ``--size`` (a 3:1 panorama is
    ``192x64``; its tensor is ``[3, 64, 192]``)."""
    if text is None:
        return None
    try:
        cells = Size.parse(text)
    except ValueError:
        raise ValueError(f"--cells must be COLSxROWS latent cells, width first like --size, e.g. 192x64 for 3:1; "
                         f"got {text!r}") from None
    return check_cells(cells.height, cells.width)


def _size_arg(text: str) -> str:
    """argparse's check of ``--size``: N or WIDTHxHEIGHT, whole numbers (ranges are checked later)."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be N or WIDTHxHEIGHT pixels, got {text!r}")
    return text


def _size(args: argparse.Namespace, cells: tuple[int, int] | None = None, aspect: float | None = None) -> Size:
    """The output size: ``--size WIDTHxHEIGHT`` (width first, like image sizes), or ``--size N``: N
    pixels per 64 latent cells (N x N for a square latent; a 192x64-cell panorama at ``--size 2048``
    is 6144x2048), or ``--height``/``--width``. A size whose aspect does not match the latent's
    ``cells`` (pixels would be stretched) is refused. ``aspect`` (width / height of an encoded
    photo, its latent squashed square): ``--size N`` is its longer side, and a ``WIDTHxHEIGHT``
    must have that shape instead."""
    text = str(args.size).strip()
    exact = "x" in text.lower()
    if exact:
        size = Size.parse(text, "--size (N or WIDTHxHEIGHT pixels)")
    else:
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"--size must be N or WIDTHxHEIGHT pixels, got {args.size!r}") from None
        check_size(n, n)
        size = canvas_size(cells or (64, 64), n) if aspect is None else aspect_size(aspect, n)
    size = Size(args.height or size.height, args.width or size.width)
    check_size(*size)
    if aspect is not None and exact and not aspect_matches(aspect, *size):
        raise ValueError(f"--size {size} (width x height) does not have the photo's shape ({aspect:.4g}:1); "
                         f"e.g. --size {Size(round(size.width / aspect), size.width)}, or --size N for N pixels on "
                         "its longer side")
    if aspect is None and cells is not None and exact and not cells_aspect_matches(cells, *size):
        fit = Size(round(size.width * cells[0] / cells[1]), size.width)
        raise ValueError(f"--size {size} (width x height) does not have the aspect of {Size(*cells)} cells "
                         f"(columns x rows); e.g. --size {fit}, or --size N for N pixels per 64 cells")
    return size


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


def _write_image(pipe: Pipeline, z: torch.Tensor, args: argparse.Namespace, aspect: float | None = None) -> None:
    h, w = size = _size(args, tuple(z.shape[-2:]), aspect)
    region = _region(args, h, w)
    field = pipe.field(z)
    n_tiles = None
    with tqdm(desc=f"render {size}", unit="tile", disable=args.quiet) as bar:
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
    cells = _cells(args.cells)
    _size(args, cells)  # fail on a bad size before sampling, not after
    pipe = _pipeline(args)
    cells = pipe.latent_cells(cells)
    steps = _steps(args, pipe)
    composition = _composition(args.composition) if args.composition else None
    with tqdm(total=steps, desc=f"{args.sampler} seed {args.seed}", unit="step", disable=args.quiet) as bar:
        kw = dict(seed=args.seed, steps=steps, sampler=args.sampler, eta=args.eta, cells=cells, method=args.method,
                  stride=args.stride, callback=lambda s: bar.update(1))
        if composition is not None:
            from .guidance import guided_sample
            from .regions import Layout

            z, _ = guided_sample(pipe, Layout((composition,)), **kw, describe_regions=False)
        else:
            z = pipe.sample(kw.pop("seed"), **kw)
    meta = {**picture_metadata(model=pipe.cfg.name, seed=args.seed), "cells": str(Size(*cells)),
            "method": args.method}
    if args.composition:
        meta["composition"] = args.composition
    save_latent(Path(args.out).with_suffix(".latent.safetensors"), z, meta)
    _write_image(pipe, z, args)


def _composition(spec: str):
    """``--composition``: an example's name or a picture file, as a whole-canvas sketch region."""
    from . import compositions

    if spec in compositions.names():
        return compositions.whole_canvas(compositions.example(spec))
    if not Path(spec).is_file():
        raise ValueError(f"--composition: {spec!r} is neither an example ({', '.join(compositions.names())}) nor a file")
    return compositions.whole_canvas(np.asarray(read_photo(spec)))


def cmd_extend(args: argparse.Namespace) -> None:
    from .outpaint import extend

    z = load_latent(args.latent)
    pipe = _pipeline(args)
    pipe.check_latent(z, from_file=True)
    amounts = {side: getattr(args, side) for side in ("left", "right", "up", "down")}
    steps = _steps(args, pipe)
    with tqdm(total=steps, desc=f"extend seed {args.seed}", unit="step", disable=args.quiet) as bar:
        z2 = extend(pipe, z, **amounts, seed=args.seed, steps=steps, stride=args.stride, resample=args.resample,
                    callback=lambda s: bar.update(1))
    old, new = Size(*z.shape[-2:]), Size(*z2.shape[-2:])
    print(f"extended {old} -> {new} cells (columns x rows)")
    meta = {**picture_metadata(model=pipe.cfg.name, seed=args.seed), "cells": str(new),
            "extended_from": Path(args.latent).name, **{k: v for k, v in amounts.items() if v}}
    save_latent(Path(args.out).with_suffix(".latent.safetensors"), z2, meta)
    _write_image(pipe, z2, args)


def cmd_layout(args: argparse.Namespace) -> None:
    from .guidance import guided_sample
    from .regions import Layout
    from .wording import summarize
    from .scorers import load_scorer

    try:
        path = Path(args.layout)
        layout = Layout.from_json(json.loads(path.read_text()), folder=path.resolve().parent)
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.layout}: malformed JSON ({e})") from e
    cells = _cells(args.cells)
    pipe = _pipeline(args)
    init = load_latent(args.init) if args.init else None
    _size(args, tuple(init.shape[-2:]) if init is not None else cells)
    scorer = load_scorer(args.scorer, device=pipe.device) if layout.needs_scorer else None
    if scorer is not None:
        print(f"scorer: {scorer.name}")
    steps = _steps(args, pipe)
    run = max(1, round(args.edit * steps)) if init is not None and args.edit < 1 else steps  # SDEdit: the last ones
    with tqdm(total=run, desc=f"guided seed {args.seed}", unit="step", disable=args.quiet) as bar:
        z, report = guided_sample(pipe, layout, seed=args.seed, steps=steps, scale=args.scale, scorer=scorer,
                                  init_latent=init, cells=cells, stride=args.stride, callback=lambda s: bar.update(1),
                                  edit=args.edit, every=args.every)
    for r in report["regions"]:
        what, result = summarize(r)
        print(f"  {r['kind']:6s} {r['box']}: {what}: {result}")
    out = Path(args.out)
    save_latent(out.with_suffix(".latent.safetensors"), z, picture_metadata(model=pipe.cfg.name, seed=args.seed))
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    _write_image(pipe, z, args)


def cmd_encode(args: argparse.Namespace) -> None:
    from .inversion import encode_photo

    if args.refine < 0:
        raise ValueError(f"--refine must be >= 0, got {args.refine}")
    image = read_photo(args.image)
    aspect = image.width / image.height  # rendered in the photo's shape, its latent squashed square
    pipe = _pipeline(args)
    _size(args, aspect=aspect)
    with tqdm(total=args.refine, desc="refine", unit="step", disable=args.quiet or not args.refine) as bar:
        z = encode_photo(pipe, image, args.refine, lr=args.lr,
                         callback=lambda i, n, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")))
    save_latent(Path(args.out).with_suffix(".latent.safetensors"), z,
                {**picture_metadata(model=pipe.cfg.name, aspect=aspect), "image": Path(args.image).name,
                 "refine": args.refine})
    _write_image(pipe, z, args, aspect)


def cmd_render(args: argparse.Namespace) -> None:
    pipe = _pipeline(args)
    z, meta = read_latent(args.latent)
    _write_image(pipe, z, args, aspect_of(meta))  # a photo's latent (encode): the photo's shape


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
        p.add_argument("--size", type=_size_arg, default="1024", help="N: N pixels per 64 latent cells (N x N for a square "
                       "latent), or WIDTHxHEIGHT pixels (e.g. 8192x2730 for 192x64 cells)")
        p.add_argument("--height", type=int)
        p.add_argument("--width", type=int)
        p.add_argument("--region", help="render only x0,y0,x1,y1 (fractions of the image) of that size")
        p.add_argument("--tile", type=int, default=256)
        p.add_argument("--render-mode", default="fixed-statistics", choices=list(RENDER_MODES),
                       help="fixed-statistics: exact tiles (deep zoom); authors-patchwise: the authors' 256² patches "
                            "with 8-px padding (their published samples)")
        p.add_argument("--out", required=True)

    def canvas_args(p: argparse.ArgumentParser, methods: bool = True) -> None:
        p.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                       help="cells between the UNet's overlapping 64-cell windows on a canvas beyond 64x64")
        if methods:
            p.add_argument("--cells", help="latent extent COLSxROWS, width first like --size (multiples of 8, >= 64), "
                           "e.g. 192x64 for 3:1")
            p.add_argument("--method", default="windows", choices=list(METHODS),
                           help="beyond 64x64 cells: windows (MultiDiffusion), direct (the UNet on the whole "
                                "latent) or redilate (ScaleCrafter's re-dilated convolutions in the early steps)")

    p = sub.add_parser("sample", help="generate an image from a seed")
    model_args(p), image_args(p), canvas_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=None, help="DDIM η (default: the model's own)")
    p.add_argument("--composition", help="hold a composition: an example's name (horizon, hills, lake, coast, "
                                         "forest-edge) or a picture file (a painted sketch, a photo)")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("layout", help="guided generation from a layout file of boxes and prompts")
    model_args(p), image_args(p)
    p.add_argument("--layout", required=True, help="JSON layout file (see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    p.add_argument("--scale", type=float, default=1.0, help="guidance strength (0 = unguided)")
    p.add_argument("--scorer", default=None, help="auto | offline | clip:ARCH:PRETRAINED (tag or local file)")
    p.add_argument("--init", help="latent file of the current image (for keep regions)")
    p.add_argument("--edit", type=float, default=1.0,
                   help="with --init: run only this fraction of the steps, from the image noised to their level "
                        "(SDEdit; the app uses 0.4)")
    p.add_argument("--every", type=int, default=1, help="DPS on one step in this many (the app uses 3)")
    canvas_args(p, methods=False)
    p.add_argument("--cells", help="latent extent COLSxROWS of a new canvas (default: --init's, or 64x64)")
    p.set_defaults(fn=cmd_layout)

    p = sub.add_parser("extend", help="outpaint: grow a latent file by whole cells on any side")
    model_args(p), image_args(p), canvas_args(p, methods=False)
    p.add_argument("--latent", required=True, help="the latent file to extend")
    for side in ("left", "right", "up", "down"):
        p.add_argument(f"--{side}", type=int, default=0, help=f"cells to add on the {side} (a multiple of 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    p.add_argument("--resample", type=int, default=0, help="harmonising passes per step (each one more UNet call)")
    p.set_defaults(fn=cmd_extend)

    p = sub.add_parser("encode", help="encode a photo (resized to 256²) into a latent and render it at any size "
                       "in the photo's shape (--size N: its longer side)")
    model_args(p), image_args(p)
    p.add_argument("image", help="the photo (any size; squashed to a square like in training, "
                   "rendered in its own shape)")
    p.add_argument("--refine", type=int, default=0,
                   help="refine the encoder's latent by this many gradient steps (about 1 s each on 2 CPU cores)")
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
