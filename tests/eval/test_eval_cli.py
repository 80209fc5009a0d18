"""`vaebm-fast eval`: scores of .npy/.npz image files as JSON; bad input is one line, exit 2."""
import json

import numpy as np
import pytest

pytest.importorskip("torchmetrics")

from vaebm_fast.cli import main  # noqa: E402
from vaebm_fast.data import load_digits_images  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_cli")
    digits = load_digits_images("all").numpy()  # [1797, 1, 8, 8]
    paths = {"samples": folder / "samples.npz", "reference": folder / "reference.npy",
             "shifted": folder / "shifted.npy", "two": folder / "two.npz",
             "big": folder / "big.npy", "uint8": folder / "uint8.npy"}
    np.savez(paths["samples"], samples=digits[:300])
    np.save(paths["reference"], digits[300:700])
    np.save(paths["shifted"], np.clip(digits[:300] + 0.3, 0, 1))
    np.savez(paths["two"], a=digits[:3], b=digits[:3])
    np.save(paths["big"], np.zeros((4, 1, 28, 28), np.float32))
    np.save(paths["uint8"], (digits[:300, 0] * 255).round().astype(np.uint8))  # [N, H, W]
    return {k: str(v) for k, v in paths.items()}


@pytest.mark.slow
def test_eval_writes_the_scores(files, tmp_path, capsys):
    out = tmp_path / "scores" / "s.json"
    assert main(["eval", "fid", "kid", "is", "--samples", files["samples"], "--reference",
                 files["reference"], "--out", str(out), "--seed", "1"]) == 0
    scores = json.loads(out.read_text())
    assert scores["features"] == "digits"
    assert (scores["n_samples"], scores["n_reference"]) == (300, 400)
    assert {"fid", "kid_mean", "kid_std", "is_mean", "is_std"} <= set(scores)
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == scores

    # Shifted digits are farther from the data.
    assert main(["eval", "fid", "--samples", files["shifted"], "--reference",
                 files["reference"], "--out", str(tmp_path / "shifted.json"), "--seed", "1"]) == 0
    assert json.loads((tmp_path / "shifted.json").read_text())["fid"] > 3 * scores["fid"]


def test_8_bit_images_without_a_channel_read_as_the_same_images(files):
    from vaebm_fast.cli.commands import _load_images
    as_uint8 = _load_images(files["uint8"], "--samples")
    as_float = _load_images(files["samples"], "--samples")
    assert as_uint8.shape == as_float.shape == (300, 1, 8, 8)
    assert (as_uint8 - as_float).abs().max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("argv, fragment", [
    (["fid", "--samples", "{two}", "--reference", "{reference}"], "holds the arrays ['a', 'b']"),
    (["fid", "--samples", "{missing}", "--reference", "{reference}"], "cannot read --samples"),
    (["fid", "--samples", "{big}", "--reference", "{reference}"], "compare images of one shape"),
    (["fid", "--samples", "{big}", "--reference", "{big}"], "--features digits scores 8x8"),
    (["fid", "--samples", "{samples}", "--reference", "{reference}", "--features",
      "inception"], "needs --inception-weights FILE"),
    (["fid", "--samples", "{samples}", "--reference", "{reference}", "--features",
      "inception", "--inception-weights", "{missing}"], "weights-inception-2015-12-05"),
    (["fid", "--samples", "{samples}", "--reference", "{reference}",
      "--inception-weights", "{missing}"], "with --features inception only"),
    (["fid", "--samples", "{samples}"], "--reference"),
    (["fid", "--samples", "{samples}", "--reference", "{reference}", "--device", "gpu0"],
     "is not a device"),
    (["mse", "--samples", "{samples}", "--reference", "{reference}"], "invalid choice"),
])
def test_bad_input_is_one_error_line(files, tmp_path, capsys, argv, fragment):
    paths = dict(files, missing=str(tmp_path / "missing.npz"))
    assert main(["eval"] + [a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and fragment in err[0], err
