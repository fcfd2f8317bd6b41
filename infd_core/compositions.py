"""Compositions: a picture's coarse layout given by the user, the model painting the texture.

The embedded model cannot learn composition on the CPUs it was trained on (its samples are
texture soup), but it paints texture consistent with a given layout: a composition is a
``sketch`` region over the whole canvas (:mod:`infd_core.regions`), whose latent block means the
sampler holds (:class:`~infd_core.diffusion.LowFreq`). The layout and colours come from the
sketch; the texture, and everything finer than the blocks, from the model.

The examples are flat-colour landscape sketches drawn by ``tools/make_compositions.py``
(``assets/compositions/``): what the app's Generate uses by default, one picked by the seed.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from .geometry import Box
from .images import load_image
from .regions import Region
from .pipeline import assets_dir


def examples_dir() -> Path:
    return assets_dir() / "compositions"


@cache
def names() -> tuple[str, ...]:
    """The example compositions' names, sorted (``assets/compositions/<name>.png``)."""
    return tuple(sorted(p.stem for p in examples_dir().glob("*.png")))


@cache
def _example(name: str) -> np.ndarray:
    arr = np.asarray(load_image(examples_dir() / f"{name}.png"))
    arr.setflags(write=False)  # shared between sessions: never mutated
    return arr


def example(name: str) -> np.ndarray:
    """An example composition ``[h, w, 3]`` uint8 (read-only); ValueError for an unknown name."""
    if name not in names():
        raise ValueError(f"unknown example composition {name!r}; there are {', '.join(names())}")
    return _example(name)


def example_for_seed(seed: int) -> str:
    """The example a seed picks (the seed modulo the number of examples)."""
    return names()[int(seed) % len(names())]


def whole_canvas(picture: np.ndarray, coarseness: int | None = None) -> Region:
    """A composition as a region: ``picture`` held as a sketch over the whole canvas (stretched to
    the canvas's shape; ``coarseness``: block cells a side, None for the sketch kind's default)."""
    return Region(Box(0.0, 0.0, 1.0, 1.0), "sketch", image=np.ascontiguousarray(picture), coarseness=coarseness)


__all__ = ["example", "example_for_seed", "examples_dir", "names", "whole_canvas"]
