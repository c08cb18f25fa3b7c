"""Pictures of samples (ddpm_pipelines.images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_pipelines.images import image_grid, points_image


def test_image_grid_lays_images_out_scaled_with_gaps():
    images = torch.zeros(5, 1, 8, 8)
    images[1] = 1.0
    grid = image_grid(images)  # 3 columns, 2 rows; 8 px scaled ×4 to 32
    assert grid.mode == "L" and grid.size == (3 * 33 - 1, 2 * 33 - 1)
    pixels = np.asarray(grid)
    assert (pixels[:32, :32] == 0).all() and (pixels[:32, 33:65] == 255).all()
    assert (pixels[:, 32] == 255).all()  # the gap
    assert image_grid(torch.rand(2, 3, 32, 32), columns=2).mode == "RGB"


def test_points_image_puts_points_where_they_are():
    picture = points_image(torch.tensor([[-2.0, -2.0], [2.0, 2.0], [5.0, 0.0]]), size=64)
    pixels = np.asarray(picture)
    assert pixels[63, 0] < 255 and pixels[0, 63] < 255  # bottom left, top right
    assert (pixels < 255).sum() == 2  # the point outside the limits is left out


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: image_grid(torch.zeros(2, 2, 8, 8)), r"images must be \(B, 1 or 3, H, W\)"),
        (lambda: points_image(torch.zeros(4, 3)), r"points must be \(N, 2\)"),
    ],
)
def test_bad_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()
