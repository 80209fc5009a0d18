// Operator schemas of the vaebm_fast library (torch.ops.vaebm_fast.*).
//
// Only schemas live here; kernels register themselves per backend with TORCH_LIBRARY_IMPL in
// csrc/cpu/*.cpp and csrc/cuda/*_registration.cpp, and the fake (meta) kernels used by
// torch.compile are registered from Python (vaebm_fast/ops/*.py, torch.library.register_fake).
// Mutated arguments are marked (a!) so functionalization / torch.compile know about the writes.
//
// The shared library has no Python module init: vaebm_fast/_native.py loads it with
// torch.ops.load_library, which runs the static registrations below.
#include <string>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#ifndef VAEBM_FAST_TORCH_VERSION
// setup.py and CMakeLists.txt pass -DVAEBM_FAST_TORCH_VERSION="<torch.__version__>".
#error "VAEBM_FAST_TORCH_VERSION is not defined"
#endif
#ifndef VAEBM_FAST_WITH_CUDA
#define VAEBM_FAST_WITH_CUDA 0
#endif

#define VAEBM_FAST_STR2(x) #x
#define VAEBM_FAST_STR(x) VAEBM_FAST_STR2(x)

namespace {

// "key=value;key=value": the torch this library was compiled against (compared with the
// running torch by _native.py before any kernel is used), whether CUDA kernels were built,
// and the host compiler.
std::string build_info() {
  return std::string("torch=") + VAEBM_FAST_TORCH_VERSION +
         ";cuda=" VAEBM_FAST_STR(VAEBM_FAST_WITH_CUDA) ";cxx=" +
#if defined(__clang__)
         "clang " + __clang_version__;
#elif defined(__GNUC__)
         "gcc " + __VERSION__;
#else
         "unknown";
#endif
}

// ADInplaceOrView kernel shared by every mutating op: runs the op, then bumps the version
// counter of each tensor its schema marks as written (a!), as built-in in-place ops do, so that
// autograd refuses to backpropagate through a value that was overwritten. (Ops defined in C++
// otherwise fall through this key and versions would not change.) Boxed, so one function
// serves all schemas.
void bump_versions_of_written_args(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                   torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::AliasInfo* alias = args[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& value = (*stack)[first + i];
    if (value.isTensor()) {
      written.push_back(value.toTensor());
    } else if (value.isTensorList()) {
      const c10::List<at::Tensor> list = value.toTensorList();
      for (size_t j = 0; j < list.size(); ++j) written.push_back(list.get(j));
    }
  }
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  for (const at::Tensor& t : written) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY(vaebm_fast, m) {
  // Build metadata, see build_info(). No tensor arguments, so the kernel is a catch-all.
  m.def("_build_info() -> str", &build_info);

  // Philox4x32-10 words of call index `offsets[...]` (int64 read as uint64) for `seed`:
  // returns int64 [*offsets.shape, 4] with values in [0, 2^32).
  m.def("philox4x32(int seed, Tensor offsets) -> Tensor");

  // Fill the contiguous floating tensor `out` (read flat) with normals number
  // offset, offset + 1, ... of the stream for `seed`.
  m.def("philox_normal_(Tensor(a!) out, int seed, int offset) -> ()");

  // In-place unadjusted Langevin step on every tensors[i] (see vaebm_fast/ops/langevin.py):
  //   t <- clamp(t - (step_size / 2) (clip(g) + prior_weight t) + noise_scale xi)
  // Element k of the flattened concatenation of `tensors` uses normal number offset + k.
  // When `half_sq_norm` (float32 [B], B = dim 0 of every tensor) is given, it is overwritten
  // with 0.5 * sum over all tensors of ||t[b]||^2 of the updated states.
  m.def(
      "langevin_step_(Tensor(a!)[] tensors, Tensor[] grads, float step_size, int seed, "
      "int offset, float prior_weight, float noise_scale, float? grad_clip, "
      "float? clamp_low, float? clamp_high, Tensor(b!)? half_sq_norm=None) -> ()");

  // Scaled Swish (see vaebm_fast/ops/swish.py): y = scale * x * sigmoid(x), and its backward
  // dx = scale * grad * (s + x s (1 - s)) with s = sigmoid(x) recomputed from x. New contiguous
  // outputs; autograd (saving only x) is registered from Python.
  m.def("swish_forward(Tensor x, float scale) -> Tensor");
  m.def("swish_backward(Tensor grad, Tensor x, float scale) -> Tensor");

  // Replay buffer (see vaebm_fast/ops/replay.py), P = prod(S):
  // replay_gather: new [B, *S] tensor; row b = buffer[index[b]], or when reinit[b] the normals
  //   offset + b*P .. offset + (b+1)*P - 1 of the stream for `seed`.
  // replay_scatter_: buffer[index[b]] = values[b] in place (indices must be unique).
  m.def("replay_gather(Tensor buffer, Tensor index, Tensor reinit, int seed, int offset) -> Tensor");
  m.def("replay_scatter_(Tensor(a!) buffer, Tensor index, Tensor values) -> ()");

  // Power iteration (see vaebm_fast/ops/power_iteration.py) on W [G, R, C] with u [G, R] and
  // v [G, C] updated in place, n_iter times: v = normalize(u^T W), u = normalize(W v),
  // normalize(x) = x / max(||x||, eps). Returns sigma = u^T W v, [G] (not differentiable;
  // the Python wrapper supplies d sigma / d W = u v^T). spectral_norms_ does the same for K
  // groups of different shapes in one call and returns the K sigmas concatenated,
  // [G_1 + ... + G_K] (one Tensor, not Tensor[]: torch.compile's auto_functionalize does not
  // take a mutating op that returns a list).
  m.def("power_iteration_(Tensor W, Tensor(a!) u, Tensor(b!) v, int n_iter, float eps) -> Tensor");
  m.def("spectral_norms_(Tensor[] Ws, Tensor(a!)[] us, Tensor(b!)[] vs, int n_iter, float eps) "
        "-> Tensor");

  // Fused epilogues (see vaebm_fast/ops/epilogues.py); NCHW, outputs new and contiguous.
  // EBM block tail: pre = avg_pool2d(h + skip, 2) if downsample else h + skip,
  //   out = lip_swish(pre); returns (out, pre) -- pre is what the backward needs.
  //   The backward returns d(h + skip) = d h = d skip at h's size.
  m.def("ebm_block_tail(Tensor h, Tensor skip, bool downsample) -> (Tensor, Tensor)");
  m.def("ebm_block_tail_backward(Tensor grad, Tensor pre, bool downsample) -> Tensor");
  // NVAE cell tail: out = skip + scale * h * gate[:, :, None, None], gate [B, C].
  //   The backward returns (d h, d gate); d skip is grad itself.
  m.def("nvae_cell_tail(Tensor skip, Tensor h, Tensor gate, float scale) -> Tensor");
  m.def("nvae_cell_tail_backward(Tensor grad, Tensor h, Tensor gate, float scale) "
        "-> (Tensor, Tensor)");
  // BatchNorm (eval) + Swish as a per-channel affine map: out = swish(x * scale[c] + shift[c])
  //   with c the channel (dim 1). The backward returns (d x, d scale, d shift).
  m.def("affine_swish(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("affine_swish_backward(Tensor grad, Tensor x, Tensor scale, Tensor shift) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vaebm_fast, ADInplaceOrView, m) {
  const auto bump = [] {
    return torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written_args>();
  };
  m.impl("philox_normal_", bump());
  m.impl("langevin_step_", bump());
  m.impl("replay_scatter_", bump());
  m.impl("power_iteration_", bump());
  m.impl("spectral_norms_", bump());
}
