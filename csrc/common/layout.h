// The memory layout an elementwise kernel gives its output, shared by the CPU and CUDA glue
// (and mirrored by vaebm_fast/ops/swish.py:activation_format for the fake kernels).
#pragma once

#include <ATen/core/Tensor.h>

namespace vaebm_fast {

// Channels-last when x is a 4-D tensor stored channels-last (the activations of a model
// prepared in channels-last, FastSampler's default on the CPU), row-major otherwise. An
// elementwise op that keeps its input's layout spares the next convolution a conversion; a
// tensor that is both (C == 1 or H == W == 1) counts as row-major.
inline at::MemoryFormat activation_format(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace vaebm_fast
