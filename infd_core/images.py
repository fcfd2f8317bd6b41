"""Images in and out: one decoder for files, and the one pixel convention of the model.

* Files: upright 8-bit RGB for training, the CLI and the app. Pillow opens lazily (the header
  first), so sizes are checked before any pixel is decoded; decompression bombs are refused
  outright rather than warned about, with a limit passed per call (Pillow's global limit is
  never changed).
* Pixels: the model sees RGB floats in [-1, 1] (``uint8 / 127.5 - 1``); :func:`to_tensor` and
  :func:`to_uint8` are the only conversions between the two, and :func:`squash` is how any
  picture becomes the encoder's square input (the whole image, aspect not kept, as in training).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # torch is imported by the conversions: reading a photo (the region schema) needs none
    from torch import Tensor

MAX_PHOTO_PIXELS = 64_000_000  # a user's photo is squashed to the encoder's 256² input: this bounds the decode


MAX_IMAGE_PIXELS = 1 << 27  # 134 MP (e.g. 14200 x 9450): the largest image any path here decodes


def open_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """``Image.open`` (lazy: reads the header) that refuses images over ``max_pixels`` outright
    (``Image.DecompressionBombError``) instead of warning. Pillow's global limit is left alone; it
    still refuses anything over twice its default (179 MP) by itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
        im = Image.open(path)
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise Image.DecompressionBombError(f"{w}x{h} is {w * h} pixels, over the limit of {max_pixels}")
    return im


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


def to_tensor(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """PIL image / ``[H, W, 3]`` uint8 array / ``[B, 3, H, W]`` (or ``[3, H, W]``) float tensor ->
    ``[B, 3, H, W]`` float32 in [-1, 1] (tensors are taken as already in [-1, 1])."""
    import torch

    if isinstance(image, torch.Tensor):
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image tensor must be [B, 3, H, W], got {tuple(image.shape)}")
        return image.float()
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("image must be a PIL image, an [H, W, 3] uint8 array or a [B, 3, H, W] tensor")
    pixels = torch.from_numpy(image if image.flags.writeable else image.copy())
    return pixels.permute(2, 0, 1)[None].float() / 127.5 - 1


def to_uint8(rgb: Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[B, 3, H, W]``) in [-1, 1] -> ``[H, W, 3]`` (``[B, H, W, 3]``) uint8,
    clamped and rounded; detached and moved to the CPU."""
    import torch

    x = ((rgb.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def squash(image: Image.Image, size: int) -> Image.Image:
    """The whole ``image`` resized to ``size x size`` (aspect not kept, LANCZOS): the encoder's
    input as training makes it."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.Resampling.LANCZOS)


__all__ = ["MAX_IMAGE_PIXELS", "MAX_PHOTO_PIXELS", "load_image", "open_image", "read_photo", "squash", "to_rgb",
           "to_tensor", "to_uint8"]
