"""Rendering cost: median 256² tile latency, a full 2048² render, and peak memory of a tiled
8192² export (render + PNG) vs rendering 2048² in ONE renderer call.

Each peak-RSS figure comes from a fresh subprocess (this script with ``--child``) reading
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at its end, so the measurements do not share a heap.
The paper renderer (width 256) needs ~27 GB for 2048² in one call, more than this
machine has: for ``--config paper`` the one-call size defaults to 1024².
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

import torch
from PIL import Image

from infd_bench import header, latent, median_time, once, parse, pipeline
from infd_core.geometry import PixelRange
from infd_core.pipeline import Pipeline


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    pipe = pipeline(args, diffusion=False)
    field = pipe.field(latent())
    size = args.size
    result: dict[str, float] = {"size": size, "after_field_mb": peak_rss_mb()}
    t = time.perf_counter()
    if args.child == "export":
        img = pipe.render(field, size, size, tile=args.tile)
        result["render_s"] = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            Image.fromarray(img).save(Path(tmp) / "export.png", compress_level=1)
            result["png_s"] = time.perf_counter() - t
    elif args.child == "one-call":
        with torch.no_grad():
            pipe.render_tensor(field, size, size, PixelRange(0, size, 0, size))
        result["render_s"] = time.perf_counter() - t
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def run_child(args: argparse.Namespace, kind: str, size: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--config", args.config, "--precision", args.precision,
           "--child", kind, "--size", str(size), "--tile", str(args.tile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.returncode, "stderr": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tile_latency(pipe: Pipeline, reps: int) -> float:
    field = pipe.field(latent())
    interior = PixelRange(1024, 1280, 1024, 1280)  # a 256² tile of the 2048² level, rendered with its halo
    return median_time(lambda: pipe.render_tensor(field, 2048, 2048, interior), reps)


def timings(args: argparse.Namespace) -> None:
    pipe = pipeline(args, diffusion=False)
    info = pipe.describe()
    print(f"renderer {info['renderer']} ({info['params']['renderer'] / 1e6:.3f}M params), tile {args.tile}")
    print(f"256² tile (interior, +{info['receptive_radius']} px halo): median {tile_latency(pipe, args.reps) * 1e3:.0f} ms "
          f"over {args.reps}")
    field = pipe.field(latent())
    print(f"2048² full render, {args.tile}-px tiles: {once(lambda: pipe.render(field, 2048, 2048, tile=args.tile)):.2f} s")


def memory(args: argparse.Namespace) -> None:
    one = args.one_call_size or (2048 if args.config == "cpu" else 1024)
    base = run_child(args, "one-call", 64)
    export = run_child(args, "export", args.export_size)
    whole = run_child(args, "one-call", one)
    print(f"baseline (model + phi, 64² render): peak RSS {base.get('peak_rss_mb', float('nan')):.0f} MB")
    print(f"{args.export_size}² tiled export: {export}")
    print(f"{one}² in one call:    {whole}")
    if "peak_rss_mb" in export and "peak_rss_mb" in whole:
        print(f"peak RSS {args.export_size}² tiled export / {one}² one call = "
              f"{export['peak_rss_mb']:.0f} / {whole['peak_rss_mb']:.0f} MB = {export['peak_rss_mb'] / whole['peak_rss_mb']:.3f}")


def main() -> None:
    def extra(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--tile", type=int, default=256, help="tile side for full renders and the export")
        ap.add_argument("--export-size", type=int, default=8192)
        ap.add_argument("--one-call-size", type=int, default=None, help="default: 2048 (cpu), 1024 (paper)")
        ap.add_argument("--skip-memory", action="store_true")
        ap.add_argument("--skip-timing", action="store_true")
        ap.add_argument("--child", choices=["export", "one-call"], help=argparse.SUPPRESS)
        ap.add_argument("--size", type=int, help=argparse.SUPPRESS)

    args = parse(__doc__, extra)
    if args.child:
        child(args)
        return
    header(args, "render")
    if not args.skip_timing:
        timings(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
