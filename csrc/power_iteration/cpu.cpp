// CPU kernels of vaebm_fast::power_iteration_ and vaebm_fast::spectral_norms_
// (reference: _power_iteration_eager in vaebm_fast/ops/power_iteration.py).
//
// Maths. For one matrix W [R, C] with running vectors u [R] and v [C], and
// normalize(x) = x / max(||x||_2, eps), the reference repeats n_iter times
//
//     v <- normalize(W^T u),   u <- normalize(W v)
//
// and returns sigma = u^T W v with the final u and v.
//
// Fused passes. Done literally, each iteration reads W twice. Here the product W v of one
// iteration and W^T u of the next share a single pass over W: while row W_r is in L1 we take
// y_r = W_r . v and then add y_r W_r to z, so at the end of the pass y = W v and z = W^T y.
// With m = max(||y||, eps) the new u is y / m and W^T u = z / m, so
//
//     pass 0:             z = W^T u                      v = normalize(z)
//     pass t = 1..n_iter: y = W v,  z = W^T y            u = y / m
//                         (z not accumulated on the      t < n_iter: v = normalize(z / m)
//                          last pass)                    t = n_iter: sigma = u . y
//     n_iter = 0:         one pass,  sigma = sum_r u_r (W_r . v);  u, v unchanged
//
// which is the reference's recurrence up to rounding (u . y = u^T W v for the final u, v).
//
// Memory traffic per matrix: W is read n_iter + 1 times, each time row-major and in order (the
// reference reads it 2 n_iter + 1 times); u and v are read and written once; the working
// vectors (R + 2 C values) stay in L1/L2. FLOPs: 4 R C per fused pass (a dot and an axpy per
// row). One scratch block per matrix, no allocation per iteration.
//
// Parallelism: one task per matrix, over all matrices of all groups of the call (one call of
// spectral_norms_ covers every shape group of a model; it returns their sigmas concatenated).
// Tasks are taken largest first from a shared counter by at most at::get_num_threads()
// workers, which balances the CIFAR-32 EBM's 16 matrices (27 to 590K elements) on a few
// cores; a matrix is never split between threads.
//
// Dtypes: float32 and float64 (one for all groups of a call), arithmetic in that dtype (like the
// reference's bmm).
// Layout: rows of W must have unit column stride (any row and matrix strides); otherwise the
// kernel reads a contiguous copy of W. u and v may have any strides.
//
// Vectorisation: the extension is compiled for baseline x86-64, where at::vec is its generic
// implementation (arrays; GCC 12 turned its fmadd loops into scalar multiply-adds through the
// stack, 3x slower than the eager reference). The helpers below use 32-byte GCC/Clang vector
// types instead, and the per-matrix kernel is compiled twice on x86-64: for the baseline (each
// vector op becomes two SSE ops) and with target("avx2,fma") (one AVX2 FMA), the latter chosen
// at run time when the CPU has it. Everything is inlined into the two copies (flatten), so each
// is vectorised for its own instruction set.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"

namespace vaebm_fast {
namespace cpu {
namespace {

// Below this many multiply-adds in a call (all matrices, all passes) one thread does it all.
constexpr int64_t kMinParallelWork = 1 << 16;

// One matrix of a call: W [R, C] (unit column stride, rows ldw apart), u [R] and v [C] with
// strides, and where its sigma goes.
template <typename T>
struct MatrixJob {
  const T* W;
  int64_t R, C, ldw;
  T* u;
  int64_t u_stride;
  T* v;
  int64_t v_stride;
  T* sigma;
};

// ---------------------------------------------------------------- vector helpers (inlined)

// 32 bytes of T as one vector value (GCC / Clang vector extension): arithmetic is elementwise.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(32)));
};
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

// GCC warns (-Wpsabi) that returning a 32-byte vector by value has a different ABI with and
// without AVX; these helpers are always inlined inside one translation unit, so no call with
// either ABI exists.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

template <typename T>
C10_ALWAYS_INLINE typename Simd<T>::V load(const T* p) {
  typename Simd<T>::V x;
  std::memcpy(&x, p, sizeof(x));  // unaligned load
  return x;
}

template <typename T>
C10_ALWAYS_INLINE void store(T* p, typename Simd<T>::V x) {
  std::memcpy(p, &x, sizeof(x));
}

template <typename T>
C10_ALWAYS_INLINE typename Simd<T>::V splat(T x) {
  typename Simd<T>::V v;
  for (int64_t l = 0; l < kLanes<T>; ++l) v[l] = x;
  return v;
}

template <typename T>
C10_ALWAYS_INLINE T dot(const T* a, const T* b, int64_t n) {
  using V = typename Simd<T>::V;
  constexpr int64_t L = kLanes<T>;
  // Four independent accumulators hide the latency of the multiply-adds.
  V acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    acc0 += load(a + i) * load(b + i);
    acc1 += load(a + i + L) * load(b + i + L);
    acc2 += load(a + i + 2 * L) * load(b + i + 2 * L);
    acc3 += load(a + i + 3 * L) * load(b + i + 3 * L);
  }
  for (; i + L <= n; i += L) acc0 += load(a + i) * load(b + i);
  const V acc = (acc0 + acc1) + (acc2 + acc3);
  T sum = T(0);
  for (int64_t l = 0; l < L; ++l) sum += acc[l];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += alpha * x
template <typename T>
C10_ALWAYS_INLINE void axpy(T alpha, const T* x, T* y, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  const typename Simd<T>::V a = splat(alpha);
  int64_t i = 0;
  for (; i + L <= n; i += L) store(y + i, load(y + i) + a * load(x + i));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// out = x / max(||x / pre||, eps) / pre, i.e. normalize(x / pre); out may alias x.
template <typename T>
C10_ALWAYS_INLINE void normalize_scaled(const T* x, T pre, T eps, T* out, int64_t n) {
  const T norm = std::sqrt(dot(x, x, n)) / pre;
  const T denom = std::max(norm, eps) * pre;
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] / denom;
}

// ---------------------------------------------------------------- the per-matrix kernel

// Runs the recurrence of the file comment on one matrix. scratch: R + 2 C values.
template <typename T>
C10_ALWAYS_INLINE void power_iterate_matrix(const MatrixJob<T>& job, int64_t n_iter, T eps,
                                            T* scratch) {
  const int64_t R = job.R, C = job.C, ldw = job.ldw;
  T* const y = scratch;   // [R] u at first, then W v
  T* const z = y + R;     // [C] W^T y
  T* const v = z + C;     // [C] the current v
  for (int64_t r = 0; r < R; ++r) y[r] = job.u[r * job.u_stride];
  for (int64_t c = 0; c < C; ++c) v[c] = job.v[c * job.v_stride];

  if (n_iter == 0) {  // sigma = sum_r u_r (W_r . v), one pass
    T sigma = T(0);
    for (int64_t r = 0; r < R; ++r) sigma += y[r] * dot(job.W + r * ldw, v, C);
    *job.sigma = sigma;
    return;
  }

  // Pass 0: z = W^T u (rows of W scaled by u_r, accumulated), v = normalize(z).
  std::fill(z, z + C, T(0));
  for (int64_t r = 0; r < R; ++r) axpy(y[r], job.W + r * ldw, z, C);
  normalize_scaled(z, T(1), eps, v, C);

  T m = T(1), y_sq = T(0);
  for (int64_t t = 1; t <= n_iter; ++t) {
    const bool last = t == n_iter;
    if (last) {  // y = W v only
      for (int64_t r = 0; r < R; ++r) y[r] = dot(job.W + r * ldw, v, C);
    } else {     // y = W v and z = W^T y, each row read once
      std::fill(z, z + C, T(0));
      for (int64_t r = 0; r < R; ++r) {
        const T* row = job.W + r * ldw;
        y[r] = dot(row, v, C);
        axpy(y[r], row, z, C);
      }
    }
    y_sq = dot(y, y, R);
    m = std::max(std::sqrt(y_sq), eps);
    if (!last) normalize_scaled(z, m, eps, v, C);  // normalize(W^T u) with W^T u = z / m
  }
  for (int64_t r = 0; r < R; ++r) job.u[r * job.u_stride] = y[r] / m;  // u = y / m
  for (int64_t c = 0; c < C; ++c) job.v[c * job.v_stride] = v[c];
  *job.sigma = y_sq / m;  // u . y with u = y / m
}

template <typename T>
using MatrixKernel = void (*)(const MatrixJob<T>&, int64_t, T, T*);

template <typename T>
__attribute__((flatten)) void matrix_kernel_baseline(const MatrixJob<T>& job, int64_t n_iter,
                                                     T eps, T* scratch) {
  power_iterate_matrix(job, n_iter, eps, scratch);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
template <typename T>
__attribute__((target("avx2,fma"), flatten)) void matrix_kernel_avx2(const MatrixJob<T>& job,
                                                                       int64_t n_iter, T eps,
                                                                       T* scratch) {
  power_iterate_matrix(job, n_iter, eps, scratch);
}
#endif

template <typename T>
MatrixKernel<T> pick_kernel() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return &matrix_kernel_avx2<T>;
#endif
  return &matrix_kernel_baseline<T>;
}

// Runs every job, largest first, on up to at::get_num_threads() workers.
template <typename T>
void run_jobs(std::vector<MatrixJob<T>>& jobs, int64_t n_iter, double eps_d) {
  if (jobs.empty()) return;
  std::stable_sort(jobs.begin(), jobs.end(), [](const MatrixJob<T>& a, const MatrixJob<T>& b) {
    return a.R * a.C > b.R * b.C;
  });
  const MatrixKernel<T> kernel = pick_kernel<T>();
  const T eps = static_cast<T>(eps_d);
  int64_t work = 0;
  for (const auto& job : jobs) work += job.R * job.C * (n_iter + 1);
  const int64_t workers = work < kMinParallelWork
      ? 1 : std::min<int64_t>(static_cast<int64_t>(jobs.size()), at::get_num_threads());
  std::atomic<size_t> next{0};
  const auto worker = [&](int64_t /*begin*/, int64_t /*end*/) {
    std::vector<T> scratch;
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) {
      const MatrixJob<T>& job = jobs[i];
      scratch.resize(static_cast<size_t>(job.R + 2 * job.C));
      kernel(job, n_iter, eps, scratch.data());
    }
  };
  if (workers == 1) {
    worker(0, 1);
  } else {
    at::parallel_for(0, workers, 1, worker);  // each worker drains the shared counter
  }
}

// ---------------------------------------------------------------- glue (checks: checks.h)

// One job per matrix of the group W [G, R, C]; sigma[g] receives matrix g's result.
template <typename T>
void add_jobs(std::vector<MatrixJob<T>>& jobs, const at::Tensor& W, const at::Tensor& u,
              const at::Tensor& v, T* sigma) {
  const int64_t G = W.size(0), R = W.size(1), C = W.size(2);
  const T* w = W.const_data_ptr<T>();
  T* up = u.mutable_data_ptr<T>();
  T* vp = v.mutable_data_ptr<T>();
  for (int64_t g = 0; g < G; ++g) {
    jobs.push_back({w + g * W.stride(0), R, C, W.stride(1), up + g * u.stride(0), u.stride(1),
                    vp + g * v.stride(0), v.stride(1), sigma + g});
  }
}

// Shared by both ops: checks, then all matrices of all groups in one parallel region.
// Returns the sigmas of all groups concatenated, [G_1 + ... + G_K], in W's dtype (all groups
// must then share one dtype, float32 or float64).
at::Tensor run_groups(const char* op, at::TensorList Ws, at::TensorList us, at::TensorList vs,
                      int64_t n_iter, double eps) {
  const int64_t total = check_power_iteration_args(op, Ws, us, vs, n_iter);
  if (!Ws.empty()) {
    TORCH_CHECK(Ws[0].device().is_cpu(), op, " (CPU kernel): W, u and v must be on the CPU");
    TORCH_CHECK(Ws[0].scalar_type() == at::kFloat || Ws[0].scalar_type() == at::kDouble, op,
                ": W must be float32 or float64, got ", Ws[0].scalar_type());
  }
  const at::TensorOptions options =
      Ws.empty() ? at::TensorOptions().dtype(at::kFloat) : Ws[0].options();
  at::Tensor sigma = at::empty({total}, options);
  std::vector<at::Tensor> kept;  // contiguous copies of W that jobs point into
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "power_iteration_cpu", [&] {
    std::vector<MatrixJob<scalar_t>> jobs;
    int64_t first = 0;
    for (size_t k = 0; k < Ws.size(); ++k) {
      const bool rows_ok = Ws[k].size(2) <= 1 || Ws[k].stride(2) == 1;
      kept.push_back(rows_ok ? Ws[k] : Ws[k].contiguous());
      add_jobs<scalar_t>(jobs, kept.back(), us[k], vs[k],
                         sigma.mutable_data_ptr<scalar_t>() + first);
      first += Ws[k].size(0);
    }
    run_jobs(jobs, n_iter, eps);
  });
  return sigma;
}

at::Tensor power_iteration_cpu(const at::Tensor& W, const at::Tensor& u, const at::Tensor& v,
                               int64_t n_iter, double eps) {
  return run_groups("power_iteration_", {W}, {u}, {v}, n_iter, eps);
}

at::Tensor spectral_norms_cpu(at::TensorList Ws, at::TensorList us, at::TensorList vs,
                              int64_t n_iter, double eps) {
  return run_groups("spectral_norms_", Ws, us, vs, n_iter, eps);
}

}  // namespace
}  // namespace cpu
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CPU, m) {
  m.impl("power_iteration_", &vaebm_fast::cpu::power_iteration_cpu);
  m.impl("spectral_norms_", &vaebm_fast::cpu::spectral_norms_cpu);
}
