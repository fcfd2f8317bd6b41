"""Canvases beyond the square (mechanics, on the fixed-seed random model): latents of any extent,
MultiDiffusion windows, ScaleCrafter re-dilation, outpainting, boxes and files on panoramas.

What the shipped model draws on them (seams, drift at an extension's seam, boxes acting where
they are) is tested in ``test_shipped_model.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from infd_core.__main__ import main
from infd_core.checkpoint import load_latent, save_latent
from infd_core.diffusion import METHODS, redilated, redilation_convs, window_edges, window_starts, windowed_eps
from infd_core.geometry import (Box, PixelRange, aspect_matches, aspect_size, box_in_extended, canvas_size,
                                cells_aspect_matches, check_cells, extend_cells)
from infd_core.guidance import guided_sample
from infd_core.conditions import box_cells, place_image, region_mask
from infd_core.regions import Layout, Region
from infd_core.outpaint import extend, grown

STEPS = 1


@pytest.fixture(scope="module")
def pano(tiny_pipe) -> torch.Tensor:
    return tiny_pipe.sample(0, steps=STEPS, cells=(64, 128))


def test_extents_and_pixel_density() -> None:
    assert check_cells(64, 192) == (64, 192)
    for bad in [(64, 100), (56, 64), (64, 2048), (64.0, 64)]:
        with pytest.raises(ValueError, match="latent (rows|columns)"):
            check_cells(*bad)
    assert canvas_size((64, 192), 2048) == (2048, 6144)  # 32 px per cell either way
    assert canvas_size((64, 64), 1024) == (1024, 1024)
    assert cells_aspect_matches((64, 192), 2730, 8192) and cells_aspect_matches((192, 64), 8192, 2731)
    assert not cells_aspect_matches((64, 192), 2730, 2730)
    # a photo's shape (an opened photo's canvas, the encode CLI): the longer side given
    assert aspect_size(451 / 300, 2048) == (1362, 2048) and aspect_size(300 / 451, 2048) == (2048, 1362)
    assert aspect_size(1.0, 512) == (512, 512) and aspect_size(1000.0, 10) == (1, 10)
    assert aspect_matches(451 / 300, 1362, 2048) and aspect_matches(300 / 451, 2048, 1362)
    assert not aspect_matches(451 / 300, 1365, 2048) and not aspect_matches(1.5, 2048, 2048)
    new, where = extend_cells((64, 64), left=8, down=16)
    assert new == (80, 72) and where == PixelRange(0, 64, 8, 72)
    b = box_in_extended(Box(0, 0, 1, 1), (64, 64), new, where)
    assert (b.x0, b.y0, b.x1, b.y1) == (8 / 72, 0, 1, 64 / 80)
    with pytest.raises(ValueError, match="whole number"):
        extend_cells((64, 64), left=-8)


def test_windows_cover_every_cell_and_fuse_to_a_partition_of_unity() -> None:
    assert window_starts(192, 64, 32) == [0, 32, 64, 96, 128]
    assert window_starts(100, 64, 48) == [0, 36]  # the last window ends at the edge
    assert window_starts(64, 64, 16) == [0]
    assert window_edges(128, 64, 32) == [32, 64, 96]
    with pytest.raises(ValueError, match="stride"):
        window_starts(128, 64, 0)
    with pytest.raises(ValueError, match="shorter"):
        window_starts(32, 64, 16)
    # a per-cell model: fusing its window predictions must give it back exactly, whatever the overlap
    pointwise = lambda x, t: 2 * x + t.view(-1, 1, 1, 1)  # noqa: E731
    x = torch.randn(2, 3, 72, 136)
    t = torch.tensor([5, 7])
    for stride in (8, 24, 64):
        assert torch.allclose(windowed_eps(pointwise, 64, stride, batch=3)(x, t), pointwise(x, t), atol=1e-5)


def test_panorama_sampling_is_deterministic_and_decodes_to_a_wider_field(tiny_pipe, pano) -> None:
    assert pano.shape == (1, 3, 64, 128)
    assert torch.equal(tiny_pipe.sample(0, steps=STEPS, cells=(64, 128)), pano)
    assert not torch.equal(tiny_pipe.sample(1, steps=STEPS, cells=(64, 128)), pano)
    assert not torch.equal(tiny_pipe.sample(0, steps=STEPS, cells=(64, 128), stride=64), pano)
    field = tiny_pipe.field(pano)
    assert field.phi.shape[-2:] == (256, 512) and field.aspect == 2
    with pytest.raises(ValueError, match="canvas method"):
        tiny_pipe.sample(0, steps=1, cells=(64, 128), method="tiles")
    with pytest.raises(ValueError, match="stride"):
        tiny_pipe.sample(0, steps=1, cells=(64, 128), stride=65)
    with pytest.raises(ValueError, match="latent columns"):
        tiny_pipe.sample(0, steps=1, cells=(64, 100))


def test_tiles_and_regions_of_a_non_square_field_equal_a_whole_render(tiny_pipe, pano) -> None:
    field = tiny_pipe.field(pano)
    h, w = canvas_size((64, 128), 120)  # 120 x 240, tiles that do not divide it
    whole = tiny_pipe.render(field, h, w, tile=max(h, w))
    assert np.array_equal(tiny_pipe.render(field, h, w, tile=56), whole)
    region = PixelRange(37, 101, 150, 239)
    assert np.array_equal(tiny_pipe.render(field, h, w, region, tile=64), whole[37:101, 150:239])
    for r in (PixelRange(0, 100, 0, 100), PixelRange(100, 120, 200, 240)):  # viewer tiles, each in one pass
        assert np.array_equal(tiny_pipe.render_piece(field, h, w, r), whole[r.r0:r.r1, r.c0:r.c1])


def test_direct_and_redilated_sampling_of_a_2x_latent(tiny_pipe) -> None:
    assert set(METHODS) == {"windows", "direct", "redilate"}
    direct = tiny_pipe.sample(0, steps=STEPS, cells=(128, 128), method="direct")
    dilated = tiny_pipe.sample(0, steps=STEPS, cells=(128, 128), method="redilate")
    windows = tiny_pipe.sample(0, steps=STEPS, cells=(128, 128), method="windows", stride=64)
    assert direct.shape == dilated.shape == windows.shape == (1, 3, 128, 128)
    assert not torch.equal(direct, dilated) and not torch.equal(direct, windows)
    convs = redilation_convs(tiny_pipe.unet)
    assert convs and all(m.stride == (1, 1) and m.kernel_size == (3, 3) for m in convs)
    ups = {id(m) for m in tiny_pipe.unet.up_blocks.modules()}
    assert not any(id(m) in ups for m in convs) and tiny_pipe.unet.conv_in not in convs
    with redilated(tiny_pipe.unet, 2):
        assert all(m.dilation == (2, 2) and m.padding == (2, 2) for m in convs)
    assert all(m.dilation == (1, 1) and m.padding == (1, 1) for m in convs)  # restored
    with pytest.raises(ValueError, match="dilation factor"):
        with redilated(tiny_pipe.unet, 0):
            pass


def test_extend_keeps_the_old_cells_exactly(tiny_pipe, pano) -> None:
    wider = extend(tiny_pipe, pano, left=16, down=8, seed=3, steps=STEPS)
    assert wider.shape == (1, 3, 72, 144)
    assert torch.equal(wider[..., 0:64, 16:144], pano)
    assert wider[..., 64:, :].abs().sum() > 0 and wider[..., :, :16].abs().sum() > 0
    known, where = grown(pano, right=8)
    assert known.x0.shape[-2:] == (64, 136) and float(known.mask.sum()) == 64 * 128 and where.c1 == 128
    with pytest.raises(ValueError, match="multiples of 8"):
        extend(tiny_pipe, pano, right=4, steps=1)
    with pytest.raises(ValueError, match="at least one cell"):
        extend(tiny_pipe, pano, steps=1)
    with pytest.raises(ValueError, match="one latent at a time"):
        extend(tiny_pipe, pano.repeat(2, 1, 1, 1), right=8, steps=1)


def test_masks_and_holds_follow_the_canvas_extent(tiny_pipe, pano) -> None:
    m = box_cells([Box(2 / 3, 0, 1, 1)], (64, 192), feather=0)
    assert m.shape == (64, 192) and m[:, 128:].min() == 1 and m[:, :128].max() == 0
    # a margin is in fractions of the shorter side: 0.125 is 8 cells both ways on a 64 x 192 canvas
    r = region_mask([Box(0.5, 0.5, 0.5 + 1 / 192, 0.5 + 1 / 64)], (64, 192), 0.125)
    row, col = r[32], r[:, 96]
    assert int((row > 0).sum()) == int((col > 0).sum())
    assert torch.equal(region_mask([Box(0.2, 0.3, 0.6, 0.7)], 64, 0.1), region_mask([Box(0.2, 0.3, 0.6, 0.7)],
                                                                                       (64, 64), 0.1))
    keep = Region(Box(0.0, 0.0, 0.5, 1.0), "keep")
    z, report = guided_sample(tiny_pipe, Layout((keep,)), seed=1, steps=STEPS, init_latent=pano)
    assert z.shape == pano.shape and report["cells"] == [64, 128]
    assert torch.allclose(z[..., :, :63], pano[..., :, :63], atol=1e-5)
    with pytest.raises(ValueError, match="current picture is"):
        guided_sample(tiny_pipe, Layout((keep,)), steps=1, init_latent=pano, cells=(64, 64))


def test_an_image_is_placed_in_its_window_of_a_panorama(tiny_pipe, pano) -> None:
    picture = np.asarray(Image.new("RGB", (40, 40), (200, 30, 30)))
    z = place_image(tiny_pipe, picture, Box(0.8, 0.25, 0.95, 0.75), pano, refine=0, cells=(64, 128))
    assert z.shape == pano.shape
    assert torch.equal(z[..., :64], pano[..., :64])  # outside the box's 64-cell window: the picture as it was
    assert not torch.equal(z[..., 64:], pano[..., 64:])
    with pytest.raises(ValueError, match="must fit in 64 x 64"):
        place_image(tiny_pipe, picture, Box(0.0, 0.0, 0.9, 1.0), pano, refine=0, cells=(64, 128))


def test_latent_files_hold_any_extent_and_the_cli_samples_and_extends(tmp_path, pano) -> None:
    save_latent(tmp_path / "p.latent.safetensors", pano)
    assert torch.equal(load_latent(tmp_path / "p.latent.safetensors"), pano)
    out = tmp_path / "pano.png"
    assert main(["sample", "--preset", "cpu", "--cells", "128x64", "--size", "256x128", "--steps", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (256, 128)
    z = load_latent(tmp_path / "pano.latent.safetensors")
    assert z.shape == (1, 3, 64, 128)
    wide = tmp_path / "wide.png"
    assert main(["extend", "--preset", "cpu", "--latent", str(tmp_path / "pano.latent.safetensors"), "--right", "64",
                 "--steps", "1", "--size", "128", "--out", str(wide), "--quiet"]) == 0
    assert Image.open(wide).size == (384, 128)  # 128 px per 64 cells
    assert torch.equal(load_latent(tmp_path / "wide.latent.safetensors")[..., :128], z)


@pytest.mark.parametrize("argv,match", [
    (["sample", "--cells", "192x64", "--size", "800x800"], "does not have the aspect"),
    (["sample", "--cells", "100x64"], "multiple of 8"),
    (["sample", "--cells", "wide"], "--cells must be COLSxROWS"),
    (["extend", "--latent", "{tmp}/p.latent.safetensors", "--right", "3"], "multiples of 8"),
    (["extend", "--latent", "{tmp}/p.latent.safetensors"], "at least one cell"),
])
def test_cli_canvas_errors(tmp_path, capsys, pano, argv, match) -> None:
    save_latent(tmp_path / "p.latent.safetensors", pano)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main([*argv, "--preset", "cpu", "--steps", "1", "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert match in capsys.readouterr().err
