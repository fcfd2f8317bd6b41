"""Seam error of tiled rendering: |tiles - whole render| for

* the default CLIF (no normalisation): must be float noise;
* the authors' GroupNorm CLIF with per-tile statistics (their practice, with their 8-px padding
  and with our receptive-radius halo);
* the GroupNorm CLIF with fixed per-image statistics (:func:`norm_statistics`, measured on a 256²
  render), and how far those tiles are from the authors'-style whole render (per-image
  statistics of the level itself) -- also with statistics measured at the level size instead.

phi comes from the preset's (random) decoder; renderers are the preset's width/depth with and
without GroupNorm. Values are in output units (the image spans [-1, 1]).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Callable

import torch
from torch import Tensor, nn

from infd_bench import header, latent, parse, pipeline
from infd_core.geometry import PixelRange, level_grid
from infd_core.renderers import build_renderer, fixed_norm_statistics, norm_statistics
from infd_core.pipeline import Pipeline
from infd_core.tiling import render_pixels, tile_ranges

Amp = Callable[[], contextlib.AbstractContextManager]


def render(renderer: nn.Module, phi: Tensor, n: int, rng: PixelRange, pad: int, amp: Amp) -> Tensor:
    """Pixels ``rng`` of level ``n x n`` rendered with ``pad`` pixels of halo (clipped at the border), cropped."""
    big = rng.padded(pad, n, n)
    coord, cell = level_grid(n, n, big)
    with torch.no_grad(), amp():
        out = renderer(phi, coord[None], cell[None]).float()
    top, left = rng.r0 - big.r0, rng.c0 - big.c0
    return out[..., top:top + rng.shape[0], left:left + rng.shape[1]]


def authors_tiles(renderer: nn.Module, phi: Tensor, n: int, tile: int, pad: int, amp: Amp) -> Tensor:
    """The authors' tiling: each tile rendered with ``pad`` px of padding, GroupNorm over the padded tile."""
    out = torch.empty(1, 3, n, n)
    for rng in tile_ranges(PixelRange(0, n, 0, n), tile):
        out[..., rng.r0:rng.r1, rng.c0:rng.c1] = render(renderer, phi, n, rng, pad, amp)
    return out


def our_tiles(pipe: Pipeline, renderer: nn.Module, phi: Tensor, n: int, tile: int, stats: list | None = None) -> Tensor:
    """infd_core's tiling (:func:`render_pixels`: receptive-radius halo, optional fixed statistics)."""
    out = torch.empty(1, 3, n, n)
    with torch.no_grad():
        for rng in tile_ranges(PixelRange(0, n, 0, n), tile):
            out[..., rng.r0:rng.r1, rng.c0:rng.c1] = render_pixels(
                renderer, phi, n, n, rng, norm_stats=stats, autocast_dtype=pipe.precision.dtype("renderer"),
                channels_last=pipe.precision.renderer == "bf16")
    return out


def report(label: str, a: Tensor, b: Tensor) -> None:
    d = (a - b).abs()
    print(f"{label:<72} max {d.max().item():.2e}  mean {d.mean().item():.2e}")


def main() -> None:
    def extra(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--level", type=int, default=None, help="level side (default: 1024 cpu, 512 paper)")
        ap.add_argument("--tile", type=int, default=None, help="tile side (default: 256 cpu, 128 paper)")

    args = parse(__doc__, extra)
    header(args, "seams")
    n = args.level or (1024 if args.config == "cpu" else 512)
    tile = args.tile or (256 if args.config == "cpu" else 128)
    pipe = pipeline(args, diffusion=False)
    phi = pipe.field(latent()).phi
    amp = lambda: pipe._autocast("renderer")  # noqa: E731
    base = pipe.cfg.autoencoder.renderer
    fmt = torch.channels_last if pipe.precision.renderer == "bf16" else torch.contiguous_format
    torch.manual_seed(0)
    plain, group = (build_renderer(dataclasses.replace(base, norm=norm), phi.shape[1]).eval().to(memory_format=fmt)
                    for norm in ("none", "group"))
    radius = plain.receptive_radius
    full = PixelRange(0, n, 0, n)
    print(f"level {n}², {tile}-px tiles, renderer width {base.width}, {base.blocks} blocks, receptive radius {radius}")

    report("default CLIF (no norm): tiles vs whole", our_tiles(pipe, plain, phi, n, tile),
           render(plain, phi, n, full, 0, amp))

    authors_whole = render(group, phi, n, full, 0, amp)  # GroupNorm statistics of the whole level
    print(f"GroupNorm CLIF whole render: std {authors_whole.std().item():.3f}, "
          f"|max| {authors_whole.abs().max().item():.3f} (scale of the errors below)")
    report("GroupNorm CLIF, per-tile statistics, authors' 8-px padding: tiles vs whole",
           authors_tiles(group, phi, n, tile, 8, amp), authors_whole)
    report(f"GroupNorm CLIF, per-tile statistics, {radius}-px halo: tiles vs whole",
           our_tiles(pipe, group, phi, n, tile), authors_whole)

    for size in sorted({256, n}):
        with amp():
            stats = norm_statistics(group, phi, size=size)
        fixed_tiles = our_tiles(pipe, group, phi, n, tile, stats)
        with fixed_norm_statistics(stats):
            fixed_whole = render(group, phi, n, full, 0, amp)
        report(f"GroupNorm CLIF, statistics fixed from a {size}² render: tiles vs whole", fixed_tiles, fixed_whole)
        report(f"GroupNorm CLIF, statistics fixed from a {size}² render: tiles vs authors' whole render",
               fixed_tiles, authors_whole)


if __name__ == "__main__":
    main()
