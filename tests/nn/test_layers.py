"""Layers: weight-normalised conv, data-dependent init, activations, SE, the BatchNorm layers
(BN-Swish, NVAEBatchNorm, ConvBNSwish, AffineSwish) and a BatchNorm's eval-mode affine map."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaebm_fast.nn import (SE, AffineSwish, BNSwish, ConvBNSwish, LipSwish, NVAEBatchNorm, Swish,
                           WNConv2d, bn_affine, bn_swish_eval, frozen_normalized_weights,
                           lip_swish, swish)


def _expected_weight(conv):
    norm = conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return conv.log_weight_norm.exp() * conv.weight / (norm + 1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=1),
    dict(kernel_size=3, padding=2, dilation=2, groups=2),
])
def test_wnconv_equals_conv2d_with_effective_weight(kwargs):
    torch.manual_seed(0)
    conv = WNConv2d(4, 6, **kwargs)
    with torch.no_grad():
        conv.log_weight_norm.normal_()  # make W_eff differ from W
    x = torch.randn(2, 4, 9, 9)
    w_eff = _expected_weight(conv)
    torch.testing.assert_close(conv.normalized_weight(), w_eff)
    ref = F.conv2d(x, w_eff, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(conv(x), ref)
    # Same default padding / output size semantics as nn.Conv2d.
    plain = nn.Conv2d(4, 6, **kwargs)
    assert conv(x).shape == plain(x).shape


def test_wnconv_init_and_keys():
    torch.manual_seed(0)
    conv = WNConv2d(3, 5, 3)
    norms = conv.weight.flatten(1).norm(dim=1)
    assert conv.log_weight_norm.shape == (5, 1, 1, 1)
    torch.testing.assert_close(conv.log_weight_norm.view(-1), torch.log(norms + 1e-2))
    assert list(conv.state_dict()) == ["weight", "bias", "log_weight_norm"]
    assert list(WNConv2d(3, 5, 1, bias=False).state_dict()) == ["weight", "log_weight_norm"]
    plain = WNConv2d(3, 5, 1, weight_norm=False)
    assert list(plain.state_dict()) == ["weight", "bias"]
    assert plain.normalized_weight() is plain.weight
    # The data-init flag is not state.
    assert list(WNConv2d(3, 5, 3, data_init=True).state_dict()) == ["weight", "bias",
                                                                     "log_weight_norm"]


def test_data_init_normalises_outputs():
    torch.manual_seed(0)
    conv = WNConv2d(3, 8, 3, padding=1, data_init=True)
    x = 3.0 * torch.randn(32, 3, 8, 8) + 2.0
    assert conv.data_init_pending
    y = conv(x)
    assert not conv.data_init_pending
    # bias = -m/(5s), log_weight_norm = -log(5s): zero mean, std 1/5 per channel.
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.full((8,), 0.2), atol=1e-4, rtol=0)
    # It runs once only.
    before = conv.log_weight_norm.clone()
    conv(x * 10)
    torch.testing.assert_close(conv.log_weight_norm, before)


def test_data_init_waits_for_training_mode():
    conv = WNConv2d(3, 4, 3, data_init=True).eval()
    before = conv.log_weight_norm.clone()
    conv(torch.randn(4, 3, 5, 5))
    assert conv.data_init_pending
    torch.testing.assert_close(conv.log_weight_norm, before)


def test_loaded_weights_are_not_overwritten_by_data_init():
    torch.manual_seed(0)
    source = WNConv2d(3, 4, 3, padding=1)
    target = WNConv2d(3, 4, 3, padding=1, data_init=True)
    target.load_state_dict(source.state_dict())
    assert not target.data_init_pending
    x = 5.0 * torch.randn(8, 3, 6, 6)
    torch.testing.assert_close(target(x), source(x))
    for name, p in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], p)


def test_data_init_inside_a_parent_module_load():
    parent = nn.Sequential(WNConv2d(3, 4, 3, data_init=True), WNConv2d(4, 4, 1, data_init=True))
    parent.load_state_dict(nn.Sequential(WNConv2d(3, 4, 3), WNConv2d(4, 4, 1)).state_dict())
    assert not any(m.data_init_pending for m in parent)


def test_official_duplicate_weight_alias_loads():
    conv = WNConv2d(4, 4, 1, bias=False, weight_norm=False)
    sd = {"weight": torch.randn(4, 4, 1, 1)}
    sd["weight_normalized"] = sd["weight"]
    conv.load_state_dict(sd, strict=True)
    torch.testing.assert_close(conv.weight, sd["weight"])


def test_frozen_normalized_weights_matches_and_blocks_weight_grads():
    torch.manual_seed(0)
    conv = WNConv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5, requires_grad=True)
    ref = conv(x)
    with frozen_normalized_weights(conv):
        out = conv(x)
        out.sum().backward()
    torch.testing.assert_close(out, ref)
    assert x.grad is not None and conv.weight.grad is None and conv.log_weight_norm.grad is None
    assert conv._frozen_weight is None


def test_activations():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(swish(x), x * torch.sigmoid(x))
    torch.testing.assert_close(lip_swish(x), x * torch.sigmoid(x) / 1.1)
    torch.testing.assert_close(Swish()(x), swish(x))
    torch.testing.assert_close(LipSwish()(x), lip_swish(x))
    # LipSwish is 1-Lipschitz.
    grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    slope = torch.diff(lip_swish(grid)) / torch.diff(grid)
    assert slope.abs().max() <= 1.0


def test_se_keys_and_gate():
    torch.manual_seed(0)

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.se = SE(64, 64)

    cell = Cell()
    assert sorted(cell.state_dict()) == ["se.se.0.bias", "se.se.0.weight",
                                         "se.se.2.bias", "se.se.2.weight"]
    assert cell.se.se[0].out_features == 4          # max(64 // 16, 4)
    assert SE(256, 256).se[0].out_features == 16
    x = torch.randn(2, 64, 3, 3)
    gate = torch.sigmoid(cell.se.se[2](torch.relu(cell.se.se[0](x.mean(dim=(2, 3))))))
    torch.testing.assert_close(cell.se(x), x * gate[:, :, None, None])


def test_bnswish():
    m = BNSwish(5)
    assert m.bn.momentum == 0.05 and m.bn.eps == 1e-5
    x = torch.randn(4, 5, 3, 3)
    ref = nn.BatchNorm2d(5, momentum=0.05)(x)
    torch.testing.assert_close(m(x), swish(ref))
    assert sorted(m.state_dict()) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean",
                                      "bn.running_var", "bn.weight"]
    # An official fused BN-Swish has its BN keys one level up; they load strictly.
    official = {k[len("bn."):]: v + 1 for k, v in m.state_dict().items()}
    m.load_state_dict(official, strict=True)
    torch.testing.assert_close(m.bn.running_var, official["running_var"])


def _eval_bn(c=3, affine=True, seed=0, cls=nn.BatchNorm2d):
    """A BatchNorm in eval mode with non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    bn = cls(c, affine=affine)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    if affine:
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (4, 3, 5, 2)), (nn.BatchNorm1d, (4, 3))])
def test_bn_affine_is_the_eval_mode_batchnorm(affine, cls, shape):
    bn = _eval_bn(affine=affine, cls=cls)
    x = torch.randn(shape, dtype=torch.float64)
    bn64 = bn.double()
    view = (1, -1) + (1,) * (len(shape) - 2)
    for dtype in (None, torch.float64):
        scale, shift = bn_affine(bn64, dtype)
        assert scale.shape == shift.shape == (3,) and scale.dtype == torch.float64
        torch.testing.assert_close(x * scale.view(view) + shift.view(view), bn64(x))
    # float32 BatchNorm: its own dtype by default, float64 on request.
    bn32 = bn.float()
    assert bn_affine(bn32)[0].dtype == torch.float32
    assert bn_affine(bn32, torch.float64)[1].dtype == torch.float64


def test_bn_affine_is_differentiable_in_the_affine_parameters():
    bn = _eval_bn().double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    scale, shift = bn_affine(bn)
    y = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [bn.weight, bn.bias], g)
    want = torch.autograd.grad(bn(x), [bn.weight, bn.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("be", ["eager", "native"])
@pytest.mark.parametrize("affine", [True, False])
def test_bn_swish_eval_matches_swish_of_bn(be, affine, request):
    if be == "native":
        request.getfixturevalue("native")
    bn = _eval_bn(affine=affine)
    x = (2 * torch.randn(2, 3, 5, 7)).requires_grad_()
    y = bn_swish_eval(x, bn, backend=be)
    xr = x.detach().clone().requires_grad_()
    yr = F.silu(bn(xr))
    torch.testing.assert_close(y, yr, atol=1e-6, rtol=1e-5)
    g = torch.randn(y.shape)
    params = list(bn.parameters())
    grads = torch.autograd.grad(y, [x] + params, g)
    rgrads = torch.autograd.grad(yr, [xr] + params, g)
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bn_affine_and_bn_swish_eval_need_running_stats():
    bn = nn.BatchNorm2d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        bn_affine(bn)
    with pytest.raises(ValueError, match="running statistics"):
        bn_swish_eval(torch.zeros(2, 3, 4, 4), bn)


def test_nvae_batchnorm_and_conv_bn_swish_keys_and_forward():
    torch.manual_seed(0)
    norm = NVAEBatchNorm(4)
    assert norm.bn.momentum == 0.05 and norm.bn.eps == 1e-5
    assert sorted(norm.state_dict()) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean",
                                         "bn.running_var", "bn.weight"]
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(norm.eval()(x), norm.bn(x))

    cbs = ConvBNSwish(4, 6, kernel_size=3, stride=2, groups=2)
    assert sorted(cbs.state_dict()) == ["conv.0.weight", "conv.1.bn.bias",
                                        "conv.1.bn.num_batches_tracked", "conv.1.bn.running_mean",
                                        "conv.1.bn.running_var", "conv.1.bn.weight"]
    conv = cbs.conv[0]
    assert conv.padding == (1, 1) and conv.groups == 2 and not conv.weight_norm
    cbs.eval()
    ref = swish(cbs.conv[1].bn(F.conv2d(x, conv.weight, None, 2, 1, 1, 2)))
    torch.testing.assert_close(cbs(x), ref)
    assert cbs(x).shape == (2, 6, 3, 3)


def test_affine_swish_module_casts_its_buffers_to_the_input():
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    shift = torch.tensor([0.1, -0.3], dtype=torch.float64)
    m = AffineSwish(scale, shift)
    assert sorted(m.state_dict()) == ["scale", "shift"]
    x = torch.randn(3, 2, 4)
    y = m(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.silu(x * scale.float().view(1, 2, 1)
                                         + shift.float().view(1, 2, 1)))


def _data_init_rank(rank, world_size, store_path, state, x_half, results):
    """One rank of the two-process data-init test: re-arm the init, join the gloo group, run
    the first training forward on this rank's half of the batch, report the initialised
    parameters."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    conv = WNConv2d(3, 4, 3, data_init=True)
    conv.load_state_dict(state)
    conv._data_init_pending = True  # loading marked it initialised; re-arm for the test
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        conv(x_half)
    finally:
        dist.destroy_process_group()
    # Plain lists: a tensor would travel through shared memory that dies with this process.
    results.put((rank, conv.bias.tolist(), conv.log_weight_norm.flatten().tolist()))


def test_data_init_over_two_processes_matches_single_process_on_the_whole_batch(tmp_path):
    """Two gloo ranks, each with half of a batch, pool the statistics: the same bias and gain
    as one process initialising on the whole batch. The halves have very different statistics,
    so local moments, or pooled sums divided by a local count, give other values."""
    import torch.distributed as dist
    import torch.multiprocessing as mp
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        # (With a group already here the single-process reference would itself be pooled.)
        pytest.skip("needs torch.distributed with the gloo backend and no existing group")
    torch.manual_seed(0)
    x = torch.cat([torch.randn(6, 3, 6, 6), 3.0 * torch.randn(10, 3, 6, 6) + 2.0])
    whole = WNConv2d(3, 4, 3, data_init=True)
    state = {k: v.clone() for k, v in whole.state_dict().items()}
    whole(x)  # no process group in this process: local statistics of the whole batch

    # Unequal halves (6 and 10 samples): the pooled count must be the sum of the ranks'.
    halves = [x[:6].clone(), x[6:].clone()]
    # fork where the platform has it: the ranks need no fresh interpreter (spawn would import
    # torch twice more, seconds on a 2-core machine); they only use this CPU conv.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results = ctx.Queue()
    store = str(tmp_path / "store")
    procs = [ctx.Process(target=_data_init_rank, args=(r, 2, store, state, halves[r], results))
             for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        got = dict((rank, (bias, gain)) for rank, bias, gain in
                   (results.get(timeout=60) for _ in procs))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]
    for rank in range(2):
        bias, gain = (torch.tensor(v) for v in got[rank])
        torch.testing.assert_close(bias, whole.bias.detach())
        torch.testing.assert_close(gain, whole.log_weight_norm.detach().flatten())
    # One rank alone would have initialised differently: the pooling is what makes them equal.
    alone = WNConv2d(3, 4, 3, data_init=True)
    alone.load_state_dict(state)
    alone._data_init_pending = True
    alone(halves[0])
    assert not torch.allclose(alone.bias, whole.bias, atol=1e-2)


def test_data_init_without_weight_norm_rescales_weight():
    torch.manual_seed(0)
    conv = WNConv2d(3, 4, 3, weight_norm=False, data_init=True)
    y = conv(torch.randn(16, 3, 6, 6) * 4)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.full((4,), 0.2), atol=1e-4, rtol=0)
