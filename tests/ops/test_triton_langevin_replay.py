"""Triton kernels of the replay ops vs their eager references; the public ops' "triton"
backend; opcheck. (langevin_step_'s Triton kernels are tested in test_langevin.py.)

Runs in Triton's CPU interpreter without a GPU (tests/conftest.py), so sizes are small but
odd: several programs per launch, unaligned offsets, rows ending mid-block."""
import math

import pytest
import torch

from vaebm_fast.ops import (BackendUnavailableError, philox_normal_reference, replay_gather,
                            replay_gather_reference, replay_scatter_, replay_scatter_reference)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Same arithmetic as the reference; differences come from the normals (a few float32 ulps)
# and, for float16/bfloat16, a rounding that a tiny difference can flip by one ulp.
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-6), torch.float64: dict(atol=2e-6, rtol=0),
       torch.float16: dict(atol=2e-3, rtol=1e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1e-2)}


@pytest.fixture
def tl_replay(triton_device):
    from vaebm_fast.triton_kernels import replay
    return replay


def test_unavailable_triton_raises_with_reason(monkeypatch):
    import vaebm_fast._triton as triton_status
    from vaebm_fast.ops import _dispatch
    monkeypatch.setattr(triton_status, "device_reason", lambda device_type: "no Triton here")
    monkeypatch.setattr(_dispatch, "_cache", {})
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        replay_gather(torch.zeros(2, 3), torch.tensor([0]), torch.tensor([False]), seed=0,
                      offset=0, backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton.*no Triton here"):
        replay_scatter_(torch.zeros(2, 3), torch.tensor([0]), torch.zeros(1, 3),
                        backend="triton")


# ----------------------------------------------------------------------------- replay ops

REPLAY_SHAPES = [(3,), (2, 3, 5), (1,), (0,), (1100,)]  # odd rows, an empty row, a long row


def make_buffer(n, shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen, dtype=torch.float64).to(dtype).to(device)


def draw(n_rows, batch, device, seed=0, p=0.5):
    gen = torch.Generator().manual_seed(seed + 1)
    index = torch.randint(0, max(n_rows, 1), (batch,), generator=gen)
    reinit = torch.rand(batch, generator=gen) < p
    return index.to(device), reinit.to(device)


def assert_gather_equal(out, ref, reinit):
    """Bit-exact on gathered rows, close on fresh ones."""
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    assert torch.equal(out[~reinit], ref[~reinit])
    torch.testing.assert_close(out[reinit], ref[reinit], **TOL[out.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", REPLAY_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["mixed", "all", "none"])
def test_gather_matches_reference(triton_device, dtype, shape, mode):
    buffer = make_buffer(11, shape, dtype, triton_device)
    index, reinit = draw(11, 5, triton_device)
    reinit = {"mixed": reinit, "all": torch.ones_like(reinit),
              "none": torch.zeros_like(reinit)}[mode]
    args = dict(seed=2**40 + 3, offset=4 * 2**32 - 5)  # calls cross 2**32
    ref, end_ref = replay_gather_reference(buffer, index, reinit, **args)
    out, end = replay_gather(buffer, index, reinit, backend="triton", **args)
    assert end == end_ref == args["offset"] + 5 * math.prod(shape)
    assert_gather_equal(out, ref, reinit)


def test_gather_numbering(triton_device):
    buffer = make_buffer(5, (2, 3), torch.float32, triton_device)
    index = torch.tensor([4, 0, 2, 1], device=triton_device)
    reinit = torch.tensor([False, True, False, True], device=triton_device)
    out, end = replay_gather(buffer, index, reinit, seed=7, offset=10, backend="triton")
    assert end == 10 + 4 * 6
    noise = philox_normal_reference(24, seed=7, offset=10, device=triton_device).view(4, 2, 3)
    assert torch.equal(out[0], buffer[4]) and torch.equal(out[2], buffer[2])
    torch.testing.assert_close(out[1], noise[1], **TOL[torch.float32])
    torch.testing.assert_close(out[3], noise[3], **TOL[torch.float32])


def test_gather_empty_batch_and_empty_buffer(triton_device):
    buffer = make_buffer(4, (2, 5), torch.float32, triton_device)
    out, end = replay_gather(buffer, torch.zeros(0, dtype=torch.int64, device=triton_device),
                             torch.zeros(0, dtype=torch.bool, device=triton_device), seed=0,
                             offset=3, backend="triton")
    assert out.shape == (0, 2, 5) and end == 3
    empty = make_buffer(0, (3,), torch.float32, triton_device)
    index = torch.tensor([-5, 100], device=triton_device)  # not read for reinit rows
    reinit = torch.ones(2, dtype=torch.bool, device=triton_device)
    ref, _ = replay_gather_reference(empty, index, reinit, seed=1, offset=0)
    out, _ = replay_gather(empty, index, reinit, seed=1, offset=0, backend="triton")
    assert_gather_equal(out, ref, reinit)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_non_contiguous_buffer(triton_device, dtype):
    base = make_buffer(6, (5, 8), dtype, triton_device)
    index, reinit = draw(6, 7, triton_device, p=0.4)
    for buffer in (base.transpose(1, 2), base[::2], base[:, :, ::3], base[:1].expand(6, 5, 8)):
        idx = index % buffer.shape[0]
        ref, e1 = replay_gather_reference(buffer, idx, reinit, seed=3, offset=5)
        out, e2 = replay_gather(buffer, idx, reinit, seed=3, offset=5, backend="triton")
        assert e1 == e2
        assert_gather_equal(out, ref, reinit)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", REPLAY_SHAPES, ids=str)
def test_scatter_matches_reference(triton_device, dtype, shape):
    buffer = make_buffer(10, shape, dtype, triton_device)
    index = torch.randperm(10, generator=torch.Generator().manual_seed(2))[:6].to(triton_device)
    values = make_buffer(6, shape, dtype, triton_device, seed=4)
    ref, tri = buffer.clone(), buffer.clone()
    replay_scatter_reference(ref, index, values)
    version = tri._version
    replay_scatter_(tri, index, values, backend="triton")
    assert torch.equal(tri, ref)
    assert tri._version > version
    if math.prod(shape):
        assert not torch.equal(tri, buffer)


def test_scatter_empty_and_non_contiguous(triton_device):
    buffer = make_buffer(4, (2, 5), torch.float32, triton_device)
    before = buffer.clone()
    replay_scatter_(buffer, torch.zeros(0, dtype=torch.int64, device=triton_device),
                    make_buffer(0, (2, 5), torch.float32, triton_device), backend="triton")
    assert torch.equal(buffer, before)
    for view in (lambda b: b.transpose(1, 2), lambda b: b[::2], lambda b: b[:, :, ::2]):
        base = make_buffer(8, (5, 4), torch.float32, triton_device)
        target = view(base)
        index = torch.tensor([3, 0], device=triton_device) % target.shape[0]
        values = make_buffer(2, tuple(target.shape[1:]), torch.float32, triton_device, seed=3)
        expected_base = base.clone()
        view(expected_base)[index] = values
        replay_scatter_(target, index, values, backend="triton")
        assert torch.equal(base, expected_base)  # the view's rows, and nothing else


def test_replay_direct_calls_stay_in_bounds(triton_device, tl_replay):
    # No host-syncing range check in the kernels: out-of-range rows gather as zeros and are not
    # scattered (the public ops raise ValueError before).
    buffer = make_buffer(4, (3,), torch.float32, triton_device)
    out = tl_replay.replay_gather(buffer, torch.tensor([7, 1], device=triton_device),
                                  torch.tensor([False, False], device=triton_device), 0, 0)
    assert torch.equal(out[0], torch.zeros(3, device=triton_device))
    assert torch.equal(out[1], buffer[1])
    before = buffer.clone()
    tl_replay.replay_scatter_(buffer, torch.tensor([-1], device=triton_device),
                              torch.ones(1, 3, device=triton_device))
    assert torch.equal(buffer, before)
    with pytest.raises(RuntimeError, match="sharing memory"):
        tl_replay.replay_scatter_(buffer[:1].expand(4, 3), torch.tensor([0], device=triton_device),
                                  torch.ones(1, 3, device=triton_device))


def test_replay_opcheck(triton_device, tl_replay):
    gather = torch.ops.vaebm_fast_triton.replay_gather.default
    scatter = torch.ops.vaebm_fast_triton.replay_scatter_.default
    for dtype in (torch.float32, torch.float64):
        buffer = make_buffer(6, (2, 3), dtype, triton_device)
        index = torch.tensor([5, 0, 2], device=triton_device)
        reinit = torch.tensor([False, True, False], device=triton_device)
        torch.library.opcheck(gather, (buffer, index, reinit, 3, 5))
        torch.library.opcheck(gather, (buffer.transpose(1, 2), index, reinit, 3, 5))
        torch.library.opcheck(scatter, (buffer.clone(), index,
                                        make_buffer(3, (2, 3), dtype, triton_device)))
