"""Outpainting: a latent grown by whole cells on any side, its old cells kept exactly.

"Extend right by 64 cells" makes a wider latent whose old cells are held to their values at
every step (:class:`~infd_core.diffusion.Known`, RePaint) while the new ones are sampled with
overlapping windows (:func:`~infd_core.diffusion.windowed_eps`): each window that straddles the
seam sees the old cells, noised to its step's level, so the new content continues them. The
result's old cells equal the input's, so its render there changes only within the decoder's
reach of the seam (the decoder now sees neighbours where it saw its zero padding).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .diffusion import DEFAULT_STRIDE, Known, Step
from .geometry import CELL_STEP, PixelRange, extend_cells
from .pipeline import Pipeline

SIDES = ("left", "right", "up", "down")


def grown(z: Tensor, left: int = 0, right: int = 0, up: int = 0, down: int = 0) -> tuple[Known, PixelRange]:
    """``z [1, C, h, w]`` placed in a zero latent grown by the given cells per side: the
    :class:`Known` that holds its cells (mask 1 there, 0 on the new ones) and where they lie
    (cell rows and columns of the new extent). ValueError unless each amount is a multiple of
    :data:`~infd_core.geometry.CELL_STEP` and one is positive."""
    amounts = dict(left=left, right=right, up=up, down=down)
    new, where = extend_cells(tuple(z.shape[-2:]), **amounts)  # checks: whole cells, >= 0
    if not any(amounts.values()):
        raise ValueError("extend by at least one cell on one side (left, right, up or down)")
    bad = {k: v for k, v in amounts.items() if v % CELL_STEP}
    if bad:
        raise ValueError(f"extend by multiples of {CELL_STEP} cells, got {bad}")
    canvas = z.new_zeros(z.shape[0], z.shape[1], *new)
    canvas[..., where.r0:where.r1, where.c0:where.c1] = z
    mask = torch.zeros(new, device=z.device)
    mask[where.r0:where.r1, where.c0:where.c1] = 1
    return Known(canvas, mask), where


def extend(pipe: Pipeline, z: Tensor, *, left: int = 0, right: int = 0, up: int = 0, down: int = 0, seed: int = 0,
           steps: int | None = None, stride: int = DEFAULT_STRIDE, resample: int = 0,
           callback: Callable[[Step], None] | None = None,
           should_stop: Callable[[], bool] | None = None) -> Tensor:
    """``z [1, C, h, w]`` grown by ``left``/``right``/``up``/``down`` cells: ``[1, C, h', w']`` whose
    old cells are exactly ``z``'s and whose new cells are sampled (seed ``seed``, ``steps``,
    MultiDiffusion windows ``stride`` cells apart, ``resample`` harmonising passes per step) to
    continue them."""
    pipe.check_latent(z)
    if z.shape[0] != 1:
        raise ValueError(f"extend one latent at a time, got a batch of {z.shape[0]}")
    z = z.to(pipe.device).float()
    known, where = grown(z, left, right, up, down)
    out = pipe.sample(seed, steps=steps, cells=tuple(known.x0.shape[-2:]), stride=stride, known=[known],
                      resample=resample, callback=callback, should_stop=should_stop)
    out[..., where.r0:where.r1, where.c0:where.c1] = z  # bit-exact (the sampler's units round-trip to ~1e-7)
    return out


__all__ = ["SIDES", "extend", "grown"]
