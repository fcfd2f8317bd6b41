"""Layout-to-image mechanics on a fixed-seed random model: regions and their JSON, what is held,
where DPS acts, what a box costs. The shipped model's editing quality: ``test_shipped_model.py``."""
from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from infd_core.diffusion import Known, LowFreq, block_means, block_spread, hold_low
from infd_core.geometry import Box
from infd_core.guidance import (MARGIN, RANGE_LIMIT, Objective, dps_guidance, guided_sample, held_cells, prepare,
                                range_penalty, render_box_fixed_resolution, strength)
from infd_core import conditions, wording
from infd_core.conditions import PREPARE, box_cells, cutouts, judge_views, region_mask
from infd_core.regions import KINDS, MAX_REGIONS, Layout, Region, check_depth
from infd_core.scorers import load_scorer

STEPS = 4


@pytest.fixture(scope="module")
def init(tiny_pipe) -> torch.Tensor:
    return tiny_pipe.sample(0, steps=STEPS)


def test_region_mask_rows_are_y_and_it_fades_over_the_margin() -> None:
    m = region_mask([Box(0.0, 0.0, 0.25, 0.5)], 8, margin=0.25)  # x to 0.25 (2 columns), y to 0.5 (4 rows)
    assert m.shape == (8, 8)
    assert (m[:4, :2] == 1).all() and m[:4, 2:].max() < 1  # inside: 1; right of it: fading
    assert m[0, 2] == pytest.approx(0.75) and m[0, 3] == pytest.approx(0.25) and (m[:, 4:] == 0).all()
    assert m[4, 0] == pytest.approx(0.75) and (m[6:, :] == 0).all()  # below it, by rows
    both = region_mask([Box(0.0, 0.0, 0.25, 0.5), Box(0.75, 0.75, 1.0, 1.0)], 8, margin=0.25)
    assert (both[6:, 6:] == 1).all() and torch.equal(both[:4, :2], m[:4, :2])
    assert torch.equal(box_cells([Box(0, 0, 0.5, 0.5)], 8, feather=1.0), region_mask([Box(0, 0, 0.5, 0.5)], 8, 1 / 8))


def test_dps_acts_only_near_its_box(tiny_pipe, offline) -> None:
    """One hook call on a top-left text box: the correction vanishes beyond the margin and has RMS
    ``scale`` over the guided cells; with ``margin=None`` it is plain DPS (RMS ``scale`` overall)."""
    conds = prepare(tiny_pipe, Layout((Region(Box(0.0, 0.0, 0.25, 0.25), "text", "classes: tabby"),)),
                    scorer=offline)
    obj = Objective(tiny_pipe, conds)
    x_t = torch.randn(1, *tiny_pipe.latent_shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    local = dps_guidance(tiny_pipe, obj, scale=0.3, margin=0.125)(x_t, x_t * 0.5, 0, 10)  # x0: any function of x_t
    assert local[..., 24:, :].abs().max() == 0 and local[..., :, 24:].abs().max() == 0  # 0.25 + 0.125 = 24/64
    mask = region_mask([Box(0.0, 0.0, 0.25, 0.25)], 64, 0.125)
    assert float((local.pow(2).mean() / mask.mean()).sqrt()) == pytest.approx(0.3, rel=1e-4)
    spread = dps_guidance(tiny_pipe, obj, scale=0.3, margin=None)(x_t, x_t * 0.5, 0, 10)
    assert float(spread.pow(2).mean().sqrt()) == pytest.approx(0.3, rel=1e-4)


def test_losses_see_displayed_colours_and_pay_for_leaving_the_range(tiny_pipe, offline) -> None:
    """Kinds' losses see the box as displayed (clamped to [-1, 1]); a render beyond ±RANGE_LIMIT
    adds a penalty that pushes it back (DPS from scratch blew pictures out without it)."""
    seen: list[Tensor] = []
    cond = prepare(tiny_pipe, Layout((Region(Box(0, 0, 1, 1), "text", "classes: tabby"),)), scorer=offline)[0]
    kind_loss = cond.loss
    cond.loss = lambda crop: seen.append(crop) or kind_loss(crop)
    obj = Objective(tiny_pipe, [cond])
    fld = tiny_pipe.field(torch.zeros(1, *tiny_pipe.latent_shape))
    fld.phi.data.mul_(50)  # a field whose render overshoots far beyond the displayable range
    crop = obj.crops(fld)[0]
    assert crop.abs().max() > 1 and range_penalty(crop) > 0
    assert float(obj.losses(fld)[0]) == pytest.approx(float(kind_loss(crop.clamp(-1, 1)) + range_penalty(crop)))
    assert seen[0].min() >= -1 and seen[0].max() <= 1
    assert float(range_penalty(torch.full((1, 3, 8, 8), RANGE_LIMIT))) == 0
    inside = torch.full((1, 3, 8, 8), 0.9, requires_grad=True)
    range_penalty(inside).backward()
    assert (inside.grad > 0).all()  # descending it lowers the overshoot


def test_keep_and_locality_hold_latent_cells_exactly(tiny_pipe, init) -> None:
    """Keep boxes hold the current picture's cells; with a margin, so is everything beyond the
    steered boxes' margins; the rest is generated."""
    keep = Region(Box(0.0, 0.0, 0.5, 1.0), "keep")
    red = Region(Box(0.75, 0.0, 1.0, 0.25), "color", color=(1.0, 0.0, 0.0))
    z, report = guided_sample(tiny_pipe, Layout((keep, red)), seed=3, steps=STEPS, scale=0.5, init_latent=init)
    held = 1 - region_mask([red.box], 64, MARGIN)
    held[:, :32] = 1
    assert torch.equal(z[..., held == 1], init[..., held == 1])
    assert not torch.allclose(z[..., :16, 48:], init[..., :16, 48:])  # the colour box changed
    assert report["held"] and [r["kind"] for r in report["regions"]] == ["keep", "color"]
    assert "changed" in report["regions"][0]  # pixels may still move: the decoder's GroupNorm sees the whole latent
    plain, _ = guided_sample(tiny_pipe, Layout((keep, red)), seed=3, steps=STEPS, scale=0.5, init_latent=init,
                             margin=None)  # plain DPS: only the keep box is held
    assert torch.equal(plain[..., :32], init[..., :32]) and not torch.allclose(plain[..., 40:, 40:], init[..., 40:, 40:])


def test_keep_alone_regenerates_the_rest(tiny_pipe, init) -> None:
    z, _ = guided_sample(tiny_pipe, Layout((Region(Box(0, 0, 0.5, 0.5), "keep"),)), seed=4, steps=STEPS,
                         init_latent=init)
    assert torch.equal(z[..., :32, :32], init[..., :32, :32]) and not torch.allclose(z[..., 40:, 40:], init[..., 40:, 40:])


def test_placed_image_is_held_and_soft_placement_is_released(tiny_pipe, init, monkeypatch) -> None:
    monkeypatch.setattr(conditions, "PLACE_REFINE", 0)  # the holding, not the fit (test_shipped_model.py)
    ref = np.random.default_rng(0).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    box = Box(0.25, 0.25, 0.75, 0.75)
    hard = prepare(tiny_pipe, Layout((Region(box, "image", image=ref),)), init_latent=init)[0]
    assert hard.loss is None and hard.hold.until == 1 and float(hard.hold.mask[32, 32]) == 1
    z, report = guided_sample(tiny_pipe, Layout((Region(box, "image", image=ref),)), seed=1, steps=STEPS,
                              init_latent=init)
    inner = hard.hold.mask == 1
    assert torch.equal(z[..., inner], hard.hold.x0[..., inner]) and report["regions"][0]["placed"] == "hard"
    assert torch.equal(z[..., 0, 0], init[..., 0, 0])  # beyond the margin: the current picture
    soft, _ = guided_sample(tiny_pipe, Layout((Region(box, "image", image=ref, placement="soft"),)), seed=1,
                            steps=STEPS, init_latent=init)
    assert not torch.equal(soft[..., inner], hard.hold.x0[..., inner])
    tiny = prepare(tiny_pipe, Layout((Region(Box(0, 0, 0.03, 0.03), "image", image=ref),)), init_latent=init)[0]
    assert tiny.hold is None and tiny.loss is not None  # too small to place: steered by DPS
    assert "steered by DPS" in tiny.describe(torch.zeros(1, 3, 224, 224))["note"]


def test_known_cells_and_until(tiny_pipe) -> None:
    x0 = torch.full((1, *tiny_pipe.latent_shape), 0.3)
    mask = torch.zeros(64, 64)
    mask[:8] = 1
    z = tiny_pipe.sample(2, steps=STEPS, known=[Known(x0, mask)], resample=1)
    assert torch.allclose(z[..., :8, :], x0[..., :8, :]) and not torch.allclose(z[..., 16:, :], x0[..., 16:, :])
    released = tiny_pipe.sample(2, steps=STEPS, known=[Known(x0, mask, until=0.5)])
    assert not torch.allclose(released[..., :8, :], x0[..., :8, :])
    with pytest.raises(ValueError, match="resample"):
        tiny_pipe.sample(2, steps=STEPS, known=[Known(x0, mask)], resample=-1)
    with pytest.raises(ValueError, match="mask"):
        Known(x0, mask * 2)


def test_held_cells_without_a_picture_or_margin(tiny_pipe, init) -> None:
    conds = prepare(tiny_pipe, Layout((Region(Box(0, 0, 0.5, 0.5), "color", color=(0, 0, 1)),)))
    assert conds[0].loss is None and conds[0].low is not None  # a colour is held, not steered
    assert held_cells(tiny_pipe, conds, None, MARGIN) == [] and held_cells(tiny_pipe, conds, init, None) == []
    (k,) = held_cells(tiny_pipe, conds, init, MARGIN)
    assert float(k.mask[0, 0]) == 0 and float(k.mask[-1, -1]) == 1


def test_scale_zero_without_a_picture_is_unguided(tiny_pipe, offline) -> None:
    z, _ = guided_sample(tiny_pipe, Layout((Region(Box(0, 0, 1, 1), "text", "classes: tabby"),)), seed=0,
                         steps=STEPS, scale=0.0, scorer=offline)
    assert torch.equal(z, tiny_pipe.sample(0, steps=STEPS))


def test_text_boxes_are_scored_on_augmented_views_and_judged_on_others(tiny_pipe, offline, init) -> None:
    crop = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    views = cutouts(crop.requires_grad_(), 4, torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, 224, 224) and not torch.equal(views[0], views[1])
    views.sum().backward()
    assert crop.grad.abs().sum() > 0  # differentiable
    judged = judge_views(crop.detach(), 8, torch.Generator().manual_seed(1))
    assert judged.shape == (8, 3, 224, 224) and judged.min() >= -1 and judged.max() <= 1
    _, report = guided_sample(tiny_pipe, Layout((Region(Box(0, 0, 0.5, 0.5), "text", "classes: tabby"),)), seed=0,
                              steps=2, scale=0.2, scorer=offline, init_latent=init)
    r = report["regions"][0]
    assert {"score", "judge", "before", "understood_as"} <= set(r) and {"score", "judge"} <= set(r["before"])


def test_box_cost_does_not_depend_on_canvas(tiny_pipe) -> None:
    """Our box render queries (224 + halo)^2 pixels whatever the canvas; the baseline grows with it."""
    seen: list[int] = []
    hook = tiny_pipe.autoencoder.renderer.register_forward_pre_hook(lambda m, a: seen.append(a[1][0, ..., 0].numel()))
    fld = tiny_pipe.field(torch.zeros(1, *tiny_pipe.latent_shape))
    box = Box(0.25, 0.25, 0.5, 0.5)
    try:
        for canvas in (2048, 8192):
            seen.clear()
            ours = tiny_pipe.render_box(fld, box)
            ours_px = sum(seen)
            seen.clear()
            base = render_box_fixed_resolution(tiny_pipe, fld, box, canvas)
            base_px = sum(seen)
            assert ours.shape == base.shape == (1, 3, 224, 224)
            assert ours_px < 240 ** 2 and base_px >= (canvas // 4) ** 2
            assert (ours - base).abs().mean() < 0.1  # the same content, far cheaper
    finally:
        hook.remove()


def test_clip_path_end_to_end(tiny_pipe, tiny_clip_file) -> None:
    from .conftest import TINY_ARCH

    scorer = load_scorer(f"clip:{TINY_ARCH}:{tiny_clip_file}")
    z, report = guided_sample(tiny_pipe, Layout((Region(Box(0.1, 0.1, 0.6, 0.6), "text", "a red flower"),),
                                                global_prompt="a meadow"),
                              seed=0, steps=3, scale=1.0, scorer=scorer)
    assert z.shape == (1, *tiny_pipe.latent_shape) and torch.isfinite(z).all()
    assert report["scorer"].startswith("clip:") and len(report["regions"]) == 2


@pytest.mark.parametrize("region, match", [
    (dict(box=[0.5, 0.1, 0.5, 0.6], prompt="a"), "positive area"),
    (dict(box=[0.6, 0.1, 0.2, 0.6], prompt="a"), "positive area"),
    (dict(box=[0.5, 0.5, 1.5, 0.9], prompt="a"), "outside the image"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], prompt="a", weight=float("nan")), "weight"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], prompt="a", weight=-1), "weight"),
    (dict(box=[0.1, 0.1, 0.5], prompt="a"), r"\[x0, y0, x1, y1\]"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="paint"), "kind"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="color", color=[2, 0, 0]), "color"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], prompt="x" * 501), "at most 500"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="image", placement="glued"), "placement"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="sketch", coarseness=0), "coarseness"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="sketch", coarseness=2.5), "coarseness"),
    (dict(box=[0.1, 0.1, 0.5, 0.5], kind="sketch", image="sketch.png"), "relative to the layout file"),
])
def test_bad_regions(region: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Layout.from_json([region])


def test_regions_are_checked_ready_before_guiding() -> None:
    for region, match in ((Region(Box(0, 0, 1, 1), "text", "  "), "needs a prompt"),
                          (Region(Box(0, 0, 1, 1), "color"), "needs a colour"),
                          (Region(Box(0, 0, 1, 1), "image"), "needs a reference"),
                          (Region(Box(0, 0, 1, 1), "sketch"), "needs a picture")):
        with pytest.raises(ValueError, match=f"box 1: .*{match}"):
            Layout((region,)).conditions()
    assert Layout((Region(Box(0, 0, 1, 1), "keep"),)).conditions()  # keep needs nothing more
    assert set(KINDS) == {"text", "image", "sketch", "color", "keep"}
    # adding a kind touches the schema, its mechanics and its wording: each covers every kind
    assert set(PREPARE) == set(wording.LABELS) == set(wording.SUMMARIES) == set(KINDS)


def test_the_region_schema_is_on_the_ground_floor() -> None:
    """The schema (regions, their JSON and limits) and the wording load without torch or the model
    code, so the app's data files and a layout editor stay light."""
    probe = ("import sys, infd_core.regions, infd_core.wording; "
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('infd_core.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["infd_core.geometry", "infd_core.images", "infd_core.regions", "infd_core.wording"])


def test_bad_reference_patches_and_layouts() -> None:
    box = Box(0, 0, 0.5, 0.5)
    with pytest.raises(ValueError, match="uint8"):
        Region(box, "image", image=np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        Region(box, "image", image=np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="8..4096"):
        Region(box, "image", image=np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="at most"):
        Layout((Region(box, "text", "a"),) * (MAX_REGIONS + 1))
    with pytest.raises(ValueError, match="unknown keys"):
        Layout.from_json([{"box": [0, 0, 1, 1], "prompt": "a", "exec": "rm -rf /"}])
    with pytest.raises(ValueError, match="layout must be"):
        Layout.from_json("boxes")
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(ValueError, match="nested deeper"):
        Layout.from_json({"regions": nested})
    check_depth({"regions": [{"box": [0, 0, 1, 1]}]})


def test_bad_calls(tiny_pipe, offline) -> None:
    layout = Layout((Region(Box(0, 0, 1, 1), "text", "a cat"),))
    with pytest.raises(ValueError, match="scale"):
        guided_sample(tiny_pipe, layout, scale=math.inf, scorer=offline)
    with pytest.raises(ValueError, match="margin"):
        guided_sample(tiny_pipe, layout, margin=-0.1, scorer=offline)
    with pytest.raises(ValueError, match="need a scorer"):
        guided_sample(tiny_pipe, layout, scorer=None)
    with pytest.raises(ValueError, match="keep region needs"):
        guided_sample(tiny_pipe, Layout((Region(Box(0, 0, 1, 1), "keep"),)))
    with pytest.raises(ValueError, match="no regions"):
        guided_sample(tiny_pipe, Layout(()), scorer=offline)
    with pytest.raises(ValueError, match="latent must have shape"):
        guided_sample(tiny_pipe, layout, scorer=offline, init_latent=torch.zeros(1, 3, 8, 8))


def test_layout_json_round_trip_and_old_box_keys() -> None:
    layout = Layout((Region(Box(0.1, 0.2, 0.3, 0.4), "text", "a cat", 2.0, id="b1"),
                     Region(Box(0, 0, 1, 1), "color", color=(0.1, 0.2, 0.3)),
                     Region(Box(0, 0, 0.5, 0.5), "image", placement="soft"),
                     Region(Box(0.5, 0.5, 1, 1), "sketch", coarseness=8)), global_prompt="a meadow")
    again = Layout.from_json(layout.to_json())
    assert again.to_json() == layout.to_json()
    old = Region.from_json({"id": "a", "x0": 0.1, "y0": 0.2, "x1": 0.3, "y1": 0.4, "kind": "text", "prompt": "p",
                            "weight": 1.0, "color": None, "has_image": False})
    assert old.box == Box(0.1, 0.2, 0.3, 0.4) and old.id == "a"


def test_cli_layout_edits_a_latent_file(tmp_path, capsys) -> None:
    """``sample`` then ``layout --init``: a colour box and a keep box edit the sampled picture."""
    from infd_core.__main__ import main
    from infd_core.checkpoint import load_latent

    first = tmp_path / "s.png"
    assert main(["sample", "--preset", "cpu", "--steps", "2", "--size", "64", "--out", str(first), "--quiet"]) == 0
    boxes = tmp_path / "boxes.json"
    boxes.write_text('[{"box": [0, 0, 0.5, 0.5], "kind": "color", "color": [1, 0, 0]}, '
                     '{"box": [0.5, 0.5, 1, 1], "kind": "keep"}]')
    out = tmp_path / "l.png"
    assert main(["layout", "--preset", "cpu", "--layout", str(boxes), "--init", str(tmp_path / "s.latent.safetensors"),
                 "--steps", "2", "--size", "64", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "color" in printed and "keep" in printed and "held" in printed
    before, after = load_latent(tmp_path / "s.latent.safetensors"), load_latent(tmp_path / "l.latent.safetensors")
    assert torch.equal(after[..., 32:, 32:], before[..., 32:, 32:])  # the keep box's cells


# --- compositions: held block means -----------------------------------------------------------

def test_hold_low_sets_block_means_and_keeps_the_rest() -> None:
    """hold_low replaces k-cell block means (exactly, on fully masked blocks and on short last
    blocks) and leaves each block's detail (x minus its block mean) as it was."""
    gen = torch.Generator().manual_seed(0)
    x, ref = torch.randn(1, 3, 18, 20, generator=gen), torch.randn(1, 3, 18, 20, generator=gen)
    out = hold_low(x, LowFreq(ref, 4))
    assert block_means(out, 4).shape == (1, 3, 5, 5)  # 18 x 20 cells: the last row of blocks is 2 cells tall
    assert torch.allclose(block_means(out, 4), block_means(ref, 4), atol=1e-6)
    detail = lambda v: v - block_spread(block_means(v, 4), 4, (18, 20))  # noqa: E731
    assert torch.allclose(detail(out), detail(x), atol=1e-6)
    mask = torch.zeros(18, 20)
    mask[:, :10] = 1  # blocks of columns 8-11 are cut by the mask's edge
    half = hold_low(x, LowFreq(ref, 4, mask))
    assert torch.equal(half[..., 10:], x[..., 10:])  # nothing moves outside the mask
    masked_mean = lambda v: v[..., 8:10].mean(dim=(-2, -1))  # noqa: E731  (the cut block's masked cells, rows 0-17)
    assert torch.allclose(block_means(half[..., :8], 4), block_means(ref[..., :8], 4), atol=1e-6)
    assert torch.allclose(masked_mean(half[..., :4, :]), masked_mean(ref[..., :4, :]), atol=1e-6)
    with pytest.raises(ValueError, match="block size"):
        LowFreq(ref, 0)
    with pytest.raises(ValueError, match="mask"):
        LowFreq(ref, 4, mask * 2)


def test_held_low_frequencies_are_exact_at_the_last_step(tiny_pipe) -> None:
    """A sample with a reference's 4-cell block means held ends with exactly those means (to float
    precision); its finer detail is the sampler's own, and until < 1 lets the sampler drift."""
    ref = tiny_pipe.sample(7, steps=STEPS)
    z = tiny_pipe.sample(0, steps=STEPS, low=[LowFreq(ref, 4)])
    assert torch.allclose(block_means(z, 4), block_means(ref, 4), atol=1e-5)
    assert not torch.allclose(z, ref, atol=1e-2)
    free = tiny_pipe.sample(0, steps=STEPS, low=[LowFreq(ref, 4, until=0.5)])
    assert not torch.allclose(block_means(free, 4), block_means(ref, 4), atol=1e-3)
    with pytest.raises(ValueError, match="held low frequencies"):
        tiny_pipe.sample(0, steps=STEPS, cells=(64, 128), low=[LowFreq(ref, 4)])


def _flat(rgb: tuple[int, int, int], h: int = 16, w: int = 16) -> np.ndarray:
    return np.full((h, w, 3), rgb, np.uint8)


def test_sketch_regions_hold_their_picture_in_their_box_at_any_extent(tiny_pipe) -> None:
    """A whole-canvas sketch holds the picture's latent block means everywhere, on a square and on a
    3:1 panorama; a sketch in a quarter box holds only the blocks inside it, at its own scale, and a
    later region wins where they overlap."""
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:32] = (90, 140, 210)
    picture[32:] = (70, 130, 50)
    for cells in ((64, 64), (64, 192)):
        layout = Layout((Region(Box(0, 0, 1, 1), "sketch", image=picture),))
        (cond,) = prepare(tiny_pipe, layout, cells=cells)
        assert cond.loss is None and cond.low.k == 4 and tuple(cond.low.x0.shape[-2:]) == cells
        z, report = guided_sample(tiny_pipe, layout, seed=0, steps=STEPS, cells=cells)
        assert tuple(z.shape[-2:]) == cells and report["held"]
        assert torch.allclose(block_means(z, 4), block_means(cond.low.x0, 4), atol=1e-5)
    quarter = Region(Box(0.5, 0.5, 1, 1), "sketch", image=_flat((200, 60, 50)), coarseness=2)
    layout = Layout((Region(Box(0, 0, 1, 1), "sketch", image=picture), quarter))
    whole, part = prepare(tiny_pipe, layout)
    z, _ = guided_sample(tiny_pipe, layout, seed=1, steps=STEPS)
    assert torch.allclose(block_means(z[..., 32:, 32:], 2), block_means(part.low.x0[..., 32:, 32:], 2), atol=1e-5)
    # away from the quarter's edge (its mask fades over one cell beyond the box), the whole sketch's blocks
    assert torch.allclose(block_means(z[..., :28, :], 4), block_means(whole.low.x0[..., :28, :], 4), atol=1e-5)
    alone, _ = guided_sample(tiny_pipe, Layout((quarter,)), seed=1, steps=STEPS)
    free = tiny_pipe.sample(1, steps=STEPS)
    assert torch.allclose(block_means(alone[..., 32:, 32:], 2), block_means(part.low.x0[..., 32:, 32:], 2), atol=1e-5)
    assert not torch.allclose(alone[..., :24, :24], free[..., :24, :24])  # the rest is sampled freely, not held
    assert float(part.low.x0[..., 32:, 32:].std(dim=(-2, -1)).max()) < 1e-3  # a flat picture: a flat reference


def test_colour_regions_hold_a_flat_colour_and_report_their_mean(tiny_pipe) -> None:
    red = Region(Box(0, 0, 0.5, 1), "color", color=(0.8, 0.2, 0.2))
    (cond,) = prepare(tiny_pipe, Layout((red,)))
    assert cond.low.k == 2 and float(cond.low.mask[:, 40:].max()) == 0
    flat = tiny_pipe.encode(_flat((204, 51, 51), 256, 256))
    assert torch.allclose(cond.low.x0[..., :, :31].mean(dim=(-2, -1)), flat.mean(dim=(-2, -1)), atol=1e-3)
    z, report = guided_sample(tiny_pipe, Layout((red,)), seed=0, steps=STEPS)
    assert torch.allclose(block_means(z[..., :, :32], 2), block_means(cond.low.x0[..., :, :32], 2), atol=1e-5)
    assert len(report["regions"][0]["mean_color"]) == 3
    weak = prepare(tiny_pipe, Layout((replace(red, weight=0.5),)))[0]
    assert float(weak.low.mask.max()) == 0.5  # a weight below 1 blends


def test_layout_files_name_pictures_relative_to_themselves(tmp_path, monkeypatch) -> None:
    """``"image": "path"`` in a layout file is read relative to the file (the CLI passes its folder),
    whatever the working directory; a missing or broken file is a clear error."""
    from infd_core.__main__ import main
    from infd_core.checkpoint import load_latent

    folder = tmp_path / "work"
    folder.mkdir()
    Image.fromarray(_flat((90, 140, 210), 32, 48)).save(folder / "sketch.png")
    (folder / "sketch.json").write_text('[{"box": [0, 0, 1, 1], "kind": "sketch", "image": "sketch.png"}]')
    layout = Layout.from_json([{"box": [0, 0, 1, 1], "kind": "sketch", "image": "sketch.png"}], folder=folder)
    assert layout.regions[0].image.shape == (32, 48, 3)
    monkeypatch.chdir(tmp_path)  # not the layout's folder
    out = tmp_path / "out" / "sketched.png"
    out.parent.mkdir()
    assert main(["layout", "--preset", "cpu", "--layout", "work/sketch.json", "--steps", "2", "--size", "64",
                 "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and load_latent(out.with_suffix(".latent.safetensors")).shape == (1, 3, 64, 64)
    (folder / "broken.png").write_bytes(b"not a png")
    for name, match in (("missing.png", "not a readable image"), ("broken.png", "not a readable image")):
        with pytest.raises(ValueError, match=match):
            Layout.from_json([{"box": [0, 0, 1, 1], "kind": "sketch", "image": name}], folder=folder)


def test_cli_samples_a_composition(tmp_path, capsys) -> None:
    from infd_core import compositions
    from infd_core.__main__ import main
    from infd_core.checkpoint import read_latent

    assert set(compositions.names()) >= {"horizon", "hills", "lake", "coast", "forest-edge"}
    out = tmp_path / "lake.png"
    assert main(["sample", "--preset", "cpu", "--composition", "lake", "--steps", "2", "--size", "64",
                 "--out", str(out), "--quiet"]) == 0
    _, meta = read_latent(out.with_suffix(".latent.safetensors"))
    assert meta["composition"] == "lake"
    assert main(["sample", "--preset", "cpu", "--composition", "nowhere", "--steps", "2", "--size", "64",
                 "--out", str(out), "--quiet"]) == 2
    assert "neither an example" in capsys.readouterr().err


# --- guided edits in seconds: SDEdit starts, DPS on some steps --------------------------------------

def test_an_edit_runs_the_last_steps_from_the_current_picture(tiny_pipe, init) -> None:
    """``strength`` < 1: the sampler starts from the picture noised to the level of its last steps and
    runs only those (the callback counts them); strength 1 is the plain sampler; held cells hold."""
    seen: list[tuple[int, int]] = []
    z = tiny_pipe.sample(3, steps=10, init=init, strength=0.4, callback=lambda st: seen.append((st.index, st.total)))
    assert seen == [(i, 4) for i in range(4)] and not torch.equal(z, init)
    plain = tiny_pipe.sample(3, steps=10)
    assert not torch.allclose(tiny_pipe.sample(3, steps=10, init=init, strength=1.0), plain)  # from init, fully noised
    near = tiny_pipe.sample(3, steps=10, init=init, strength=0.1)  # one step from barely noised: close to the picture
    assert (near - init).abs().mean() < (plain - init).abs().mean()
    keep = Region(Box(0, 0, 0.5, 1), "keep")
    edited, report = guided_sample(tiny_pipe, Layout((keep,)), seed=3, steps=10, init_latent=init, edit=0.4)
    assert torch.equal(edited[..., :32], init[..., :32]) and report["edit"] == 0.4
    with pytest.raises(ValueError, match="strength"):
        tiny_pipe.sample(3, steps=10, init=init, strength=0.0)
    with pytest.raises(ValueError, match="cells"):
        tiny_pipe.sample(3, steps=10, init=init, strength=0.5, cells=(64, 128))


def test_dps_on_one_step_in_every(tiny_pipe, offline) -> None:
    """``every`` = 3: the hook decodes and scores on steps 0, 3, 6 only, each with 3 times the push."""
    conds = prepare(tiny_pipe, Layout((Region(Box(0, 0, 0.5, 0.5), "text", "classes: tabby"),)), scorer=offline)
    calls: list[int] = []
    hook = dps_guidance(tiny_pipe, Objective(tiny_pipe, conds), scale=0.3, every=3, on_loss=lambda i, l: calls.append(i))
    x_t = torch.randn(1, *tiny_pipe.latent_shape, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = [hook(x_t, x_t * 0.5, i, 9) for i in range(9)]
    assert calls == [0, 3, 6] and [o is None for o in out] == [i % 3 != 0 for i in range(9)]
    mask = region_mask([Box(0, 0, 0.5, 0.5)], 64, MARGIN)
    rms = float((out[3].pow(2).mean() / mask.mean()).sqrt())  # over the guided cells
    assert rms == pytest.approx(3 * 0.3 * strength(3, 9), rel=1e-4)
    with pytest.raises(ValueError, match="every"):
        guided_sample(tiny_pipe, Layout((conds[0].region,)), scorer=offline, steps=2, every=0)
