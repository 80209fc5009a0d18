"""Importing official NVAE checkpoints (vaebm_fast.models.load_nvae).

Without the official code, the files are written here in the official layout from small models
of ours: official key names (flat BN-Swish keys, ``weight_normalized`` aliases, no
spectral-regulariser vectors), ``args`` as an ``argparse.Namespace``, saved with ``torch.save``.
"""
from __future__ import annotations

import argparse

import pytest
import torch

from vaebm_fast.models import HierarchicalVAE, HierarchicalVAEConfig, NVAEImportError, load_nvae
from vaebm_fast.nn import BNSwish, WNConv2d

# A tiny RGB model: 8x8 images ("celeba_8" by NVAE's size-suffix rule), two latent scales.
TINY_ARGS = dict(
    dataset="celeba_8", num_channels_enc=8, num_channels_dec=4, num_preprocess_blocks=1,
    num_preprocess_cells=1, num_postprocess_blocks=1, num_postprocess_cells=1,
    num_latent_scales=2, num_groups_per_scale=2, num_latent_per_group=2,
    num_cell_per_cond_enc=1, num_cell_per_cond_dec=1, use_se=True, res_dist=True,
    ada_groups=False, min_groups_per_scale=1, num_nf=0, num_mixture_dec=1, num_x_bits=8,
    arch_instance="res_mbconv",
    # arguments the import ignores (optimisation, paths), as train.py stores them
    learning_rate=1e-2, batch_size=32, save="/tmp/run", distributed=False, local_rank=0)
# What older checkpoints lack.
NEWER_ARGS = ("ada_groups", "min_groups_per_scale", "num_mixture_dec", "num_x_bits")


# Tiny models are hundreds of small ops: one intra-op thread is faster on 2 shared cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def source_model(**args_overrides) -> tuple[HierarchicalVAE, argparse.Namespace]:
    """A model of ours with non-trivial weights and BN statistics, and its official args."""
    args = argparse.Namespace(**{**TINY_ARGS, **args_overrides})
    torch.manual_seed(0)
    model = HierarchicalVAE(HierarchicalVAEConfig.from_nvae_args(args))
    model.train()
    with torch.no_grad():
        for _ in range(2):  # moves the BN running statistics away from their init values
            model.elbo_terms(torch.rand(4, *model.data_shape))
        for param in model.parameters():  # non-default values everywhere, BN affine included
            param.add_(0.05 * torch.randn_like(param))
    return model.eval(), args


def official_state_dict(model: HierarchicalVAE, aliases: bool = True) -> dict:
    """Our state dict in the official layout."""
    bn_swish = {name for name, m in model.named_modules() if isinstance(m, BNSwish)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("spectral_regularizer."):
            continue
        prefix, _, name = key.rpartition(".")
        if prefix.endswith(".bn") and prefix[:-len(".bn")] in bn_swish:
            key = f"{prefix[:-len('.bn')]}.{name}"  # the official BN-Swish *is* the BatchNorm
        state[key] = value.clone()
    if aliases:  # the same tensor registered under a second name, as the official convs do
        for name, module in model.named_modules():
            if isinstance(module, WNConv2d) and not module.weight_norm:
                state[f"{name}.weight_normalized"] = state[f"{name}.weight"]
    return state


def official_checkpoint(model, args, aliases=True) -> dict:
    state = official_state_dict(model, aliases)
    return {"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
            "global_step": 100, "args": args, "arch_instance": {"normal_enc": ["res_bnswish"]},
            "scheduler": {"last_epoch": 3}, "grad_scalar": {"scale": 65536.0}}


def decode(model, seed=1, batch=3):
    generator = torch.Generator().manual_seed(seed)
    eps_z = [torch.randn(batch, *s, generator=generator) for s in model.latent_shapes]
    eps_x = torch.randn(batch, *model.data_shape, generator=generator)
    with torch.no_grad():
        return model.decode_eps(eps_z, eps_x), model.decode_eps(eps_z, None)


@pytest.mark.parametrize("num_nf", [0, 2], ids=["no_flows", "flows"])
@pytest.mark.parametrize("aliases", [True, False], ids=["with_aliases", "old_without_aliases"])
@pytest.mark.parametrize("newer_args", [True, False], ids=["new_args", "old_args"])
def test_official_file_loads_strictly_with_equal_values_and_samples(tmp_path, aliases,
                                                                    newer_args, num_nf):
    model, args = source_model(num_nf=num_nf)
    if not newer_args:
        for name in NEWER_ARGS:
            delattr(args, name)
    path = tmp_path / "checkpoint.pt"
    torch.save(official_checkpoint(model, args, aliases), path)

    loaded = load_nvae(path)

    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.config.top_prior_std == 1.01  # NVAE's effective top prior std
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        if not key.startswith("spectral_regularizer."):
            assert torch.equal(value, theirs[key]), key
    for got, want in zip(decode(loaded), decode(model)):
        assert torch.equal(got, want)
    x = torch.rand(3, *model.data_shape)
    with torch.no_grad():  # the encoder side too, flows included (same noise, same ELBO)
        torch.manual_seed(2)
        recon, kl = loaded.elbo_terms(x)
        torch.manual_seed(2)
        recon_ref, kl_ref = model.elbo_terms(x)
    assert torch.equal(recon, recon_ref)
    assert all(torch.equal(a, b) for a, b in zip(kl, kl_ref))


def test_different_encoder_and_decoder_widths_are_not_swapped(tmp_path):
    model, args = source_model(num_channels_enc=4, num_channels_dec=8, ada_groups=True,
                               num_groups_per_scale=2)
    torch.save(official_checkpoint(model, args), tmp_path / "c.pt")
    loaded = load_nvae(str(tmp_path / "c.pt"))
    assert loaded.stem.weight.shape[0] == 4 and loaded.image_conditional[1].weight.shape[1] == 8
    assert torch.equal(decode(loaded)[0], decode(model)[0])


def test_an_already_loaded_dict_is_accepted():
    model, args = source_model()
    loaded = load_nvae(official_checkpoint(model, args))
    assert torch.equal(decode(loaded)[0], decode(model)[0])


class _RunsCodeWhenUnpickled:
    """Unpickling this calls ``_mark_executed``: what a malicious checkpoint would do."""
    executed = False

    def __reduce__(self):
        return (_mark_executed, ())


def _mark_executed():
    _RunsCodeWhenUnpickled.executed = True
    return "pwned"


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    model, args = source_model()
    checkpoint = official_checkpoint(model, args)
    checkpoint["scheduler"] = _RunsCodeWhenUnpickled()
    torch.save(checkpoint, tmp_path / "evil.pt")
    with pytest.raises(NVAEImportError, match="pickled objects other than tensors"):
        load_nvae(tmp_path / "evil.pt")
    assert not _RunsCodeWhenUnpickled.executed


@pytest.mark.parametrize("content, match", [
    ([1, 2, 3], "dict with 'state_dict' and 'args'"),
    ({"state_dict": {}}, "no 'args'"),
    ({"args": argparse.Namespace(**TINY_ARGS)}, "no 'state_dict'"),
    ({"args": argparse.Namespace(**TINY_ARGS), "state_dict": {"stem.weight": 3}},
     r"only tensors; \['stem.weight'\] are not"),
    ({"args": "--dataset cifar10", "state_dict": {}}, "argparse.Namespace.*got str"),
])
def test_files_that_are_not_checkpoints_are_named(tmp_path, content, match):
    torch.save(content, tmp_path / "c.pt")
    with pytest.raises(NVAEImportError, match=match):
        load_nvae(tmp_path / "c.pt")


def test_missing_and_unknown_keys_are_named():
    model, args = source_model()
    checkpoint = official_checkpoint(model, args)
    state = checkpoint["state_dict"]
    del state["dec_tower.1._ops.0.conv.0.bn.running_var"]
    state["dec_tower.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(NVAEImportError, match=r"1 unknown key.*dec_tower\.1\.extra\.weight.*"
                                              r"1 key\(s\) of the model missing.*"
                                              r"dec_tower\.1\._ops\.0\.conv\.0\.bn\.running_var"):
        load_nvae(checkpoint)


def test_an_alias_that_differs_from_its_weight_is_corruption():
    model, args = source_model()
    checkpoint = official_checkpoint(model, args)
    key = next(k for k in checkpoint["state_dict"] if k.endswith(".weight_normalized"))
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] + 1
    with pytest.raises(NVAEImportError, match="weight_normalized is not equal"):
        load_nvae(checkpoint)


def _with_head_channels(checkpoint, channels):
    state = checkpoint["state_dict"]
    c_in = state["image_conditional.1.weight"].shape[1]
    state["image_conditional.1.weight"] = torch.randn(channels, c_in, 3, 3)
    state["image_conditional.1.bias"] = torch.zeros(channels)
    state["image_conditional.1.log_weight_norm"] = torch.zeros(channels, 1, 1, 1)
    return checkpoint


@pytest.mark.parametrize("stated", [2, None])
def test_a_logistic_mixture_decoder_is_refused_as_such(stated):
    model, args = source_model()
    if stated is None:
        del args.num_mixture_dec  # inferred from the head's 10 M output channels
    else:
        args.num_mixture_dec = stated
    checkpoint = _with_head_channels(official_checkpoint(model, args), 20)
    with pytest.raises(NVAEImportError, match="logistic-mixture.*2 components.*eps-space"):
        load_nvae(checkpoint)


@pytest.mark.parametrize("argument, value, match", [
    ("num_mixture_dec", 10, "num_mixture_dec=10 disagrees"),
    ("num_channels_enc", 16, "num_channels_enc=16 disagrees"),
    ("num_channels_dec", 8, "num_channels_dec=8 disagrees"),
    ("num_latent_per_group", 4, "num_latent_per_group=4 disagrees"),
    ("num_groups_per_scale", 3, "args give 6 latent groups.*the tensors have 4"),
    ("num_nf", 1, "num_nf=1 disagrees.*0 nf_cells entries for 4 latent groups"),
    ("dataset", "celeba_16", "prior_ftr0 has shape"),
    ("num_preprocess_cells", 2, "unknown key.*pre_process.0"),
])
def test_args_that_disagree_with_the_tensors_are_named(argument, value, match):
    model, args = source_model()
    setattr(args, argument, value)
    with pytest.raises(NVAEImportError, match=match):
        load_nvae(official_checkpoint(model, args))


@pytest.mark.parametrize("argument, value, match", [
    ("dataset", "mnist", "unsupported NVAE dataset 'mnist'"),
    ("arch_instance", "res_elu", "only NVAE's 'res_mbconv'"),
])
def test_unsupported_architectures_are_named(argument, value, match):
    model, args = source_model()
    setattr(args, argument, value)
    with pytest.raises(NVAEImportError, match=match):
        load_nvae(official_checkpoint(model, args))


def test_a_bernoulli_decoder_is_named():
    model, args = source_model()
    args.dataset = "mnist"
    checkpoint = _with_head_channels(official_checkpoint(model, args), 1)
    with pytest.raises(NVAEImportError, match="Bernoulli decoder.*'mnist'.*not supported"):
        load_nvae(checkpoint)


def test_args_missing_an_architecture_argument_are_named():
    model, args = source_model()
    del args.num_latent_scales
    with pytest.raises(NVAEImportError, match="lacks num_latent_scales"):
        load_nvae(official_checkpoint(model, args))


def test_flow_cells_missing_from_the_file_are_named():
    model, args = source_model(num_nf=1)
    checkpoint = official_checkpoint(model, args)
    del checkpoint["state_dict"]["nf_cells.3.cell2.mu.conv_0.bias"]
    with pytest.raises(NVAEImportError, match=r"missing.*nf_cells\.3\.cell2\.mu\.conv_0\.bias"):
        load_nvae(checkpoint)


def test_num_x_bits_is_recorded_and_quantises_the_elbo_input():
    """A 5-bit model (as VAEBM's CelebA-HQ-256 backbone) sees 5-bit data in its ELBO."""
    model, args = source_model(num_x_bits=5)
    loaded = load_nvae(official_checkpoint(model, args))
    assert loaded.config.num_x_bits == 5
    eight_bit = load_nvae(official_checkpoint(model, argparse.Namespace(
        **{**vars(args), "num_x_bits": 8})))
    x = torch.randint(0, 256, (2, *model.data_shape)) / 255.0
    x5 = torch.floor(x * 255 / 8) / 31  # the same images at 5 bits
    assert not torch.equal(x, x5)
    with torch.no_grad():
        results = []
        for net, images in ((loaded, x), (eight_bit, x5), (eight_bit, x)):
            torch.manual_seed(3)
            results.append(net.elbo_terms(images)[0])
    assert torch.equal(results[0], results[1])
    assert not torch.allclose(results[0], results[2])
