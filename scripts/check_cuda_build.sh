#!/usr/bin/env bash
# Build the whole extension with its CUDA kernels against a CUDA build of torch, on a machine
# without a GPU, and check that the library loads with CUDA kernels registered.
#
#   bash scripts/check_cuda_build.sh [WORKDIR]
#
# Compiling needs no GPU: nvcc builds every csrc/<op>/cuda.cu, torch glue included, and the
# library links against torch's CUDA libraries. This is the check that the glue compiles, which
# the kernels-only CMake check (VAEBM_FAST_KERNELS_ONLY) cannot do with a CPU-only torch.
#
# It installs ${TORCH_CUDA_SPEC:-torch==2.14.1} (a CUDA build whose CUDA major version matches
# the local nvcc) into a throwaway virtual environment in WORKDIR (default: a temp dir, removed
# at exit; a WORKDIR given is kept, for its logs). When
# nvcc or that torch cannot be had here, it says so and exits 0: the check is skipped, not
# failed. Takes ~10 min on 2 cores (most of it the build).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${1:-}" ]; then
  work=$1; mkdir -p "$work"
else  # our own temp folder: removed on exit (the CUDA torch in it is about 5 GB)
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fi
spec=${TORCH_CUDA_SPEC:-torch==2.14.1}

nvcc_path=$(command -v nvcc || true)
[ -n "$nvcc_path" ] || { echo "check_cuda_build: skipped (no nvcc on PATH)"; exit 0; }
# The CUDA root holding libcudart (nvcc on PATH may be a wrapper script elsewhere, and torch
# would then look for the libraries next to the wrapper).
cuda_home=""
for root in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")" \
            /usr/local/cuda /usr/local/cuda-*; do
  if [ -n "$root" ] && ls "$root"/lib*/libcudart.so* >/dev/null 2>&1; then cuda_home=$root; break; fi
done
[ -n "$cuda_home" ] || { echo "check_cuda_build: skipped (no libcudart next to nvcc; set CUDA_HOME)"; exit 0; }

python3 -m venv "$work/venv" || exit 1
py="$work/venv/bin/python"
if ! "$py" -m pip install -q "$spec" setuptools wheel ninja numpy >"$work/pip.log" 2>&1; then
  echo "check_cuda_build: skipped ($spec could not be installed here; see $work/pip.log)"
  exit 0
fi
if [ "$("$py" -c 'import torch; print(torch.version.cuda is not None)')" != True ]; then
  echo "check_cuda_build: skipped ($spec is not a CUDA build of torch)"
  exit 0
fi

# A copy of the tracked sources, so the checkout's own (CPU) build is left alone.
mkdir -p "$work/src"
git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 tar cf -) | tar xf - -C "$work/src"
cd "$work/src" || exit 1
echo "check_cuda_build: building for sm_90 against $("$py" -c 'import torch; print(torch.__version__)') with $nvcc_path (CUDA_HOME=$cuda_home)"
CUDA_HOME=$cuda_home VAEBM_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} \
  "$py" setup.py -q build_ext --inplace >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log"; echo "check_cuda_build: FAILED to build"; exit 1; }
"$py" - <<'EOF' || exit 1
import torch

import vaebm_fast._native as native
import vaebm_fast.ops  # declares the ops the library registers kernels for

st = native.status()
assert st.loaded and st.has_cuda_kernels, (st.reason, st.build_info)
for op in ("langevin_step_", "philox4x32", "philox_normal_", "swish_forward", "swish_backward",
           "replay_gather", "replay_scatter_", "power_iteration_", "spectral_norms_",
           "ebm_block_tail", "ebm_block_tail_backward", "nvae_cell_tail",
           "nvae_cell_tail_backward", "affine_swish", "affine_swish_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vaebm_fast::{op}", key), (op, key)
try:  # an error raised by a kernel's check reaches Python as an exception
    torch.ops.vaebm_fast.swish_backward(torch.zeros(3), torch.zeros(4), 1.0)
except RuntimeError:
    pass
print(f"check_cuda_build: OK ({st.path}, {st.build_info})")
EOF
