"""Layouts: boxes on the canvas and what each kind of box asks of the picture.

A :class:`Region` is a box (image fractions ``x0, y0, x1, y1``, see :mod:`infd_core.geometry`)
with a *kind* and that kind's fields; a :class:`Layout` is the regions plus a global prompt (a
text region over the whole canvas). This module is the only validator of both: the CLI's layout
JSON, the app's boxes and session files all build them here.

Each kind is one object in :data:`KINDS` that knows how to check a region's fields, how to
*prepare* it for one sampling run (:class:`Condition`: a differentiable loss for DPS guidance,
and/or a hard constraint on latent cells) and how to explain it in the report:

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

Adding a kind: one class here with ``check``/``prepare``/``label``/``summarize``; the UI lists
:data:`KINDS` itself.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor

from .diffusion import Known, LowFreq
from .geometry import Box, PixelRange, box_to_pixels
from .images import read_photo, to_tensor
from .inversion import refine_latent

MAX_REGIONS = 16
MAX_WEIGHT = 100.0
MAX_PROMPT = 500  # characters, box prompts and the global prompt alike
MAX_DEPTH = 8  # nesting of layout JSON (deeper input is refused before it is walked)
SCORE_SIZE = 224  # side of the box renders that losses see
MIN_PLACED_CELLS = 4  # an image box narrower than this many latent cells is steered by DPS instead
REGION_ID = re.compile(r"^[A-Za-z0-9_-]{1,24}$")
PLACEMENTS = ("hard", "soft")
SOFT_UNTIL = 0.8  # a soft placement holds its cells for this fraction of the steps
PLACE_REFINE = 10  # latent refinement steps for a placed picture (embedded model: box LPIPS 0.22 -> 0.18, ~7 s on 2 cores)
MAX_COARSENESS = 16  # latent cells a side of the blocks a sketch or colour region holds (defaults: per kind)


@dataclass(frozen=True, eq=False)
class Region:
    """One box and its condition. ``id`` is an optional handle (the app's box id); ``image`` a
    reference ``[h, w, 3]`` uint8 array (an ``image`` or ``sketch`` region's picture);
    ``placement`` how an image region is held; ``coarseness`` the latent cells a side of the
    blocks whose means a ``sketch`` or ``color`` region holds (None: its kind's default)."""

    box: Box
    kind: str = "text"
    prompt: str = ""
    weight: float = 1.0
    color: tuple[float, float, float] | None = None
    image: np.ndarray | None = None
    placement: str = "hard"
    coarseness: int | None = None
    id: str = ""

    def __post_init__(self) -> None:
        box = self.box
        if isinstance(box, (list, tuple)):
            if len(box) != 4:
                raise ValueError(f"box must be [x0, y0, x1, y1], got {box!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise ValueError(f"box coordinates must be numbers, got {box!r}")
            box = Box(*(float(v) for v in box))
        if not isinstance(box, Box):
            raise ValueError(f"box must be a Box or [x0, y0, x1, y1], got {box!r}")
        box.check_inside()
        object.__setattr__(self, "box", box)
        if self.id and not (isinstance(self.id, str) and REGION_ID.match(self.id)):
            raise ValueError(f"region id must be 1-24 letters, digits, '_' or '-', got {self.id!r}")
        if self.kind not in KINDS:
            raise ValueError(f"region kind must be one of {tuple(KINDS)}, got {self.kind!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
            raise ValueError(f"region weight must be a finite number in [0, {MAX_WEIGHT:g}], got {w!r}")
        if not isinstance(self.prompt, str) or len(self.prompt) > MAX_PROMPT:
            raise ValueError(f"prompt must be a string of at most {MAX_PROMPT} characters")
        if self.color is not None:
            c = self.color
            if (not isinstance(c, (list, tuple)) or len(c) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in c)):
                raise ValueError(f"color must be (r, g, b) in [0, 1], got {c!r}")
            object.__setattr__(self, "color", tuple(float(v) for v in c))
        if self.image is not None:
            im = self.image
            if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError("a reference image must be an [h, w, 3] uint8 RGB array")
            if min(im.shape[:2]) < 8 or max(im.shape[:2]) > MAX_REFERENCE_SIDE:
                raise ValueError(f"a reference image must be 8..{MAX_REFERENCE_SIDE} px a side, "
                                 f"got {im.shape[1]}x{im.shape[0]}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        c = self.coarseness
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_COARSENESS):
            raise ValueError(f"coarseness must be an integer in [1, {MAX_COARSENESS}] latent cells, got {c!r}")

    @property
    def spec(self) -> "Kind":
        return KINDS[self.kind]

    def check_ready(self) -> None:
        """Raise ValueError unless the region has what its kind needs to guide (a prompt, a colour…)."""
        self.spec.check(self)

    def same_as(self, other: "Region") -> bool:
        """Value equality (the reference image compared by identity: it is never mutated)."""
        return self.to_json() == other.to_json() and self.image is other.image

    def to_json(self) -> dict[str, Any]:
        """The JSON form (layout files, session files); a reference image is only flagged."""
        out: dict[str, Any] = {"box": [self.box.x0, self.box.y0, self.box.x1, self.box.y1], "kind": self.kind,
                               "weight": self.weight}
        if self.id:
            out["id"] = self.id
        if self.prompt:
            out["prompt"] = self.prompt
        if self.color is not None:
            out["color"] = list(self.color)
        if self.image is not None:
            out["has_image"] = True
        if self.placement != "hard":
            out["placement"] = self.placement
        if self.coarseness is not None:
            out["coarseness"] = self.coarseness
        return out

    @classmethod
    def from_json(cls, data: Any, image: np.ndarray | None = None, folder: Path | None = None) -> "Region":
        """Inverse of :meth:`to_json` (also reads boxes as ``x0, y0, x1, y1`` keys, as older session
        files have them); ``image``: the reference the file stores beside. With ``folder`` (a layout
        file's), ``"image": "path"`` names a picture file relative to it. ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError("a region must be a JSON object")
        data = dict(data)
        if "image" in data:
            path = data.pop("image")
            if folder is None or not isinstance(path, str) or not path:
                raise ValueError("\"image\" names a picture file, relative to the layout file")
            image = np.asarray(read_photo(folder / path, max_pixels=MAX_REFERENCE_SIDE ** 2))
        if "box" not in data and all(k in data for k in ("x0", "y0", "x1", "y1")):
            data["box"] = [data.pop(k) for k in ("x0", "y0", "x1", "y1")]
        data.pop("has_image", None)
        if "box" not in data:
            raise ValueError("a region needs a \"box\": [x0, y0, x1, y1]")
        unknown = set(data) - _JSON_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        for key in ("color", "coarseness"):
            if data.get(key) is None:
                data.pop(key, None)
        try:
            return cls(**data, image=image)
        except TypeError as e:
            raise ValueError(str(e)) from None


_JSON_KEYS = {"box", "kind", "prompt", "weight", "color", "placement", "coarseness", "id"}
MAX_REFERENCE_SIDE = 4096  # px: a reference picture's longest side


@dataclass(frozen=True)
class Layout:
    """Regions (at most :data:`MAX_REGIONS`) and a global prompt (a text region over the whole canvas)."""

    regions: tuple[Region, ...] = ()
    global_prompt: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        if len(self.regions) > MAX_REGIONS:
            raise ValueError(f"at most {MAX_REGIONS} regions, got {len(self.regions)}")
        if not all(isinstance(r, Region) for r in self.regions):
            raise ValueError("regions must be Region objects")
        if not isinstance(self.global_prompt, str) or len(self.global_prompt) > MAX_PROMPT:
            raise ValueError(f"the global prompt must be a string of at most {MAX_PROMPT} characters")

    def conditions(self) -> list[Region]:
        """The global prompt (as a whole-canvas text region) and the regions, each checked ready."""
        extra = [Region(Box(0, 0, 1, 1), "text", self.global_prompt.strip())] if self.global_prompt.strip() else []
        out = extra + list(self.regions)
        for i, r in enumerate(out):
            try:
                r.check_ready()
            except ValueError as e:
                raise ValueError(f"box {i + 1 - len(extra)}: {e}" if r in self.regions else str(e)) from None
        return out

    @property
    def needs_scorer(self) -> bool:
        return bool(self.global_prompt.strip()) or any(r.spec.needs_scorer for r in self.regions)

    def to_json(self) -> dict[str, Any]:
        return {"global_prompt": self.global_prompt, "regions": [r.to_json() for r in self.regions]}

    @classmethod
    def from_json(cls, data: Any, folder: str | Path | None = None) -> "Layout":
        """``{"global_prompt": str, "regions": [...]}`` or a bare list of regions; raises ValueError.
        ``folder``: where the layout file is (its regions' ``"image"`` paths are relative to it)."""
        check_depth(data)
        if isinstance(data, list):
            data = {"regions": data}
        if not isinstance(data, dict) or not isinstance(data.get("regions", []), list):
            raise ValueError("layout must be a list of regions or {\"global_prompt\", \"regions\": [...]}")
        regions = []
        for i, r in enumerate(data.get("regions", [])):
            try:
                regions.append(Region.from_json(r, folder=None if folder is None else Path(folder)))
            except ValueError as e:
                raise ValueError(f"region {i}: {e}") from None
        prompt = data.get("global_prompt", "") or ""
        if not isinstance(prompt, str):
            raise ValueError("global_prompt must be a string")
        return cls(tuple(regions), prompt)


def check_depth(data: Any, limit: int = MAX_DEPTH) -> None:
    """ValueError if JSON ``data`` nests deeper than ``limit`` (checked without recursion)."""
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"JSON nested deeper than {limit} levels")
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]


# --- conditions: what a region does during one sampling run --------------------------------------

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


class Kind:
    """What a region kind means (one subclass per kind, registered in :data:`KINDS`)."""

    name: ClassVar[str]
    needs_scorer: ClassVar[bool] = False
    needs_init: ClassVar[bool] = False
    changes_picture: ClassVar[bool] = True  # False: the region only holds what is there
    fields: ClassVar[tuple[str, ...]] = ()  # the Region fields a user sets for this kind (editors show these)
    coarseness: ClassVar[int | None] = None  # block size (cells) of held block means, for kinds that hold them

    def check(self, r: Region) -> None:
        """ValueError unless ``r`` has the fields this kind needs to guide."""

    def prepare(self, r: Region, ctx: RunContext) -> Condition:
        raise NotImplementedError

    def label(self, r: Region) -> str:
        """A short description for box lists."""
        return self.name

    def summarize(self, item: dict[str, Any]) -> tuple[str, str]:
        """(what was asked, what came out) for one condition of a guidance report."""
        return self.name, ""


def hex_color(rgb: tuple[float, ...] | list[float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


class TextKind(Kind):
    name = "text"
    needs_scorer = True
    fields = ("prompt",)
    cutouts = 4  # augmented views scored per step
    judge_views = 8  # views the judge scores, from augmentations the guidance never uses
    judge_seed = 20240601

    def check(self, r: Region) -> None:
        if not r.prompt.strip():
            raise ValueError("a text region needs a prompt")

    def label(self, r: Region) -> str:
        return r.prompt or "(no prompt yet)"

    def summarize(self, item: dict[str, Any]) -> tuple[str, str]:
        """The scorer's score and the judge's (augmented views the guidance never saw), with their
        gains over the picture the run started from."""
        before = item.get("before")
        gain = (lambda k: f" ({item[k] - before[k]:+.2f})") if before else (lambda k: "")
        what = f"{'' if item['known'] else '⚠ '}{item['understood_as']}"  # it quotes the prompt
        return what, f"score {item['score']:.2f}{gain('score')}, judge {item['judge']:.2f}{gain('judge')}"

    def prepare(self, r: Region, ctx: RunContext) -> Condition:
        scorer, target = ctx.scorer, ctx.scorer.encode_prompt(r.prompt)

        def loss(crop: Tensor) -> Tensor:
            views = cutouts(crop, self.cutouts, ctx.generator)
            return -scorer.score(views, [target] * views.shape[0]).mean()

        def describe(crop: Tensor) -> dict[str, Any]:
            views = judge_views(crop, self.judge_views, torch.Generator().manual_seed(self.judge_seed))
            return {"score": float(scorer.score(crop, [target])[0]),
                    "judge": float(scorer.score(views, [target] * views.shape[0]).mean()),
                    "understood_as": target.explain(), "known": bool(target.known)}

        return Condition(r, loss, describe=describe)


class ColorKind(Kind):
    name = "color"
    fields = ("color",)
    # 2-cell blocks: three colour boxes from scratch (sky, mountain, field; 30 steps) gave 1.1 %
    # clipped pixels on the embedded model, 3.2 % at 4 and 10-13 % at 8 (the sampler draws bright
    # rims where held colours meet), against 80 % with DPS on the mean colour at strength 0.2.
    coarseness = 2

    def check(self, r: Region) -> None:
        if r.color is None:
            raise ValueError("a color region needs a colour")

    def label(self, r: Region) -> str:
        return hex_color(r.color) if r.color else "(no colour)"

    def summarize(self, item: dict[str, Any]) -> tuple[str, str]:
        return hex_color(item["color"]), f"mean {hex_color(item['mean_color'])}"

    def prepare(self, r: Region, ctx: RunContext) -> Condition:
        flat = np.full((8, 8, 3), np.round(np.asarray(r.color) * 255), np.uint8)
        return Condition(r, low=held_picture(ctx, r, flat), describe=mean_color)


class SketchKind(Kind):
    name = "sketch"
    fields = ("image", "coarseness")
    # 4-cell blocks (16 px at 256²): a painted landscape came back within 1.2/255 per 16-px square
    # with 0.3 % clipped pixels on the embedded model; at 8 the sampler drifted from it (8-11/255)
    coarseness = 4

    def check(self, r: Region) -> None:
        if r.image is None:
            raise ValueError("a sketch region needs a picture (painted or a photo)")

    def label(self, r: Region) -> str:
        return f"sketch, {r.coarseness or self.coarseness}-cell blocks" if r.image is not None else "(no sketch)"

    def summarize(self, item: dict[str, Any]) -> tuple[str, str]:
        return f"sketch ({item.get('coarseness') or self.coarseness}-cell blocks)", f"mean {hex_color(item['mean_color'])}"

    def prepare(self, r: Region, ctx: RunContext) -> Condition:
        return Condition(r, low=held_picture(ctx, r, r.image), describe=mean_color)


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
    return LowFreq(z, r.coarseness or r.spec.coarseness, box_cells([r.box], (h, w)) * min(r.weight, 1.0))


class KeepKind(Kind):
    name = "keep"
    needs_init = True
    changes_picture = False

    def label(self, r: Region) -> str:
        return "keep what is there"

    def summarize(self, item: dict[str, Any]) -> tuple[str, str]:
        return "keep", "held"

    def prepare(self, r: Region, ctx: RunContext) -> Condition:
        return Condition(r, hold=Known(ctx.init_latent, box_cells([r.box], tuple(ctx.init_latent.shape[-2:]))))


class ImageKind(Kind):
    name = "image"
    fields = ("image", "placement")
    refine = PLACE_REFINE  # latent refinement steps for the placed collage

    def check(self, r: Region) -> None:
        if r.image is None:
            raise ValueError("an image region needs a reference picture")

    def label(self, r: Region) -> str:
        return "reference image" + (", soft" if r.placement == "soft" else "") if r.image is not None else "(no image)"

    def summarize(self, item: dict[str, Any]) -> tuple[str, str]:
        return "reference image", item.get("note") or f"placed ({item['placed']}, {item['cells']} cells)"

    def prepare(self, r: Region, ctx: RunContext) -> Condition:
        pipe = ctx.pipe
        h, w = ctx.cells
        cells = min((r.box.x1 - r.box.x0) * w, (r.box.y1 - r.box.y0) * h)
        if cells >= MIN_PLACED_CELLS:
            latent = place_image(pipe, r.image, r.box, ctx.init_latent, self.refine, cells=ctx.cells)
            hold = Known(latent, box_cells([r.box], ctx.cells), 1.0 if r.placement == "hard" else SOFT_UNTIL)
            return Condition(r, hold=hold, describe=lambda crop: {"placed": r.placement,
                                                                   "cells": round(cells, 1)})
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


KINDS: dict[str, Kind] = {k.name: k for k in (TextKind(), ImageKind(), SketchKind(), ColorKind(), KeepKind())}


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
    canvas, image fractions; on a 64 x 192 panorama a margin of 0.125 is 8 cells either way)."""
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
    n, side = pipe.latent_shape[-1], pipe.cfg.autoencoder.input_size
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


__all__ = ["KINDS", "MAX_COARSENESS", "MAX_PROMPT", "MAX_REGIONS", "MAX_WEIGHT", "MIN_PLACED_CELLS", "PLACEMENTS", "SCORE_SIZE",
           "Condition", "Kind", "Layout", "Region", "RunContext", "box_cells", "check_depth", "cutouts",
           "held_picture", "judge_views", "mean_color", "place_image", "region_mask"]
