"""Evaluate an infd model on held-out photos: zoom reconstruction, scale consistency, patch-FID.

    python -m training.evaluate --model assets/models/infd-cpu-photos --data runs/photoset/holdout \\
        [--compare LIIF_MODEL_DIR] [--samples 16] [--out report.json]

Prints a markdown report (for the model card) and writes it as JSON with ``--out``.

1. **Reconstruction** (paper §5.2). Every photo is squashed to a square like in training:
   the encoder input is the whole photo squashed to the model's ``input_size`` (256² in every
   preset; LANCZOS), the model renders the whole image at s×s for each scale s (default 256, 512,
   1024: up to a 4× zoom of the input), and the ground truth is the photo resized to s×s (LANCZOS).
   Baselines: bicubic upsampling of the 256² input, and optionally another model (``--compare``,
   e.g. a LIIF-renderer autoencoder). Thumbnail baselines ``bicubic-N`` (``--thumbnails``, default
   64 and 128) upsample an N² thumbnail instead: the 64² one holds as many numbers as the 3×64×64
   latent, so it tells how much the autoencoder gets out of its latent budget; larger ones show what
   a bigger budget would buy, i.e. how hard beating the 256² input is. **Real-ESRGAN ×4** (the
   anchor to beat; :mod:`training.realesrgan`, only when ``requirements-eval.txt`` is installed):
   ``esrgan`` is realesrgan-x4plus on the 256² input, ``<model>+esrgan`` on the model's own 256²
   render; their ×4 output is the 1024² row, LANCZOS-resized for the scales between 256 and 1024
   (bf16 autocast by default: about 6× faster than fp32 on CPUs with AMX, within 3/255 of it).
   ``--strips DIR`` writes a 2048² comparison strip per photo (:func:`comparison_strip`). ``--refine
   N`` adds each model with its latent refined by N gradient steps against the 256² input
   (:mod:`infd_core.inversion`): what the decoder and renderer can show when the encoder's one-pass
   guess is not the limit. PSNR in dB on [0, 1]. LPIPS-VGG with the offline weights
   (:func:`training.losses.offline_lpips`): on the whole image for s ≤ 512; for larger s, the mean
   over five fixed 256² crops at full resolution (the centre and the four quadrant centres), so that
   LPIPS judges the fine detail a zoom is about instead of a downsample that hides it. 2. **Scale
   consistency.** Render at 2c, area-downsample (2×2 mean) to c, PSNR against the render at c
   (default c = 1024), per photo and mean. **φ-grid visibility** (:func:`grid_visibility`) at 1024²
   and 2048²: how much the renderer's nearest-cell fetch shows as blocks when zooming; references:
   the resized photos (about 1) and bicubic upsampling of the 256² input (whose slopes peak between
   input pixels, on the same grid). **Colour bands along the borders** (:func:`border_cast`) at the
   largest grid size: the mean error of a φ cell's width along each border minus that just inside,
   signed, averaged over photos (a band has one sign everywhere; content and noise cancel out).
   **Detail at 1:1** (:mod:`training.detail`, ``--detail-size``, default 2048): sharpness (high-frequency
   energy of fixed 256² crops over the photo's) and flat-region noise (the same in the photo's flattest
   windows) of bicubic, Real-ESRGAN and each model at 2048².
   3. **Patch-FID "P/1K"** (paper §5.1): the Fréchet distance between features of random P×P
   crops (the whole image for P = 1K) of ground-truth and generated images at 1024². Ground truth:
   the ``--fid-data`` photos (default: ``--data``) resized to 1024². "reconstruction" (the
   baseline: what the autoencoder alone reaches): the model's 1024²
   reconstructions of those photos, cropped at the same positions. "samples": ``--samples`` latents
   drawn with seeds 0..N-1, rendered at 1024². The default features are EfficientNet-Lite0's
   (installs offline; see :mod:`training.features`), labelled "pFID-EffNetLite0 (not Inception-
   FID)": these numbers are not comparable with published FIDs. ``--inception-weights`` adds the
   Inception-v3 path.

Small-N caveats: FID is biased upwards for few features, so only compare numbers computed with
the same counts (reconstruction and sample sets both use ``--crops`` crops for P < 1K; for 1K/1K
the counts are the numbers of photos and of samples). With fewer vectors than feature dimensions
the covariances are singular; :func:`frechet_distance` adds ``eps·I`` to both (a Fréchet distance
between slightly widened Gaussians, still 0 for identical sets) so the matrix square root exists.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lpips
import numpy as np
import scipy.linalg
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import downscale_local_mean
from tqdm import tqdm

from infd_core.geometry import PixelRange
from infd_core.inversion import encode_photo, refine_latent
from infd_core.images import squash, to_tensor
from infd_core.pipeline import Field, Pipeline, default_model_dir

from . import detail, features, realesrgan
from .data import ImageFolder
from .losses import offline_lpips

__all__ = [
    "Settings", "ImageResult", "baselines", "baseline_labels", "refined", "grid_visibility", "border_cast", "psnr",
    "square", "lpips_regions", "lpips_distance", "reconstruct",
    "scale_consistency", "evaluate_image", "reconstruction_pairs", "generate", "random_crops",
    "frechet_distance", "patch_label", "patch_fid", "evaluate", "markdown", "main",
    "Upscaler", "ESRGAN", "esrgan_of", "esrgan_scales", "esrgan_labels", "default_upscaler", "comparison_strip",
]

LANCZOS = Image.Resampling.LANCZOS
BICUBIC = Image.Resampling.BICUBIC
PHI_SIDE = 256  # φ's side in every preset: at output side s a φ cell is s / PHI_SIDE pixels wide
LPIPS_FULL_MAX = 512  # LPIPS on the whole image up to this side, on fixed crops above it
LPIPS_CROP = 256
FID_EPS = 1e-6
LPIPS_NOTE = (f"LPIPS-VGG (offline weights) on the whole image for sides <= {LPIPS_FULL_MAX}; above, the mean "
              f"over five fixed {LPIPS_CROP}x{LPIPS_CROP} full-resolution crops (centre and quadrant centres)")


@dataclass
class Settings:
    scales: tuple[int, ...] = (256, 512, 1024)
    consistency_size: int = 1024  # render at 2x this, downsample, compare with a render at this
    fid_size: int = 1024  # the "1K" of P/1K
    patch_sizes: tuple[int, ...] = (256, 1024)  # P; P == fid_size means whole images
    crops: int = 512  # random crops per set for P < fid_size
    samples: int = 0  # generated images for the sample pFID (0: skip)
    steps: int = 50  # sampler steps
    seed: int = 0  # crop positions
    eta: float | None = None  # DDIM η of the samples (None: the model's own)
    thumbnails: tuple[int, ...] = (64, 128)  # N of the "bicubic-N" baselines (an N² thumbnail upsampled)
    refine: int = 0  # > 0: also each model with its latent refined this many steps (infd_core.inversion)
    grid_sizes: tuple[int, ...] = (1024, 2048)  # sides (multiples of 512) where φ-grid visibility is measured
    esrgan: tuple[str, ...] = ("input", "render")  # Real-ESRGAN ×4 of the encoder input / of each model's render
    detail_size: int = 2048  # side where the detail judges (training.detail) look at 1:1 crops (0: skip them)

    def __post_init__(self) -> None:
        if any(n <= 0 for n in self.thumbnails):
            raise ValueError(f"thumbnail sizes must be positive, got {self.thumbnails}")
        if any(s <= 0 or s % (2 * PHI_SIDE) for s in self.grid_sizes):
            raise ValueError(f"grid sizes must be multiples of {2 * PHI_SIDE}, got {self.grid_sizes}")
        if self.refine < 0:
            raise ValueError(f"refine must be >= 0, got {self.refine}")
        if self.detail_size and self.detail_size < detail.SHARP_WINDOW:
            raise ValueError(f"detail_size must be 0 or at least {detail.SHARP_WINDOW}, got {self.detail_size}")
        if set(self.esrgan) - {"input", "render"}:
            raise ValueError(f"esrgan sources are 'input' and 'render', got {self.esrgan}")


def refined(name: str) -> str:
    """The method name of model ``name`` with refined latents."""
    return f"{name}+refine"


def baselines(settings: Settings) -> list[str]:
    """The bicubic baselines' method names: ``bicubic`` (the 256² input), then ``bicubic-N``."""
    return ["bicubic", *(f"bicubic-{n}" for n in sorted(settings.thumbnails))]


def encoder_input_size(models: dict[str, Pipeline], settings: Settings) -> int:
    """The side of the encoder input the compared models share (the bicubic baselines start from it)."""
    sizes = {m.input_size for m in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"compared models must share an encoder input size, got {sorted(sizes)}")
    n = sizes.pop()
    if any(t >= n for t in settings.thumbnails):
        raise ValueError(f"thumbnail sizes must be below the encoder input ({n}), got {settings.thumbnails}")
    return n


def baseline_labels(settings: Settings, latent_values: int, enc_size: int) -> dict[str, str]:
    """Report labels of :func:`baselines`; thumbnails say their size relative to the latent's."""
    labels = {"bicubic": f"bicubic upsampling of the {enc_size}² input"}
    for n in sorted(settings.thumbnails):
        ratio = 3 * n * n / latent_values
        budget = "as many values as the latent" if ratio == 1 else f"{ratio:.3g}× the latent's values"
        labels[f"bicubic-{n}"] = f"bicubic upsampling of a {n}² thumbnail ({budget})"
    return labels


# --- Real-ESRGAN ×4 (the anchor to beat) ------------------------------------------------------
Upscaler = Callable[[np.ndarray], np.ndarray]  # [h, w, 3] uint8 -> [4h, 4w, 3] uint8
ESRGAN = "esrgan"  # method name of Real-ESRGAN ×4 of the encoder input


def esrgan_of(name: str) -> str:
    """The method name of Real-ESRGAN ×4 of model ``name``'s render at the encoder input size."""
    return f"{name}+{ESRGAN}"


def esrgan_scales(settings: Settings, enc_size: int) -> list[int]:
    """The scales with Real-ESRGAN rows: zooms of the encoder input up to its ×4 (enc < s <= 4 enc)."""
    return [s for s in settings.scales if enc_size < s <= 4 * enc_size]


def esrgan_labels(settings: Settings, models: dict[str, str], enc_size: int) -> dict[str, str]:
    """Report labels of the Real-ESRGAN methods, given the models' labels."""
    labels = {ESRGAN: f"Real-ESRGAN ×4 of the {enc_size}² input"} if "input" in settings.esrgan else {}
    if "render" in settings.esrgan:
        labels |= {esrgan_of(m): f"Real-ESRGAN ×4 of the {enc_size}² render of {label}" for m, label in models.items()}
    return labels


def default_upscaler(device: str = "cpu", bf16: bool = True) -> Upscaler | None:
    """realesrgan-x4plus as an :data:`Upscaler` if its weights are installed, else None."""
    if not realesrgan.available():
        return None
    net = realesrgan.load(device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    return lambda img: realesrgan.upscale(net, img, dtype=dtype)


def _zooms(x4: np.ndarray, scales: Sequence[int]) -> dict[int, np.ndarray]:
    """A ×4 output at each of ``scales``: itself at its own side, LANCZOS-resized at the others."""
    return {s: x4 if s == x4.shape[0] else square(Image.fromarray(x4), s) for s in scales}


def comparison_strip(img: Image.Image, pipes: Pipeline | Sequence[Pipeline], upscaler: Upscaler, size: int = 2048,
                     crop: int = 512, centre: tuple[float, float] = (0.5, 0.5), gap: int = 8) -> np.ndarray:
    """``crop²`` pieces of ``img`` at ``size²`` side by side -> ``[crop, (3 + M) crop + (2 + M) gap, 3]``
    uint8: the photo resized (LANCZOS), bicubic upsampling of the encoder input, Real-ESRGAN ×4 of
    the encoder input (then LANCZOS to ``size``), and the render of each of the ``M`` models (e.g. the
    previous one, then the new one); ``centre`` is (y, x) in [0, 1]."""
    pipes = [pipes] if isinstance(pipes, Pipeline) else list(pipes)
    enc = pipes[0].input_size
    inp = squash(img, enc)
    y0, x0 = (min(max(round(c * size) - crop // 2, 0), size - crop) for c in centre)
    box = PixelRange(y0, y0 + crop, x0, x0 + crop)

    def piece(full: np.ndarray) -> np.ndarray:
        return full[box.r0:box.r1, box.c0:box.c1]

    panels = [piece(square(img, size)), piece(square(inp, size, BICUBIC)),
              piece(_zooms(upscaler(np.asarray(inp)), [size])[size]),
              *(pipe.render(pipe.field(encode_photo(pipe, inp)), size, size, box) for pipe in pipes)]
    white = np.full((crop, gap, 3), 255, np.uint8)
    return np.concatenate([p for panel in panels for p in (white, panel)][1:], axis=1)


# --- images and metrics --------------------------------------------------------------------
def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of two same-shape images, each uint8 (0..255) or float in [0, 1]; inf if equal."""
    unit = [a.astype(np.float64) / 255 if a.dtype == np.uint8 else a.astype(np.float64) for a in (reference, test)]
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(*unit, data_range=1.0))


def square(img: Image.Image, size: int, resample: Image.Resampling = LANCZOS) -> np.ndarray:
    """The whole image squashed to ``size x size`` (as in training): ``[size, size, 3]`` uint8, writable."""
    return np.array(img.resize((size, size), resample))


def lpips_regions(size: int) -> list[PixelRange]:
    """Where LPIPS is measured on a ``size²`` image: all of it, or five fixed 256² crops if large."""
    if size <= LPIPS_FULL_MAX:
        return [PixelRange(0, size, 0, size)]
    half = LPIPS_CROP // 2
    centres = [(size // 2, size // 2)] + [(size * i // 4, size * j // 4) for i in (1, 3) for j in (1, 3)]
    return [PixelRange(y - half, y + half, x - half, x + half) for y, x in centres]


@torch.no_grad()
def lpips_distance(net: lpips.LPIPS, reference: np.ndarray, test: np.ndarray) -> float:
    """LPIPS of two ``[s, s, 3]`` uint8 images over :func:`lpips_regions` (mean)."""
    regions = lpips_regions(reference.shape[0])
    device = next(net.parameters()).device

    def batch(a: np.ndarray) -> torch.Tensor:
        return torch.cat([to_tensor(a[r.r0:r.r1, r.c0:r.c1]) for r in regions]).to(device)

    return float(net(batch(reference), batch(test)).mean())


# --- the model -----------------------------------------------------------------------------
def reconstruct(pipe: Pipeline, img: Image.Image) -> Field:
    """The field of ``img`` from the whole image resized to the encoder's input size (LANCZOS)."""
    return pipe.field(encode_photo(pipe, img))


def scale_consistency(pipe: Pipeline, field: Field, size: int, low: np.ndarray | None = None,
                      high: np.ndarray | None = None) -> float:
    """PSNR (dB) between ``field`` rendered at ``size²`` (or ``low``, that render if already made)
    and rendered at ``(2 size)²`` (or ``high``) then area-downsampled to ``size²``."""
    low = pipe.render(field, size, size) if low is None else low
    high = pipe.render(field, 2 * size, 2 * size) if high is None else high
    return psnr(low, downscale_local_mean(high.astype(np.float64) / 255, (2, 2, 1)))


def grid_visibility(img: np.ndarray, period: int) -> float:
    """How visible a grid of ``period``-pixel cells is in ``img [s, s, 3]``: the mean absolute
    step between neighbouring pixels across cell boundaries over the mean step within cells
    (grey levels, both axes). About 1 for a photo; above 1 where a renderer's nearest-cell
    fetch shows through as blocks (a φ cell is ``s / 256`` pixels wide at side ``s``)."""
    if period < 2:
        raise ValueError(f"a grid needs cells of 2 or more pixels, got {period}")
    x = img.astype(np.float64).mean(-1)
    steps = (np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0)).T)  # [s, s-1]: between pixel j and j+1
    edge = (np.arange(x.shape[1] - 1) + 1) % period == 0
    across = np.mean([d[:, edge].mean() for d in steps])
    within = np.mean([d[:, ~edge].mean() for d in steps])
    return float(across / max(within, 1e-12))


BORDER_SIDES = ("top", "bottom", "left", "right")


def border_cast(img: np.ndarray, reference: np.ndarray, edge: int) -> dict[str, list[float]]:
    """The colour cast of a band along each border of ``img [s, s, 3]``: per side, the mean error
    against ``reference`` (per channel, in /255) in the ``edge`` pixels along the border minus that
    in the next ``3 * edge`` pixels inward. Content cancels out; a band (say a cyan line along the
    top) shows as the same sign on every photo, so :func:`evaluate` averages it over photos."""
    err = img.astype(np.float64) - reference.astype(np.float64)
    across = err.transpose(1, 0, 2)
    views = {"top": err, "bottom": err[::-1], "left": across, "right": across[::-1]}
    return {side: (v[:edge].mean((0, 1)) - v[edge:4 * edge].mean((0, 1))).tolist() for side, v in views.items()}


def seam_visibility(img: np.ndarray, columns: Sequence[int] = (), rows: Sequence[int] = (),
                    period: int | None = None) -> float:
    """How visible seams at given pixel boundaries are in ``img [H, W, 3]``: the mean absolute grey
    step across them (``columns``: between pixel columns j-1 and j; ``rows`` likewise) over the mean
    step across the other boundaries of the same axes -- all of them, or with ``period`` only
    those at multiples of it (e.g. the other latent-cell borders, which a nearest-cell renderer
    marks too). About 1 where nothing shows."""
    x = img.astype(np.float64).mean(-1)
    across, other = [], []
    for d, at in ((np.abs(np.diff(x, axis=1)), columns), (np.abs(np.diff(x, axis=0)).T, rows)):
        if not len(at):
            continue
        j = np.arange(1, d.shape[1] + 1)  # d[:, k] is the step across boundary j = k + 1
        edge = np.isin(j, list(at))
        rest = ~edge if period is None else ~edge & (j % period == 0)
        across.append(d[:, edge].mean())
        other.append(d[:, rest].mean())
    if not across:
        raise ValueError("seam_visibility needs at least one column or row boundary")
    return float(np.mean(across) / max(np.mean(other), 1e-12))


@dataclass
class ImageResult:
    """One photo's evaluation: metric rows, scale consistency per model, and the images compared."""

    rows: list[dict[str, Any]]  # {method, scale, psnr, lpips}
    consistency: dict[str, float]  # model name -> dB
    grid: dict[str, dict[int, float]]  # "gt", "bicubic" and model names -> side -> grid_visibility
    border: dict[str, dict[str, list[float]]]  # "bicubic" and model names -> border_cast at the largest grid size
    detail: dict[str, dict[str, float]]  # "bicubic", Real-ESRGAN and model names -> detail.detail_scores at detail_size
    images: dict[str, dict[int, np.ndarray]]  # "gt", "bicubic", model names -> scale -> [s, s, 3] uint8


def evaluate_image(img: Image.Image, models: dict[str, Pipeline], settings: Settings,
                   lpips_net: lpips.LPIPS, upscaler: Upscaler | None = None) -> ImageResult:
    """Reconstruct one photo at ``settings.scales`` with ``bicubic`` and each of ``models``
    (from the same encoder input) and score them; plus each model's scale consistency. With an
    ``upscaler``, also Real-ESRGAN ×4 (of the input, of each model's render) at :func:`esrgan_scales`."""
    enc = encoder_input_size(models, settings)
    inp = squash(img, enc)
    zooms = esrgan_scales(settings, enc) if upscaler is not None else []
    images = {"gt": {s: square(img, s) for s in settings.scales},
              "bicubic": {s: square(inp, s, BICUBIC) for s in settings.scales}}
    x4 = upscaler(np.asarray(inp)) if zooms and "input" in settings.esrgan else None
    if x4 is not None:
        images[ESRGAN] = _zooms(x4, zooms)
    for n in sorted(settings.thumbnails):  # thumbnails of the same input, as small encoders would see
        thumb = inp.resize((n, n), LANCZOS)
        images[f"bicubic-{n}"] = {s: square(thumb, s, BICUBIC) for s in settings.scales}
    consistency = {}
    grid, levels = {}, {}  # the references first: the photo and bicubic of the input (reusing renders at shared sizes)
    for ref, src, resample in (("gt", img, LANCZOS), ("bicubic", inp, BICUBIC)):
        levels[ref] = {s: images[ref][s] if s in images[ref] else square(src, s, resample) for s in settings.grid_sizes}
        grid[ref] = {s: grid_visibility(levels[ref][s], s // PHI_SIDE) for s in settings.grid_sizes}
    big = max(settings.grid_sizes, default=None)  # border_cast is measured there, a φ cell wide
    border = {} if big is None else {"bicubic": border_cast(levels["bicubic"][big], levels["gt"][big], big // PHI_SIDE)}
    c, d = settings.consistency_size, settings.detail_size
    at_detail = {}  # the images the detail judges see at d²
    if d:
        at_detail["bicubic"] = levels["bicubic"][d] if d in levels["bicubic"] else square(inp, d, BICUBIC)
        if x4 is not None:  # its ×4 output, LANCZOS-resized to d like at the other scales
            at_detail[ESRGAN] = _zooms(x4, [d])[d]
    for name, pipe in models.items():
        z = encode_photo(pipe, inp)  # the same encoder input as the bicubic baseline
        field = pipe.field(z)
        images[name] = {s: pipe.render(field, s, s) for s in settings.scales}
        if zooms and "render" in settings.esrgan:
            own = images[name][enc] if enc in images[name] else pipe.render(field, enc, enc)
            images[esrgan_of(name)] = _zooms(upscaler(own), zooms)
        if settings.refine:
            better = pipe.field(refine_latent(pipe, inp, settings.refine, z=z))
            images[refined(name)] = {s: pipe.render(better, s, s) for s in settings.scales}
        renders = dict(images[name])
        for s in {*settings.grid_sizes, c, 2 * c, *([d] if d else [])} - set(renders):
            renders[s] = pipe.render(field, s, s)
        if d:
            at_detail[name] = renders[d]
        consistency[name] = scale_consistency(pipe, field, c, renders[c], renders[2 * c])
        grid[name] = {s: grid_visibility(renders[s], s // field.phi.shape[-1]) for s in settings.grid_sizes}
        if big is not None:
            border[name] = border_cast(renders[big], levels["gt"][big], big // PHI_SIDE)
    gt = images["gt"]
    rows = [{"method": m, "scale": s, "psnr": psnr(gt[s], out[s]), "lpips": lpips_distance(lpips_net, gt[s], out[s])}
            for s in settings.scales for m, out in images.items() if m != "gt" and s in out]
    photo = (levels["gt"][d] if d in levels["gt"] else square(img, d)) if d else None  # resized once per size
    scores = detail.detail_scores(photo, at_detail) if d else {}
    return ImageResult(rows, consistency, grid, border, scores, images)


def reconstruction_pairs(pipe: Pipeline, images: ImageFolder, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each photo resized to ``size²`` and the model's ``size²`` reconstruction of it (uint8)."""
    gts, recons = [], []
    for i in tqdm(range(len(images)), desc="pFID reference", leave=False):
        img = images[i]
        gts.append(square(img, size))
        recons.append(pipe.render(reconstruct(pipe, img), size, size))
    return gts, recons


def generate(pipe: Pipeline, n: int, size: int, steps: int, seed: int = 0,
             eta: float | None = None) -> list[np.ndarray]:
    """``n`` samples (seeds ``seed .. seed+n-1``) rendered at ``size²``, uint8."""
    return [pipe.render(pipe.field(pipe.sample(seed + i, steps=steps, eta=eta)), size, size)
            for i in tqdm(range(n), desc="samples", leave=False)]


# --- patch-FID -------------------------------------------------------------------------------
def random_crops(images: Sequence[np.ndarray], patch: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random ``patch²`` crops (views) of images drawn at random; all the images when
    ``patch`` is their size. The same seed on same-size sets gives the same positions."""
    side = images[0].shape[0]
    if patch == side:
        return list(images)
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(images), size=count)
    ys, xs = rng.integers(side - patch + 1, size=(2, count))
    return [images[i][y:y + patch, x:x + patch] for i, y, x in zip(idx, ys, xs)]


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = FID_EPS) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a [N, D]`` and ``b [M, D]``.

    ``eps·I`` is added to both covariances (singular when N or M <= D), and the real part of
    ``scipy.linalg.sqrtm`` is taken (numerical noise makes it slightly complex). When
    ``N + M < D`` both sets are first expressed in an orthonormal basis of the span of their
    centred vectors and mean difference: exact (outside that span both covariances are ``eps·I``
    and the terms cancel) and much cheaper than a ``D x D`` square root.
    """
    if min(len(a), len(b)) < 2:
        raise ValueError(f"need at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    if len(a) + len(b) < a.shape[1]:
        basis = scipy.linalg.orth(np.vstack([a - a.mean(0), b - b.mean(0), a.mean(0) - b.mean(0)]).T)
        a, b = a @ basis, b @ basis
    ridge = eps * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def _side(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def patch_label(patch: int, size: int) -> str:
    """``256/1K``-style name of a pFID setting: P×P crops of size² images."""
    return f"{_side(patch)}/{_side(size)}"


def patch_fid(extractor: features.FeatureExtractor, reference: Sequence[np.ndarray],
              fakes: dict[str, Sequence[np.ndarray]], settings: Settings) -> dict[str, dict[str, float]]:
    """``{"256/1K": {fake set name: pFID}}`` for each of ``settings.patch_sizes``."""
    out = {}
    for p in settings.patch_sizes:
        ref = extractor(random_crops(reference, p, settings.crops, settings.seed))
        out[patch_label(p, settings.fid_size)] = {
            name: frechet_distance(ref, extractor(random_crops(imgs, p, settings.crops, settings.seed)))
            for name, imgs in fakes.items() if imgs}
    return out


# --- the whole evaluation ----------------------------------------------------------------------
def _describe(pipe: Pipeline) -> str:
    return f"{pipe.cfg.name} ({pipe.cfg.autoencoder.renderer.kind.upper()} renderer)"


def _labels(models: dict[str, Pipeline]) -> dict[str, str]:
    """Row labels; two models of the same preset and renderer are told apart as model / compare."""
    labels = {m: _describe(p) for m, p in models.items()}
    if len(set(labels.values())) < len(labels):
        labels = {m: f"{label}, {m}" for m, label in labels.items()}
    return labels


def evaluate(pipe: Pipeline, images: ImageFolder, settings: Settings | None = None, *,
             compare: Pipeline | None = None, reference: ImageFolder | None = None,
             extractors: Sequence[features.FeatureExtractor] = (), upscaler: Upscaler | None = None,
             strips: Path | None = None) -> dict[str, Any]:
    """All three evaluations of ``pipe`` (and ``compare``) on ``images``; pFID against ``reference``
    (default: ``images``) with each of ``extractors`` (none: pFID skipped); Real-ESRGAN rows with
    ``upscaler`` (and a :func:`comparison_strip` per photo written to ``strips``). Returns the report."""
    settings = settings or Settings()
    fid = settings.fid_size
    models = {"model": pipe} | ({"compare": compare} if compare is not None else {})
    lpips_net = offline_lpips(pipe.device)
    names = [str(p.relative_to(images.root)) for p in images.paths]
    reuse = reference is None and fid in settings.scales  # pFID pairs come out of the photo loop
    rows, consistency, grid, border, gts, recons = [], defaultdict(dict), defaultdict(dict), defaultdict(dict), [], []
    detailed, others = defaultdict(dict), defaultdict(list)  # others: the other methods' pFID images
    for i, name in enumerate(tqdm(names, desc="photos", leave=False)):
        res = evaluate_image(images[i], models, settings, lpips_net, upscaler)
        if strips is not None and upscaler is not None:
            strips.mkdir(parents=True, exist_ok=True)
            Image.fromarray(comparison_strip(images[i], [*([compare] if compare else []), pipe], upscaler)).save(
                strips / f"{Path(name).stem}.png")
        rows += [{"image": name, **r} for r in res.rows]
        for m, v in res.consistency.items():
            consistency[m][name] = v
        for m, v in res.grid.items():
            grid[m][name] = {str(s): x for s, x in v.items()}
        for m, v in res.border.items():
            border[m][name] = v
        for m, v in res.detail.items():
            detailed[m][name] = v
        if reuse and extractors:
            gts.append(res.images["gt"][fid])
            recons.append(res.images["model"][fid])
            for m in ("bicubic", ESRGAN, "compare"):
                if fid in res.images.get(m, {}):
                    others[m].append(res.images[m][fid])
    mean = defaultdict(dict)
    enc = encoder_input_size(models, settings)
    esrgan = esrgan_labels(settings, _labels(models), enc) if upscaler is not None and esrgan_scales(settings, enc) else {}
    methods = [*baselines(settings), *models, *(refined(m) for m in models if settings.refine), *esrgan]
    for m in methods:
        for s in settings.scales:
            sel = [r for r in rows if r["method"] == m and r["scale"] == s]
            if sel:  # Real-ESRGAN rows exist at esrgan_scales only
                mean[m][str(s)] = {k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "lpips")}
    report: dict[str, Any] = {
        "model": _describe(pipe),
        "methods": {**baseline_labels(settings, int(np.prod(pipe.latent_shape)), encoder_input_size(models, settings)),
                    **_labels(models),
                    **{refined(m): f"{label}, latent refined {settings.refine} step{'s' * (settings.refine != 1)}"
                       for m, label in _labels(models).items() if settings.refine},
                    **esrgan},
        "esrgan": ({"scales": esrgan_scales(settings, enc), "weights": "realesrgan-x4plus (ncnn export, read by "
                    "training.realesrgan)", "note": f"Real-ESRGAN ×4 output at {4 * enc}², LANCZOS-resized below"}
                   if esrgan else {"note": "no Real-ESRGAN rows (weights not installed: pip install -r requirements-eval.txt; "
                                      "--no-esrgan; or no scale between the input and its ×4)"}),
        "images": [{"image": n, "size": list(images.sizes[i][::-1])} for i, n in enumerate(names)],
        "encoder_input": encoder_input_size(models, settings),
        "settings": {**dataclasses.asdict(settings),  # the η the samples really used
                     "eta": settings.eta if settings.eta is not None or pipe.cfg.diffusion is None
                     else pipe.cfg.diffusion.eta},
        "reconstruction": {"lpips_note": LPIPS_NOTE, "mean": mean, "per_image": rows},
        "scale_consistency": {"size": settings.consistency_size,
                              "mean_db": {m: float(np.mean(list(v.values()))) for m, v in consistency.items()},
                              "per_image_db": consistency},
        "grid": {"sizes": list(settings.grid_sizes),
                 "mean": {m: {str(s): float(np.mean([v[str(s)] for v in per.values()])) for s in settings.grid_sizes}
                          for m, per in grid.items()},
                 "per_image": grid},
    }
    if border:  # a band has one sign on every photo: average the signed casts, then take the worst channel
        report["border"] = {"size": max(settings.grid_sizes), "edge": max(settings.grid_sizes) // PHI_SIDE,
                            "mean": {m: {side: float(np.abs(np.mean([v[side] for v in per.values()], 0)).max())
                                         for side in BORDER_SIDES} for m, per in border.items()},
                            "per_image": border}
    if detailed:
        d = settings.detail_size
        native = [n for i, n in enumerate(names) if min(images.sizes[i]) >= d]

        def means(per: dict[str, dict[str, float]], only: Sequence[str]) -> dict[str, float]:
            return {k: float(np.mean([per[n][k] for n in only])) for k in ("sharpness", "noise")} if only else {}

        report["detail"] = {"size": d, "native": native,
                            "mean": {m: means(per, names) for m, per in detailed.items()},
                            "native_mean": {m: means(per, native) for m, per in detailed.items()},
                            "per_image": detailed}
    if extractors:
        if not reuse:
            gts, recons = reconstruction_pairs(pipe, reference or images, fid)
        report["pfid"] = _pfid_report(pipe, (reference or images).root, gts, recons, settings, extractors, others)
    return report


def _pfid_report(pipe: Pipeline, root: Path, gts: list[np.ndarray], recons: list[np.ndarray], settings: Settings,
                 extractors: Sequence[features.FeatureExtractor],
                 others: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
    """``others``: more methods' images of the same photos (bicubic, Real-ESRGAN, the compared model),
    each scored like the model's reconstructions (under its method name)."""
    fakes = {"reconstruction": recons, **(others or {})}
    note = ""
    if settings.samples and pipe.unet is None:
        note = "model has no diffusion UNet: no samples"
    elif settings.samples:
        fakes["samples"] = generate(pipe, settings.samples, settings.fid_size, settings.steps, eta=settings.eta)
    return {"reference": str(root), "n_reference": len(gts), "n_samples": len(fakes.get("samples", [])),
            "crops": settings.crops, "eps": FID_EPS, "note": note,
            "by_features": {e.label: patch_fid(e, gts, fakes, settings) for e in extractors}}


CONSISTENCY_TARGET_DB = 30.0


def targets(report: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The model's acceptance targets as ``(target, met, measured)``: at the largest scale, LPIPS
    below bicubic upsampling of the encoder input; scale consistency at least 30 dB."""
    top = str(max(report["settings"]["scales"]))
    mean = report["reconstruction"]["mean"]
    m, b = mean["model"][top]["lpips"], mean["bicubic"][top]["lpips"]
    c = report["scale_consistency"]["mean_db"]["model"]
    enc = report.get("encoder_input", 256)  # reports written before it was recorded: the 256² input
    return [(f"{top}² reconstruction: LPIPS below bicubic upsampling of the {enc}² input", m < b,
             f"{m:.4f} vs {b:.4f}"),
            (f"scale consistency ≥ {CONSISTENCY_TARGET_DB:g} dB", c >= CONSISTENCY_TARGET_DB, f"{c:.2f} dB")]


def _eta(report: dict[str, Any]) -> str:
    """`` (DDIM η = 0, 50 steps)`` after the sample count, when there are samples."""
    eta, steps = report["settings"].get("eta"), report["settings"]["steps"]
    return "" if eta is None or not report["pfid"]["n_samples"] else f" (DDIM η = {eta:g}, {steps} steps)"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (what goes into the model card)."""
    methods = report["methods"]
    n = len(report["images"])
    out = ["### Targets", "", "| target | met | measured |", "|---|---|---|"]
    out += [f"| {t} | {'yes' if ok else '**no**'} | {v} |" for t, ok, v in targets(report)]
    out += ["", f"### Reconstruction from the {report.get('encoder_input', 256)}² encoder input ({n} held-out photos)", "",
           "| output | method | PSNR (dB) ↑ | LPIPS ↓ |", "|---|---|---:|---:|"]
    for s in report["settings"]["scales"]:
        for m, label in methods.items():
            v = report["reconstruction"]["mean"][m].get(str(s))
            if v is not None:  # Real-ESRGAN rows exist at some scales only
                out.append(f"| {s}² | {label} | {v['psnr']:.2f} | {v['lpips']:.4f} |")
    small = [i["image"] for i in report["images"] if min(i["size"]) < max(report["settings"]["scales"])]
    out += ["", f"{report['reconstruction']['lpips_note']}."]
    if "esrgan" in report:
        out.append(f"{report['esrgan']['note']}.")
    if small:
        out.append(f"Ground truth above the native size of {', '.join(small)} is an upsampled photo.")
    sc = report["scale_consistency"]
    c = sc["size"]
    out += ["", f"### Scale consistency: render {2 * c}² → area-downsample to {c}² vs render {c}²", "",
            "| model | mean PSNR (dB) | min PSNR (dB) |", "|---|---:|---:|"]
    for m, v in sc["mean_db"].items():
        out.append(f"| {methods[m]} | {v:.2f} | {min(sc['per_image_db'][m].values()):.2f} |")
    if "grid" in report and report["grid"]["sizes"]:
        g = report["grid"]
        out += ["", "### φ-grid visibility (mean step across φ-cell edges / within cells; 1 = no visible grid)", "",
                "| image | " + " | ".join(f"{s}²" for s in g["sizes"]) + " |", "|---|" + "---:|" * len(g["sizes"])]
        for m, v in g["mean"].items():
            label = "ground truth (photo resized)" if m == "gt" else methods[m]
            out.append(f"| {label} | " + " | ".join(f"{v[str(s)]:.2f}" for s in g["sizes"]) + " |")
    if "border" in report:
        b = report["border"]
        out += ["", f"### Colour bands along the borders at {b['size']}²: mean error (/255, worst channel, mean over the "
                f"photos) of the {b['edge']} px along each border minus that of the next {3 * b['edge']} px", "",
                "| image | " + " | ".join(BORDER_SIDES) + " |", "|---|" + "---:|" * len(BORDER_SIDES)]
        for m, v in b["mean"].items():
            out.append(f"| {methods[m]} | " + " | ".join(f"{v[side]:.1f}" for side in BORDER_SIDES) + " |")
    if "detail" in report:
        dt = report["detail"]
        d = dt["size"]
        out += ["", f"### Detail at {d}², 1:1 (training.detail): high-frequency energy (above half Nyquist) over the "
                "photo's; sharpness on 3×3 fixed 256² crops, noise on the photo's flattest 64² windows", "",
                f"1.0 = as the photo. {len(dt['native'])} of {n} photos are at least {d} px on their short side (the "
                "others' reference is an upsampled photo, so their ratios run high).", "",
                "| method | sharpness | flat-region noise | sharpness, photos ≥ the size | noise, photos ≥ the size |",
                "|---|---:|---:|---:|---:|"]
        for m, v in dt["mean"].items():
            nat = dt["native_mean"].get(m) or {}
            cells = [f"{v['sharpness']:.3f}", f"{v['noise']:.3f}",
                     *(f"{nat[k]:.3f}" if k in nat else "—" for k in ("sharpness", "noise"))]
            out.append(f"| {methods.get(m, m)} | " + " | ".join(cells) + " |")
    if "pfid" in report:
        pf = report["pfid"]
        fid = _side(report["settings"]["fid_size"])
        for label, values in pf["by_features"].items():
            out += ["", f"### {label}", "",
                    f"Reference: {pf['n_reference']} photos from `{pf['reference']}`; {pf['crops']} random crops "
                    f"per set for P < {fid}; {pf['n_samples']} samples{_eta(report)}. Lower is better; small-N FID is biased "
                    "upwards, compare only within this table.", "",
                    ]
            extra = [m for m in (ESRGAN, "bicubic", "compare") if any(m in v for v in values.values())]
            heads = [f"{methods.get(m, m)} of the same photos" for m in extra]
            out += [f"| P/{fid} | " + " | ".join(["reconstruction (baseline)", *heads, "samples"]) + " |",
                    "|---|" + "---:|" * (2 + len(extra))]
            for key, v in values.items():
                cells = [v["reconstruction"], *(v.get(m) for m in extra), v.get("samples")]
                out.append(f"| {key} | " + " | ".join("—" if c is None else f"{c:.2f}" for c in cells) + " |")
        if pf["note"]:
            out += ["", pf["note"]]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--data", type=Path, required=True, help="folder of held-out photos")
    ap.add_argument("--compare", type=Path, help="another model folder to compare with (e.g. a LIIF renderer)")
    ap.add_argument("--fid-data", type=Path,
                    help="ground-truth photos for pFID, e.g. the training set (default: --data)")
    ap.add_argument("--samples", type=int, default=0, help="samples for the sample pFID (0: reconstruction pFID only)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps")
    ap.add_argument("--eta", type=float, default=None, help="DDIM η of the samples (default: the model's own)")
    ap.add_argument("--scales", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--consistency-size", type=int, default=1024)
    ap.add_argument("--fid-size", type=int, default=1024, help="the '1K' of P/1K")
    ap.add_argument("--patch-sizes", type=int, nargs="+", default=[256, 1024], help="P of P/1K")
    ap.add_argument("--crops", type=int, default=512, help="random crops per set for P < fid-size")
    ap.add_argument("--seed", type=int, default=0, help="crop positions")
    ap.add_argument("--grid-sizes", type=int, nargs="*", default=[1024, 2048],
                    help="sides where φ-grid visibility is measured (multiples of 512)")
    ap.add_argument("--refine", type=int, default=0,
                    help="also report each model with its latent refined this many steps (infd_core.inversion)")
    ap.add_argument("--thumbnails", type=int, nargs="*", default=[64, 128],
                    help="N of the bicubic-N baselines: an N² thumbnail of the input, upsampled")
    ap.add_argument("--no-pfid", action="store_true", help="skip patch-FID")
    ap.add_argument("--inception-weights", type=Path,
                    help="torchvision inception_v3 state dict: adds Inception pFID (pool3 features)")
    ap.add_argument("--no-esrgan", action="store_true", help="skip the Real-ESRGAN ×4 rows")
    ap.add_argument("--esrgan-fp32", action="store_true", help="run Real-ESRGAN in fp32 (default: bf16 autocast)")
    ap.add_argument("--esrgan-of", nargs="+", choices=["input", "render"], default=["input", "render"],
                    help="Real-ESRGAN ×4 of the encoder input and/or of each model's render")
    ap.add_argument("--detail-size", type=int, default=2048,
                    help="side where sharpness and flat-region noise are judged at 1:1 (training.detail; 0: skip)")
    ap.add_argument("--strips", type=Path, help="write a 2048² comparison strip per photo into this folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="write the report as JSON here")
    args = ap.parse_args(argv)
    if any(p > args.fid_size for p in args.patch_sizes):
        ap.error("--patch-sizes must not exceed --fid-size")

    settings = Settings(scales=tuple(args.scales), consistency_size=args.consistency_size, fid_size=args.fid_size,
                        patch_sizes=tuple(args.patch_sizes), crops=args.crops, samples=args.samples, steps=args.steps,
                        seed=args.seed, eta=args.eta, thumbnails=tuple(args.thumbnails), refine=args.refine,
                        grid_sizes=tuple(args.grid_sizes), esrgan=tuple(args.esrgan_of), detail_size=args.detail_size)
    pipe = Pipeline.load(args.model or default_model_dir(), device=args.device)
    compare = Pipeline.load(args.compare, device=args.device) if args.compare else None
    extractors = []
    if not args.no_pfid:
        extractors.append(features.efficientnet_lite0(args.device))
        if args.inception_weights:
            extractors.append(features.inception_v3(args.inception_weights, args.device))
    images = ImageFolder(args.data)
    reference = ImageFolder(args.fid_data) if args.fid_data else None
    wanted = not args.no_esrgan and esrgan_scales(settings, pipe.input_size)
    upscaler = default_upscaler(args.device, bf16=not args.esrgan_fp32) if wanted else None
    if upscaler is None and wanted:
        print("Real-ESRGAN weights not installed (pip install -r requirements-eval.txt): no Real-ESRGAN rows",
              file=sys.stderr)
    report = evaluate(pipe, images, settings, compare=compare, reference=reference, extractors=extractors,
                      upscaler=upscaler, strips=args.strips)
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
