"""PNG figures: valid files, exact grid sizes, atomic writes, clear input errors."""

import struct

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from vaebm_fast.eval.plots import (
    save_bar_chart,
    save_image_grid,
    save_image_grids_side_by_side,
    save_scatter,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) of a PNG, read from its IHDR chunk; checks the signature too."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000  # something was drawn
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def only_file_is(directory, name):
    assert sorted(p.name for p in directory.iterdir()) == [name]  # no temporary files left


def test_save_scatter_writes_a_png(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(500, 2, generator=generator)
    path = save_scatter(tmp_path / "figs" / "scatter.png",
                        {"data": data, "VAE": data * 1.5, "VAEBM": data.numpy()},
                        means=torch.zeros(1, 2), title="toy", lim=3.0)
    width, height = png_size(path)
    assert width > 2 * height  # three panels side by side
    only_file_is(tmp_path / "figs", "scatter.png")


def test_save_scatter_automatic_limits_survive_outliers(tmp_path):
    points = np.random.default_rng(0).normal(size=(300, 2))
    points[0] = [1e6, np.nan]
    png_size(save_scatter(tmp_path / "s.png", {"samples": points}))


def decoded_cell(path, index, per_row, cell, scale):
    """Cell ``index`` of a grid PNG decoded by matplotlib, [cell, cell, 3] in [0, 1], shrunk
    back by ``scale`` after checking each upscaled block is one colour."""
    pixels = imread(path)  # float32 [H, W, 3 or 4]: the PNG's 8-bit values / 255
    row, col = divmod(index, per_row)
    top, left = 1 + row * (cell * scale + 1), 1 + col * (cell * scale + 1)
    block = pixels[top:top + cell * scale, left:left + cell * scale, :3]
    blocks = block.reshape(cell, scale, cell, scale, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # nearest-neighbour upscale: flat blocks
    return blocks[:, 0, :, 0], pixels


def as_png_values(values):
    """What an 8-bit PNG stores for values in [0, 1], decoded back to [0, 1]."""
    return np.floor(np.clip(values, 0, 1) * 255 + 0.5) / 255


def test_save_image_grid_is_pixel_exact_and_upscaled(tmp_path):
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(tmp_path / "grid.png", images, nrow=4)
    # 8 x 8 images upscaled 8x to 64 px, 4 per row, 2 rows, 1-px separators.
    assert png_size(path) == (4 * 65 + 1, 2 * 65 + 1)
    only_file_is(tmp_path, "grid.png")
    # Image 6 (second row, third column), grey: the same value in R, G and B.
    got, pixels = decoded_cell(path, 6, per_row=4, cell=8, scale=8)
    want = as_png_values(images[6, 0].numpy())
    for channel in range(3):
        np.testing.assert_allclose(got[..., channel], want, atol=1e-6)
    # The separators are mid grey (the 8-bit value 128).
    np.testing.assert_allclose(pixels[65, :, :3], 128 / 255, atol=1e-6)
    np.testing.assert_allclose(pixels[:, 0, :3], 128 / 255, atol=1e-6)


def test_save_image_grid_rgb_and_default_layout(tmp_path):
    images = np.random.default_rng(0).uniform(-0.5, 1.5, size=(10, 3, 32, 32))  # clipped
    path = save_image_grid(tmp_path / "rgb.png", images)
    assert png_size(path) == (4 * 65 + 1, 3 * 65 + 1)
    # ceil(sqrt(10)) = 4 per row; image 9 is the second of the third row, upscaled 2x, its
    # channels in RGB order and clipped to [0, 1].
    got, _ = decoded_cell(path, 9, per_row=4, cell=32, scale=2)
    np.testing.assert_allclose(got, as_png_values(images[9].transpose(1, 2, 0)), atol=1e-6)


def test_save_image_grids_side_by_side(tmp_path):
    grids = {"data": torch.rand(16, 1, 8, 8), "VAE": torch.rand(16, 1, 8, 8),
             "VAEBM": torch.rand(16, 1, 8, 8)}
    width, height = png_size(save_image_grids_side_by_side(tmp_path / "side.png", grids))
    assert width > 3 * 4 * 64 and height > 4 * 64


def test_save_bar_chart(tmp_path):
    path = save_bar_chart(tmp_path / "bench" / "bars.png", ["eager", "fused", "fused + graph"],
                          [100.0, 230.0, 510.0], "samples/s", "Langevin throughput",
                          errors=[5.0, 6.0, 7.0])
    png_size(path)
    only_file_is(tmp_path / "bench", "bars.png")


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(ValueError, match=r"panel 'x' must have shape \[N, 2\] \(got \[5, 3\]\)"):
        save_scatter(tmp_path / "a.png", {"x": np.zeros((5, 3))})
    with pytest.raises(ValueError, match=r"must have shape \[N, C, H, W\].*got \[4, 2, 8, 8\]"):
        save_image_grid(tmp_path / "b.png", torch.rand(4, 2, 8, 8))
    with pytest.raises(ValueError, match="equal length"):
        save_bar_chart(tmp_path / "c.png", ["a", "b"], [1.0], "y", "t")
    assert list(tmp_path.iterdir()) == []
