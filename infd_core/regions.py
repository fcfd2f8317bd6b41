"""Regions and layouts: the boxes a user draws, the kind of each, and their JSON (the schema).

A :class:`Region` is a box (image fractions ``x0, y0, x1, y1``, see :mod:`infd_core.geometry`)
with a *kind* and that kind's fields; a :class:`Layout` is the regions plus a global prompt (a
text region over the whole canvas). This module is the only validator of both: the CLI's layout
JSON, the app's boxes, its spill and session files all build them here. It knows nothing of
models: what a kind *does* during sampling is :mod:`infd_core.conditions`, how it reads in a report
is :mod:`infd_core.wording`.

Each kind is one :class:`Kind` in :data:`KINDS`: the fields a user sets for it, the one it needs
before it can guide, and flags (needs a scorer, needs a current picture, changes the picture, the
block size of what it holds):

* ``text``   -- a prompt the box should match (DPS with the prompt scorer);
* ``image``  -- a reference picture placed in the box at scale (held hard, or soft for the first steps);
* ``sketch`` -- a composition: the picture's coarse layout and colours held (``coarseness`` cells a side);
* ``color``  -- a flat colour held the same way;
* ``keep``   -- what the current picture shows under the box, held.

Adding a kind: its :class:`Kind` here, its ``prepare`` in :mod:`infd_core.conditions` and its
wording in :mod:`infd_core.wording` (tests check all three cover :data:`KINDS`); the UI lists
:data:`KINDS` itself.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Box
from .images import read_photo

MAX_REGIONS = 16
MAX_WEIGHT = 100.0
MAX_PROMPT = 500  # characters, box prompts and the global prompt alike
MAX_DEPTH = 8  # nesting of layout JSON (deeper input is refused before it is walked)
MAX_REFERENCE_SIDE = 4096  # px: a reference picture's longest side
MAX_COARSENESS = 16  # latent cells a side of the blocks a sketch or colour region holds (defaults: per kind)
REGION_ID = re.compile(r"^[A-Za-z0-9_-]{1,24}$")
PLACEMENTS = ("hard", "soft")


@dataclass(frozen=True)
class Kind:
    """What a region kind is, as data: ``fields`` the :class:`Region` fields a user sets for it (the
    editors show these), ``needs`` the one it must have to guide (``missing``: the error when it
    has not), and whether it needs the prompt scorer, needs a current picture, changes the picture
    (False: it only holds what is there), and ``coarseness``: the default block size (latent cells)
    of the block means it holds, for kinds that hold them."""

    name: str
    fields: tuple[str, ...] = ()
    needs: str | None = None
    missing: str = ""
    needs_scorer: bool = False
    needs_init: bool = False
    changes_picture: bool = True
    coarseness: int | None = None

    def check(self, r: "Region") -> None:
        """ValueError unless ``r`` has the field this kind needs to guide."""
        if self.needs is None:
            return
        value = getattr(r, self.needs)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(self.missing)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("text", ("prompt",), "prompt", "a text region needs a prompt", needs_scorer=True),
    Kind("image", ("image", "placement"), "image", "an image region needs a reference picture"),
    # 4-cell blocks (16 px at 256²): a painted landscape came back within 1.2/255 per 16-px square
    # with 0.3 % clipped pixels on the embedded model; at 8 the sampler drifted from it (8-11/255)
    Kind("sketch", ("image", "coarseness"), "image", "a sketch region needs a picture (painted or a photo)",
         coarseness=4),
    # 2-cell blocks: three colour boxes from scratch (sky, mountain, field; 30 steps) gave 1.1 %
    # clipped pixels on the embedded model, 3.2 % at 4 and 10-13 % at 8 (the sampler draws bright
    # rims where held colours meet), against 80 % with DPS on the mean colour at strength 0.2.
    Kind("color", ("color",), "color", "a color region needs a colour", coarseness=2),
    Kind("keep", needs_init=True, changes_picture=False),
)}


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


__all__ = ["KINDS", "MAX_COARSENESS", "MAX_DEPTH", "MAX_PROMPT", "MAX_REFERENCE_SIDE", "MAX_REGIONS", "MAX_WEIGHT",
           "PLACEMENTS", "Kind", "Layout", "Region", "check_depth"]
