"""Energy networks: official VAEBM families, the small image EBM and the MLP energy."""
import copy

import pytest
import torch
import torch.nn.functional as F

from vaebm_fast.models.energy import (OFFICIAL_EBM_ARCHS, MLPEnergy, ResBlock, ResNetEnergy,
                                      official_ebm, small_image_ebm)
from vaebm_fast.nn import WNConv2d, lip_swish
from vaebm_fast.ops import default_backend

# Parameter counts of docs/design.md#official-energy-networks, to the precision shown there.
TABLE_PARAMS = {"cifar32": "5.14M", "celeba64": "4.34M", "lsun64": "5.81M",
                "celeba256": "14.2M", "mnist": "0.68M"}
CHANNELS = {"cifar32": 128, "celeba64": 64, "lsun64": 64, "celeba256": 64, "mnist": 64}


def _official_keys(arch):
    """The key set of an official checkpoint, derived from the block table."""
    spec = OFFICIAL_EBM_ARCHS[arch]
    keys = {"conv1.weight", "conv1.bias", "conv1.log_weight_norm", "linear.weight",
            "linear.bias"}
    for i, (c_in, c_out, down) in enumerate(spec.blocks):
        for conv in ("conv1", "conv2"):
            keys |= {f"blocks.{i}.{conv}.{p}" for p in ("weight", "bias", "log_weight_norm")}
        if c_in != c_out or down:
            keys |= {f"blocks.{i}.skip.0.weight", f"blocks.{i}.skip.0.log_weight_norm"}
    return keys


def _model_keys(model):
    return {k for k in model.state_dict() if not k.startswith("spectral.")}


def _round_like(n, shown):
    digits = len(shown.rstrip("M").split(".")[1])
    return f"{n / 1e6:.{digits}f}M"


@pytest.mark.parametrize("arch", list(TABLE_PARAMS))
def test_official_family(arch):
    torch.manual_seed(0)
    model = official_ebm(arch)
    assert model.n_channel == CHANNELS[arch]
    assert _model_keys(model) == _official_keys(arch)
    n_params = sum(p.numel() for p in model.parameters())
    assert _round_like(n_params, TABLE_PARAMS[arch]) == TABLE_PARAMS[arch]
    assert model.linear.in_features == model.block_specs[-1].c_out_mult * model.n_channel
    assert model.image_size == {"cifar32": 32, "mnist": 32, "celeba256": 256}.get(arch, 64)
    # Sum pooling takes any size: the smallest that survives every downsampling keeps it cheap.
    size = 2 ** sum(spec.downsample for spec in model.block_specs)
    energy = model(torch.rand(2, 3, size, size))
    assert energy.shape == (2,)


def test_shapes_of_official_keys():
    sd = official_ebm("cifar32").state_dict()
    assert sd["conv1.weight"].shape == (128, 3, 3, 3)
    assert sd["conv1.log_weight_norm"].shape == (128, 1, 1, 1)
    assert sd["blocks.2.conv1.weight"].shape == (256, 128, 3, 3)
    assert sd["blocks.2.skip.0.weight"].shape == (256, 128, 1, 1)
    assert "blocks.2.skip.0.bias" not in sd
    assert "blocks.1.skip.0.weight" not in sd     # identity skip
    assert sd["linear.weight"].shape == (1, 256)


def test_strict_round_trip_with_official_key_set():
    torch.manual_seed(0)
    source = official_ebm("mnist", n_channel=8)
    official_sd = source.official_state_dict()
    assert set(official_sd) == _official_keys("mnist")
    checkpoint = {"model": official_sd, "optimizer": {}}
    target = official_ebm("mnist", n_channel=8, data_init=True).train()
    target.load_state_dict(checkpoint["model"], strict=True)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(target(x), source(x))  # data init did not overwrite


def test_forward_matches_the_described_computation():
    torch.manual_seed(0)
    model = ResNetEnergy(2, 4, [(1, 1, True), (1, 2, False)])
    x = torch.rand(3, 2, 8, 8)
    h = lip_swish(model.conv1(x))
    b0, b1 = model.blocks
    h = lip_swish(F.avg_pool2d(b0.conv2(lip_swish(b0.conv1(h))) + b0.skip(h), 2))
    h = lip_swish(b1.conv2(lip_swish(b1.conv1(h))) + b1.skip(h))
    expected = model.linear(h.sum(dim=(2, 3))).squeeze(1)
    torch.testing.assert_close(model(x), expected)


def test_resblock_skip_rules():
    assert ResBlock(4, 4).skip is None
    assert ResBlock(4, 4, downsample=True).skip is not None
    assert ResBlock(4, 8).skip[0].bias is None
    assert ResBlock(4, 8, downsample=True)(torch.rand(1, 4, 6, 6)).shape == (1, 8, 3, 3)


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_energy_is_differentiable_in_x(request, backend):
    """The gradient Langevin uses, against finite differences, on a float64 model; with the
    native backend the activations run the swish op and its own backward formula. (fast_mode
    compares v^T J u for random u, v: one number instead of the whole Jacobian, which a wrong
    gradient still misses only with probability zero.)"""
    if backend == "native":
        request.getfixturevalue("native")
    torch.manual_seed(0)
    model = small_image_ebm(n_channel=4).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    with default_backend(backend):
        assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-7, rtol=1e-5,
                                        fast_mode=True)


def test_input_validation_and_arch_errors():
    model = official_ebm("mnist", n_channel=4)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="cifar32.*celeba64.*lsun64.*celeba256.*mnist"):
        official_ebm("imagenet")
    with pytest.raises(ValueError, match="previous layer"):
        ResNetEnergy(3, 4, [(1, 2, True), (1, 1, False)])


def test_official_data_init_runs_on_first_training_forward():
    """The official data-dependent init: in the first training forward every weight-normalised
    conv sets its bias and gain from the statistics of its own input batch so that each of its
    output channels has mean 0 and std 1/5 over batch and space (a conv without bias, the 1x1
    skips, only the std)."""
    torch.manual_seed(0)
    model = official_ebm("mnist", n_channel=4, data_init=True).train()
    outputs = {}
    for name, m in model.named_modules():
        if isinstance(m, WNConv2d):
            m.register_forward_hook(
                lambda mod, args, out, name=name: outputs.setdefault(name, out.detach()))
    model(torch.rand(8, 3, 32, 32))
    assert not any(getattr(m, "data_init_pending", False) for m in model.modules())
    convs = {name: m for name, m in model.named_modules() if isinstance(m, WNConv2d)}
    assert outputs.keys() == convs.keys() and any(m.bias is None for m in convs.values())
    for name, y in outputs.items():
        mean, std = y.double().mean(dim=(0, 2, 3)), y.double().std(dim=(0, 2, 3))
        torch.testing.assert_close(std, torch.full_like(std, 0.2), atol=1e-4, rtol=0,
                                   msg=f"{name}: per-channel std after data init")
        if convs[name].bias is not None:
            torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0,
                                       msg=f"{name}: per-channel mean after data init")
    # A later forward does not initialise again.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.rand(8, 3, 32, 32) * 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_small_image_ebm():
    model = small_image_ebm(in_channels=1, n_channel=16)
    assert [tuple(s) for s in model.block_specs] == [(1, 1, True), (1, 1, False),
                                                       (1, 2, True), (2, 2, False)]
    assert model(torch.rand(5, 1, 8, 8)).shape == (5,)
    assert model.spectral_norm_loss().dim() == 0
    deeper = small_image_ebm(in_channels=3, n_channel=8, num_downsamples=3, blocks_per_stage=1,
                             image_size=16)
    assert deeper(torch.rand(1, 3, 16, 16)).shape == (1,)


@pytest.mark.parametrize("activation", ["lipswish", "swish"])
def test_mlp_energy(activation):
    torch.manual_seed(0)
    model = MLPEnergy(in_dim=2, hidden=16, depth=3, activation=activation)
    x = torch.randn(7, 2, requires_grad=True)
    e = model(x)
    assert e.shape == (7,)
    # The gradient in x against finite differences, on a float64 copy.
    x64 = x.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(copy.deepcopy(model).double(), (x64,), atol=1e-7, rtol=1e-5)
    loss = model.spectral_norm_loss(n_iter=200)
    exact = sum(torch.linalg.matrix_norm(m.weight, ord=2) for m in model.hidden
                if isinstance(m, torch.nn.Linear))
    torch.testing.assert_close(loss, exact, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(torch.randn(7, 3))


def test_mlp_energy_errors():
    with pytest.raises(ValueError, match="activation"):
        MLPEnergy(activation="relu")
    with pytest.raises(ValueError, match="depth"):
        MLPEnergy(depth=0)
