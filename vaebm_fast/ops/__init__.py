"""Hot-path ops of vaebm_fast, one module per op.

Each op module holds the op's specification (docstring and eager reference), its argument
validation (which is also its fake kernel), its schema in both operator namespaces
(``_library``), its autograd formula and its public function, which dispatches to the fastest
available backend (``_dispatch``): the compiled kernels (``torch.ops.vaebm_fast``), the Triton
kernels (``torch.ops.vaebm_fast_triton``) or the reference. See
:func:`vaebm_fast.info.format_info` for what is available on this machine.

Importing this package declares the ops (schemas, fakes, autograd) and loads no native code,
imports no Triton and queries no device: the compiled library is loaded the first time an op
dispatches, Triton the first time a Triton kernel runs.
"""
from ._dispatch import (BackendUnavailableError, backend_availability, default_backend,
                        get_default_backend, registered_ops, set_default_backend)
from .epilogues import (affine_swish, affine_swish_backward_reference, affine_swish_reference,
                        ebm_block_tail,
                        ebm_block_tail_backward_reference, ebm_block_tail_reference,
                        nvae_cell_tail, nvae_cell_tail_backward_reference,
                        nvae_cell_tail_reference)
from .langevin import (LangevinStepper, langevin_step_, langevin_step_graphed_,
                       langevin_step_reference)
from .power_iteration import power_iteration_, spectral_norms
from .replay import (replay_gather, replay_gather_reference, replay_scatter_,
                     replay_scatter_reference)
from .rng import (philox4x32, philox4x32_reference, philox_normal, philox_normal_reference,
                  philox_normal_rows_, philox_normal_rows_reference)
from .swish import lip_swish, swish, swish_backward_reference, swish_reference

__all__ = [
    # dispatch
    "set_default_backend", "get_default_backend", "default_backend", "backend_availability",
    "registered_ops", "BackendUnavailableError",
    # ops
    "langevin_step_", "langevin_step_reference", "langevin_step_graphed_", "LangevinStepper",
    "philox4x32", "philox4x32_reference", "philox_normal", "philox_normal_reference",
    "philox_normal_rows_", "philox_normal_rows_reference",
    "power_iteration_", "spectral_norms",
    "swish", "lip_swish", "swish_reference", "swish_backward_reference",
    "replay_gather", "replay_gather_reference", "replay_scatter_", "replay_scatter_reference",
    "ebm_block_tail", "nvae_cell_tail", "affine_swish",
    "ebm_block_tail_reference", "nvae_cell_tail_reference", "affine_swish_reference",
    "ebm_block_tail_backward_reference", "nvae_cell_tail_backward_reference",
    "affine_swish_backward_reference",
]
