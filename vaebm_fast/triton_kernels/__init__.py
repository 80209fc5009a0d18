"""Triton kernels of vaebm_fast: one module per op (kernel, launcher, torch.library op).

Each module defines ``@triton.jit`` kernels, a launcher that checks arguments and picks the
grid, and a ``torch.library.custom_op`` named ``vaebm_fast_triton::<op>`` (with
``register_fake`` and, for differentiable ops, ``register_autograd``), so the kernels are
opaque ops to ``torch.compile``, launch on the current stream and allocate through PyTorch.

Nothing here is imported by ``import vaebm_fast``: the public ops in ``vaebm_fast.ops`` import a
module of this package the first time they run with ``backend="triton"`` (or ``"auto"`` picks
it), after ``vaebm_fast._triton.status()`` found Triton importable. Kernels run on CUDA
tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check them in CI).

Numerics follow the eager references in ``vaebm_fast.ops`` (the specifications); the tests in
``tests/test_triton_*.py`` compare every kernel with its reference.
"""
