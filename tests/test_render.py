"""Renderer inputs (worked values from the authors' code) and seamless patchwise rendering."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infd_core import configs
from infd_core.geometry import Box, PixelRange, level_grid
from infd_core.pipeline import Pipeline
from infd_core.renderers import (RendererConfig, build_renderer, fixed_norm_statistics, interpolated_inputs, norm_statistics,
                                 renderer_inputs)
from infd_core.tiling import render_pixels, tile_ranges

PHI_CHANNELS = 32


def make_phi(seed: int = 0, batch: int = 1, size: int = 256) -> Tensor:
    """Random phi with spatially varying scale, so per-tile statistics really differ between tiles."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.2, 3.0, size)
    return torch.randn(batch, PHI_CHANNELS, size, size, generator=g) * ramp[None, None, :, None] + ramp[None, None, None, :]


def make_renderer(kind: str = "clif", norm: str = "none", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    renderer = build_renderer(RendererConfig(kind, width=32, blocks=2, norm=norm), PHI_CHANNELS).eval()
    for m in renderer.modules():  # non-trivial affine norm parameters
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return renderer


@torch.no_grad()
def whole(renderer: nn.Module, phi: Tensor, height: int, width: int) -> Tensor:
    coord, cell = level_grid(height, width)
    return renderer(phi, coord[None], cell[None])


@torch.no_grad()
def tiled(renderer: nn.Module, phi: Tensor, height: int, width: int, tile: int, **kw) -> Tensor:
    out = torch.empty(phi.shape[0], 3, height, width)
    for rng in tile_ranges(PixelRange(0, height, 0, width), tile):
        out[..., rng.r0:rng.r1, rng.c0:rng.c1] = render_pixels(renderer, phi, height, width, rng, **kw)
    return out


def max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


# --- renderer inputs -----------------------------------------------------------------------------

def index_phi(size: int = 256) -> Tensor:
    """phi whose channel 0 is the row index and channel 1 the column index of each cell."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols]).float()[None]


def inputs(phi: Tensor, height: int, width: int) -> Tensor:
    coord, cell = level_grid(height, width)
    return renderer_inputs(phi, coord[None], cell[None])[0]  # [C + 4, H, W]


def test_worked_values_1024_query_on_256_phi():
    x = inputs(index_phi(), 1024, 1024)
    rel_coord, rel_cell = x[2:4], x[4:6]
    for axis in range(2):
        values = sorted({round(v, 4) for v in rel_coord[axis].unique().tolist()})
        assert values == [-0.75, -0.25, 0.25, 0.75]
    assert torch.allclose(rel_cell, torch.full_like(rel_cell, 0.5))
    # the fetched feature is the phi cell containing the query centre: 4 query pixels per phi cell
    assert torch.equal(x[0], (torch.arange(1024) // 4).float()[:, None].expand(1024, 1024))
    assert torch.equal(x[1], (torch.arange(1024) // 4).float()[None, :].expand(1024, 1024))


def test_worked_values_256_query_on_256_phi():
    x = inputs(index_phi(), 256, 256)
    assert x[2:4].abs().max().item() < 1e-5
    assert torch.equal(x[4:6], torch.full_like(x[4:6], 2.0))
    assert torch.equal(x[0], index_phi()[0, 0]) and torch.equal(x[1], index_phi()[0, 1])


@pytest.mark.parametrize("height,width", [(256, 256), (1024, 1024), (512, 2048)])
def test_fetched_feature_matches_the_authors_grid_sample(height, width):
    phi = torch.randn(1, 5, 256, 256)
    coord, cell = level_grid(height, width)
    ours = renderer_inputs(phi, coord[None], cell[None])[:, :5]
    theirs = F.grid_sample(phi, coord[None].flip(-1), mode="nearest", align_corners=False)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("height,width", [(700, 300), (97, 1000), (100, 100)])
def test_fetched_feature_is_a_nearest_phi_cell_at_any_size(height, width):
    """At odd sizes a query centre can sit exactly between two phi cells; either is then nearest."""
    x = inputs(index_phi(), height, width)
    coord, _ = level_grid(height, width)
    for axis in range(2):
        centre = (x[axis] + 0.5) / 256 * 2 - 1  # centre of the fetched cell, field frame
        distance = (coord[..., axis] - centre).abs() * 128  # in phi cells
        assert distance.max().item() <= 0.5 + 1e-4
        assert torch.allclose(x[2 + axis], (coord[..., axis] - centre) * 256, atol=1e-4)


def test_renderer_inputs_reject_bad_shapes():
    phi = torch.randn(1, 4, 16, 16)
    coord, cell = level_grid(8, 8)
    with pytest.raises(ValueError, match="coord/cell"):
        renderer_inputs(phi, coord, cell)  # no batch axis
    with pytest.raises(ValueError, match="coord/cell"):
        renderer_inputs(phi, coord[None], cell[None, :4])


# --- tiles == whole ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phi() -> Tensor:
    return make_phi()


@pytest.mark.parametrize("height,width,tile", [(300, 300, 128), (257, 190, 64), (130, 515, 100), (384, 320, 256),
                                               (64, 48, 256)])
def test_default_clif_tiles_equal_the_whole_render(phi, height, width, tile):
    renderer = make_renderer()
    assert max_diff(tiled(renderer, phi, height, width, tile), whole(renderer, phi, height, width)) <= 1e-5


def test_the_cpu_preset_renderer_is_tile_exact():
    cfg = configs.cpu().autoencoder.renderer
    assert cfg.norm == "none" and cfg.base == "bilinear"
    torch.manual_seed(0)
    renderer = build_renderer(cfg, PHI_CHANNELS).eval()
    nn.init.normal_(renderer.net.conv_out.weight, 0.0, 0.1)  # zero at init: make the net part count too
    phi = make_phi(1)
    assert max_diff(tiled(renderer, phi, 333, 333, 128), whole(renderer, phi, 333, 333)) <= 1e-5


def test_the_cpu2_preset_renderer_is_tile_exact():
    cfg = configs.cpu2().autoencoder.renderer
    assert cfg.features == "bilinear"
    torch.manual_seed(0)
    renderer = build_renderer(cfg, PHI_CHANNELS).eval()
    nn.init.normal_(renderer.net.conv_out.weight, 0.0, 0.1)
    phi = make_phi(1)
    for height, width, tile in [(333, 333, 128), (2048, 96, 256), (130, 515, 100)]:
        assert max_diff(tiled(renderer, phi, height, width, tile), whole(renderer, phi, height, width)) <= 1e-5


def test_interpolated_inputs_are_phi_at_its_own_level_and_continuous_between_cells():
    """At phi's own size every query sits on a cell centre: the features are phi itself. Zoomed in
    8x, the features change by at most one cell-to-cell difference over 8 pixels, with no jump at
    the cell edges (the nearest-feature input jumps there by the whole difference)."""
    phi = index_phi(32) * 1.0
    coord, cell = level_grid(32, 32)
    x = interpolated_inputs(phi, coord[None], cell[None])[0]
    assert x.shape == (4, 32, 32) and torch.equal(x[:2], phi[0]) and torch.allclose(x[2:], torch.full((2, 32, 32), 2.0))  # rel. cell: 2 at phi's level, as renderer_inputs
    coord, cell = level_grid(256, 256)
    cols = interpolated_inputs(phi, coord[None], cell[None])[0, 1, 100]  # the column index along a row
    steps = cols.diff()[8:-8]  # away from the border clamp
    assert torch.allclose(steps, torch.full_like(steps, 1 / 8), atol=1e-5)
    nearest = inputs(phi, 256, 256)[1, 100].diff()[8:-8]
    assert nearest.max() == 1 and (nearest == 0).float().mean() > 0.8


def test_renderer_features_are_validated():
    with pytest.raises(ValueError, match="renderer features must be one of"):
        RendererConfig(features="bicubic")
    assert RendererConfig().features == "nearest" and configs.cpu().autoencoder.renderer.features == "nearest"


@pytest.mark.parametrize("kind", ["clif", "liif"])
def test_a_renderer_with_bilinear_base_starts_as_bilinear_upsampling_of_phi(kind):
    """At init the residual net outputs zero: the render is phi[:3], bilinearly interpolated
    at the pixel centres (exactly phi[:3] at phi's own size, ``F.interpolate`` at any other)."""
    renderer = build_renderer(RendererConfig(kind, width=16, blocks=1, norm="none", base="bilinear"), PHI_CHANNELS)
    phi = make_phi(2)
    assert torch.equal(whole(renderer, phi, 256, 256), phi[:, :3])
    for height, width in [(1024, 1024), (300, 700), (97, 64)]:
        expected = F.interpolate(phi[:, :3], size=(height, width), mode="bilinear", align_corners=False)
        assert max_diff(whole(renderer, phi, height, width), expected) <= 1e-3  # phi spans ~[-8, 8]


def test_renderer_base_is_validated():
    with pytest.raises(ValueError, match="renderer base must be 'none' or 'bilinear'"):
        RendererConfig(base="bicubic")
    assert RendererConfig().base == "none" and configs.paper().autoencoder.renderer.base == "none"


@pytest.mark.parametrize("rng", [PixelRange(37, 201, 90, 311), PixelRange(350, 400, 500, 600), PixelRange(0, 1, 599, 600)])
def test_sub_region_equals_the_crop_of_the_whole_render(phi, rng):
    renderer = make_renderer()
    full = whole(renderer, phi, 400, 600)
    with torch.no_grad():
        part = render_pixels(renderer, phi, 400, 600, rng)
    assert part.shape == (1, 3, *rng.shape)
    assert max_diff(part, full[..., rng.r0:rng.r1, rng.c0:rng.c1]) <= 1e-5


def test_liif_tiles_equal_the_whole_render(phi):
    renderer = make_renderer("liif")
    assert renderer.receptive_radius == 0
    assert max_diff(tiled(renderer, phi, 300, 220, 64), whole(renderer, phi, 300, 220)) <= 1e-5


def test_group_norm_clif_has_seams_without_fixed_statistics(phi):
    renderer = make_renderer(norm="group")
    seam = max_diff(tiled(renderer, phi, 384, 384, 128), whole(renderer, phi, 384, 384))
    print(f"GroupNorm CLIF, per-tile statistics: max |tile - whole| = {seam:.4f}")
    assert seam > 1e-3


def test_group_norm_clif_with_fixed_statistics_is_tile_exact(phi):
    renderer = make_renderer(norm="group")
    stats = norm_statistics(renderer, phi)
    with fixed_norm_statistics(stats):
        reference = whole(renderer, phi, 384, 384)
    assert max_diff(tiled(renderer, phi, 384, 384, 128, norm_stats=stats), reference) <= 1e-5
    # the statistics are measured on a 256^2 render, which they therefore reproduce exactly
    with fixed_norm_statistics(stats):
        fixed_256 = whole(renderer, phi, 256, 256)
    assert max_diff(fixed_256, whole(renderer, phi, 256, 256)) <= 1e-5


def test_norm_statistics_of_a_panorama_are_those_of_its_render_at_its_aspect():
    torch.manual_seed(0)
    renderer, phi = make_renderer(norm="group"), torch.randn(1, PHI_CHANNELS, 32, 96)  # a 3:1 field
    stats = norm_statistics(renderer, phi, size=64)
    with fixed_norm_statistics(stats):
        fixed = whole(renderer, phi, 64, 192)
    assert max_diff(fixed, whole(renderer, phi, 64, 192)) <= 1e-5  # measured on this render, not a squashed one
    with fixed_norm_statistics(stats):
        squashed = whole(renderer, phi, 64, 64)
    assert max_diff(squashed, whole(renderer, phi, 64, 64)) > 1e-3


def test_norm_statistics_of_a_renderer_without_norm_are_empty(phi):
    assert norm_statistics(make_renderer(), phi) == []


# --- through the Pipeline ------------------------------------------------------------------------

def autoencoder_only(norm: str = "none") -> configs.ModelConfig:
    cfg = configs.cpu()
    cfg.diffusion = None
    cfg.autoencoder.renderer = dataclasses.replace(cfg.autoencoder.renderer, norm=norm)
    return cfg


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_config(autoencoder_only())


def test_pipeline_region_equals_crop_of_whole_image(pipe):
    field = pipe.field(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    full = pipe.render(field, 300, 200, tile=128)
    assert full.shape == (300, 200, 3) and full.dtype == np.uint8
    rng = PixelRange(100, 250, 30, 170)
    part = pipe.render(field, 300, 200, rng, tile=64)
    assert part.shape == (150, 140, 3)
    assert np.array_equal(part, full[100:250, 30:170])
    corner = PixelRange(256, 300, 128, 200)
    assert np.array_equal(pipe.render_piece(field, 300, 200, corner), full[256:, 128:])  # one pass, same pixels


def test_render_box_equals_the_same_pixels_of_a_level(pipe):
    field = pipe.field(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    box = pipe.render_box(field, Box(0.25, 0.5, 0.5, 0.75), size=64)
    level = pipe.render_tensor(field, 256, 256, PixelRange(128, 192, 64, 128))
    assert box.shape == (1, 3, 64, 64)
    assert max_diff(box, level) <= 1e-5


def test_bf16_group_norm_pipeline_renders_close_to_fp32():
    cfg = autoencoder_only(norm="group")
    z = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = Pipeline.from_config(cfg, precision="fp32")
    fast = Pipeline.from_config(cfg, precision="bf16")
    rng = PixelRange(0, 160, 0, 160)
    a = exact.render_tensor(exact.field(z), 320, 320, rng)
    b = fast.render_tensor(fast.field(z), 320, 320, rng)
    rel = ((a - b).norm() / a.norm()).item()
    print(f"bf16 vs fp32 relative error (random cpu model, GroupNorm renderer): {rel:.4f}")
    assert torch.isfinite(b).all() and rel < 0.1


def test_a_batch_of_two_renders_image_zero_with_its_own_statistics():
    pipe = Pipeline.from_config(autoencoder_only(norm="group"))
    z = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    both = pipe.field(z)
    first = pipe.field(z[:1])
    a = pipe.render(both, 160, 160, tile=128).astype(int)
    b = pipe.render(first, 160, 160, tile=128).astype(int)
    assert np.abs(a - b).max() <= 1  # batched and single decoding differ by float rounding only
    assert pipe.render_tensor(both, 160, 160, PixelRange(0, 10, 0, 10)).shape == (2, 3, 10, 10)


def test_channels_last_phi_gives_identical_inputs():
    """The bf16 path keeps phi channels_last; the renderer input must not depend on the layout."""
    phi = make_phi(4, batch=2)
    coord, cell = level_grid(300, 170)
    coord, cell = coord[None].expand(2, -1, -1, -1), cell[None].expand(2, -1, -1, -1)
    dense = renderer_inputs(phi, coord, cell)
    cl = renderer_inputs(phi.contiguous(memory_format=torch.channels_last), coord, cell)
    assert torch.equal(dense, cl)
    assert torch.equal(renderer_inputs(phi.bfloat16().contiguous(memory_format=torch.channels_last), coord, cell),
                       renderer_inputs(phi.bfloat16(), coord, cell))


def test_fixed_statistics_work_on_channels_last_activations():
    """The bf16 pipeline runs the renderer channels_last; with several channels per group too."""
    torch.manual_seed(0)
    renderer = build_renderer(RendererConfig("clif", width=64, blocks=1, norm="group"), PHI_CHANNELS).eval()
    renderer = renderer.to(memory_format=torch.channels_last)
    phi = make_phi(5, size=64).contiguous(memory_format=torch.channels_last)
    stats = norm_statistics(renderer, phi, size=96)
    with fixed_norm_statistics(stats):
        fixed = whole(renderer, phi, 96, 96)
    assert max_diff(fixed, whole(renderer, phi, 96, 96)) <= 1e-4
