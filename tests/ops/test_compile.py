"""The public ops under torch.compile: one graph (fullgraph=True, no breaks), same results.

``aot_eager`` traces through the ops' fake kernels and functionalizes the in-place ones
(schemas with ``(a!)``), which is what torch.compile needs from a custom op; it skips code
generation, so the test stays fast on a 2-core CPU.
"""
import pytest
import torch

from vaebm_fast.ops import langevin_step_, lip_swish, swish


def compiled(fn, fullgraph=True):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=fullgraph)


@pytest.mark.parametrize("backend", ["native", "triton", "eager"])
def test_langevin_chain_compiles_to_one_graph(backend, request):
    fixture = {"native": "native", "triton": "triton_device"}.get(backend, "one_thread")
    device = request.getfixturevalue(fixture) if backend == "triton" else "cpu"
    request.getfixturevalue(fixture)
    def chain(xs, gs, half):
        offset = 0
        for _ in range(3):  # a short chain: offsets advance, no noise is reused
            offset = langevin_step_(xs, gs, step_size=0.05, seed=9, offset=offset,
                                    grad_clip=1.0, half_sq_norm=half, backend=backend)
        return lip_swish(xs[0], backend="eager") + swish(xs[1], backend="eager")

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 5, generator=gen).to(device) for _ in range(2)]
    gs = [torch.randn(3, 5, generator=gen).to(device) for _ in range(2)]
    eager_xs, eager_half = [x.clone() for x in xs], torch.empty(3, device=device)
    expected = chain(eager_xs, gs, eager_half)
    half = torch.empty(3, device=device)
    out = compiled(chain)(xs, gs, half)
    torch.testing.assert_close(out, expected)
    for a, b in zip(xs, eager_xs):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(half, eager_half)


