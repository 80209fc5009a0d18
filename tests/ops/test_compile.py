"""The public ops under torch.compile: one graph (fullgraph=True, no breaks), same results.

``aot_eager`` traces through the ops' fake kernels and functionalizes the in-place ones
(schemas with ``(a!)``), which is what torch.compile needs from a custom op; it skips code
generation, so the test stays fast on a 2-core CPU.
"""
import pytest
import torch

from vaebm_fast.ops import lip_swish, replay_gather, replay_scatter_, swish


def compiled(fn, fullgraph=True):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=fullgraph)


def test_swish_forward_backward_compiles(native):
    def loss(x):
        return (swish(x, backend="native") * lip_swish(x, backend="native")).sum()

    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(loss(x), x)
    (got,) = torch.autograd.grad(compiled(loss)(x), x)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("wrapper", [True, False], ids=["public op", "torch.ops"])
def test_replay_round_trip_compiles(native, wrapper):
    # The public wrappers check the index range and uniqueness, which reads index (a
    # data-dependent graph break); the torch.ops they call compile into one graph.
    def step(buffer, index, reinit):
        if wrapper:
            batch, _ = replay_gather(buffer, index, reinit, seed=4, offset=0, backend="native")
            replay_scatter_(buffer, index, batch * 0.5, backend="native")
        else:
            batch = torch.ops.vaebm_fast.replay_gather(buffer, index, reinit, 4, 0)
            torch.ops.vaebm_fast.replay_scatter_(buffer, index, batch * 0.5)
        return batch

    buffer = torch.randn(6, 2, 3)
    index, reinit = torch.tensor([4, 0, 2]), torch.tensor([False, True, False])
    eager_buffer = buffer.clone()
    expected = step(eager_buffer, index, reinit)
    got = compiled(step, fullgraph=not wrapper)(buffer, index, reinit)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(buffer, eager_buffer)
