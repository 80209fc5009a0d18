// CPU kernel of vaebm_fast::langevin_step_: the fused, in-place unadjusted Langevin update
//
//   t <- clamp(t - h (clip(g) + lambda t) + sigma xi, low, high),   h = step_size / 2,
//
// over a list of tensors, where element k of the flattened concatenation of the list uses
// normal number offset + k of the Philox stream for `seed` (csrc/common/philox.h); in row mode
// (first_row given) element j of row b of tensor g uses normal offset + cum_g + j of row stream
// first_row + b, cum_g the per-row numels of the tensors before g. The reference is
// langevin_step_reference in vaebm_fast/ops/langevin.py.
//
// Memory traffic: read t and g, write t (12 bytes per fp32 element); the noise is generated in
// L1-sized blocks next to its use and never stored. That makes the kernel compute-bound on
// the noise (~2 ns per normal per core, normals.cpp); the update itself is ~8 flops.
//
// Layout: every tensor is processed as a flat contiguous array. A non-contiguous tensor is
// updated on a contiguous copy that is copied back afterwards, and a non-contiguous gradient
// is read through a contiguous copy; the flat order is the logical (row-major) order, so
// results do not depend on strides.
#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/kernel_dtypes.h"
#include "checks.h"
#include "../common/normals.h"
#include "../common/simd_math.h"

namespace vaebm_fast {
namespace cpu {
namespace {

// Elements per parallel task: ~2 ns of noise each, so ~16 us per task.
constexpr int64_t kGrain = 8192;

// The update's constants in the compute type (float for fp32/fp16/bf16, double for fp64).
// Absent clip / clamp bounds are +-inf, which leave every value (NaN included) unchanged, so
// the loop has no branches on the options.
template <typename acc_t>
struct Coeffs {
  acc_t half_step, prior_weight, sigma, clip_low, clip_high, low, high;
};

// The update of n contiguous elements, the one statement of the formula: arithmetic in acc_t
// (float for fp32 / fp16 / bf16, double for fp64, with the float32 normals widened as the
// reference does), one rounding on store, in the reference's order
// t - h * (clip(g) + lambda t) + sigma xi. Comparisons are written so that NaN passes through
// clip and clamp, as with torch.clamp.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void update_loop(scalar_t* t, const scalar_t* g, const float* noise, int64_t n,
                                   const Coeffs<acc_t>& c) {
  for (int64_t i = 0; i < n; ++i) {
    acc_t gv = static_cast<acc_t>(g[i]);
    gv = gv < c.clip_low ? c.clip_low : (gv > c.clip_high ? c.clip_high : gv);
    const acc_t tv = static_cast<acc_t>(t[i]);
    const acc_t out =
        tv - c.half_step * (gv + c.prior_weight * tv) + c.sigma * static_cast<acc_t>(noise[i]);
    t[i] = static_cast<scalar_t>(out < c.low ? c.low : (out > c.high ? c.high : out));
  }
}

// The float32 loop compiled per instruction set (simd_math.h): at::vec is its generic,
// non-SIMD fallback in this baseline-x86-64 build.
VAEBM_FAST_TARGET_CLONES
void update_block_f32(float* t, const float* g, const float* noise, int64_t n,
                      const Coeffs<float>& c) {
  update_loop(t, g, noise, n, c);
}

// Adds 0.5 * t[j]^2 of the n updated elements t[0 .. n) into acc[(first + j) / per_sample]:
// the elements are numbers first .. first + n - 1 of their tensor, whose samples (rows of
// dim 0) hold per_sample elements each. Called on an L1-resident block right after its update.
template <typename scalar_t>
void add_half_sq_norms(const scalar_t* t, int64_t n, int64_t first, int64_t per_sample,
                       double* acc) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t j = 0;
  while (j < n) {
    const int64_t b = (first + j) / per_sample;
    const int64_t stop = std::min(n, (b + 1) * per_sample - first);
    acc_t sum = 0;
    for (; j < stop; ++j) {
      const acc_t v = static_cast<acc_t>(t[j]);
      sum += v * v;
    }
    acc[b] += 0.5 * static_cast<double>(sum);
  }
}

// n contiguous elements whose first element uses normal number m0. When `acc` is given, the
// half squared norms of the updated elements are added to it per sample (see above); `first`
// is the element number of t[0] within its tensor.
// `stream`: the counter words 2, 3 of the noise (0: flat stream; r + 1: row stream r).
template <typename scalar_t>
void update_range(scalar_t* t, const scalar_t* g, int64_t n, uint64_t seed, uint64_t m0,
                  uint64_t stream, const Coeffs<at::opmath_type<scalar_t>>& c, double* acc,
                  int64_t first, int64_t per_sample) {
  float noise[kNoiseBlock];
  for (int64_t start = 0; start < n; start += kNoiseBlock) {
    const int64_t len = std::min(kNoiseBlock, n - start);
    fill_normals(noise, len, seed, m0 + static_cast<uint64_t>(start), stream);
    if constexpr (std::is_same_v<scalar_t, float>) {
      update_block_f32(t + start, g + start, noise, len, c);  // SIMD clones
    } else {
      update_loop(t + start, g + start, noise, len, c);
    }
    if (acc != nullptr) add_half_sq_norms(t + start, len, first + start, per_sample, acc);
  }
}

void langevin_step_cpu(at::TensorList tensors, at::TensorList grads, double step_size,
                       int64_t seed, int64_t offset, double prior_weight, double noise_scale,
                       std::optional<double> grad_clip, std::optional<double> clamp_low,
                       std::optional<double> clamp_high,
                       const std::optional<at::Tensor>& half_sq_norm,
                       std::optional<int64_t> first_row) {
  if (!check_langevin_args(tensors, grads, offset)) return;
  TORCH_CHECK(tensors[0].device().is_cpu(), "langevin_step_ (CPU kernel): tensors must be on the CPU");
  const at::ScalarType dtype = tensors[0].scalar_type();
  const int64_t batch = check_half_sq_norm(tensors, half_sq_norm);
  const int64_t row_batch = check_langevin_rows(tensors, first_row);  // -1: flat mode
  const bool row_mode = row_batch >= 0;

  // The iteration space is [rows, D]: position (b, k) is element k of row b of the
  // concatenation of the tensors' rows, and uses normal offset + k of stream `b`'s stream. In
  // flat mode there is one "row", the whole concatenation (rows = 1, D = total numel).
  // Flat contiguous views to work on, each tensor's row length and where it starts in a row.
  const int64_t rows = row_mode ? row_batch : 1;
  std::vector<at::Tensor> work(tensors.size()), grad(tensors.size());
  std::vector<int64_t> row_len(tensors.size()), start(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    work[i] = tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous();
    grad[i] = grads[i].contiguous();
    row_len[i] = row_mode ? (rows > 0 ? tensors[i].numel() / rows : 0) : tensors[i].numel();
    start[i + 1] = start[i] + row_len[i];
  }
  const int64_t per_row = start.back();  // D: normals per row (flat: the total numel)
  TORCH_CHECK(per_row <= std::numeric_limits<int64_t>::max() - offset,
              "langevin_step_: offset + numel overflows int64");
  const int64_t total = rows * per_row;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const double clip = grad_clip.value_or(kInf);
  const uint64_t key = static_cast<uint64_t>(seed);

  VAEBM_FAST_DISPATCH_KERNEL_DTYPES(dtype, "langevin_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Coeffs<acc_t> c{static_cast<acc_t>(step_size * 0.5), static_cast<acc_t>(prior_weight),
                          static_cast<acc_t>(noise_scale), static_cast<acc_t>(-clip),
                          static_cast<acc_t>(clip), static_cast<acc_t>(clamp_low.value_or(-kInf)),
                          static_cast<acc_t>(clamp_high.value_or(kInf))};
    std::vector<scalar_t*> t_ptr(work.size());
    std::vector<const scalar_t*> g_ptr(work.size());
    for (size_t i = 0; i < work.size(); ++i) {
      t_ptr[i] = work[i].mutable_data_ptr<scalar_t>();
      g_ptr[i] = grad[i].const_data_ptr<scalar_t>();
    }
    // Half squared norms: one row of `batch` double accumulators per thread, summed at the end.
    std::vector<double> partial(half_sq_norm ? at::get_num_threads() * batch : 0, 0.0);
    // One parallel loop over all [rows, D] positions, so many small tensors (and short rows)
    // still share the threads; each task walks the (row, tensor) runs its range [begin, end)
    // overlaps. Within a run the noise comes 4 normals per Philox call, as in flat mode; in
    // row mode each run that starts or ends inside a call wastes the rest of that call (at most
    // 2 calls per (row, tensor): ~1.5% of the noise work for rows of 512 elements).
    at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
      double* acc = half_sq_norm ? partial.data() + at::get_thread_num() * batch : nullptr;
      for (int64_t pos = begin; pos < end;) {
        const int64_t b = pos / per_row, k = pos - b * per_row;
        // The tensor holding k: the last i with start[i] <= k (skips empty tensors).
        const size_t i = std::upper_bound(start.begin(), start.end(), k) - start.begin() - 1;
        const int64_t len = std::min(end - pos, start[i + 1] - k);
        const int64_t local = b * row_len[i] + (k - start[i]);  // element number in tensor i
        const int64_t per_sample =
            row_mode ? row_len[i] : work[i].numel() / std::max<int64_t>(batch, 1);
        const uint64_t stream = row_mode ? static_cast<uint64_t>(*first_row + b) + 1 : 0;
        update_range<scalar_t>(t_ptr[i] + local, g_ptr[i] + local, len, key,
                               static_cast<uint64_t>(offset + k), stream, c, acc, local,
                               per_sample);
        pos += len;
      }
    });
    if (half_sq_norm) {
      at::Tensor sums = at::zeros({batch}, half_sq_norm->options().dtype(at::kDouble));
      double* out = sums.mutable_data_ptr<double>();
      for (int64_t thread = 0; thread < at::get_num_threads(); ++thread) {
        for (int64_t b = 0; b < batch; ++b) out[b] += partial[thread * batch + b];
      }
      half_sq_norm->copy_(sums);
    }
  });

  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace vaebm_fast

TORCH_LIBRARY_IMPL(vaebm_fast, CPU, m) {
  m.impl("langevin_step_", &vaebm_fast::cpu::langevin_step_cpu);
}
