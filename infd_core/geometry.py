"""Rectangles of the image <-> query grids of pixel centres and pixel sizes.

The one coordinate convention of infd, stated here and nowhere else:

* **Field frame.** The whole image is the square [-1, 1] x [-1, 1] whatever its aspect on
  screen. A point is ``(y, x)``: **row axis first**, y grows downwards, x to the right.
  (-1, -1) is the top-left corner of the top-left pixel, (1, 1) the bottom-right corner of
  the bottom-right pixel. This is the authors' convention (and ``grid_sample``'s with the
  last axis flipped).
* **Query grid.** ``coord`` has shape ``[H, W, 2]`` (or ``[B, H, W, 2]``): the field-frame
  centre ``(y, x)`` of each output pixel. ``cell`` has the same shape: the pixel's size
  ``(h, w)`` in field units (the whole image is 2 wide), so rendering the whole image at
  N x N gives ``cell == 2 / N``.
* **Boxes.** :class:`Box` is what users, layouts and the viewer speak: ``(x0, y0, x1, y1)``
  as fractions of the image width/height in [0, 1], x first like every image tool,
  (x0, y0) top-left. Boxes are converted to the field frame only here.
* **Sizes.** An extent is ``(height, width)``, **rows first** like the tensors' ``[..., H, W]``, in
  code: :class:`Size` (a named tuple, so ``size.width`` reads as what it is), for pixels and latent
  cells alike. Text a person types or reads says ``WIDTHxHEIGHT``, **width first** like every image
  tool (``--size 8192x2730``, ``--cells 192x64``, "a 3000x1500 canvas"): :meth:`Size.parse` and
  ``str(size)`` are the only conversions. File formats keep the order they document.
* **Levels.** Rendering the whole image at ``height x width`` pixels is a *level*; a tile or
  sub-region of a level is a range of integer pixel rows and columns of it. Coordinates are
  computed in float64 from absolute pixel indices, so a pixel has bit-identical coordinates
  whichever tile or region it is rendered in (this is what makes tiles seamless).

* **Nearest cell.** A query point takes the feature cell of a ``h x w`` grid whose square
  contains it. A point exactly on a cell edge (at levels that are odd multiples of the grid,
  e.g. 384 on 256, a third of the pixels) is a tie: :func:`nearest_cell` breaks it by
  ``"floor"`` (the cell below/right, infd's) or ``"grid_sample"`` (the authors':
  ``grid_sample(mode="nearest", align_corners=False)``, i.e. the pixel-index
  ``((y + 1) h - 1) / 2`` rounded half to even).

* **Latent extents.** A latent has ``h x w`` cells (rows first, like its tensor ``[C, h, w]``):
  any multiple of :data:`CELL_STEP` from the model's base size (64) up to :data:`MAX_CELLS` on
  each side. It still spans the whole field frame [-1, 1]², so a cell is ``2/h`` by ``2/w``
  field units; a canvas keeps the *pixel density* of the square: ``S`` pixels per ``base``
  cells (e.g. 32 px a cell at 2048 per 64) makes an ``h x w`` latent ``S*h/base x S*w/base``
  pixels (:func:`canvas_size`), so pixels stay square.

Known pixel, for the tests: at level 4x4, pixel (row 0, col 3) has centre (-0.75, 0.75) and
cell (0.5, 0.5).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch is imported where a grid is made: the region schema imports Box without it
    import torch

__all__ = ["Box", "PixelRange", "Size", "level_grid", "box_grid", "check_level", "nearest_cell", "CELL_TIES",
           "MAX_SIDE", "CELL_STEP", "MAX_CELLS", "check_cells", "canvas_size", "cells_for_canvas",
           "cells_aspect_matches", "extend_cells", "box_in_extended"]

CELL_TIES = ("floor", "grid_sample")
_SIZE_TEXT = re.compile(r"\s*([0-9]{1,12})\s*[xX]\s*([0-9]{1,12})\s*")
MAX_SIDE = 1 << 17  # 131072 px: beyond this a level is surely a mistake (and float32 cells lose bits)
CELL_STEP = 8  # latent extents are multiples of this: the UNet halves a latent three times
MAX_CELLS = 1024  # cells a side (16 base squares): a decoded field of 4096 x 4096 cells


class Size(NamedTuple):
    """An extent ``(height, width)`` in pixels or latent cells, rows first (see the module docstring).

    ``str(Size(2730, 8192)) == "8192x2730"`` and :meth:`parse` reads that back: text is width first.
    """

    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str, what: str = "size") -> "Size":
        """``"WIDTHxHEIGHT"`` (whole numbers, any case of ``x``) -> ``Size(height, width)``; ValueError
        naming ``what`` otherwise. Ranges are the caller's to check."""
        m = _SIZE_TEXT.fullmatch(str(text))
        if m is None:
            raise ValueError(f"{what} must be WIDTHxHEIGHT (whole numbers, width first), got {text!r}")
        return cls(height=int(m[2]), width=int(m[1]))

    @property
    def aspect(self) -> float:
        """Width over height."""
        return self.width / self.height

    @property
    def longest(self) -> int:
        return max(self.height, self.width)


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in image fractions: x right, y down, (x0, y0) top-left.

    Values are normally in [0, 1]; a box may extend past the image only where a caller allows
    it (:meth:`clamped`). Zero-area, inverted and non-finite boxes are rejected.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        vals = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise ValueError(f"box coordinates must be finite numbers, got {vals}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"box must have x1 > x0 and y1 > y0 (positive area), got {vals}")

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def inside_image(self, tol: float = 1e-9) -> bool:
        return self.x0 >= -tol and self.y0 >= -tol and self.x1 <= 1 + tol and self.y1 <= 1 + tol

    def check_inside(self) -> "Box":
        """Return self, or raise if any part lies outside the image."""
        if not self.inside_image():
            raise ValueError(f"box {self} extends outside the image [0, 1] x [0, 1]")
        return self

    def clamped(self) -> "Box":
        """The part of the box inside the image (raises if nothing is left)."""
        return Box(max(self.x0, 0.0), max(self.y0, 0.0), min(self.x1, 1.0), min(self.y1, 1.0))

    @classmethod
    def from_pixels(cls, x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> "Box":
        """A box given in pixels of a ``width x height`` canvas."""
        return cls(x0 / width, y0 / height, x1 / width, y1 / height)


@dataclass(frozen=True)
class PixelRange:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a level (integer pixel indices)."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> Size:
        return Size(self.r1 - self.r0, self.c1 - self.c0)

    def padded(self, pad: int, height: int, width: int) -> "PixelRange":
        """Grow by ``pad`` pixels on every side, clipped to the level ``height x width``."""
        return PixelRange(max(self.r0 - pad, 0), min(self.r1 + pad, height),
                          max(self.c0 - pad, 0), min(self.c1 + pad, width))

    def check_within(self, height: int, width: int) -> "PixelRange":
        if not (0 <= self.r0 < self.r1 <= height and 0 <= self.c0 < self.c1 <= width):
            raise ValueError(f"pixel range {self} is empty or outside the {Size(height, width)} level")
        return self


def check_level(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Validate a level size; returns it as ints."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"level {name} must be a positive integer, got {v!r}")
        if v > max_side:
            raise ValueError(f"level {name} {v} exceeds the maximum side {max_side}")
    return height, width


def _axis(start: float, size: float, n: int, i0: int, i1: int) -> torch.Tensor:
    """Centres of pixels ``i0..i1-1`` of ``n`` pixels spanning ``[start, start+size]`` (float64)."""
    import torch

    i = torch.arange(i0, i1, dtype=torch.float64)
    return start + (i + 0.5) * (size / n)


def _grid(ys: torch.Tensor, xs: torch.Tensor, cell_h: float, cell_w: float) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).float()
    cell = torch.empty_like(coord)
    cell[..., 0] = cell_h
    cell[..., 1] = cell_w
    return coord, cell


def level_grid(height: int, width: int, rng: PixelRange | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query grid of (part of) the whole image rendered at ``height x width``.

    Returns ``coord, cell``, float32 tensors ``[h, w, 2]`` with (y, x) order, for the pixels in
    ``rng`` (the whole level if None). Pixels may lie outside the level (halos): their centres
    simply continue the grid.
    """
    check_level(height, width)
    rng = rng or PixelRange(0, height, 0, width)
    ys = _axis(-1.0, 2.0, height, rng.r0, rng.r1)
    xs = _axis(-1.0, 2.0, width, rng.c0, rng.c1)
    return _grid(ys, xs, 2.0 / height, 2.0 / width)


def box_grid(box: Box, height: int, width: int, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Query grid covering ``box`` with ``height x width`` pixels, grown by ``pad`` pixels per side.

    Returns ``coord, cell`` ``[height + 2 pad, width + 2 pad, 2]`` (y, x), field frame.
    """
    check_level(height, width)
    ys = _axis(-1.0 + 2.0 * box.y0, 2.0 * box.height, height, -pad, height + pad)
    xs = _axis(-1.0 + 2.0 * box.x0, 2.0 * box.width, width, -pad, width + pad)
    return _grid(ys, xs, 2.0 * box.height / height, 2.0 * box.width / width)


def box_to_pixels(box: Box, height: int, width: int) -> PixelRange:
    """The pixels of a ``height x width`` level that ``box`` covers (rounded outwards, clipped)."""
    rng = PixelRange(math.floor(box.y0 * height + 1e-9), math.ceil(box.y1 * height - 1e-9),
                     math.floor(box.x0 * width + 1e-9), math.ceil(box.x1 * width - 1e-9))
    return PixelRange(max(rng.r0, 0), min(max(rng.r1, rng.r0 + 1), height),
                      max(rng.c0, 0), min(max(rng.c1, rng.c0 + 1), width))


def nearest_cell(coord: torch.Tensor, size: torch.Tensor, ties: str = "floor") -> torch.Tensor:
    """Index (row, col) of the grid cell each query point falls in, clamped to the grid.

    ``coord [..., 2]`` (y, x) float32 field-frame points, ``size`` = ``[h, w]`` of the grid (same
    dtype and device). Returns float ``[..., 2]`` integral values. ``ties``: see the module
    docstring ("floor" or "grid_sample").
    """
    import torch

    if ties == "floor":
        idx = ((coord + 1) * 0.5 * size).floor()
    elif ties == "grid_sample":
        idx = torch.round(((coord + 1) * size - 1) / 2)  # torch.round: half to even, like nearbyint
    else:
        raise ValueError(f"cell ties must be one of {CELL_TIES}, got {ties!r}")
    return torch.minimum(idx.clamp_min(0), size - 1)


# --- latent extents -----------------------------------------------------------------------------

def check_cells(h: int, w: int, base: int = 64, step: int = CELL_STEP) -> Size:
    """Validate a latent extent of ``h x w`` cells (rows, columns): integers, multiples of ``step``,
    from ``base`` (the model's square latent) to :data:`MAX_CELLS`. Returns ``(h, w)``."""
    for name, v in (("rows", h), ("columns", w)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"latent {name} must be an integer, got {v!r}")
        if v < base or v > MAX_CELLS or v % step:
            raise ValueError(f"latent {name} must be a multiple of {step} from {base} to {MAX_CELLS} cells, got {v}")
    return Size(h, w)


def canvas_size(cells: tuple[int, int], side: int, base: int = 64) -> Size:
    """Pixels ``(height, width)`` of an ``h x w``-cell latent at ``side`` pixels per ``base`` cells
    (the square canvas's density), rounded to the nearest pixel, at least 1."""
    h, w = cells
    return Size(max(1, round(side * h / base)), max(1, round(side * w / base)))


def cells_for_canvas(height: int, width: int, base: int = 64, step: int = CELL_STEP) -> Size:
    """The latent extent ``(h, w)`` for a new picture on a ``height x width`` canvas: ``base`` cells
    on the shorter side, the longer one in proportion, rounded to ``step`` cells (at most
    :data:`MAX_CELLS`): ``(64, 64)`` for a square, ``(64, 192)`` for 6144 x 2048."""
    check_level(height, width)
    long = min(MAX_CELLS, max(base, round(base * max(height, width) / min(height, width) / step) * step))
    return Size(base, long) if width >= height else Size(long, base)


def cells_aspect_matches(cells: tuple[int, int], height: int, width: int) -> bool:
    """Whether a ``height x width`` level shows ``cells`` with square pixels, to a pixel's rounding
    on the shorter side (e.g. 192x64 cells at 8192x2730 px)."""
    h, w = cells
    return aspect_matches(w / h, height, width)


def aspect_matches(aspect: float, height: int, width: int) -> bool:
    """Whether ``height x width`` pixels have the shape ``aspect`` (width / height), to a pixel's
    rounding on the side derived from the other."""
    if width >= height * aspect:  # the height is the side derived from the other
        return abs(width / aspect - height) <= 1.0
    return abs(height * aspect - width) <= 1.0


def aspect_size(aspect: float, side: int) -> Size:
    """Pixels ``(height, width)`` of shape ``aspect`` (width / height) whose longer side is ``side``
    (the other rounded, at least 1): ``(1362, 2048)`` for a 451 x 300 photo at 2048."""
    if aspect >= 1:
        return Size(max(1, round(side / aspect)), side)
    return Size(side, max(1, round(side * aspect)))


def extend_cells(cells: tuple[int, int], left: int = 0, right: int = 0, up: int = 0,
                 down: int = 0) -> tuple[Size, "PixelRange"]:
    """An ``h x w`` latent grown by whole cells on each side: the new extent ``(h', w')`` and where
    the old cells lie in it (a :class:`PixelRange` of cell rows/columns). Negative amounts raise."""
    amounts = {"left": left, "right": right, "up": up, "down": down}
    for name, v in amounts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"extend {name} must be a whole number of cells >= 0, got {v!r}")
    h, w = cells
    return Size(h + up + down, w + left + right), PixelRange(up, up + h, left, left + w)


def box_in_extended(box: Box, old: tuple[int, int], new: tuple[int, int], where: "PixelRange") -> Box:
    """``box`` (fractions of an ``old``-cell canvas) as fractions of the ``new``-cell canvas it was
    extended into, the old cells lying at ``where`` (see :func:`extend_cells`)."""
    (oh, ow), (nh, nw) = old, new
    return Box((where.c0 + box.x0 * ow) / nw, (where.r0 + box.y0 * oh) / nh,
               (where.c0 + box.x1 * ow) / nw, (where.r0 + box.y1 * oh) / nh)
