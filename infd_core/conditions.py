"""What each region kind does during one sampling run: its :class:`Condition`.

:func:`prepare_region` turns a :class:`~infd_core.regions.Region` into a differentiable loss for DPS
guidance and/or a hard constraint on latent cells (:mod:`infd_core.guidance` runs them):

* ``text``  -- the scorer's match of the box with ``prompt``, averaged over random augmented
  cutouts of the box (so a texture that fools one exact view is not rewarded); the report adds
  a *judge*: the same scorer on augmentations the guidance never saw.
* ``image`` -- a reference picture placed at scale: pasted into the box over the current
  picture, encoded, and its latent cells held (``hard``) or held for the first steps only
  (``soft``) while the sampler harmonises around them; a box smaller than
  :data:`MIN_PLACED_CELLS` latent cells a side falls back to DPS on the box's render.
* ``sketch`` -- a composition: the box's latent block means (``coarseness`` cells a side) are
  held to those of a picture's (painted or a photo; :class:`~infd_core.diffusion.LowFreq`), so
  the sampler paints texture over the picture's coarse layout and colours at the box's scale.
* ``color`` -- a flat colour held the same way: the box shows ``color`` at the coarse scale and
  the model's texture at the fine one (DPS on the mean colour blew pictures out from scratch).
* ``keep``  -- the current picture's latent cells under the box are held (no loss needed).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor

from .diffusion import Known, LowFreq
from .geometry import Box, PixelRange, box_to_pixels
from .images import to_tensor
from .inversion import refine_latent
from .regions import KINDS, Region

SCORE_SIZE = 224  # side of the box renders that losses see
MIN_PLACED_CELLS = 4  # an image box narrower than this many latent cells is steered by DPS instead
SOFT_UNTIL = 0.8  # a soft placement holds its cells for this fraction of the steps
PLACE_REFINE = 10  # latent refinement steps for a placed picture (embedded model: box LPIPS 0.22 -> 0.18, ~7 s on 2 cores)
TEXT_CUTOUTS = 4  # augmented views a text region's loss scores per step
JUDGE_VIEWS = 8  # views the judge scores, from augmentations the guidance never uses
JUDGE_SEED = 20240601


@dataclass
class Condition:
    """A region prepared for one run. ``loss(crop)``: lower is better, on the box rendered at
    :data:`SCORE_SIZE`² with displayed colours (clamped to [-1, 1]); None when the region acts only
    by its ``hold``. ``describe(crop)``: the report's entries for the final picture."""

    region: Region
    loss: Callable[[Tensor], Tensor] | None = None
    hold: Known | None = None  # latent cells held: x0 is a latent [1, C, h, w], mask [h, w]
    low: LowFreq | None = None  # block means held (a composition): x0 a latent [1, C, h, w], mask [h, w]
    describe: Callable[[Tensor], dict[str, Any]] = field(default=lambda crop: {})


@dataclass
class RunContext:
    """What preparing a region may use: the pipeline, the scorer (None if none is loaded), the
    current picture's latent (None for a fresh image), a generator for augmentations and the
    canvas's latent extent ``(h, w)`` (None: the model's square)."""

    pipe: Any  # infd_core.pipeline.Pipeline (not imported: the pipeline does not depend on layouts)
    scorer: Any | None
    init_latent: Tensor | None
    generator: torch.Generator
    extent: tuple[int, int] | None = None

    @property
    def cells(self) -> tuple[int, int]:
        return self.extent or self.pipe.latent_cells()


def prepare_region(r: Region, ctx: RunContext) -> Condition:
    """``r`` prepared for one run (its kind's entry in :data:`PREPARE`)."""
    return PREPARE[r.kind](r, ctx)


def prepare_text(r: Region, ctx: RunContext) -> Condition:
    scorer, target = ctx.scorer, ctx.scorer.encode_prompt(r.prompt)

    def loss(crop: Tensor) -> Tensor:
        views = cutouts(crop, TEXT_CUTOUTS, ctx.generator)
        return -scorer.score(views, [target] * views.shape[0]).mean()

    def describe(crop: Tensor) -> dict[str, Any]:
        views = judge_views(crop, JUDGE_VIEWS, torch.Generator().manual_seed(JUDGE_SEED))
        return {"score": float(scorer.score(crop, [target])[0]),
                "judge": float(scorer.score(views, [target] * views.shape[0]).mean()),
                "understood_as": target.explain(), "known": bool(target.known)}

    return Condition(r, loss, describe=describe)


def prepare_color(r: Region, ctx: RunContext) -> Condition:
    flat = np.full((8, 8, 3), np.round(np.asarray(r.color) * 255), np.uint8)
    return Condition(r, low=held_picture(ctx, r, flat), describe=mean_color)


def prepare_sketch(r: Region, ctx: RunContext) -> Condition:
    return Condition(r, low=held_picture(ctx, r, r.image), describe=mean_color)


def prepare_keep(r: Region, ctx: RunContext) -> Condition:
    return Condition(r, hold=Known(ctx.init_latent, box_cells([r.box], tuple(ctx.init_latent.shape[-2:]))))


def prepare_image(r: Region, ctx: RunContext) -> Condition:
    pipe = ctx.pipe
    h, w = ctx.cells
    cells = min((r.box.x1 - r.box.x0) * w, (r.box.y1 - r.box.y0) * h)
    if cells >= MIN_PLACED_CELLS:
        latent = place_image(pipe, r.image, r.box, ctx.init_latent, PLACE_REFINE, cells=ctx.cells)
        hold = Known(latent, box_cells([r.box], ctx.cells), 1.0 if r.placement == "hard" else SOFT_UNTIL)
        return Condition(r, hold=hold, describe=lambda crop: {"placed": r.placement, "cells": round(cells, 1)})
    # too small to place: match the reference's colours and layout at 32x32 (and its embedding)
    reference = _resize(r.image, SCORE_SIZE, pipe.device)
    layout_32 = F.adaptive_avg_pool2d(reference, 32)
    embedding = None
    if ctx.scorer is not None:
        with torch.no_grad():
            embedding = F.normalize(ctx.scorer.embed_images(reference), dim=-1)

    def loss(crop: Tensor) -> Tensor:
        out = F.mse_loss(F.adaptive_avg_pool2d(crop, 32), layout_32) * 10
        if embedding is not None:
            out = out + (1 - (F.normalize(ctx.scorer.embed_images(crop), dim=-1) * embedding).sum())
        return out

    return Condition(r, loss, describe=lambda crop: {
        "placed": None, "cells": round(cells, 1),
        "note": f"box is {cells:.1f} latent cells across (< {MIN_PLACED_CELLS}): steered by DPS, not placed"})


PREPARE: dict[str, Callable[[Region, RunContext], Condition]] = {
    "text": prepare_text, "image": prepare_image, "sketch": prepare_sketch, "color": prepare_color, "keep": prepare_keep}


def mean_color(crop: Tensor) -> dict[str, Any]:
    """The report's entry for a box's displayed mean colour (``crop`` in [-1, 1])."""
    return {"mean_color": [round(float(v), 4) for v in (crop.mean(dim=(0, 2, 3)) + 1) / 2]}


def held_picture(ctx: RunContext, r: Region, picture: np.ndarray) -> LowFreq:
    """``picture``'s coarse content held in ``r``'s box: the picture encoded (squashed to the
    encoder's square, like any photo), its latent resized to the cells the box spans and spread
    beyond them by replicating its border (so blocks cut by the box's edge average sensible
    values), its block means (``r.coarseness`` cells a side, default the kind's) held on the
    box's cells (weight above 1 counts as 1)."""
    pipe = ctx.pipe
    h, w = ctx.cells
    span = box_to_pixels(r.box, h, w)
    with torch.no_grad():
        z = pipe.encode(picture)
        z = F.interpolate(z, size=span.shape, mode="bilinear", antialias=True, align_corners=False)
    z = F.pad(z, (span.c0, w - span.c1, span.r0, h - span.r1), mode="replicate")
    return LowFreq(z, r.coarseness or KINDS[r.kind].coarseness, box_cells([r.box], (h, w)) * min(r.weight, 1.0))


# --- helpers ------------------------------------------------------------------------------------

def box_cells(boxes: list[Box], cells: int | tuple[int, int], feather: float = 1.0) -> Tensor:
    """``[h, w]`` (rows y) in [0, 1] for a latent of ``cells`` (``n`` for ``n x n``): 1 on latent
    cells whose centre lies in any box, falling linearly to 0 over ``feather`` cells outside
    (Chebyshev distance)."""
    h, w = _extent(cells)
    return region_mask(boxes, (h, w), feather / min(h, w))


def region_mask(boxes: list[Box], size: int | tuple[int, int], margin: float) -> Tensor:
    """Where a set of boxes acts on a latent of ``size`` cells (``n`` or ``(h, w)``): ``[h, w]`` (rows
    y, columns x) in [0, 1]; 1 at cell centres inside any box, falling linearly to 0 at ``margin``
    outside it (Chebyshev distance, in fractions of the canvas's shorter side: on a square
    canvas, image fractions; on a 192 x 64-cell panorama a margin of 0.125 is 8 cells either way)."""
    h, w = _extent(size)
    short = min(h, w)
    cy = (torch.arange(h, dtype=torch.float32) + 0.5) / h  # cell centres in [0, 1]
    cx = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    mask = torch.zeros(h, w)
    for b in boxes:
        dy = torch.clamp(torch.maximum(b.y0 - cy, cy - b.y1), min=0)[:, None] * (h / short)
        dx = torch.clamp(torch.maximum(b.x0 - cx, cx - b.x1), min=0)[None, :] * (w / short)
        mask = torch.maximum(mask, torch.clamp(1 - torch.maximum(dx, dy) / max(margin, 1e-6), min=0))
    return mask


def _extent(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def cutouts(crop: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """``k`` differentiable augmented views ``[k, 3, S, S]`` of ``crop [1, 3, S, S]``: random square
    cutouts of 60-100 % of the side, resized back, mirrored at random, plus small noise."""
    s = crop.shape[-1]
    views = []
    for _ in range(k):
        side = int(s * (0.6 + 0.4 * float(torch.rand((), generator=gen))))
        y, x = (int(torch.randint(0, s - side + 1, (), generator=gen)) for _ in range(2))
        v = F.interpolate(crop[..., y:y + side, x:x + side], size=(s, s), mode="bilinear", align_corners=False)
        if float(torch.rand((), generator=gen)) < 0.5:
            v = v.flip(-1)
        views.append(v + 0.02 * torch.randn(v.shape, generator=gen).to(v.device))
    return torch.cat(views).clamp(-1, 1)


def judge_views(crop: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Views the guidance never sees: a down-and-up resize (detail a texture relies on is lost),
    an off-centre crop of 50-85 %, a flip, a brightness change and stronger noise."""
    s = crop.shape[-1]
    views = []
    for _ in range(k):
        small = int(s * (0.35 + 0.3 * float(torch.rand((), generator=gen))))
        v = F.interpolate(crop, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
        side = int(small * (0.5 + 0.35 * float(torch.rand((), generator=gen))))
        y, x = (int(torch.randint(0, small - side + 1, (), generator=gen)) for _ in range(2))
        v = F.interpolate(v[..., y:y + side, x:x + side], size=(s, s), mode="bicubic", align_corners=False)
        if float(torch.rand((), generator=gen)) < 0.5:
            v = v.flip(-1)
        v = v * (0.85 + 0.3 * float(torch.rand((), generator=gen)))
        views.append(v + 0.05 * torch.randn(v.shape, generator=gen).to(v.device))
    return torch.cat(views).clamp(-1, 1)


def _resize(image: np.ndarray, size: int, device: torch.device) -> Tensor:
    t = to_tensor(image).to(device)
    return F.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def place_image(pipe: Any, image: np.ndarray, box: Box, init_latent: Tensor | None,
                refine: int = PLACE_REFINE, cells: tuple[int, int] | None = None) -> Tensor:
    """The latent ``[1, C, h, w]`` (``cells``, default the model's square) of ``image`` pasted into
    ``box``: the model's square window of the canvas around the box (the whole canvas when it is
    square) -- the current picture, or mid-grey -- rendered at the encoder's input size, the
    reference resized into the box's pixels, the collage encoded, its latent refined for ``refine``
    steps (:mod:`infd_core.inversion`) and put back in place; cells outside the window are the
    current picture's (zeros without one). ValueError if the box does not fit in one window."""
    n, side = pipe.latent_shape[-1], pipe.input_size
    h, w = cells or (n, n)
    scale = side // n  # pixels of the encoder's input per latent cell
    spans = box_to_pixels(box, h, w)  # the latent cells the box covers
    if spans.shape[0] > n or spans.shape[1] > n:
        raise ValueError(f"an image box must fit in {n} x {n} latent cells to be placed; this one spans "
                         f"{spans.shape[1]} x {spans.shape[0]} of the {w} x {h}-cell canvas")
    r0 = min(max((spans.r0 + spans.r1 - n) // 2, 0), h - n)  # the window, centred on the box
    c0 = min(max((spans.c0 + spans.c1 - n) // 2, 0), w - n)
    window = PixelRange(r0 * scale, (r0 + n) * scale, c0 * scale, (c0 + n) * scale)
    if init_latent is not None:
        canvas = pipe.render(pipe.field(init_latent.to(pipe.device)), h * scale, w * scale, window).copy()
    else:
        canvas = np.full((side, side, 3), 128, np.uint8)
    rng = box_to_pixels(box, h * scale, w * scale)
    top, left = max(rng.r0 - window.r0, 0), max(rng.c0 - window.c0, 0)
    bottom, right = min(rng.r1 - window.r0, side), min(rng.c1 - window.c0, side)
    patch = PIL.Image.fromarray(image).resize((max(right - left, 1), max(bottom - top, 1)),
                                              PIL.Image.Resampling.LANCZOS)
    canvas[top:bottom, left:right] = np.asarray(patch)
    z = refine_latent(pipe, canvas, refine, z=pipe.encode(canvas)) if refine else pipe.encode(canvas)
    if (h, w) == (n, n):
        return z
    out = init_latent.to(z).clone() if init_latent is not None else z.new_zeros(1, z.shape[1], h, w)
    out[..., r0:r0 + n, c0:c0 + n] = z
    return out


__all__ = ["JUDGE_VIEWS", "MIN_PLACED_CELLS", "PLACE_REFINE", "PREPARE", "SCORE_SIZE", "SOFT_UNTIL", "TEXT_CUTOUTS",
           "Condition", "RunContext", "box_cells", "cutouts", "held_picture", "judge_views", "mean_color",
           "place_image", "prepare_region", "region_mask"]
