"""Patchwise rendering: any level, any sub-region, as a stream of seamless tiles.

A *level* is the whole image rendered at ``height x width``; regions and tiles are
:class:`~infd_core.geometry.PixelRange` s of it. Each tile is rendered with a halo of the
renderer's receptive radius (clipped at the image border, where the whole render pads with
zeros too) and cropped, so tiles are identical to the corresponding part of a whole render
and memory depends on the tile size, never on the level size.

Render modes of a renderer with GroupNorm (the authors' CLIF), whose output depends on the
patch it normalises over:

* ``"fixed-statistics"`` (default): every tile uses the image's statistics measured once on a
  256² render (:func:`~infd_core.renderers.norm_statistics`), so tiles are exact parts of one
  image at any level -- what deep zoom needs.
* ``"authors-patchwise"``: the authors' ``gen_samples``: the level is cut into 256² patches from
  its top-left corner, each rendered with 8 px of padding (clipped at the border) under its own
  statistics. It reproduces their published samples; seams between patches are possible and a
  zoomed tile is only exact where it is one of their patches.
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
RENDER_MODES = ("fixed-statistics", "authors-patchwise")
AUTHORS_PATCH, AUTHORS_PADDING = 256, 8  # gen_samples' --patch-size and --patch-padding


def tile_ranges(region: PixelRange, tile: int = DEFAULT_TILE) -> Iterator[PixelRange]:
    """Row-major tiles of at most ``tile x tile`` pixels covering ``region``, aligned to its origin."""
    if tile <= 0:
        raise ValueError(f"tile size must be positive, got {tile}")
    for r in range(region.r0, region.r1, tile):
        for c in range(region.c0, region.c1, tile):
            yield PixelRange(r, min(r + tile, region.r1), c, min(c + tile, region.c1))


def render_pixels(renderer: nn.Module, phi: Tensor, height: int, width: int, rng: PixelRange, *,
                  norm_stats: list | None = None, autocast_dtype: torch.dtype | None = None,
                  channels_last: bool = False, halo: int | None = None) -> Tensor:
    """Render pixels ``rng`` of level ``height x width``: ``phi [B, C, h, w] -> [B, 3, *rng.shape]`` float32.

    Renders ``rng`` plus a halo (default: ``renderer.receptive_radius``) and crops it, so the
    result equals the same pixels of a whole-level render. Differentiable w.r.t. ``phi``.
    """
    check_level(height, width)
    rng.check_within(height, width)
    big = rng.padded(renderer.receptive_radius if halo is None else halo, height, width)
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


def render_piece(renderer: nn.Module, phi: Tensor, height: int, width: int, rng: PixelRange, **kw) -> np.ndarray:
    """Pixels ``rng`` of level ``height x width`` of image 0 of phi, in one pass: ``[h, w, 3]`` uint8."""
    kw["norm_stats"] = select_statistics(kw.get("norm_stats") or [], slice(0, 1))  # image 0's, like phi[:1]
    with torch.no_grad():
        return to_uint8(render_pixels(renderer, phi[:1], height, width, rng, **kw)[0])


def iter_tiles(renderer: nn.Module, phi: Tensor, height: int, width: int, region: PixelRange | None = None, *,
               tile: int = DEFAULT_TILE, **kw) -> Iterator[tuple[PixelRange, np.ndarray]]:
    """Stream ``(tile range, [h, w, 3] uint8)`` over ``region`` (default: the whole level) of image 0 of phi."""
    check_level(height, width)
    region = (region or PixelRange(0, height, 0, width)).check_within(height, width)
    for rng in tile_ranges(region, tile):
        yield rng, render_piece(renderer, phi, height, width, rng, **kw)


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


def _overlap(a: PixelRange, b: PixelRange) -> PixelRange | None:
    r0, r1, c0, c1 = max(a.r0, b.r0), min(a.r1, b.r1), max(a.c0, b.c0), min(a.c1, b.c1)
    return PixelRange(r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def iter_authors_patches(renderer: nn.Module, phi: Tensor, height: int, width: int, region: PixelRange | None = None,
                         *, patch: int = AUTHORS_PATCH, padding: int = AUTHORS_PADDING,
                         autocast_dtype: torch.dtype | None = None,
                         channels_last: bool = False) -> Iterator[tuple[PixelRange, Tensor]]:
    """The ``"authors-patchwise"`` mode: ``(pixels, [B, 3, h, w] float32)`` for each of the authors'
    ``patch``² patches of the level that meets ``region``, cropped to it.

    Each patch is rendered with ``padding`` px around it (clipped at the border) and GroupNorm
    statistics of that padded patch, as the authors' ``render_output_patchwise``.
    """
    check_level(height, width)
    region = (region or PixelRange(0, height, 0, width)).check_within(height, width)
    for cell in tile_ranges(PixelRange(0, height, 0, width), patch):
        part = _overlap(cell, region)
        if part is None:
            continue
        rgb = render_pixels(renderer, phi, height, width, cell, halo=padding,
                            autocast_dtype=autocast_dtype, channels_last=channels_last)
        yield part, rgb[..., part.r0 - cell.r0:part.r1 - cell.r0, part.c0 - cell.c0:part.c1 - cell.c0]


def render_authors_patchwise(renderer: nn.Module, phi: Tensor, height: int, width: int,
                             region: PixelRange | None = None, *, progress: Callable[[int, int], None] | None = None,
                             **kw) -> np.ndarray:
    """:func:`iter_authors_patches` of image 0 assembled into one ``[h, w, 3]`` uint8 array."""
    region = (region or PixelRange(0, height, 0, width)).check_within(height, width)
    out = np.empty((*region.shape, 3), dtype=np.uint8)
    patches = tile_ranges(PixelRange(0, height, 0, width), kw.get("patch", AUTHORS_PATCH))
    n = sum(_overlap(c, region) is not None for c in patches)
    with torch.no_grad():
        for k, (rng, rgb) in enumerate(iter_authors_patches(renderer, phi[:1], height, width, region, **kw)):
            out[rng.r0 - region.r0:rng.r1 - region.r0, rng.c0 - region.c0:rng.c1 - region.c0] = to_uint8(rgb[0])
            if progress is not None:
                progress(k + 1, n)
    return out
