"""Sampling a 2x latent (128 x 128 cells) three ways, with the shipped model: directly (the UNet on
the whole latent), with ScaleCrafter's re-dilated convolutions (down/mid blocks, early steps) and
with MultiDiffusion windows (64² windows, fused every step); and, for reference, the model's own
64 x 64 square. Prints seconds per sample, peak memory of sampling and pFID-EffNetLite0 (256²
crops of 1024² renders) against the training photos; writes a contact sheet (seed 0 of each).

    python bench/panorama.py --photos /tmp/infd-v1/train --samples 8 --steps 20 --sheet sheet.jpg

Each method runs in its own process, so peak memory (the growth of the process's maximum resident
set over its first sampling step, on CPU; ``torch.cuda.max_memory_allocated`` on CUDA) is its own. pFID from a
few samples is strongly biased upwards: compare the rows with each other, never with published FIDs.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infd_core.pipeline import Pipeline  # noqa: E402

METHODS = {  # name -> (cells, Pipeline.sample method)
    "square 64x64 (reference)": ((64, 64), "direct"),
    "direct": ((128, 128), "direct"),
    "re-dilated (ScaleCrafter)": ((128, 128), "redilate"),
    "MultiDiffusion windows": ((128, 128), "windows"),
}


def child(args: argparse.Namespace) -> None:
    """One method: sample ``--samples`` seeds, time them, measure peak memory, save the renders."""
    cells, method = METHODS[args.child]
    pipe = Pipeline.load(args.model, device=args.device, precision=args.precision)
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipe.sample(0, steps=1, cells=cells, method=method, stride=args.stride)  # a step's peak; warms up, not timed
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024)
    seconds, renders = [], []
    for seed in range(args.samples):
        t = time.perf_counter()
        z = pipe.sample(seed, steps=args.steps, cells=cells, method=method, stride=args.stride)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t)
        renders.append(pipe.render(pipe.field(z), args.size, args.size))
    np.save(args.out_npy, np.stack(renders))
    print(json.dumps({"seconds": float(np.median(seconds)), "peak_mb": float(peak), "precision": str(pipe.precision),
                      "device": str(pipe.device)}))


def contact_sheet(images: dict[str, np.ndarray], side: int = 384) -> Image.Image:
    sheet = Image.new("RGB", (side * len(images), side + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (name, img) in enumerate(images.items()):
        sheet.paste(Image.fromarray(img).resize((side, side), Image.Resampling.LANCZOS), (k * side, 24))
        draw.text((k * side + 6, 5), name, fill="black")
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--stride", type=int, default=16, help="window stride (cells) for MultiDiffusion")
    ap.add_argument("--size", type=int, default=1024, help="render side for pFID and the sheet")
    ap.add_argument("--photos", type=Path, help="training photos for pFID (e.g. training.photoset's train/)")
    ap.add_argument("--crops", type=int, default=256, help="256² crops per set for pFID")
    ap.add_argument("--sheet", type=Path, help="write a contact sheet (seed 0 of each method) here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out-npy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    print(f"# panorama baselines: {args.samples} samples x {args.steps} DDIM steps, precision {args.precision}, "
          f"device {args.device}, window stride {args.stride}, torch {torch.__version__}")
    results, renders = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, name in enumerate(METHODS):
            npy = Path(tmp) / f"{k}.npy"
            cmd = [sys.executable, __file__, "--child", name, "--out-npy", str(npy)]
            for flag in ("model", "device", "precision", "samples", "steps", "stride", "size"):
                if getattr(args, flag) is not None:
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
            renders[name] = np.load(npy)
            print(f"  {name}: {results[name]['seconds']:.2f} s, peak {results[name]['peak_mb']:.0f} MB", flush=True)
    if args.photos:
        from training import features
        from training.data import ImageFolder
        from training.evaluate import frechet_distance, random_crops, square

        photos = ImageFolder(args.photos)
        reference = [square(photos[i], args.size) for i in range(len(photos))]
        extract = features.efficientnet_lite0()
        ref = extract(random_crops(reference, 256, args.crops, seed=0))
        for name, imgs in renders.items():
            results[name]["pfid"] = frechet_distance(ref, extract(random_crops(list(imgs), 256, args.crops, seed=0)))
        print(f"# pFID-EffNetLite0 256/{args.size}: {args.crops} crops of {len(reference)} training photos vs "
              f"{args.crops} crops of {args.samples} samples per method")
    print("| method | cells | seconds / sample | peak MB | pFID-EffNetLite0 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        h, w = METHODS[name][0]
        pfid = f"{r['pfid']:.1f}" if "pfid" in r else "–"
        print(f"| {name} | {h}x{w} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {pfid} |")
    if args.sheet:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet({n: r[0] for n, r in renders.items()}).save(args.sheet, quality=85)
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
