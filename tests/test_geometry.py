"""Coordinate conventions of infd_core.geometry: field frame [-1, 1], (y, x), pixel centres."""
from __future__ import annotations

import math

import pytest
import torch

from infd_core.geometry import (MAX_SIDE, Box, PixelRange, Size, aspect_size, box_grid, box_to_pixels, canvas_size,
                                check_level, cells_for_canvas, level_grid)


def test_known_pixel_of_the_docstring():
    coord, cell = level_grid(4, 4)
    assert coord.shape == cell.shape == (4, 4, 2)
    assert coord[0, 3].tolist() == [-0.75, 0.75]  # row 0 is the top (y = -0.75), col 3 the right (x = 0.75)
    assert cell[0, 3].tolist() == [0.5, 0.5]


def test_whole_image_corners_and_cells_on_a_non_square_level():
    coord, cell = level_grid(2, 8)
    assert coord[0, 0].tolist() == [-0.5, -0.875]
    assert coord[-1, -1].tolist() == [0.5, 0.875]
    assert torch.equal(cell[..., 0], torch.full((2, 8), 1.0)) and torch.equal(cell[..., 1], torch.full((2, 8), 0.25))


@pytest.mark.parametrize("vals", [
    (0.2, 0.1, 0.2, 0.5),           # zero width
    (0.1, 0.3, 0.6, 0.3),           # zero height
    (0.6, 0.1, 0.2, 0.5),           # inverted x
    (0.1, 0.5, 0.2, 0.1),           # inverted y
    (float("nan"), 0.0, 1.0, 1.0),
    (0.0, 0.0, float("inf"), 1.0),
    ("0", 0.0, 1.0, 1.0),
])
def test_invalid_boxes_are_rejected(vals):
    with pytest.raises(ValueError, match="box"):
        Box(*vals)


def test_boxes_outside_the_image():
    outside = Box(-0.1, 0.2, 0.5, 0.6)
    with pytest.raises(ValueError, match="outside the image"):
        outside.check_inside()
    assert outside.clamped() == Box(0.0, 0.2, 0.5, 0.6)
    with pytest.raises(ValueError):
        Box(1.2, 0.0, 1.5, 1.0).clamped()  # nothing left inside
    assert Box(0.0, 0.0, 1.0, 1.0).check_inside().width == 1.0


@pytest.mark.parametrize("height,width", [(1, 1), (7, 7), (256, 256), (300, 500), (1000, 3)])
def test_box_grid_of_the_whole_image_equals_the_level_grid(height, width):
    coord, cell = box_grid(Box(0, 0, 1, 1), height, width)
    level_coord, level_cell = level_grid(height, width)
    assert torch.equal(coord, level_coord) and torch.equal(cell, level_cell)


def test_box_grid_pads_by_continuing_the_grid():
    box = Box(0.25, 0.5, 0.75, 1.0)
    coord, cell = box_grid(box, 8, 16, pad=2)
    inner, inner_cell = box_grid(box, 8, 16)
    assert coord.shape == (12, 20, 2)
    assert torch.equal(coord[2:-2, 2:-2], inner) and torch.equal(cell[2:-2, 2:-2], inner_cell)
    assert coord[0, 0].tolist() == pytest.approx([0.0 + (-2 + 0.5) * (1.0 / 8), -0.5 + (-2 + 0.5) * (1.0 / 16)])


@pytest.mark.parametrize("height,width,rng", [
    (300, 500, PixelRange(13, 77, 5, 200)),
    (4097, 123, PixelRange(4000, 4097, 0, 123)),
    (2048, 2048, PixelRange(1024, 1280, 768, 1024)),
])
def test_sub_range_is_bit_identical_to_the_slice_of_the_whole_grid(height, width, rng):
    coord, cell = level_grid(height, width)
    part, part_cell = level_grid(height, width, rng)
    assert torch.equal(part, coord[rng.r0:rng.r1, rng.c0:rng.c1])
    assert torch.equal(part_cell, cell[rng.r0:rng.r1, rng.c0:rng.c1])


def test_halo_outside_the_level_continues_the_grid():
    coord, _ = level_grid(8, 8, PixelRange(-2, 3, 6, 10))
    assert coord[0, 0].tolist() == [-1 + (-2 + 0.5) / 4, -1 + (6 + 0.5) / 4]
    assert coord[-1, -1].tolist() == [-1 + (2 + 0.5) / 4, -1 + (9 + 0.5) / 4]


@pytest.mark.parametrize("height,width", [(0, 10), (10, -1), (2.5, 10), (True, 10), (10, MAX_SIDE + 1), (10**9, 10)])
def test_bad_level_sizes(height, width):
    with pytest.raises(ValueError, match="height|width"):
        check_level(height, width)


def test_sizes_are_rows_first_in_code_and_width_first_as_text():
    size = Size.parse("8192x2730")
    assert size == (2730, 8192) and (size.height, size.width) == (2730, 8192) and str(size) == "8192x2730"
    assert Size.parse(" 300 X 200 ") == Size(height=200, width=300) and size.longest == 8192 and Size(2, 6).aspect == 3
    assert Size.parse(str(size)) == size
    h, w = size  # unpacks like a tensor's trailing shape
    assert level_grid(*Size.parse("6x2"))[0].shape[:2] == (2, 6)
    # the helpers that make sizes give Sizes, so their results read and print one way
    assert str(canvas_size((64, 192), 2048)) == "6144x2048" and str(aspect_size(451 / 300, 2048)) == "2048x1362"
    assert str(cells_for_canvas(*Size.parse("6144x2048"))) == "192x64"
    assert isinstance(PixelRange(0, 2, 0, 6).shape, Size)
    for bad in ("8192", "8192x", "x2730", "1x2x3", "-5x4", "2.5x4", "2²x3", "9" * 13 + "x1", "wide"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            Size.parse(bad)


def test_pixel_ranges():
    assert PixelRange(0, 4, 0, 8).check_within(4, 8).shape == (4, 8)
    for bad in (PixelRange(0, 5, 0, 8), PixelRange(2, 2, 0, 8), PixelRange(-1, 3, 0, 8)):
        with pytest.raises(ValueError, match="empty or outside"):
            bad.check_within(4, 8)
    assert PixelRange(1, 3, 6, 8).padded(2, 4, 8) == PixelRange(0, 4, 4, 8)


def test_box_to_pixels_rounds_outwards():
    assert box_to_pixels(Box(0.25, 0.5, 0.75, 1.0), 8, 8) == PixelRange(4, 8, 2, 6)
    assert box_to_pixels(Box(0.26, 0.51, 0.74, 0.99), 8, 8) == PixelRange(4, 8, 2, 6)
    tiny = box_to_pixels(Box(0.5, 0.5, 0.5 + 1e-6, 0.5 + 1e-6), 10, 10)
    assert tiny.shape == (1, 1)
    assert math.isclose(Box.from_pixels(10, 20, 30, 60, 100, 200).x1, 0.3)
