"""Draw the example compositions the app and the CLI offer (``assets/compositions/*.png``).

Each is a flat-colour sketch of a landscape's layout, as a user would paint it: the sampler holds
its 4-cell block means (:class:`infd_core.diffusion.LowFreq`) and the model paints the texture.
Drawn by this script from polygons and sine curves (no photo goes in), slightly blurred, so
they are this project's own (CC0). Colours stay away from the ends of the range: the model's
texture on top of a held colour near 0 or 255 clips.

    python tools/make_compositions.py            # rewrites assets/compositions/*.png
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
OUT = Path(__file__).resolve().parents[1] / "assets" / "compositions"

SKY = (118, 162, 214)
HAZE = (176, 198, 222)
GRASS = (84, 138, 58)
MEADOW = (120, 156, 70)
FOREST = (40, 78, 40)
ROCK = (118, 116, 112)
WATER = (58, 96, 150)
SAND = (200, 184, 140)


def sky(d: ImageDraw.ImageDraw, horizon: int) -> None:
    """A vertical gradient from sky blue at the top to haze at the horizon."""
    for y in range(horizon):
        t = y / max(horizon - 1, 1)
        d.line([(0, y), (SIZE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(SKY, HAZE, strict=True)))


def ridge(base: float, waves: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """The top edge of a band at height ``base`` with sine ``waves`` (amplitude, periods, phase)."""
    return [(x, base + sum(a * math.sin(2 * math.pi * p * x / SIZE + ph) for a, p, ph in waves))
            for x in range(0, SIZE + 1, 4)]


def band(d: ImageDraw.ImageDraw, top: list[tuple[float, float]], color: tuple[int, int, int]) -> None:
    d.polygon([*top, (SIZE, SIZE), (0, SIZE)], fill=color)


def horizon(d: ImageDraw.ImageDraw) -> None:
    sky(d, 120)
    band(d, ridge(120, []), WATER)
    band(d, ridge(200, [(6, 1, 0.3)]), SAND)


def hills(d: ImageDraw.ImageDraw) -> None:
    sky(d, 140)
    band(d, ridge(110, [(18, 1.2, 0.5), (6, 3, 1.0)]), (96, 130, 96))
    band(d, ridge(150, [(14, 0.8, 2.0), (5, 2.5, 0.2)]), MEADOW)
    band(d, ridge(200, [(10, 0.6, 4.0)]), GRASS)


def lake(d: ImageDraw.ImageDraw) -> None:
    sky(d, 120)
    d.polygon([(0, 118), (50, 70), (95, 100), (150, 55), (210, 95), (256, 80), (256, 130), (0, 130)], fill=ROCK)
    band(d, ridge(118, [(3, 6, 0.0), (2, 13, 1.0)]), FOREST)
    d.ellipse([30, 140, 226, 200], fill=WATER)
    band(d, ridge(205, [(4, 1, 0.5)]), GRASS)


def coast(d: ImageDraw.ImageDraw) -> None:
    sky(d, 110)
    band(d, ridge(110, []), WATER)
    d.polygon([(256, 60), (200, 70), (170, 110), (150, 256), (256, 256)], fill=ROCK)
    d.polygon([(0, 256), (0, 200), (90, 170), (160, 150), (175, 256)], fill=SAND)


def forest_edge(d: ImageDraw.ImageDraw) -> None:
    sky(d, 150)
    top = [(x, 95 + 10 * math.sin(x / 9.0) + 6 * math.sin(x / 3.7 + 1) + 20 * math.sin(x / 60.0))
           for x in range(0, SIZE + 1, 2)]
    band(d, top, FOREST)
    band(d, ridge(165, [(5, 1, 1.0)]), MEADOW)
    band(d, ridge(215, [(4, 2, 0.0)]), GRASS)


COMPOSITIONS: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "horizon": horizon, "hills": hills, "lake": lake, "coast": coast, "forest-edge": forest_edge}


def draw(name: str) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), SKY)
    COMPOSITIONS[name](ImageDraw.Draw(im))
    return im.filter(ImageFilter.GaussianBlur(2))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in COMPOSITIONS:
        draw(name).save(OUT / f"{name}.png", optimize=True)
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
