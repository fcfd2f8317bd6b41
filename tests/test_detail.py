"""The detail judges (training.detail) on a real photo, its blur and added noise."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from training.detail import detail_scores, flat_windows, high_frequency_energy, sharpness_windows


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """skimage's astronaut at 512²: fine detail (the suit, the flag) and flat areas (the background)."""
    return data.astronaut()


def test_energy_is_zero_for_flat_and_smooth_windows_and_grows_with_noise() -> None:
    assert high_frequency_energy(np.full((64, 64), 0.5)) == 0.0
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))  # a gradient: only low frequencies
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, (64, 64))
    assert high_frequency_energy(ramp) < 1e-3 * high_frequency_energy(noise)
    # white noise: 3/4 of its power lies above half Nyquist on either axis, power per pixel sigma²
    assert high_frequency_energy(noise) / 64 ** 2 == pytest.approx(0.75 * 0.05 ** 2, rel=0.15)


def test_windows_cover_the_image_and_flat_ones_are_flat(photo: np.ndarray) -> None:
    sharp = sharpness_windows(2048)
    assert len(sharp) == 9 and all(w.r1 - w.r0 == 256 and 0 <= w.r0 and w.r1 <= 2048 for w in sharp)
    flat = flat_windows(photo)
    assert len(flat) == round(0.1 * (512 // 64) ** 2)
    grey = photo.mean(-1)
    assert max(grey[w.r0:w.r1, w.c0:w.c1].std() for w in flat) < grey.std() / 3


def test_photo_scores_one_blur_low_noise_high(photo: np.ndarray) -> None:
    small = Image.fromarray(photo).resize((128, 128), Image.Resampling.LANCZOS)
    blurred = np.asarray(small.resize((512, 512), Image.Resampling.BICUBIC))
    rng = np.random.default_rng(0)
    noisy = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
    scores = detail_scores(photo, {"photo": photo, "bicubic": blurred, "noisy": noisy})
    assert scores["photo"] == {"sharpness": 1.0, "noise": 1.0}
    assert scores["bicubic"]["sharpness"] < 0.2 and scores["bicubic"]["noise"] < 1
    assert scores["noisy"]["noise"] > 3 and scores["noisy"]["sharpness"] > 1
