"""Importing official VAEBM energy-network checkpoints (vaebm_fast.models.load_official_ebm).

The files are written as the official training script saves them: ``{'model':
EBM.state_dict(), 'optimizer': ...}``, official keys only (no spectral-regulariser vectors).
"""
from __future__ import annotations

import fractions

import pytest
import torch

from vaebm_fast.models import EBMImportError, load_official_ebm, official_ebm


def _source(arch="cifar32", n_channel=4):
    torch.manual_seed(0)
    model = official_ebm(arch, n_channel=n_channel)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("layout", ["official", "bare", "ddp"])
def test_official_file_loads_strictly_with_equal_energies(tmp_path, layout):
    source = _source()
    state = source.official_state_dict()
    if layout == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    saved = {"model": state, "optimizer": {"state": {}}} if layout == "official" else state
    path = tmp_path / "EBM.pth"
    torch.save(saved, path)

    loaded = load_official_ebm(path, "cifar32")

    assert not loaded.training and loaded.n_channel == 4
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_another_arch_is_named(tmp_path):
    path = tmp_path / "EBM.pth"
    torch.save({"model": _source("cifar32").official_state_dict()}, path)
    with pytest.raises(EBMImportError, match="not an official lsun64 EBM.*--ebm-arch"):
        load_official_ebm(path, "lsun64")
    with pytest.raises(EBMImportError, match="unknown EBM arch 'cifar"):
        load_official_ebm(path, "cifar")


def test_extra_key_or_pickled_object_is_refused(tmp_path):
    state = _source().official_state_dict()
    with pytest.raises(EBMImportError, match="unexpected.*extra"):
        load_official_ebm({**state, "extra": torch.zeros(1)}, "cifar32")
    path = tmp_path / "EBM.pth"
    torch.save({"model": state, "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(EBMImportError, match="pickled objects other than tensors"):
        load_official_ebm(path, "cifar32")
