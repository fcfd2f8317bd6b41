"""Detail at 1:1 when zooming in: how much fine texture a render has, and where.

Two judges that no training loss optimises (the decoder's losses are L1, LPIPS-VGG and Gram
matrices of VGG features; these are plain spectra of grey levels):

* **sharpness**: the high-frequency energy (:func:`high_frequency_energy`: the spectrum above half
  Nyquist) of fixed crops of a render (:func:`sharpness_windows`: 3×3 windows of 256² at 2048²),
  over that of the same crops of the photo resized to the same size. 1.0 = as detailed as the
  photo; a blur scores near 0.
* **flat-region noise**: the same energy in the photo's flattest windows (:func:`flat_windows`: the
  64² windows of lowest grey-level spread, sky or water), over the photo's own there. A decoder that
  learnt to paint texture everywhere shows it here; the photo scores 1.0 and bicubic below.

Images are ``[s, s, 3]`` uint8 arrays (RGB).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from infd_core.geometry import PixelRange

__all__ = ["HF_CUTOFF", "high_frequency_energy", "sharpness_windows", "flat_windows", "detail_scores"]

HF_CUTOFF = 0.25  # cycles per pixel: half of Nyquist (0.5)
SHARP_WINDOW = 256
FLAT_WINDOW = 64
FLAT_SHARE = 0.1  # the flattest tenth of the windows


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64).mean(-1) / 255


def high_frequency_energy(grey: np.ndarray) -> float:
    """Mean power per pixel above :data:`HF_CUTOFF` cycles/pixel (on either axis) of a ``[n, m]``
    grey window in [0, 1]: mean removed, Hann-windowed (so the window's edges add nothing)."""
    n, m = grey.shape
    hann = np.outer(np.hanning(n), np.hanning(m))
    spectrum = np.abs(np.fft.fft2((grey - grey.mean()) * hann)) ** 2 / (hann ** 2).sum()
    fy, fx = np.abs(np.fft.fftfreq(n))[:, None], np.abs(np.fft.fftfreq(m))[None, :]
    return float(spectrum[(fy > HF_CUTOFF) | (fx > HF_CUTOFF)].sum())


def sharpness_windows(size: int, window: int = SHARP_WINDOW, per_side: int = 3) -> list[PixelRange]:
    """``per_side``² fixed ``window``² crops of a ``size²`` image, centred at (2i + 1) / (2 per_side)."""
    half = window // 2
    centres = [round(size * (2 * i + 1) / (2 * per_side)) for i in range(per_side)]
    centres = [min(max(c, half), size - half) for c in centres]
    return [PixelRange(y - half, y + half, x - half, x + half) for y in centres for x in centres]


def flat_windows(photo: np.ndarray, window: int = FLAT_WINDOW, share: float = FLAT_SHARE) -> list[PixelRange]:
    """The ``share`` of the non-overlapping ``window``² windows of ``photo`` (``[s, s, 3]`` uint8, or
    its grey levels ``[s, s]``) whose grey levels spread least (standard deviation), at least one:
    where the photo is flat (sky, water, bokeh)."""
    grey = _grey(photo) if photo.ndim == 3 else photo
    rows, cols = grey.shape[0] // window, grey.shape[1] // window
    blocks = grey[:rows * window, :cols * window].reshape(rows, window, cols, window)
    spread = blocks.std(axis=(1, 3)).ravel()
    keep = np.argsort(spread, kind="stable")[:max(1, round(share * spread.size))]
    return [PixelRange(int(k // cols) * window, int(k // cols + 1) * window,
                       int(k % cols) * window, int(k % cols + 1) * window) for k in keep]


def _energy(grey: np.ndarray, windows: list[PixelRange]) -> float:
    return float(np.mean([high_frequency_energy(grey[w.r0:w.r1, w.c0:w.c1]) for w in windows]))


def detail_scores(photo: np.ndarray, images: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{name: {"sharpness": ratio, "noise": ratio}}`` of each of ``images`` (same size as
    ``photo``, the photo resized to it) against ``photo``: both energies over the photo's own."""
    grey = _grey(photo)  # each image converted once, for both judges
    sharp, flat = sharpness_windows(photo.shape[0]), flat_windows(grey)
    ref_sharp, ref_flat = _energy(grey, sharp), _energy(grey, flat)
    out = {}
    for name, img in images.items():
        g = _grey(img)
        out[name] = {"sharpness": _energy(g, sharp) / max(ref_sharp, 1e-12),
                     "noise": _energy(g, flat) / max(ref_flat, 1e-12)}
    return out
