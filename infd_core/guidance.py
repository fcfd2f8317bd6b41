"""Layout-to-image: a :class:`~infd_core.regions.Layout` steering sampling (paper §5.5).

Two mechanisms, each region using what its kind asks for (:mod:`infd_core.conditions`):

* **DPS** (Chung et al. 2023) for regions with a loss (``text``, ``color``, small ``image``
  boxes): at every step, from the predicted clean latent x̂0, decode φ once, render **only each
  box** on a 224² grid (its cost does not depend on the canvas resolution), score it, and move
  x_{t-1} against ∂loss/∂x_t, RMS-normalised per step (DPS's ζ/‖r‖, scale-free across scorers)
  and scaled by ``scale`` times a schedule that decays to zero at the last step. The correction
  is confined to the boxes plus a feathered ``margin`` (:func:`~infd_core.conditions.region_mask`).
* **Held block means** for composition regions (``sketch``, ``color``): the predicted x̂0's
  block means under the box follow the region's picture (:class:`~infd_core.diffusion.LowFreq`),
  at no cost beyond an unguided step.
* **Held cells** for regions with a hard constraint (``keep``, placed ``image`` boxes) and, with
  a current picture and ``margin`` set, for everything beyond the boxes' margins: those latent
  cells follow the held latent, noised to each step's level (RePaint), so the picture outside
  the boxes stays the current one and the sampler harmonises the boxes with it.

``margin=None`` is plain DPS: guidance acts everywhere and nothing beyond the boxes is held.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .diffusion import DEFAULT_STRIDE, Known, Step
from .geometry import Box, box_to_pixels
from .conditions import SCORE_SIZE, Condition, RunContext, prepare_region, region_mask
from .pipeline import Field, Pipeline
from .regions import Layout

MARGIN = 0.125  # image fractions: how far past its box a region's guidance fades out
# DPS may not push a box's render out of the displayable range: each box's loss gains
# RANGE_WEIGHT x the mean squared excess of its unclamped render beyond ±RANGE_LIMIT. Measured
# on the embedded model, a "a red apple" box from scratch at strength 0.2 (30 steps, seeds 0, 1):
# 14 % / 11 % of the pixels clipped without it (38 % inside the box), 4.0 % / 1.6 % with it
# (0.1 % inside), the scorer's gain over unguided 3.8 -> 2.6 (the clamped render the scorer sees
# gives no gradient against saturation by itself).
RANGE_LIMIT = 0.8
RANGE_WEIGHT = 1e4
# What the app's Guided runs use (guided_sample's own defaults are the plain method: every step
# from noise). An edit of a current picture runs the last EDIT of its steps from the picture
# noised to their level (SDEdit), and DPS acts on one step in EVERY (EVERY_FRESH for a new
# picture, whose steps all run), with that many times the push. A guided step costs ~16 unguided
# ones on 2 CPU cores (the decoder's forward and backward on the whole latent: 0.56 of its
# 0.93 s). Measured on the embedded model with a "a red apple" box, 50 steps, strength 0.2: an
# edit of four pictures 43 s -> 7.6 s, the scorer's mean gain over the picture 2.26 -> 5.10 and
# the judge's 3.46 -> 4.73 (one step in 4: 6.1 s, 3.77 and 3.22); a new picture ~45 s -> 14 s.
EDIT = 0.4
EVERY = 3
EVERY_FRESH = 4


class Objective:
    """The DPS loss of a run's conditions on a :class:`Field` (those with a loss only)."""

    def __init__(self, pipe: Pipeline, conditions: list[Condition]):
        self.pipe = pipe
        self.conditions = [c for c in conditions if c.loss is not None]

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def crops(self, fld: Field) -> list[Tensor]:
        """Each condition's box at ``SCORE_SIZE``², unclamped: ``[1, 3, S, S]`` each."""
        return [self.pipe.render_box(fld, c.region.box, SCORE_SIZE) for c in self.conditions]

    def losses(self, fld: Field) -> Tensor:
        """Per-condition losses ``[R]`` (lower is better), unweighted: each kind's loss on the box as
        displayed (clamped), plus :func:`range_penalty` of the unclamped render."""
        return torch.stack([c.loss(crop.clamp(-1, 1)) + range_penalty(crop)
                            for c, crop in zip(self.conditions, self.crops(fld), strict=True)])

    def weights(self) -> Tensor:
        return torch.tensor([c.region.weight for c in self.conditions], device=self.pipe.device)


def range_penalty(render: Tensor) -> Tensor:
    """``RANGE_WEIGHT`` x the mean squared excess of ``render`` (model units, [-1, 1] displayable)
    beyond ±``RANGE_LIMIT``: 0 for any render inside it."""
    return RANGE_WEIGHT * (render.abs() - RANGE_LIMIT).clamp_min(0).pow(2).mean()


def prepare(pipe: Pipeline, layout: Layout, *, scorer: Any | None = None, init_latent: Tensor | None = None,
            seed: int = 0, cells: tuple[int, int] | None = None) -> list[Condition]:
    """The layout's conditions for one run; ValueError if one needs a scorer or a current picture
    that is not given."""
    regions = layout.conditions()
    if not regions:
        raise ValueError("the layout has no regions and no global prompt")
    if scorer is None and any(r.spec.needs_scorer for r in regions):
        raise ValueError("text regions need a scorer (infd_core.scorers.load_scorer)")
    if init_latent is None and any(r.spec.needs_init for r in regions):
        raise ValueError("a keep region needs the current image (init_latent)")
    ctx = RunContext(pipe, scorer, init_latent, torch.Generator().manual_seed(int(seed) + 1), cells)
    return [prepare_region(r, ctx) for r in regions]


def held_cells(pipe: Pipeline, conditions: list[Condition], init_latent: Tensor | None,
               margin: float | None, cells: tuple[int, int] | None = None) -> list[Known]:
    """What the sampler holds: the current picture beyond the ``margin`` of the boxes that ask
    for change (when there are such boxes, a picture and a margin), then each region's own hold
    (later ones win)."""
    n = pipe.latent_cells(cells)
    known = []
    changing = [c.region.box for c in conditions if c.region.spec.changes_picture]
    if init_latent is not None and margin is not None and changing:
        known.append(Known(init_latent, 1 - region_mask(changing, n, margin)))
    known += [c.hold for c in conditions if c.hold is not None]
    return [k for k in known if float(k.mask.max()) > 0]


def dps_guidance(pipe: Pipeline, objective: Objective, scale: float, margin: float | None = MARGIN,
                 on_loss: Callable[[int, Tensor], None] | None = None, cells: tuple[int, int] | None = None,
                 every: int = 1):
    """The sampler hook: x̂0 -> phi -> per-box renders -> loss -> normalised -∂loss/∂x_t, confined
    to the boxes (:func:`region_mask`; ``margin=None``: everywhere). ``every``: guide one step in
    ``every`` (the others cost an unguided step), each with ``every`` times the push."""
    boxes = [c.region.box for c in objective.conditions]
    mask = None if margin is None else region_mask(boxes, pipe.latent_cells(cells), margin).to(pipe.device)
    area = 1.0 if mask is None else float(mask.mean())  # the RMS is over the guided cells, not the whole latent

    def hook(x_t: Tensor, x0: Tensor, step: int, total: int) -> Tensor | None:
        if step % every:
            return None
        losses = objective.losses(pipe.field(x0, grad=True))
        loss = (objective.weights() * losses).sum()
        (grad,) = torch.autograd.grad(loss, x_t)
        if on_loss is not None:
            on_loss(step, losses.detach())
        if mask is not None:
            grad = grad * mask.to(grad.dtype)
        rms = (grad.pow(2).mean() / max(area, 1e-6)).sqrt()
        if not torch.isfinite(rms) or rms == 0:
            return None
        return -scale * every * strength(step, total) * grad / rms

    return hook


def strength(step: int, total: int) -> float:
    """Guidance schedule: strongest at the first step, linearly down to zero at the last."""
    return 1.0 - step / max(total, 1)


@torch.no_grad()
def describe(pipe: Pipeline, conditions: list[Condition], z: Tensor, init_latent: Tensor | None) -> list[dict]:
    """Per condition: the region, its final loss (if it has one), what its kind reports on the
    final picture and, given the picture it started from, the same ``before`` (so gains show)."""
    fields = {"after": pipe.field(z)}
    if init_latent is not None:
        fields["before"] = pipe.field(init_latent.to(pipe.device))
    out = []
    for c in conditions:
        crops = {k: pipe.render_box(f, c.region.box, SCORE_SIZE).clamp(-1, 1) for k, f in fields.items()}
        item: dict[str, Any] = {**c.region.to_json(), **c.describe(crops["after"])}
        if c.loss is not None:
            item["loss"] = float(c.loss(crops["after"]))
        if "before" in crops:
            item["before"] = c.describe(crops["before"])
            item["changed"] = round(float((crops["after"] - crops["before"]).abs().mean()) * 127.5, 2)  # /255
        out.append(item)
    return out


def render_box_fixed_resolution(pipe: Pipeline, fld: Field, box: Box, canvas: int, size: int = SCORE_SIZE) -> Tensor:
    """The fixed-resolution way, for comparison only (bench/guidance.py): render the box's whole
    region at the canvas resolution, then resize it to ``size``^2. Cost grows with ``canvas``."""
    full = pipe.render_tensor(fld, canvas, canvas, box_to_pixels(box, canvas, canvas))
    return torch.nn.functional.interpolate(full, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)


def guided_sample(pipe: Pipeline, layout: Layout, *, seed: int = 0, steps: int | None = None, scale: float = 1.0,
                  scorer: Any | None = None, init_latent: Tensor | None = None, sampler: str = "ddim",
                  eta: float | None = None, margin: float | None = MARGIN, resample: int = 0,
                  cells: tuple[int, int] | None = None, method: str = "windows", stride: int = DEFAULT_STRIDE,
                  callback: Callable[[Step], None] | None = None, should_stop: Callable[[], bool] | None = None,
                  describe_regions: bool = True, edit: float = 1.0, every: int = 1) -> tuple[Tensor, dict[str, Any]]:
    """Sample a latent ``[1, 3, h, w]`` steered by ``layout`` in ``steps`` (None: the model's
    own number); returns it and a report. ``cells``: the latent's extent (None: the current
    picture's, or the model's square); ``method``, ``stride``: how a canvas beyond the square is
    sampled (:meth:`Pipeline.sample`). Boxes are fractions of the whole canvas, whatever its extent.

    ``scale``: the DPS strength (0: no DPS; without a current picture and holds, the same result
    as ``pipe.sample`` for the seed). ``init_latent``: the current picture; with ``margin`` set it
    is held beyond the boxes' margins (image fractions), and ``keep`` regions hold it inside
    theirs. ``margin=None``: plain DPS everywhere, nothing held but the regions' own holds.
    ``resample``: harmonising passes per step where cells are held. ``edit`` < 1 (with a current
    picture): SDEdit, only the last ``edit`` of the ``steps`` run, from the current picture noised
    to their level (with locality on, most of the picture is held anyway). ``every``: DPS on one
    step in ``every`` (:func:`dps_guidance`). The report names the scorer,
    each condition's final loss and what each prompt was understood as (with a judge's score);
    ``describe_regions=False`` leaves its ``regions`` empty (a composition for a new picture: its
    decode and box renders cost a fifth of a 30-step run on the embedded model).
    """
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale!r}")
    if margin is not None and not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"guidance margin must be a finite number >= 0 or None, got {margin!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    if init_latent is not None:
        pipe.check_latent(init_latent)
        init_latent = init_latent.to(pipe.device).float()
        if cells is not None and tuple(cells) != tuple(init_latent.shape[-2:]):
            raise ValueError(f"the current picture is {tuple(init_latent.shape[-2:])} cells, asked for {tuple(cells)}")
        cells = tuple(init_latent.shape[-2:])
    cells = pipe.latent_cells(cells)
    conditions = prepare(pipe, layout, scorer=scorer, init_latent=init_latent, seed=seed, cells=cells)
    objective = Objective(pipe, conditions)
    known = held_cells(pipe, conditions, init_latent, margin, cells)
    low = [c.low for c in conditions if c.low is not None]
    trace: list[list[float]] = []
    hook = None
    if objective and scale > 0:
        hook = dps_guidance(pipe, objective, float(scale), margin, on_loss=lambda i, l: trace.append(l.tolist()),
                            cells=cells, every=every)
    sdedit = dict(init=init_latent, strength=edit) if init_latent is not None and edit < 1 else {}
    z = pipe.sample(seed, steps=steps, sampler=sampler, eta=eta, cells=cells, method=method, stride=stride,
                    guidance=hook, known=known, low=low, resample=resample, callback=callback, should_stop=should_stop,
                    **sdedit)
    steps = steps or pipe.cfg.diffusion.steps
    report = {"scorer": scorer.name if scorer is not None else None, "scale": scale, "margin": margin, "steps": steps,
              "edit": edit if sdedit else 1.0, "every": every,
              "seed": seed, "resample": resample, "held": bool(known) or bool(low), "cells": list(cells),
              "regions": describe(pipe, conditions, z, init_latent) if describe_regions else [], "loss_trace": trace}
    return z, report


__all__ = ["EDIT", "EVERY", "EVERY_FRESH", "MARGIN", "RANGE_LIMIT", "RANGE_WEIGHT", "Objective", "describe", "dps_guidance", "guided_sample",
           "held_cells", "prepare", "range_penalty", "render_box_fixed_resolution", "strength"]
