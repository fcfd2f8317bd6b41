"""Image files in, upright 8-bit RGB out: one decoder for training, the CLI and the app.

Pillow opens lazily (the header first), so sizes are checked before any pixel is decoded;
decompression bombs are refused outright rather than warned about.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PHOTO_PIXELS = 64_000_000  # a user's photo is squashed to the encoder's 256² input: this bounds the decode


def open_image(path: str | Path) -> Image.Image:
    """``Image.open`` (lazy: reads the header) that refuses decompression bombs outright."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB.

    16-bit greyscale (modes ``I;16*``/``I``) is scaled 0..65535 → 0..255 (Pillow's own
    ``convert`` clips it); float (``F``) is taken as 0..1; anything with alpha or a transparent
    palette entry is composited on white; greyscale, palette, CMYK, YCbCr go through ``convert``.
    """
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        im = Image.fromarray(np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode a whole file: upright (EXIF orientation applied) 8-bit RGB. Raises on any defect
    (truncated data is an error: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left False)."""
    with open_image(Path(path)) as im:
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))


def read_photo(path: str | Path, max_pixels: int | None = MAX_PHOTO_PIXELS) -> Image.Image:
    """:func:`load_image` for files from users: any defect, or more than ``max_pixels`` pixels
    (checked from the header, before decoding), is a ValueError that says what is wrong."""
    try:
        with open_image(Path(path)) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ValueError(f"the image is {w}x{h}; at most {max_pixels / 1e6:g} megapixels")
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except ValueError as e:
        raise ValueError(f"{Path(path).name}: {e}") from None
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, DecompressionBomb…)
        raise ValueError(f"{Path(path).name}: not a readable image ({type(e).__name__}: {e})") from None


__all__ = ["MAX_PHOTO_PIXELS", "load_image", "open_image", "read_photo", "to_rgb"]
