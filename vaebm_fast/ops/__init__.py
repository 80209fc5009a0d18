"""Hot-path ops of vaebm_fast, one function per op.

Every op has an eager reference in plain PyTorch (its specification, and the fallback) and
dispatches to the fastest available backend; see ``_dispatch`` for how the backend is chosen
and :func:`vaebm_fast.info.format_info` for what is available on this machine.

Importing this package loads no native code and queries no device; the compiled extension is
loaded the first time an op needs it.
"""
from ._dispatch import (BackendUnavailableError, backend_availability, default_backend,
                        get_default_backend, registered_ops, set_default_backend)
from .langevin import LangevinStepper, langevin_step_, langevin_step_reference
from .rng import (philox4x32, philox4x32_reference, philox_normal,
                  philox_normal_reference)

__all__ = [
    "langevin_step_", "langevin_step_reference", "LangevinStepper",
    "philox4x32", "philox4x32_reference", "philox_normal", "philox_normal_reference",
    "set_default_backend", "get_default_backend", "default_backend", "backend_availability",
    "registered_ops", "BackendUnavailableError",
]

from .power_iteration import power_iteration_, spectral_norms

__all__ += ["power_iteration_", "spectral_norms"]

from .swish import lip_swish, swish, swish_backward_reference, swish_reference

__all__ += ["swish", "lip_swish", "swish_reference", "swish_backward_reference"]

from .replay import (replay_gather, replay_gather_reference, replay_scatter_,
                     replay_scatter_reference)

__all__ += ["replay_gather", "replay_gather_reference", "replay_scatter_",
            "replay_scatter_reference"]

from .epilogues import (affine_swish, affine_swish_backward_reference, affine_swish_reference,
                        bn_fold, bn_swish_eval, ebm_block_tail,
                        ebm_block_tail_backward_reference, ebm_block_tail_reference,
                        nvae_cell_tail, nvae_cell_tail_backward_reference,
                        nvae_cell_tail_reference)

__all__ += ["ebm_block_tail", "nvae_cell_tail", "affine_swish", "bn_swish_eval", "bn_fold",
            "ebm_block_tail_reference", "nvae_cell_tail_reference", "affine_swish_reference",
            "ebm_block_tail_backward_reference", "nvae_cell_tail_backward_reference",
            "affine_swish_backward_reference"]
