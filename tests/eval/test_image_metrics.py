"""FID, KID and Inception Score through torchmetrics, in the digits network's feature space."""
import importlib
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchmetrics")

from vaebm_fast._requirements import MissingExtraError  # noqa: E402
from vaebm_fast.eval import (frechet_distance, inception_features, inception_score,  # noqa: E402
                             kernel_distance)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(digits_net, digit_halves,
                                                                  shifted):
    a, b = digit_halves
    assert abs(frechet_distance(a, a, digits_net)) < 1e-3
    same_distribution = frechet_distance(a, b, digits_net)
    small, large = (frechet_distance(shifted(a, s), b, digits_net) for s in (0.1, 0.3))
    assert 0 <= same_distribution < small < large
    assert small > 2 * same_distribution


def test_fid_accepts_numpy_and_any_feature_module():
    torch.manual_seed(0)
    flatten = nn.Flatten()  # no parameters, no num_features: the size is probed on 2 images
    a = np.random.default_rng(0).random((50, 1, 2, 2), dtype=np.float32)
    assert abs(frechet_distance(a, a, flatten)) < 1e-4
    assert frechet_distance(a + 0.5, a, flatten) == pytest.approx(4 * 0.25, rel=1e-3)


def test_kid_is_about_zero_for_one_distribution_and_grows_with_a_shift(digits_net,
                                                                       digit_halves, shifted):
    a, b = digit_halves
    same = kernel_distance(a, b, digits_net, subsets=10, subset_size=400)
    small = kernel_distance(shifted(a, 0.1), b, digits_net, subsets=10, subset_size=400)
    large = kernel_distance(shifted(a, 0.3), b, digits_net, subsets=10, subset_size=400)
    assert abs(same["kid_mean"]) < small["kid_mean"] / 3
    assert small["kid_mean"] < large["kid_mean"]
    assert same["kid_std"] >= 0


def test_kid_is_seeded_and_leaves_the_global_random_state_alone(digits_net, digit_halves):
    a, b = digit_halves
    state = torch.get_rng_state()
    first = kernel_distance(a, b, digits_net, subsets=5, subset_size=100, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert kernel_distance(a, b, digits_net, subsets=5, subset_size=100, seed=3) == first
    assert kernel_distance(a, b, digits_net, subsets=5, subset_size=100, seed=4) != first


def test_inception_score_prefers_digits_to_noise(digits_net, digit_halves):
    a, _ = digit_halves
    real = inception_score(a, digits_net.classifier())
    noise = inception_score(torch.rand_like(a), digits_net.classifier())
    assert 1 <= noise["is_mean"] < real["is_mean"] <= 10


def test_the_feature_network_keeps_its_mode(digits_net, digit_halves):
    a, b = digit_halves
    digits_net.train()
    try:
        frechet_distance(a, b, digits_net)
        assert digits_net.training
    finally:
        digits_net.eval()
    # Every submodule keeps its own mode, also through the logits wrapper.
    digits_net.body[0].train()
    try:
        inception_score(a, digits_net.classifier())
        assert [m.training for m in digits_net.modules()] == [
            m is digits_net.body[0] for m in digits_net.modules()]
    finally:
        digits_net.eval()


@pytest.mark.parametrize("images, fragment", [
    (torch.zeros(10, 8, 8), "[N, C, H, W]"),
    (torch.zeros(1, 1, 8, 8), "at least 2"),
    (torch.zeros(10, 1, 8, 8, dtype=torch.uint8), "divide 8-bit images by 255"),
])
def test_bad_images_are_a_clear_error(digits_net, images, fragment):
    with pytest.raises(ValueError, match=".*" + fragment.replace("[", r"\[").replace("]", r"\]")):
        frechet_distance(images, torch.zeros(10, 1, 8, 8), digits_net)


def test_missing_torchmetrics_names_the_extra(monkeypatch, digit_halves):
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)
    a, b = digit_halves
    with pytest.raises(MissingExtraError, match=r"pip install 'vaebm_fast\[eval\]'"):
        frechet_distance(a, b, nn.Flatten())


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        inception_features(tmp_path / "absent.pth")


def test_inception_without_torch_fidelity_says_how_to_install_it(tmp_path, monkeypatch):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not read")
    fid = importlib.import_module("torchmetrics.image.fid")
    monkeypatch.setattr(fid, "_TORCH_FIDELITY_AVAILABLE", False)
    with pytest.raises(MissingExtraError, match="pip install torch-fidelity"):
        inception_features(weights)


class _StubInception(nn.Module):
    """Stands in for torchmetrics' NoTrainInceptionV3 (torch-fidelity is not installed in the
    tests): records how it was built and what it was fed."""
    built_with = {}

    def __init__(self, **kwargs):
        super().__init__()
        _StubInception.built_with = kwargs
        self.seen = None

    def forward(self, images):
        self.seen = images
        return images.float().mean(dim=(2, 3))  # [N, 3]


@pytest.fixture
def stub_inception(monkeypatch):
    fid = importlib.import_module("torchmetrics.image.fid")
    monkeypatch.setattr(fid, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(fid, "NoTrainInceptionV3", _StubInception)
    return fid


def test_inception_gets_the_local_weights_file_and_8_bit_rgb(stub_inception, tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    network = inception_features(weights, "2048")
    # The local file is passed on, so torch-fidelity never falls back to downloading.
    assert _StubInception.built_with["feature_extractor_weights_path"] == str(weights)
    assert _StubInception.built_with["features_list"] == ["2048"]
    assert network.num_features == 2048
    network(torch.full((2, 1, 8, 8), 0.5))
    seen = network.inception.seen
    assert seen.dtype == torch.uint8 and seen.shape == (2, 3, 8, 8) and (seen == 128).all()


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_a_bad_or_unsafe_weights_file_is_refused(stub_inception, tmp_path, content):
    weights = tmp_path / "weights.pth"
    if content is None:  # a pickle that would run code: refused before torch-fidelity sees it
        torch.save({"state": _StubInception}, weights)
    else:
        weights.write_bytes(content)
    with pytest.raises(ValueError, match="not a weights file torch can load safely"):
        inception_features(weights)
