"""The README's digits result, shortened: every promised file in the promised form, a table
whose numbers are the ones the metrics give, and checkpoints the command line can sample from."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from vaebm_fast.cli import main  # noqa: E402
from vaebm_fast.demo_digits import format_table, negative_elbo, run_digits_demo  # noqa: E402
from vaebm_fast.models.nvae import HierarchicalVAE  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_digits_demo_writes_samples_scores_and_figures(tmp_path, one_thread):
    result = run_digits_demo(str(tmp_path), n_samples=200, quick=True, log=lambda *_: None)

    for name in ("samples_vae.npy", "samples_vaebm.npy"):
        samples = np.load(tmp_path / name)
        assert samples.shape == (200, 1, 8, 8) and samples.dtype == np.float32
        assert np.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= 1
    # The chains moved the samples: VAEBM is not the VAE's output again.
    assert not np.allclose(np.load(tmp_path / "samples_vae.npy"),
                           np.load(tmp_path / "samples_vaebm.npy"))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["table"] == result["table"]
    for model in ("vae", "vaebm"):
        assert on_disk[model]["fid"] > 0
        assert 0.0 <= on_disk[model]["auroc_interpolated"] <= 1.0
    # Held-out digits against training digits: the floor every model's FID sits above.
    assert on_disk["data"]["fid"] < min(on_disk["vae"]["fid"], on_disk["vaebm"]["fid"])
    assert on_disk["n_ood"] == 180 and on_disk["n_fid_reference"] == 1617
    assert f"| VAEBM | {on_disk['vaebm']['fid']:.2f} |" in on_disk["table"]
    for png in ("samples.png", "roc.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG

    # The folder is a command-line run folder: `sample --out` reads its checkpoints.
    assert main(["sample", "--out", str(tmp_path), "--n", "4", "--steps", "1"]) == 0
    assert np.load(tmp_path / "samples" / "samples_vaebm.npy").shape == (4, 1, 8, 8)
    # A rerun resumes from both checkpoints instead of training again: same numbers.
    again = run_digits_demo(str(tmp_path), n_samples=200, quick=True, log=lambda *_: None)
    assert again["vaebm"] == result["vaebm"]


def test_negative_elbo_is_seeded_and_leaves_the_global_stream_alone(one_thread):
    torch.manual_seed(0)
    vae = HierarchicalVAE("digits").eval()
    images = torch.rand(5, 1, 8, 8)
    state = torch.random.get_rng_state()
    first = negative_elbo(vae, images, samples=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, negative_elbo(vae, images, samples=2, seed=3))
    assert not torch.equal(first, negative_elbo(vae, images, samples=2, seed=4))
    assert first.shape == (5,) and torch.isfinite(first).all()


def test_table_shows_a_dash_where_a_row_has_no_value():
    table = format_table({"VAE": {"fid": 4.5, "auroc_interpolated": 0.5},
                          "data": {"fid": 0.17}})
    assert "| VAE | 4.50 | 0.500 |" in table and "| data | 0.17 | – |" in table
