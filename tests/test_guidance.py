"""Layout-to-image with the embedded default model and the offline scorer (real weights, CPU)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infd_core.geometry import Box
from infd_core.guidance import (MAX_REGIONS, Layout, Objective, Region, dps_guidance, guided_sample, region_mask,
                                render_box_fixed_resolution)
from infd_core.scorers import load_scorer

STEPS = 12  # the model samples with its own η = 0: with η = 1 even scale 0.02 changes the whole image
SCALE = 0.2  # the default model diverges from its unguided sample at 1.0 (12 steps)
CAT = "classes: tabby, Egyptian cat"


def box_score(pipe, scorer, z: torch.Tensor, box: Box, prompt: str) -> float:
    obj = Objective(pipe, Layout([Region(box, "text", prompt)]), scorer, None)
    return -float(obj.region_losses(pipe.field(z))[0])


@pytest.fixture(scope="module")
def unguided(default_pipe) -> list[torch.Tensor]:
    return [default_pipe.sample(seed, steps=STEPS) for seed in range(4)]


def test_guidance_raises_box_score_above_unguided_spread(default_pipe, offline, unguided) -> None:
    box = Box(0.0, 0.0, 0.5, 0.5)
    z, report = guided_sample(default_pipe, Layout([Region(box, "text", CAT)]), seed=0, steps=STEPS,
                              scale=SCALE, scorer=offline)
    base = [box_score(default_pipe, offline, u, box, CAT) for u in unguided]
    guided = box_score(default_pipe, offline, z, box, CAT)
    spread = max(base) - min(base)
    assert guided > base[0] + 1.0, (guided, base)
    assert guided > max(base) + spread, (guided, base)
    assert report["scorer"] == offline.name
    assert report["regions"][0]["known"] is True and "cat" in report["regions"][0]["understood_as"]
    assert len(report["loss_trace"]) == STEPS


def test_corner_box_changes_its_corner_most(default_pipe, offline, unguided) -> None:
    """Guiding a top-left box changes the top-left more than the bottom-right (row/column order)."""
    z, _ = guided_sample(default_pipe, Layout([Region(Box(0.0, 0.0, 0.4, 0.4), "text", CAT)]), seed=0,
                         steps=STEPS, scale=SCALE, scorer=offline)
    a = default_pipe.render(default_pipe.field(z), 128, 128).astype(float)
    b = default_pipe.render(default_pipe.field(unguided[0]), 128, 128).astype(float)
    diff = np.abs(a - b).mean(axis=2)
    top_left, bottom_right = diff[:51, :51].mean(), diff[-51:, -51:].mean()
    assert top_left > 1.5 * bottom_right, (top_left, bottom_right)


def test_region_mask_rows_are_y_and_it_fades_over_the_margin() -> None:
    m = region_mask([Box(0.0, 0.0, 0.25, 0.5)], 8, margin=0.25)  # x to 0.25 (2 columns), y to 0.5 (4 rows)
    assert m.shape == (8, 8)
    assert (m[:4, :2] == 1).all() and m[:4, 2:].max() < 1  # inside: 1; right of it: fading
    assert m[0, 2] == pytest.approx(0.75) and m[0, 3] == pytest.approx(0.25) and (m[:, 4:] == 0).all()
    assert m[4, 0] == pytest.approx(0.75) and (m[6:, :] == 0).all()  # below it, by rows
    both = region_mask([Box(0.0, 0.0, 0.25, 0.5), Box(0.75, 0.75, 1.0, 1.0)], 8, margin=0.25)
    assert (both[6:, 6:] == 1).all() and torch.equal(both[:4, :2], m[:4, :2])


def test_guidance_acts_only_near_its_box(default_pipe) -> None:
    """One hook call on a top-left colour box: the correction vanishes beyond the margin and has RMS
    ``scale`` over the guided cells; with ``margin=None`` it is plain DPS (RMS ``scale`` overall)."""
    obj = Objective(default_pipe, Layout([Region(Box(0.0, 0.0, 0.25, 0.25), "color", color=(1.0, 0.0, 0.0))]),
                    None, None)
    x_t = torch.randn(1, *default_pipe.latent_shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    x0 = x_t * 0.5  # any differentiable function of x_t stands in for the UNet's x̂0 here
    local = dps_guidance(default_pipe, obj, scale=0.3, margin=0.125)(x_t, x0, 0, 10)
    assert local[..., 24:, :].abs().max() == 0 and local[..., :, 24:].abs().max() == 0  # 0.25 + 0.125 = 24/64
    mask = region_mask([Box(0.0, 0.0, 0.25, 0.25)], 64, 0.125)
    assert float((local.pow(2).mean() / mask.mean()).sqrt()) == pytest.approx(0.3, rel=1e-4)
    x0 = x_t * 0.5
    spread = dps_guidance(default_pipe, obj, scale=0.3, margin=None)(x_t, x0, 0, 10)
    assert float(spread.pow(2).mean().sqrt()) == pytest.approx(0.3, rel=1e-4)


def test_colour_and_keep_regions(default_pipe, unguided) -> None:
    red = Region(Box(0.5, 0.5, 1.0, 1.0), "color", color=(1.0, 0.0, 0.0), weight=2.0)
    keep = Region(Box(0.0, 0.0, 0.5, 0.5), "keep", weight=4.0)
    z, report = guided_sample(default_pipe, Layout([red, keep]), seed=1, steps=STEPS, scale=SCALE,
                              init_latent=unguided[0])
    img = default_pipe.render(default_pipe.field(z), 64, 64).astype(float)
    ref = default_pipe.render(default_pipe.field(default_pipe.sample(1, steps=STEPS)), 64, 64).astype(float)
    redness = lambda im: (im[32:, 32:, 0] - im[32:, 32:, 1:].mean(axis=2)).mean()  # noqa: E731
    assert redness(img) > redness(ref) + 10
    kept = default_pipe.render(default_pipe.field(unguided[0]), 64, 64).astype(float)
    assert np.abs(img[:32, :32] - kept[:32, :32]).mean() < np.abs(ref[:32, :32] - kept[:32, :32]).mean()
    assert [r["kind"] for r in report["regions"]] == ["color", "keep"]


def test_scale_zero_is_unguided(default_pipe, offline, unguided) -> None:
    z, _ = guided_sample(default_pipe, Layout([Region(Box(0, 0, 1, 1), "text", CAT)]), seed=0, steps=STEPS,
                         scale=0.0, scorer=offline)
    assert torch.equal(z, unguided[0])


def test_box_cost_does_not_depend_on_canvas(default_pipe) -> None:
    """Our box render queries (224 + halo)^2 pixels whatever the canvas; the baseline grows with it."""
    seen: list[int] = []
    hook = default_pipe.autoencoder.renderer.register_forward_pre_hook(lambda m, a: seen.append(a[1][0, ..., 0].numel()))
    fld = default_pipe.field(torch.zeros(1, *default_pipe.latent_shape))
    box = Box(0.25, 0.25, 0.5, 0.5)
    try:
        for canvas in (2048, 8192):
            seen.clear()
            ours = default_pipe.render_box(fld, box)
            ours_px = sum(seen)
            seen.clear()
            base = render_box_fixed_resolution(default_pipe, fld, box, canvas)
            base_px = sum(seen)
            assert ours.shape == base.shape == (1, 3, 224, 224)
            assert ours_px < 240 ** 2 and base_px >= (canvas // 4) ** 2
            assert (ours - base).abs().mean() < 0.1  # the same content, far cheaper
    finally:
        hook.remove()


def test_clip_path_end_to_end(default_pipe, tiny_clip_file) -> None:
    from .conftest import TINY_ARCH

    scorer = load_scorer(f"clip:{TINY_ARCH}:{tiny_clip_file}")
    z, report = guided_sample(default_pipe, Layout([Region(Box(0.1, 0.1, 0.6, 0.6), "text", "a red flower")],
                                                   global_prompt="a meadow"),
                              seed=0, steps=3, scale=1.0, scorer=scorer)
    assert z.shape == (1, *default_pipe.latent_shape) and torch.isfinite(z).all()
    assert report["scorer"].startswith("clip:") and len(report["regions"]) == 2


@pytest.mark.parametrize("region, match", [
    (dict(box=[0.1, 0.1, 0.5, 0.5], prompt="  "), "non-empty prompt"),
    (dict(box=[0.5, 0.1, 0.5, 0.6], prompt="a"), "positive area"),
    (dict(box=[0.6, 0.1, 0.2, 0.6], prompt="a"), "positive area"),
    (dict(box=[0.5, 0.5, 1.5, 0.9], prompt="a"), "outside the image"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], prompt="a", weight=float("nan")), "weight"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], prompt="a", weight=-1), "weight"),
    (dict(box=[0.1, 0.1, 0.5], prompt="a"), r"\[x0, y0, x1, y1\]"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="paint"), "kind"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="color", color=[2, 0, 0]), "color"),
])
def test_bad_regions(region: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Layout.from_json([region])


def test_bad_reference_patches_and_layouts() -> None:
    box = Box(0, 0, 0.5, 0.5)
    with pytest.raises(ValueError, match="uint8"):
        Region(box, "image", image=np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        Region(box, "image", image=np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="8..4096"):
        Region(box, "image", image=np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="at most"):
        Layout([Region(box, "text", "a")] * (MAX_REGIONS + 1))
    with pytest.raises(ValueError, match="unknown keys"):
        Layout.from_json([{"box": [0, 0, 1, 1], "prompt": "a", "exec": "rm -rf /"}])
    with pytest.raises(ValueError, match="layout must be"):
        Layout.from_json("boxes")


def test_bad_calls(default_pipe, offline) -> None:
    layout = Layout([Region(Box(0, 0, 1, 1), "text", "a cat")])
    with pytest.raises(ValueError, match="scale"):
        guided_sample(default_pipe, layout, scale=math.inf, scorer=offline)
    with pytest.raises(ValueError, match="margin"):
        guided_sample(default_pipe, layout, margin=-0.1, scorer=offline)
    with pytest.raises(ValueError, match="need a scorer"):
        guided_sample(default_pipe, layout, scorer=None)
    with pytest.raises(ValueError, match="keep region needs"):
        guided_sample(default_pipe, Layout([Region(Box(0, 0, 1, 1), "keep")]))
    with pytest.raises(ValueError, match="no regions"):
        guided_sample(default_pipe, Layout([]), scorer=offline)
    with pytest.raises(ValueError, match="latent must have shape"):
        guided_sample(default_pipe, layout, scorer=offline, init_latent=torch.zeros(1, 3, 8, 8))


def test_layout_json_round_trip() -> None:
    layout = Layout([Region(Box(0.1, 0.2, 0.3, 0.4), "text", "a cat", 2.0),
                     Region(Box(0, 0, 1, 1), "color", color=(0.1, 0.2, 0.3))], global_prompt="a meadow")
    again = Layout.from_json(layout.to_json())
    assert again.to_json() == layout.to_json()
