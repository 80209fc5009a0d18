"""PNG figures: valid files, exact grid sizes, atomic writes, clear input errors."""

import struct

import numpy as np
import pytest
import torch

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


def test_save_image_grid_is_pixel_exact_and_upscaled(tmp_path):
    images = torch.rand(8, 1, 8, 8)
    path = save_image_grid(tmp_path / "grid.png", images, nrow=4)
    # 8 x 8 images upscaled 8x to 64 px, 4 per row, 2 rows, 1-px separators.
    assert png_size(path) == (4 * 65 + 1, 2 * 65 + 1)
    only_file_is(tmp_path, "grid.png")


def test_save_image_grid_rgb_and_default_layout(tmp_path):
    images = np.random.default_rng(0).uniform(-0.5, 1.5, size=(10, 3, 32, 32))  # clipped
    assert png_size(save_image_grid(tmp_path / "rgb.png", images)) == (4 * 65 + 1, 3 * 65 + 1)


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
