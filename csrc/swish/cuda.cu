// CUDA kernels of vaebm_fast::swish_forward / swish_backward (torch glue:
// the end of this file; references: swish_reference / swish_backward_reference in
// vaebm_fast/ops/swish.py; the CPU kernels are csrc/swish/cpu.cpp):
//
//   forward:  y  = scale * (x * s),                     s = sigmoid(x) = 1 / (1 + exp(-x))
//   backward: dx = scale * g * (s + x * s * (1 - s))    (sigmoid recomputed from x)
//
// Element-wise, grid-stride, with 16-byte vector loads/stores (4 float, 2 double, 8 half /
// bfloat16 per access) when every pointer is 16-byte aligned, and a scalar path otherwise;
// the n % V tail elements are done by the first threads after the vector loop.
// Memory traffic per element: forward reads x and writes y (2 * itemsize: 8 bytes fp32,
// 4 bytes fp16), backward reads g and x and writes dx (3 * itemsize: 12 bytes fp32). One expf
// and one division per element keep both far below the compute roof, so they run at DRAM
// bandwidth. Arithmetic in float for fp32/fp16/bf16 (rounded once when stored), double for fp64.
#include "../common/cuda_device.cuh"
#include "../common/cuda_types.h"

// The launcher interface (the torch glue below calls it).
namespace vaebm_fast {
namespace cuda {

// y[i] = scale * x[i] * sigmoid(x[i]), i < n; contiguous device arrays of `dtype`.
cudaError_t swish_forward(Dtype dtype, const void* x, void* y, int64_t n, double scale,
                          cudaStream_t stream);

// dx[i] = scale * g[i] * (s + x[i] s (1 - s)), s = sigmoid(x[i]), i < n.
cudaError_t swish_backward(Dtype dtype, const void* grad, const void* x, void* dx, int64_t n,
                           double scale, cudaStream_t stream);

}  // namespace cuda
}  // namespace vaebm_fast


namespace vaebm_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename A>
__device__ __forceinline__ A swish_fwd(A x, A scale) {
  return scale * (x * dev::sigmoid(x));
}

template <typename A>
__device__ __forceinline__ A swish_bwd(A g, A x, A scale) {
  const A s = dev::sigmoid(x);
  return scale * g * (s + x * s * (A(1) - s));
}

// V elements per access (V = 1: scalar path, any alignment).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
swish_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, dev::Acc<T> scale) {
  using A = dev::Acc<T>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n_vec = n / V;
  for (int64_t i = tid; i < n_vec; i += stride) {
    const dev::Pack<T, V> in = dev::load_pack<T, V>(x + i * V);
    dev::Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = dev::from_acc<T>(swish_fwd<A>(dev::to_acc(in.v[j]), scale));
    }
    dev::store_pack<T, V>(y + i * V, out);
  }
  const int64_t tail = n_vec * V + tid;
  if (V > 1 && tail < n) dev::store(y + tail, swish_fwd<A>(dev::load(x + tail), scale));
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
swish_backward_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx,
                      int64_t n, dev::Acc<T> scale) {
  using A = dev::Acc<T>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t n_vec = n / V;
  for (int64_t i = tid; i < n_vec; i += stride) {
    const dev::Pack<T, V> gv = dev::load_pack<T, V>(g + i * V);
    const dev::Pack<T, V> xv = dev::load_pack<T, V>(x + i * V);
    dev::Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = dev::from_acc<T>(swish_bwd<A>(dev::to_acc(gv.v[j]), dev::to_acc(xv.v[j]), scale));
    }
    dev::store_pack<T, V>(dx + i * V, out);
  }
  const int64_t tail = n_vec * V + tid;
  if (V > 1 && tail < n) {
    dev::store(dx + tail, swish_bwd<A>(dev::load(g + tail), dev::load(x + tail), scale));
  }
}

}  // namespace

cudaError_t swish_forward(Dtype dtype, const void* x, void* y, int64_t n, double scale,
                          cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = dev::kVec16<T>;
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    const auto sc = static_cast<dev::Acc<T>>(scale);
    if (dev::aligned(x, 16) && dev::aligned(y, 16)) {
      swish_forward_kernel<T, V><<<dev::grid_for(n / V, kThreads), kThreads, 0, stream>>>(
          xp, yp, n, sc);
    } else {
      swish_forward_kernel<T, 1><<<dev::grid_for(n, kThreads), kThreads, 0, stream>>>(
          xp, yp, n, sc);
    }
    return cudaGetLastError();
  });
}

cudaError_t swish_backward(Dtype dtype, const void* grad, const void* x, void* dx, int64_t n,
                           double scale, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = dev::kVec16<T>;
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(x);
    T* dp = static_cast<T*>(dx);
    const auto sc = static_cast<dev::Acc<T>>(scale);
    if (dev::aligned(grad, 16) && dev::aligned(x, 16) && dev::aligned(dx, 16)) {
      swish_backward_kernel<T, V><<<dev::grid_for(n / V, kThreads), kThreads, 0, stream>>>(
          gp, xp, dp, n, sc);
    } else {
      swish_backward_kernel<T, 1><<<dev::grid_for(n, kThreads), kThreads, 0, stream>>>(
          gp, xp, dp, n, sc);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace vaebm_fast

#ifndef VAEBM_FAST_KERNELS_ONLY  // the torch glue (see csrc/common/cuda_glue.h)
// torch glue of the CUDA Swish kernels (the kernels above). Mirrors csrc/swish/cpu.cpp:
// outputs have x's layout (activation_format), inputs are read through copies in that layout.
#include <torch/library.h>

#include "../common/layout.h"
#include "../common/cuda_glue.h"

namespace vaebm_fast {
namespace cuda {
namespace {

at::Tensor swish_forward_cuda(const at::Tensor& x, double scale) {
  check_floating(x, "swish_forward", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  VAEBM_FAST_CUDA_LAUNCH(swish_forward(to_dtype(x.scalar_type(), "swish_forward"),
                                       xc.const_data_ptr(), y.mutable_data_ptr(), xc.numel(),
                                       scale, current_stream()));
  return y;
}

at::Tensor swish_backward_cuda(const at::Tensor& grad, const at::Tensor& x, double scale) {
  check_floating(x, "swish_backward", "x");
  check_floating(grad, "swish_backward", "grad");
  check_like(grad, x, "swish_backward", "grad", "x");
  check_same_shape(grad, x, "swish_backward", "grad", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt), gc = grad.contiguous(fmt);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  VAEBM_FAST_CUDA_LAUNCH(swish_backward(to_dtype(x.scalar_type(), "swish_backward"),
                                        gc.const_data_ptr(), xc.const_data_ptr(),
                                        dx.mutable_data_ptr(), xc.numel(), scale,
                                        current_stream()));
  return dx;
}

}  // namespace
}  // namespace cuda
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CUDA, m) {
  m.impl("swish_forward", &vaebm_fast::cuda::swish_forward_cuda);
  m.impl("swish_backward", &vaebm_fast::cuda::swish_backward_cuda);
}
#endif  // VAEBM_FAST_KERNELS_ONLY
