"""Training data: image folders, the paper's neural-field crops, dataset mixing, encoder inputs.

Images leave this module as float32 tensors in [-1, 1], shape ``[3, H, W]``. Coordinates and
cells follow :mod:`infd_core.geometry` (field frame = the whole image as the square [-1, 1]²,
``(y, x)`` row first) and are always made by its helpers.

Randomness: every draw uses torch's default generator, which a ``DataLoader`` seeds in each
worker from its own ``generator`` (base seed + worker id). A run is reproducible with
``torch.manual_seed(s)`` (``num_workers=0``) or ``DataLoader(..., generator=torch.Generator()
.manual_seed(s))`` and a fixed ``num_workers``. (Do not hand a ``torch.Generator`` to the
datasets: every worker would get a copy of it and produce the same crops.)

Resampling is Pillow's LANCZOS (antialiased when reducing) on 8-bit images, like the authors'.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from PIL import ExifTags, Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from infd_core.geometry import Box, PixelRange, Size, level_grid
from infd_core.images import MAX_IMAGE_PIXELS as MAX_PIXELS
from infd_core.images import load_image, squash, to_rgb, to_tensor
from infd_core.images import open_image as _open

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_PIXELS", "BadImageWarning", "SizedDataset", "ImageFolder", "load_image",
    "to_rgb", "field_crop", "NeuralFieldCrops", "MixedDataset", "RandomSquares", "SquareCrops",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
LANCZOS = Image.Resampling.LANCZOS
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height

T_co = TypeVar("T_co", covariant=True)


class SizedDataset(Protocol[T_co]):
    """A map-style dataset with a length (a ``Sequence`` without the extras)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> T_co: ...


class BadImageWarning(UserWarning):
    """An image file was skipped: unreadable, corrupt, truncated, too small or too large."""


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """``(height, width)`` after EXIF orientation, from the header only."""
    w, h = im.size
    if im.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED:
        w, h = h, w
    return h, w


def _warn(path: Path, reason: str) -> None:
    warnings.warn(f"skipping image {path}: {reason}", BadImageWarning, stacklevel=3)


class ImageFolder:
    """Every image file under ``root`` (recursive, sorted by path), any resolution, as upright
    8-bit RGB PIL images (see :func:`load_image`, :func:`to_rgb`).

    Listing screens each file from its header: unreadable files (zero bytes, not an image,
    unknown format, decompression bomb), a short side below ``min_side`` or more than
    ``max_pixels`` pixels are skipped with a :class:`BadImageWarning`. ``verify=True`` also
    decodes every file while listing (catches truncated data up front; slow on big folders).
    ``cache=True`` keeps every decoded image in memory (in each DataLoader worker): for small
    photo sets, where decoding a 2560 px JPEG costs more than the crop itself.

    Decoding is lazy, in ``__getitem__``. A file that fails to decode there is warned about
    once, remembered, and replaced by the next usable index (i+1, i+2, … wrapping), so an epoch
    never stops on a bad file and the replacement is deterministic. Attributes: ``paths`` and
    ``sizes`` (``(height, width)``, upright) of the usable files.
    """

    def __init__(self, root: str | Path, min_side: int = 256, max_pixels: int = MAX_PIXELS,
                 verify: bool = False, cache: bool = False) -> None:
        if not 0 < max_pixels <= MAX_PIXELS:
            raise ValueError(f"max_pixels must be in (0, {MAX_PIXELS}] (training.data.MAX_PIXELS), got {max_pixels}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.min_side, self.max_pixels = min_side, max_pixels
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self._failed: set[int] = set()
        self._cache: dict[int, Image.Image] | None = {} if cache else None
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        for path in files:
            size, reason = self._screen(path, verify)
            if reason:
                _warn(path, reason)
            else:
                self.paths.append(path)
                self.sizes.append(size)
        if not self.paths:
            raise ValueError(f"no usable image under {self.root} ({len(files)} candidate files)")

    def _screen(self, path: Path, verify: bool) -> tuple[tuple[int, int], str]:
        """``((height, width), "")`` for a usable file, else ``((0, 0), reason)``."""
        try:
            with _open(path) as im:
                h, w = _upright_size(im)
                if verify:
                    im.load()
        except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, …)
            return (0, 0), f"unreadable ({type(e).__name__}: {e})"
        if min(h, w) < self.min_side:
            return (0, 0), f"too small ({w}x{h} px, short side < min_side={self.min_side})"
        if h * w > self.max_pixels:
            return (0, 0), f"too large ({w}x{h} px > max_pixels={self.max_pixels})"
        return (h, w), ""

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        n = len(self.paths)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for k in range(n):
            i = (index + k) % n
            if i in self._failed:
                continue
            if self._cache is not None and i in self._cache:
                return self._cache[i].copy()
            try:
                img = load_image(self.paths[i])
            except Exception as e:  # corrupt or truncated data: never stop an epoch for it
                self._failed.add(i)
                _warn(self.paths[i], f"failed to decode ({type(e).__name__}: {e}); using the next image")
                continue
            if self._cache is not None:
                self._cache[i] = img.copy()
            return img
        raise RuntimeError(f"none of the {n} images under {self.root} could be decoded")


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (both included) from torch's default generator."""
    return int(torch.randint(lo, hi + 1, ()).item())


def _coin(p: float) -> bool:
    return bool(torch.rand(()).item() < p)


def _random_square(size: Size, scale: tuple[float, float], min_side: int = 1) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of a random pixel square in an image of ``size``: side = fraction ~U[scale]
    of the short side (at least ``min_side``, at most the short side), placed uniformly."""
    lo, hi = scale
    short = min(size)
    side = min(short, max(min_side, 1, round((lo + (hi - lo) * float(torch.rand(()).item())) * short)))
    return _randint(0, size.width - side), _randint(0, size.height - side), side


def field_crop(img: Image.Image, r: int, y0: int, x0: int, patch: int = 256, enc_size: int = 256,
               flip: bool = False) -> dict[str, Tensor]:
    """One autoencoder training example, without randomness.

    The neural field is the whole ``img`` squashed to the square [-1, 1]²; its level ``r x r``
    is ``img`` resized to ``r x r`` (LANCZOS; a non-uniform scale unless ``img`` is square).
    ``flip`` mirrors ``img`` left-right first: all four outputs then describe the mirrored image.

    Returns ``dict`` of
      ``inp``   ``[3, enc_size, enc_size]``: the whole image resized to ``enc_size²`` (encoder input);
      ``gt``    ``[3, patch, patch]``: rows ``y0..y0+patch-1``, columns ``x0..x0+patch-1`` of level r;
      ``coord`` ``[patch, patch, 2]``: their pixel centres ``(y, x)`` in the field frame;
      ``cell``  ``[patch, patch, 2]``: their pixel sizes, all ``2 / r``.
    """
    return {"inp": encoder_input(img, enc_size, flip), **level_crop(img, r, y0, x0, patch, flip)}


def encoder_input(img: Image.Image, enc_size: int = 256, flip: bool = False) -> Tensor:
    """The whole ``img`` resized to ``[3, enc_size, enc_size]`` in [-1, 1] (mirrored if ``flip``)."""
    inp = to_tensor(squash(img, enc_size))[0]
    return TF.horizontal_flip(inp) if flip else inp


def level_crop(img: Image.Image, r: int, y0: int, x0: int, patch: int = 256, flip: bool = False) -> dict[str, Tensor]:
    """The ``gt``/``coord``/``cell`` part of :func:`field_crop` (same arguments and conventions)."""
    if not (0 < patch <= r and 0 <= y0 <= r - patch and 0 <= x0 <= r - patch):
        raise ValueError(f"a {patch}² crop at (y0={y0}, x0={x0}) does not fit level {r}x{r}")
    w, h = img.size
    c0 = r - x0 - patch if flip else x0  # the crop's first column in the unmirrored level
    # Pillow's ``box`` evaluates the r x r resize only over the crop: same filter centres and
    # support as resizing the whole image then cropping, equal to it up to 8-bit rounding (a few
    # values in 10^4 differ by 1/255), and ~20x cheaper for large r.
    gt = img.resize((patch, patch), LANCZOS, box=(c0 * w / r, y0 * h / r, (c0 + patch) * w / r, (y0 + patch) * h / r))
    gt_t = to_tensor(gt)[0]
    coord, cell = level_grid(r, r, PixelRange(y0, y0 + patch, x0, x0 + patch))
    return {"gt": TF.horizontal_flip(gt_t) if flip else gt_t, "coord": coord, "cell": cell}


class NeuralFieldCrops(Dataset[dict[str, Tensor]]):
    """The paper's random-downsampling crops for training the autoencoder (paper §4.3).

    For each image: ground-truth level ``r`` is ``top = min(short side, max_r)`` with
    probability ``p_max``, else uniform in ``[min_r, top]`` (``min_r`` defaults to ``patch``;
    an image whose short side is below ``min_r`` is upsampled to ``min_r``); a uniformly placed
    ``patch²`` crop of that level; an optional left-right flip with probability 1/2. Items are
    :func:`field_crop` dicts: ``inp [3, enc, enc]``, ``gt [3, P, P]``, ``coord``/``cell [P, P, 2]``.

    ``crops > 1`` draws that many (level, crop) pairs per image and stacks them (``gt [K, 3, P, P]``,
    ``coord``/``cell [K, P, P, 2]``, one shared ``inp``): one encoder/decoder pass then supervises K patches, which on a CPU,
    where the encoder and decoder dominate a step, gives several times more signal per second.
    """

    def __init__(self, images: SizedDataset[Image.Image], patch: int = 256, enc_size: int = 256,
                 min_r: int | None = None, max_r: int = 1024, p_max: float = 0.5, hflip: bool = True,
                 crops: int = 1) -> None:
        min_r = patch if min_r is None else min_r
        if crops < 1:
            raise ValueError(f"crops must be >= 1, got {crops}")
        if not 0 < patch <= min_r <= max_r:
            raise ValueError(f"need 0 < patch <= min_r <= max_r, got {patch}, {min_r}, {max_r}")
        if not 0.0 <= p_max <= 1.0:
            raise ValueError(f"p_max must be a probability, got {p_max}")
        self.images, self.patch, self.enc_size = images, patch, enc_size
        self.min_r, self.max_r, self.p_max, self.hflip, self.crops = min_r, max_r, p_max, hflip, crops

    def __len__(self) -> int:
        return len(self.images)

    def draw_level(self, short_side: int) -> int:
        """The ground-truth side ``r`` for an image whose short side is ``short_side``."""
        top = max(min(short_side, self.max_r), self.min_r)
        return top if _coin(self.p_max) else _randint(self.min_r, top)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        img = self.images[index]
        flip = self.hflip and _coin(0.5)
        crops = []
        for _ in range(self.crops):
            r = self.draw_level(min(img.size))
            y0, x0 = _randint(0, r - self.patch), _randint(0, r - self.patch)
            crops.append(level_crop(img, r, y0, x0, self.patch, flip))
        inp = encoder_input(img, self.enc_size, flip)
        if self.crops == 1:
            return {"inp": inp, **crops[0]}
        return {"inp": inp, **{k: torch.stack([c[k] for c in crops]) for k in crops[0]}}


class MixedDataset(Dataset[T_co]):
    """Items drawn from several datasets with fixed probabilities.

    ``weights=None`` gives every dataset the same probability: the paper's balanced ("bal.")
    6K-Mix, where a large low-resolution set and a small high-resolution set are seen equally
    often whatever their sizes. Otherwise ``weights`` are relative probabilities (pass the
    lengths for plain concatenation). The index is ignored: each item is a fresh draw (a dataset
    by weight, then a uniform index in it) from torch's default generator, and ``length`` is just
    the epoch size (default: the sum of the lengths).
    """

    def __init__(self, datasets: Sequence[SizedDataset[T_co]], weights: Sequence[float] | None = None,
                 length: int | None = None) -> None:
        if not datasets or any(len(d) == 0 for d in datasets):
            raise ValueError("need at least one dataset, none of them empty")
        w = torch.ones(len(datasets)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(datasets),) or bool((w < 0).any()) or not float(w.sum()) > 0:
            raise ValueError(f"need one non-negative weight per dataset with a positive sum, got {weights}")
        self.datasets = list(datasets)
        self.probs = (w / w.sum()).double()
        self.length = sum(len(d) for d in datasets) if length is None else length
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {self.length}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> T_co:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        k = int(torch.multinomial(self.probs, 1).item())
        return self.datasets[k][_randint(0, len(self.datasets[k]) - 1)]


class RandomSquares:
    """Images → random square sub-images (PIL), to augment small photo sets for the autoencoder.

    Item ``i`` is a random ``s x s`` pixel square of ``images[i]``: ``s`` = a fraction ~U[scale]
    of the short side, at least ``min_side`` (at most the short side), placed uniformly. Wrapped
    in :class:`NeuralFieldCrops`, each square is a whole field of its own.
    """

    def __init__(self, images: SizedDataset[Image.Image], scale: tuple[float, float], min_side: int = 1) -> None:
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.images, self.scale, self.min_side = images, scale, min_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Image.Image:
        img = self.images[index]
        x0, y0, side = _random_square(Size(img.height, img.width), self.scale, self.min_side)
        return img.crop((x0, y0, x0 + side, y0 + side))


class SquareCrops(Dataset[dict[str, Tensor]]):
    """Encoder inputs for the diffusion stage (latent caching): ``size²`` images in [-1, 1].

    ``crop_scale=None``: the whole image squashed to ``size²``, exactly what the autoencoder's
    encoder sees. ``crop_scale=(lo, hi)``: a random square of ``s x s`` pixels, ``s`` = a
    fraction ~U[lo, hi] of the short side, placed uniformly, resized to ``size²`` without
    distortion: augmentation for small photo sets. ``hflip`` mirrors with probability 1/2;
    every image appears ``repeats`` times per epoch (index ``i`` is image ``i % len(images)``).

    Items: ``dict(inp=[3, size, size], box=[4])``, ``box`` = ``(x0, y0, x1, y1)`` of the region
    used, as fractions of the (mirrored, if flipped) image like :class:`infd_core.geometry.Box`.
    """

    def __init__(self, images: SizedDataset[Image.Image], size: int = 256,
                 crop_scale: tuple[float, float] | None = None, hflip: bool = False, repeats: int = 1) -> None:
        if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        if size <= 0 or repeats <= 0:
            raise ValueError(f"size and repeats must be positive, got {size}, {repeats}")
        self.images, self.size, self.crop_scale, self.hflip, self.repeats = images, size, crop_scale, hflip, repeats

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def draw_box(self, size: Size) -> Box:
        """The region of an image of ``size`` to encode."""
        if self.crop_scale is None:
            return Box(0.0, 0.0, 1.0, 1.0)
        x0, y0, side = _random_square(size, self.crop_scale)
        return Box.from_pixels(x0, y0, x0 + side, y0 + side, size.width, size.height)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        img = self.images[index % len(self.images)]
        w, h = img.size
        box = self.draw_box(Size(h, w))
        inp = to_tensor(img.resize((self.size, self.size), LANCZOS,
                                   box=(box.x0 * w, box.y0 * h, box.x1 * w, box.y1 * h)))[0]
        if self.hflip and _coin(0.5):
            inp, box = TF.horizontal_flip(inp), Box(1.0 - box.x1, box.y0, 1.0 - box.x0, box.y1)
        return {"inp": inp, "box": torch.tensor([box.x0, box.y0, box.x1, box.y1], dtype=torch.float32)}
