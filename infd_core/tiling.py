"""Patchwise rendering: any level, any sub-region, as a stream of seamless tiles.

A *level* is the whole image rendered at ``height x width``; regions and tiles are
:class:`~infd_core.geometry.PixelRange` s of it. Each tile is rendered with a halo of the
renderer's receptive radius (clipped at the image border, where the whole render pads with
zeros too) and cropped, so tiles are identical to the corresponding part of a whole render
and memory depends on the tile size, never on the level size.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .geometry import PixelRange, check_level, level_grid
from .images import to_uint8
from .renderers import fixed_norm_statistics, select_statistics

DEFAULT_TILE = 256


def tile_ranges(region: PixelRange, tile: int = DEFAULT_TILE) -> Iterator[PixelRange]:
    """Row-major tiles of at most ``tile x tile`` pixels covering ``region``, aligned to its origin."""
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    for r in range(region.r0, region.r1, tile):
        for c in range(region.c0, region.c1, tile):
            yield PixelRange(r, min(r + tile, region.r1), c, min(c + tile, region.c1))


def render_pixels(renderer: nn.Module, phi: Tensor, height: int, width: int, rng: PixelRange, *,
                  norm_stats: list | None = None, autocast_dtype: torch.dtype | None = None,
                  channels_last: bool = False) -> Tensor:
    """Render pixels ``rng`` of level ``height x width``: ``phi [B, C, h, w] -> [B, 3, *rng.shape]`` float32.

    Renders ``rng`` plus a halo of ``renderer.receptive_radius`` and crops it, so the result
    equals the same pixels of a whole-level render. Differentiable w.r.t. ``phi``.
    """
    check_level(height, width)
    rng.check_within(height, width)
    big = rng.padded(renderer.receptive_radius, height, width)
    coord, cell = level_grid(height, width, big)
    b = phi.shape[0]
    coord = coord.to(phi.device)[None].expand(b, -1, -1, -1)
    cell = cell.to(phi.device)[None].expand(b, -1, -1, -1)
    amp = torch.autocast(phi.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with amp, fixed_norm_statistics(norm_stats or []):
        out = _run(renderer, phi, coord, cell, channels_last)
    top, left = rng.r0 - big.r0, rng.c0 - big.c0
    return out[..., top:top + rng.shape[0], left:left + rng.shape[1]].float()


def _run(renderer: nn.Module, phi: Tensor, coord: Tensor, cell: Tensor, channels_last: bool) -> Tensor:
    if channels_last:
        phi = phi.contiguous(memory_format=torch.channels_last)
    return renderer(phi, coord, cell)


def iter_tiles(renderer: nn.Module, phi: Tensor, height: int, width: int, region: PixelRange | None = None, *,
               tile: int = DEFAULT_TILE, **kw) -> Iterator[tuple[PixelRange, np.ndarray]]:
    """Stream ``(tile range, [h, w, 3] uint8)`` over ``region`` (default: the whole level) of image 0 of phi."""
    check_level(height, width)
    region = (region or PixelRange(0, height, 0, width)).check_within(height, width)
    kw["norm_stats"] = select_statistics(kw.get("norm_stats") or [], slice(0, 1))  # image 0's, like phi[:1]
    with torch.no_grad():
        for rng in tile_ranges(region, tile):
            yield rng, to_uint8(render_pixels(renderer, phi[:1], height, width, rng, **kw)[0])


def render_region(renderer: nn.Module, phi: Tensor, height: int, width: int, region: PixelRange | None = None, *,
                  tile: int = DEFAULT_TILE, progress: Callable[[int, int], None] | None = None,
                  **kw) -> np.ndarray:
    """Assemble ``region`` of level ``height x width`` tile by tile into one ``[h, w, 3]`` uint8 array.

    Peak memory: the output array plus one tile's activations.
    """
    check_level(height, width)
    region = (region or PixelRange(0, height, 0, width)).check_within(height, width)
    out = np.empty((*region.shape, 3), dtype=np.uint8)
    n = len(list(tile_ranges(region, tile)))
    for k, (rng, img) in enumerate(iter_tiles(renderer, phi, height, width, region, tile=tile, **kw)):
        out[rng.r0 - region.r0:rng.r1 - region.r0, rng.c0 - region.c0:rng.c1 - region.c0] = img
        if progress is not None:
            progress(k + 1, n)
    return out
