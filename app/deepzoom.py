"""Deep Zoom pyramids of a neural field: tile geometry, tile PNGs and streamed exports.

A canvas (a :class:`~infd_core.geometry.Size` of pixels) is served as a Deep Zoom (DZI) pyramid,
the level convention OpenSeadragon uses: level ``max_level = ceil(log2(max(width, height)))`` is the
canvas itself, every level below halves it (rounding up), level 0 is 1 x 1. Level ``L`` is
simply the whole image rendered at ``level_size(L)`` (see :mod:`infd_core.geometry`), so each
tile is a :class:`~infd_core.geometry.PixelRange` of that level, rendered on demand.

Tile ``(x, y)`` of a level covers columns ``[x T - o, (x + 1) T + o)`` (rows likewise), where
``T`` is the tile size and ``o`` the overlap, with no overlap on the left/top edge of the first
tile and everything clipped to the level.

Exports never hold the whole image: PNGs are written strip by strip through zlib, Deep Zoom
zips tile by tile; both are generators of bytes for a streamed HTTP response.
"""
from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from infd_core.geometry import PixelRange, Size, check_level

from .numbers import whole

if TYPE_CHECKING:  # annotations only: the session data does not load the model code
    from infd_core.pipeline import Field, Pipeline

TILE = 256
OVERLAP = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Pyramid:
    """The Deep Zoom levels and tiles of a ``height x width`` canvas (``Pyramid(*size)``)."""

    height: int
    width: int
    tile: int = TILE
    overlap: int = OVERLAP

    def __post_init__(self) -> None:
        check_level(self.height, self.width)

    @property
    def size(self) -> Size:
        return Size(self.height, self.width)

    @property
    def max_level(self) -> int:
        return math.ceil(math.log2(max(self.width, self.height)))

    @property
    def min_level(self) -> int:
        """The largest level that fits in one tile: the coarsest one worth showing."""
        return max(0, self.max_level - math.ceil(math.log2(max(self.width, self.height) / self.tile)))

    def check_level(self, level: int, lo: int = 0) -> int:
        """``level`` if it is one of this pyramid's (from ``lo``); ValueError before any arithmetic on it
        (``2 ** (max_level - level)`` of a crafted level of -1e10 would take gigabytes)."""
        return whole(level, "level", lo, self.max_level)

    def level_size(self, level: int) -> Size:
        """The size of a level (ceil of the canvas size over ``2 ** (max_level - level)``);
        ValueError for a level outside the pyramid."""
        k = 1 << (self.max_level - self.check_level(level))
        return Size(-(-self.height // k), -(-self.width // k))

    def tile_count(self, level: int) -> Size:
        """Tiles at a level: ``Size(rows, columns)``."""
        h, w = self.level_size(level)
        return Size(-(-h // self.tile), -(-w // self.tile))

    def tile_range(self, level: int, x: int, y: int) -> PixelRange:
        """The pixels of tile ``(x, y)`` at ``level``; ValueError if there is no such tile."""
        tiles = self.tile_count(level)  # checks the level
        if not (0 <= x < tiles.width and 0 <= y < tiles.height):
            raise ValueError(f"tile ({x}, {y}) is outside the {tiles} tiles of level {level}")
        h, w = self.level_size(level)
        t, o = self.tile, self.overlap
        return PixelRange(max(y * t - o, 0), min((y + 1) * t + o, h), max(x * t - o, 0), min((x + 1) * t + o, w))

    def view_tiles(self, level: int, x0: int, y0: int, x1: int, y1: int, max_tiles: int = 64) -> list[tuple[int, int, int]]:
        """The tiles a viewer needs for a view of tiles ``x0..x1``, ``y0..y1`` (inclusive, clipped to
        the level) of ``level``, at most ``max_tiles`` (the region is cut to its top-left corner
        beyond): a new version of the picture loads only these behind the one on screen (no
        coarser levels: see viewer.js). ValueError for a level outside the pyramid."""
        rows, cols = self.tile_count(self.check_level(level, self.min_level))
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(cols - 1, x1, x0 + max_tiles - 1), min(rows - 1, y1)
        y1 = min(y1, y0 + max(1, max_tiles // max(1, x1 - x0 + 1)) - 1)
        return [(level, x, y) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]

    def dzi_xml(self) -> str:
        """The ``.dzi`` descriptor of this pyramid (PNG tiles)."""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="png" Overlap="{self.overlap}" '
                f'TileSize="{self.tile}"><Size Width="{self.width}" Height="{self.height}"/></Image>\n')


def encode_png(rgb: np.ndarray) -> bytes:
    """``[h, w, 3]`` uint8 -> PNG bytes, fast: every row "Up"-filtered (minus the row above, one
    numpy subtraction) and zlib level 1. A 256² tile: ~3.5 ms and the size PIL's ``compress_level=1``
    gives in ~8 ms (its adaptive filters cost more than they save on smooth renders)."""
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up; the first row's "row above" is zeros
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as PNG wants
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def render_tile(pipe: Pipeline, field: Field, pyramid: Pyramid, level: int, x: int, y: int) -> bytes:
    """One tile of the pyramid as PNG bytes."""
    rng = pyramid.tile_range(level, x, y)
    rgb = pipe.render_piece(field, *pyramid.level_size(level), rng)
    return encode_png(rgb)


# --- streamed exports -----------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def stream_png(pipe: Pipeline, field: Field, size: Size, *, strip: int = TILE,
               before_strip: Callable[[], None] | None = None) -> Iterator[bytes]:
    """The whole image at ``size`` as PNG bytes, rendered and compressed strip by strip.

    Memory is one strip of ``strip`` rows; ``before_strip`` runs before each strip is rendered
    (the server uses it to let interactive tile requests go first).
    """
    height, width = check_level(*size)
    yield PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    z = zlib.compressobj(6)
    for r0 in range(0, height, strip):
        if before_strip is not None:
            before_strip()
        rows = pipe.render(field, height, width, PixelRange(r0, min(r0 + strip, height), 0, width), tile=strip)
        # every scanline starts with filter type 0 (None)
        raw = np.concatenate([np.zeros((rows.shape[0], 1), np.uint8), rows.reshape(rows.shape[0], -1)], axis=1)
        data = z.compress(raw.tobytes())
        if data:
            yield _png_chunk(b"IDAT", data)
    yield _png_chunk(b"IDAT", z.flush()) + _png_chunk(b"IEND", b"")


class _Spool(io.RawIOBase):
    """A write-only, unseekable byte sink that the generator drains (lets zipfile stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.buf += b
        return len(b)

    def drain(self) -> bytes:
        out, self.buf = bytes(self.buf), bytearray()
        return out


def stream_deepzoom_zip(pipe: Pipeline, field: Field, size: Size, *, name: str = "image",
                        before_tile: Callable[[], None] | None = None) -> Iterator[bytes]:
    """A Deep Zoom folder (``name.dzi`` + ``name_files/<level>/<x>_<y>.png``, all levels) as a streamed zip."""
    pyramid = Pyramid(*size)
    spool = _Spool()
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}.dzi", pyramid.dzi_xml())
        for level in range(pyramid.max_level + 1):
            rows, cols = pyramid.tile_count(level)
            for y in range(rows):
                for x in range(cols):
                    if before_tile is not None:
                        before_tile()
                    zf.writestr(f"{name}_files/{level}/{x}_{y}.png", render_tile(pipe, field, pyramid, level, x, y))
                    yield spool.drain()
    yield spool.drain()
