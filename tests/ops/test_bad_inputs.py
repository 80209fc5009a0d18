"""Every public op against generated inputs (hypothesis; the cases are in bad_inputs.py).

* Valid inputs (odd and empty shapes, strided/transposed/sliced/misaligned/expanded layouts,
  every kernel dtype, seeds in [0, 2**63), stream offsets at 2**32, 2**34 and 2**63 - 1,
  scalars as Python/NumPy numbers or 0-d tensors) agree with the op's eager reference within
  the dtype's tolerance, on every kernel target (few, tiny examples under Triton's interpreter).
* Invalid inputs (wrong dtypes, shapes and types, aliased outputs, the same tensor twice,
  out-of-range seeds and offsets, NaN/inf scalars, mismatched lists) raise the documented
  ValueError/TypeError with a one-line message naming the argument, on every target and on
  the eager backend, before writing anything: never a crash, a RuntimeError from a kernel or a
  silent result.

derandomize=True: the same examples on every run, so CI is reproducible; a failure prints
the case's label (shapes, dtypes, seed, offset) for a regression test.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from . import bad_inputs
from .conftest import Kernel

OPS = sorted(bad_inputs.OPS)
# Examples per property: the compiled and eager backends run a case in milliseconds; Triton's
# CPU interpreter takes ~10-100x longer per launch.
EXAMPLES = {"native": 50, "eager": 50, "triton": 8}
EXAMPLES_CUDA = 25


def _settings(kernel: Kernel):
    n = EXAMPLES_CUDA if kernel.is_cuda else EXAMPLES[kernel.backend]
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _check_invalid(case: bad_inputs.Invalid) -> None:
    outcome, detail = bad_inputs.invalid_outcome(case)
    assert outcome == "clear", f"{case.label}: {outcome}: {detail}"


def _check_valid(case: bad_inputs.Valid) -> None:
    outcome, detail = bad_inputs.valid_outcome(case)
    assert outcome == "agreed", f"{case.label}: {outcome}: {detail}"


@pytest.mark.parametrize("op", OPS)
def test_valid_inputs_agree_with_the_reference(kernel, op):
    kernel.require(bad_inputs.kernel_name(op))

    @_settings(kernel)
    @given(case=bad_inputs.valid_cases(op, kernel.backend, kernel.device))
    def prop(case):
        _check_valid(case)

    prop()


@pytest.mark.parametrize("op", OPS)
def test_invalid_inputs_raise_clear_errors(kernel, op):
    kernel.require(bad_inputs.kernel_name(op))

    @_settings(kernel)
    @given(case=bad_inputs.invalid_cases(op, kernel.backend, kernel.device))
    def prop(case):
        _check_invalid(case)

    prop()


@pytest.mark.parametrize("op", OPS)
def test_invalid_inputs_raise_clear_errors_on_eager(op):
    # The reference path has no kernel to catch a bad argument: the wrapper's checks alone.
    @_settings(Kernel("eager", "cpu"))
    @given(case=bad_inputs.invalid_cases(op, "eager", "cpu"))
    def prop(case):
        _check_invalid(case)

    prop()


@pytest.mark.parametrize("op", OPS)
def test_invalid_inputs_raise_clear_errors_under_auto(op):
    # "auto" may pick a different backend per input (by size, dtype): same errors.
    @_settings(Kernel("eager", "cpu"))
    @given(case=bad_inputs.invalid_cases(op, "auto", "cpu"))
    def prop(case):
        _check_invalid(case)

    prop()


# ------------------------------------------------------------------------------ regressions
# The defects the properties found, pinned as plain examples.

def test_stepper_checks_grads_on_every_backend(kernel):
    kernel.require("langevin_step_")
    for backend in (kernel.backend, "eager"):
        x, y = torch.zeros(4, 2, device=kernel.device), torch.zeros(3, device=kernel.device)
        step = bad_inputs.ops.LangevinStepper([x, y], step_size=0.1, backend=backend)
        with pytest.raises(ValueError, match=r"grads\[0\] must have the shape"):
            step([torch.zeros(4, 1, device=kernel.device), y.clone()], seed=0, offset=0)
        with pytest.raises(ValueError, match="same length"):
            step([torch.zeros(4, 2, device=kernel.device)], seed=0, offset=0)
        assert not x.any() and not y.any()


def test_a_view_of_a_state_passed_twice_is_refused(kernel):
    kernel.require("langevin_step_")
    x = torch.zeros(4, 2, device=kernel.device)
    with pytest.raises(ValueError, match=r"tensors\[1\] shares memory with tensors\[0\]"):
        bad_inputs.ops.langevin_step_([x, x[:2]], [x.clone(), x[:2].clone()], step_size=0.1,
                                      seed=0, offset=0, backend=kernel.backend)


def test_power_iteration_eps_nan_is_refused(kernel):
    kernel.require("power_iteration_")
    W = torch.randn(2, 3, 4, device=kernel.device)
    u, v = torch.randn(2, 3, device=kernel.device), torch.randn(2, 4, device=kernel.device)
    for eps in (float("nan"), 0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="eps"):
            bad_inputs.ops.power_iteration_(W, u, v, 2, eps, backend=kernel.backend)


def test_numpy_and_0d_tensor_scalars_are_accepted_and_bools_refused():
    import numpy as np
    x, g = torch.zeros(3), torch.ones(3)
    nxt = bad_inputs.ops.langevin_step_([x], [g], step_size=np.float32(0.5),
                                        seed=np.int64(3), offset=torch.tensor(4))
    assert nxt == 7
    normals = bad_inputs.ops.philox_normal(torch.tensor(5), seed=np.uint64(2**63 - 1),
                                           offset=np.int32(1))
    assert normals.shape == (5,)
    with pytest.raises(TypeError, match="step_size"):
        bad_inputs.ops.langevin_step_([x], [g], step_size=True, seed=0, offset=0)
    with pytest.raises(TypeError, match="n_iter"):
        bad_inputs.ops.power_iteration_(torch.randn(1, 2, 2), torch.randn(1, 2),
                                        torch.randn(1, 2), torch.tensor(True))


def test_empty_tensors_with_stride_0_are_not_sharing_memory(kernel):
    # An empty tensor has no elements to share, whatever its strides (found: a [5, 0, 1]
    # bfloat16 buffer with a stride-0 dim 0 was refused by replay_scatter_).
    kernel.require("replay_scatter_").require("langevin_step_")
    d, b = kernel.device, kernel.backend
    buffer = torch.empty(0, device=d).as_strided((5, 0, 1), (0, 1, 1))
    bad_inputs.ops.replay_scatter_(buffer, torch.tensor([0, 4], device=d),
                                   torch.empty(2, 0, 1, device=d), backend=b)
    state = torch.empty(0, device=d).as_strided((3, 0), (0, 1))
    assert bad_inputs.ops.langevin_step_([state], [torch.empty(3, 0, device=d)], step_size=0.1,
                                         seed=0, offset=5, backend=b) == 5
