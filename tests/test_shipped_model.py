"""The shipped default model's quality where tests can see it: layout editing that holds.

Every other test runs its mechanics on a fixed-seed random model; these use the embedded model
(``assets/models``) with the offline scorer, so retraining it may move them. Pixels are compared
at 1024² (mean absolute difference over RGB, in 0..255 units).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from infd_core.diffusion import DEFAULT_STRIDE, window_edges
from infd_core.geometry import Box, box_to_pixels
from infd_core.guidance import MARGIN, guided_sample
from infd_core.images import to_tensor
from infd_core.conditions import SCORE_SIZE
from infd_core.regions import Layout, Region
from infd_core.outpaint import extend
from infd_core.perceptual import offline_lpips
from training.evaluate import seam_visibility

STEPS = 12
SIDE = 1024


@pytest.fixture(scope="module")
def before(default_pipe) -> torch.Tensor:
    """The unguided picture of seed 0: the 'current picture' every edit starts from."""
    return default_pipe.sample(0, steps=STEPS)


def render(pipe, z: torch.Tensor) -> np.ndarray:
    return pipe.render(pipe.field(z), SIDE, SIDE).astype(np.float64)


def inside(box: Box, grow: float = 0.0) -> np.ndarray:
    """``[SIDE, SIDE]`` bool: pixels in ``box`` grown by ``grow`` (image fractions, clipped)."""
    b = Box(max(box.x0 - grow, 0), max(box.y0 - grow, 0), min(box.x1 + grow, 1), min(box.y1 + grow, 1))
    r = box_to_pixels(b, SIDE, SIDE)
    m = np.zeros((SIDE, SIDE), bool)
    m[r.r0:r.r1, r.c0:r.c1] = True
    return m


def change(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a - b).mean(axis=2)[where].mean())


def test_keep_keeps_and_a_colour_box_acts_only_where_it_is(default_pipe, before) -> None:
    keep, blue = Region(Box(0.0, 0.0, 0.5, 1.0), "keep"), Region(Box(0.6, 0.1, 0.95, 0.45), "color", color=(0, 0, 1))
    z, _ = guided_sample(default_pipe, Layout((keep, blue)), seed=5, steps=STEPS, scale=0.2, init_latent=before)
    old, new = render(default_pipe, before), render(default_pipe, z)
    assert change(new, old, inside(keep.box)) <= 2.0  # was 29-33 when keep only pulled (DPS)
    outside = ~inside(keep.box) & ~inside(blue.box, MARGIN)
    assert change(new, old, outside) <= 3.0
    m = inside(blue.box)
    mean_old, mean_new, target = old[m].mean(0), new[m].mean(0), np.array([0, 0, 255.0])
    assert np.linalg.norm(mean_new - target) <= 0.5 * np.linalg.norm(mean_old - target), (mean_old, mean_new)


def test_text_box_changes_its_corner_and_keeps_the_rest(default_pipe, offline, before) -> None:
    box = Box(0.0, 0.0, 0.4, 0.4)
    z, report = guided_sample(default_pipe, Layout((Region(box, "text", "classes: Granny Smith"),)), seed=0,
                              steps=STEPS, scale=0.2, scorer=offline, init_latent=before)
    old, new = render(default_pipe, before), render(default_pipe, z)
    corner, opposite = change(new, old, inside(box)), change(new, old, inside(Box(0.6, 0.6, 1.0, 1.0)))
    assert corner >= 5 * opposite and opposite <= 3.0, (corner, opposite)
    assert change(new, old, ~inside(box, MARGIN)) <= 3.0
    r = report["regions"][0]
    assert r["score"] > r["before"]["score"] + 1.0  # the guidance scorer's gain
    assert np.isfinite(r["judge"]) and "judge" in r["before"]  # and the judge's, reported beside it


def test_image_region_is_placed_at_scale(default_pipe, before) -> None:
    ref = np.asarray(Image.fromarray(data.chelsea()).resize((160, 160), Image.Resampling.LANCZOS))
    box = Box(0.1, 0.2, 0.6, 0.7)
    z, report = guided_sample(default_pipe, Layout((Region(box, "image", image=ref),)), seed=5, steps=STEPS,
                              init_latent=before)
    crop = default_pipe.render_box(default_pipe.field(z), box, SCORE_SIZE).clamp(-1, 1)
    target = torch.nn.functional.interpolate(to_tensor(ref), size=(SCORE_SIZE, SCORE_SIZE), mode="bicubic",
                                             antialias=True, align_corners=False).clamp(-1, 1)
    assert float(offline_lpips()(crop, target).mean()) <= 0.2
    assert report["regions"][0]["placed"] == "hard"
    old, new = render(default_pipe, before), render(default_pipe, z)
    assert change(new, old, ~inside(box, MARGIN)) <= 3.0


def test_the_seam_of_a_keep_box_is_no_stronger_than_the_pictures_own_edges(default_pipe, before) -> None:
    """Keep the left half, regenerate the right: the mean step across the border (x = 0.5) is
    within the picture's own column-to-column steps (below their 95th percentile)."""
    z, _ = guided_sample(default_pipe, Layout((Region(Box(0.0, 0.0, 0.5, 1.0), "keep"),)), seed=7, steps=STEPS,
                         init_latent=before)
    new = render(default_pipe, z)
    steps = np.abs(np.diff(new, axis=1)).mean(axis=(0, 2))  # [SIDE - 1]: between columns c and c + 1
    seam = steps[SIDE // 2 - 2:SIDE // 2 + 1].mean()
    assert seam <= np.percentile(steps, 95), (seam, np.percentile(steps, 95))


# --- canvases beyond the square ------------------------------------------------------------------

PANO = (64, 192)  # cells: a 3:1 panorama
PX = 4  # pixels per latent cell in the panorama checks (256 x 768)


def panorama(pipe, seed: int) -> torch.Tensor:
    return pipe.sample(seed, steps=STEPS, cells=PANO)


@pytest.fixture(scope="module")
def pano0(default_pipe) -> torch.Tensor:
    return panorama(default_pipe, 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_panoramas_show_no_window_seams(default_pipe, pano0, seed) -> None:
    """The mean step across the UNet windows' borders is within 1.2x the mean step across the other
    latent-cell borders (a nearest-cell renderer marks every cell border a little, so those are
    the fair reference; measured 0.99 and 1.01 for seeds 0 and 1)."""
    z = pano0 if seed == 0 else panorama(default_pipe, seed)
    img = default_pipe.render(default_pipe.field(z), PANO[0] * PX, PANO[1] * PX)
    borders = [c * PX for c in window_edges(PANO[1], default_pipe.latent_shape[-1], DEFAULT_STRIDE)]
    assert seam_visibility(img, borders, period=PX) <= 1.2


def test_extending_keeps_the_old_cells_render(default_pipe, before) -> None:
    """Extend right by 32 cells: the old cells render as before, within 2/255 on average (only the
    decoder's reach of the seam may change: it now sees neighbours where it saw its padding)."""
    wider = extend(default_pipe, before, right=32, seed=1, steps=STEPS)
    old = default_pipe.render(default_pipe.field(before), 512, 512).astype(np.float64)
    new = default_pipe.render(default_pipe.field(wider), 512, 768).astype(np.float64)
    assert np.abs(new[:, :512] - old).mean() <= 2.0


def test_a_box_on_a_panorama_acts_where_it_is(default_pipe, pano0) -> None:
    """A blue colour box on the right of a 3:1 panorama: its mean colour moves at least halfway to
    blue; the picture beyond the box's margin changes by at most 3/255."""
    box = Box(0.75, 0.2, 0.95, 0.8)
    z, _ = guided_sample(default_pipe, Layout((Region(box, "color", color=(0, 0, 1)),)), seed=5, steps=STEPS,
                         scale=0.2, init_latent=pano0, stride=32)  # 5 windows a step, not 9: a faster test
    h, w = PANO[0] * PX, PANO[1] * PX
    old = default_pipe.render(default_pipe.field(pano0), h, w).astype(np.float64)
    new = default_pipe.render(default_pipe.field(z), h, w).astype(np.float64)
    r = box_to_pixels(box, h, w)
    target = np.array([0, 0, 255.0])
    mean_old, mean_new = old[r.r0:r.r1, r.c0:r.c1].mean((0, 1)), new[r.r0:r.r1, r.c0:r.c1].mean((0, 1))
    assert np.linalg.norm(mean_new - target) <= 0.5 * np.linalg.norm(mean_old - target), (mean_old, mean_new)
    margin = round(MARGIN * h)  # a margin is in fractions of the shorter side
    far = np.ones((h, w), bool)
    far[max(r.r0 - margin, 0):r.r1 + margin, max(r.c0 - margin, 0):r.c1 + margin] = False
    assert np.abs(new - old).mean(2)[far].mean() <= 3.0


# --- compositions from scratch (30 steps, as in the app) ----------------------------------------

COMPOSE_STEPS = 30


def clipped(img: np.ndarray) -> float:
    """Fraction of pixels with a channel at 0-3 or 252-255 (blown out)."""
    return float(((img <= 3) | (img >= 252)).any(-1).mean())


def squares_error(img: np.ndarray, sketch: np.ndarray, h: int, w: int) -> float:
    """Mean |Δ| (0..255) between ``img`` and ``sketch``, both resized to ``h x w`` and averaged over 16-px squares."""
    def squares(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BICUBIC), np.float64))
        return torch.nn.functional.avg_pool2d(t.permute(2, 0, 1)[None], 16)
    return float((squares(img) - squares(sketch)).abs().mean())


def test_a_sketch_is_painted_over_at_any_extent(default_pipe) -> None:
    """The lake example as a whole-canvas sketch (square and 3:1) and in a quarter-canvas box (the
    rest free): at 256 px per 64 cells its 16-px squares match the sketch within 4/255 (measured
    1.0-1.4 over the five examples), and at most 3 % of the pixels are blown out (0.1-1.7 %)."""
    from infd_core import compositions

    sketch = compositions.example("lake")
    for cells in ((64, 64), (64, 192)):
        z, _ = guided_sample(default_pipe, Layout((compositions.whole_canvas(sketch),)), seed=0, steps=COMPOSE_STEPS,
                             cells=cells)
        h, w = cells[0] * 4, cells[1] * 4
        img = default_pipe.render(default_pipe.field(z), h, w)
        assert squares_error(img, sketch, h, w) <= 4.0 and clipped(img) <= 0.03
    z, _ = guided_sample(default_pipe, Layout((Region(Box(0.5, 0.5, 1, 1), "sketch", image=sketch),)), seed=0,
                         steps=COMPOSE_STEPS)
    img = default_pipe.render(default_pipe.field(z), 256, 256)
    assert squares_error(img[128:, 128:], sketch, 128, 128) <= 4.0 and clipped(img) <= 0.03


def test_colour_boxes_from_scratch_do_not_blow_out(default_pipe) -> None:
    """Sky, mountain and field colour boxes on an empty canvas: at most 3 % blown-out pixels (80 %
    when colour boxes were DPS on the mean colour at strength 0.2; 1.1 % measured now), each box's
    mean within 12/255 of its colour where no later box covers it (measured: 11 in the mountain's blue)."""
    sky, rock, field = (0.45, 0.65, 0.9), (0.5, 0.5, 0.52), (0.3, 0.55, 0.2)
    layout = Layout((Region(Box(0, 0, 1, 0.45), "color", color=sky), Region(Box(0.2, 0.25, 0.8, 0.55), "color", color=rock),
                     Region(Box(0, 0.5, 1, 1), "color", color=field)))
    z, _ = guided_sample(default_pipe, layout, seed=0, steps=COMPOSE_STEPS, scale=0.2)
    img = default_pipe.render(default_pipe.field(z), 256, 256).astype(np.float64)
    assert clipped(img.astype(np.uint8)) <= 0.03
    for rows, cols, rgb in ((slice(0, 60), slice(0, 256), sky), (slice(72, 136), slice(56, 200), rock),
                            (slice(144, 256), slice(0, 256), field)):
        assert np.abs(img[rows, cols].mean((0, 1)) - np.array(rgb) * 255).max() <= 12.0


def test_a_text_box_from_scratch_does_not_blow_out(default_pipe, offline) -> None:
    """DPS with no current picture at the app's strength (0.2): at most 5 % blown-out pixels (11-14 %
    before the range penalty; 0.3-4.0 % over seeds 0-3 now) and the scorer's score still rises."""
    layout = Layout((Region(Box(0.3, 0.3, 0.7, 0.7), "text", "a red apple"),))
    z, report = guided_sample(default_pipe, layout, seed=1, steps=COMPOSE_STEPS, scale=0.2, scorer=offline)
    _, unguided = guided_sample(default_pipe, layout, seed=1, steps=COMPOSE_STEPS, scale=0.0, scorer=offline)
    img = default_pipe.render(default_pipe.field(z), 256, 256)
    assert clipped(img) <= 0.05
    assert report["regions"][0]["score"] > unguided["regions"][0]["score"] + 1.0
