// CPU kernels of the fused distillation losses: at::parallel_for over (layer, batch, head, row) work
// items, vectorised inner loops (cpu_rows.h) compiled for AVX-512, AVX2 and the baseline ISA, with
// the variant picked at run time. Accumulation in float (double for double inputs).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <vector>

#include "cpu_isa.h"
#include "cpu_rows.h"
#include "distill_loss.h"

namespace ddk {
namespace {

template <typename A>
DDK_ALWAYS_INLINE void zero_row(A* __restrict g, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) g[j] = A(0);
}

// Rows [begin, end) of all layers. Invalid rows (padding tokens / padding queries) get loss 0 and a
// zero gradient row.
template <typename T, int OP>
DDK_ALWAYS_INLINE void rows_chunk(const RowsArgs& a, int64_t begin, int64_t end) {
  using A = typename cpu::AccOf<T>::type;
  const int64_t width = a.width;
  const int64_t per_layer = a.batch * a.heads * a.seq;
  const int64_t per_batch = a.heads * a.seq;
  A* loss = static_cast<A*>(a.row_loss);
  A* grad = static_cast<A*>(a.grad);
  const A* gscale = static_cast<const A*>(a.grad_scale);
  constexpr bool kAttention = OP == int(RowOp::kAttentionKl) || OP == int(RowOp::kAttentionMse);
  std::vector<A> scratch(kAttention ? 2 * width : 0);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t l = row / per_layer;
    const int64_t r = row - l * per_layer;
    const int64_t b = r / per_batch;
    const int64_t i = r % a.seq;
    A* g = grad != nullptr ? grad + row * width : nullptr;
    if (a.mask != nullptr && !(a.mask[b * a.seq + i] > 0.0f)) {
      loss[row] = A(0);
      if (g != nullptr) zero_row(g, width);
      continue;
    }
    const T* s = static_cast<const T*>(a.student[l]) + r * width;
    const T* t = static_cast<const T*>(a.teacher[l]) + r * width;
    const A gs = gscale != nullptr ? gscale[l] : A(1);
    if constexpr (OP == int(RowOp::kHiddenMse)) {
      loss[row] = cpu::mse_token(s, t, width, g, gs);
    } else if constexpr (OP == int(RowOp::kHiddenCosine)) {
      loss[row] = cpu::cosine_token(s, t, width, g, gs);
    } else if constexpr (OP == int(RowOp::kAttentionKl)) {
      loss[row] = cpu::kl_row(s, t, a.mask + b * a.seq, width, g, gs, scratch.data(),
                              scratch.data() + width);
    } else if constexpr (OP == int(RowOp::kAttentionMse)) {
      loss[row] = cpu::prob_mse_row(s, t, a.mask + b * a.seq, width, g, gs, scratch.data(),
                                    scratch.data() + width);
    } else {
      loss[row] = cpu::soft_ce_row(s, t, width, static_cast<A>(a.inv_temperature), g, gs);
    }
  }
}

using ChunkFn = void (*)(const RowsArgs&, int64_t, int64_t);

template <typename T, int OP>
void rows_chunk_base(const RowsArgs& a, int64_t begin, int64_t end) {
  rows_chunk<T, OP>(a, begin, end);
}

#if DDK_X86_MULTIVERSION
template <typename T, int OP>
DDK_TARGET_AVX2 void rows_chunk_avx2(const RowsArgs& a, int64_t begin, int64_t end) {
  rows_chunk<T, OP>(a, begin, end);
}

template <typename T, int OP>
DDK_TARGET_AVX512 void rows_chunk_avx512(const RowsArgs& a, int64_t begin, int64_t end) {
  rows_chunk<T, OP>(a, begin, end);
}
#endif

// ---- instruction-set choice -----------------------------------------------------------------------

const char* isa_name(int isa) {
  return isa == kIsaAvx512 ? "avx512" : (isa == kIsaAvx2 ? "avx2" : "base");
}

int detected_isa() {
#if DDK_X86_MULTIVERSION
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return kIsaAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kIsaAvx2;
#endif
  return kIsaBase;
}

int parse_isa(const std::string& name) {
  if (name == "avx512") return kIsaAvx512;
  if (name == "avx2") return kIsaAvx2;
  if (name == "base") return kIsaBase;
  TORCH_CHECK(false, "CPU ISA must be one of 'avx512', 'avx2', 'base', got '", name, "'");
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa([] {
    int best = detected_isa();
    if (const char* env = std::getenv("DDK_FAST_CPU_ISA")) {
      if (env[0] != '\0') best = std::min(best, parse_isa(env));
    }
    return best;
  }());
  return isa;
}

template <typename T, int OP>
ChunkFn pick_chunk() {
#if DDK_X86_MULTIVERSION
  switch (active_isa().load()) {
    case kIsaAvx512:
      return &rows_chunk_avx512<T, OP>;
    case kIsaAvx2:
      return &rows_chunk_avx2<T, OP>;
    default:
      break;
  }
#endif
  return &rows_chunk_base<T, OP>;
}

template <typename T>
ChunkFn pick_for_op(RowOp op) {
  switch (op) {
    case RowOp::kHiddenMse:
      return pick_chunk<T, int(RowOp::kHiddenMse)>();
    case RowOp::kHiddenCosine:
      return pick_chunk<T, int(RowOp::kHiddenCosine)>();
    case RowOp::kAttentionKl:
      return pick_chunk<T, int(RowOp::kAttentionKl)>();
    case RowOp::kAttentionMse:
      return pick_chunk<T, int(RowOp::kAttentionMse)>();
    case RowOp::kSoftCe:
      return pick_chunk<T, int(RowOp::kSoftCe)>();
  }
  TORCH_CHECK(false, "unknown row op ", int(op));
}

}  // namespace

void rows_cpu(at::ScalarType dtype, RowOp op, const RowsArgs& args) {
  ChunkFn fn = nullptr;
  switch (dtype) {
    case at::kFloat:
      fn = pick_for_op<float>(op);
      break;
    case at::kDouble:
      fn = pick_for_op<double>(op);
      break;
    case at::kBFloat16:
      fn = pick_for_op<c10::BFloat16>(op);
      break;
    case at::kHalf:
      fn = pick_for_op<c10::Half>(op);
      break;
    default:
      TORCH_CHECK(false, "fused distillation losses support float32, float64, bfloat16 and float16, got ",
                  dtype);
  }
  const int64_t layers = static_cast<int64_t>(args.student.size());
  const int64_t rows = layers * args.batch * args.heads * args.seq;
  // Blocks of ~16K elements handed out dynamically: at::parallel_for splits its range statically,
  // one chunk per thread, so one descheduled thread (a busy, shared machine) would hold up the
  // others; here the threads started by at::parallel_for pull blocks from a shared counter.
  const int64_t block = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, args.width));
  const int64_t blocks = (rows + block - 1) / block;
  if (blocks <= 1 || at::get_num_threads() <= 1 || at::in_parallel_region()) {
    fn(args, 0, rows);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), blocks), 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) {
      fn(args, b * block, std::min(rows, (b + 1) * block));
    }
  });
}

int cpu_isa_level() { return active_isa().load(); }

std::string cpu_isa() { return isa_name(active_isa().load()); }

std::string set_cpu_isa(const std::string& name) {
  const int wanted = parse_isa(name);
  TORCH_CHECK(wanted <= detected_isa(), "CPU ISA '", name, "' is not supported by this CPU (best: ",
              isa_name(detected_isa()), ")");
  active_isa().store(wanted);
  return cpu_isa();
}

}  // namespace ddk
