// CUDA kernels of the fused distillation losses. Plain CUDA: no torch headers (see the launcher API
// in distill_loss_cuda.h). Same math as the CPU rows in cpu_rows.h:
//   - one warp per row for rows up to 1024 wide (hidden d, attention keys, few classes), one block
//     per row beyond that (large vocabularies);
//   - all layers in one launch: the layer pointers travel in a kernel parameter (64 per launch);
//   - loads in the storage type, accumulation in float (double for double inputs);
//   - the gradient row is written already times grad_scale[l], so a last-node loss needs no
//     backward kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "distill_loss_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int kMaxLayersPerLaunch = 64;
constexpr int64_t kWarpRowMaxWidth = 1024;
constexpr int kErrTooManyRows = 100001;
constexpr int kErrBadOp = 100002;
constexpr int kErrBadDtype = 100003;

struct LayerPtrs {  // 1 KiB, well inside the 4 KiB kernel-parameter limit
  const void* student[kMaxLayersPerLaunch];
  const void* teacher[kMaxLayersPerLaunch];
};

template <typename T>
struct AccOf {
  typedef float type;
};
template <>
struct AccOf<double> {
  typedef double type;
};

__device__ __forceinline__ float load_acc(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load_acc(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_acc(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -static_cast<A>(INFINITY);
}

struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return a + b;
  }
};

// Skips NaN like the CPU kernels; a NaN still reaches the loss through the sums.
struct MaxOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return b > a ? b : a;
  }
};

// G threads own one row: G == 32 (a warp; several rows per block) or G == kThreads (the block).
// Every thread of the group gets the result.
template <int G, typename A, typename Op>
__device__ __forceinline__ A group_reduce(A v, A* smem, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (G == 32) {
    return v;
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // the previous reduction's readers are done with smem
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = smem[0];
#pragma unroll
    for (int w = 1; w < G / 32; ++w) v = op(v, smem[w]);
    return v;
  }
}

template <typename T, int OP, int G>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(LayerPtrs ptrs, int64_t layers, const float* __restrict__ mask, int64_t batch,
                int64_t heads, int64_t seq, int64_t width,
                const typename AccOf<T>::type* __restrict__ grad_scale,
                typename AccOf<T>::type inv_temp, typename AccOf<T>::type* __restrict__ row_loss,
                typename AccOf<T>::type* __restrict__ grad) {
  typedef typename AccOf<T>::type A;
  __shared__ A smem[kThreads / 32];
  const int64_t per_layer = batch * heads * seq;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / G) + threadIdx.x / G;
  if (row >= layers * per_layer) return;  // uniform within a group
  const int lane = threadIdx.x % G;
  const int64_t l = row / per_layer;
  const int64_t r = row - l * per_layer;
  const int64_t b = r / (heads * seq);
  const int64_t i = r % seq;
  A* g = grad != nullptr ? grad + row * width : nullptr;
  if (mask != nullptr && !(mask[b * seq + i] > 0.0f)) {
    if (lane == 0) row_loss[row] = A(0);
    if (g != nullptr)
      for (int64_t j = lane; j < width; j += G) g[j] = A(0);
    return;
  }
  const T* s = static_cast<const T*>(ptrs.student[l]) + r * width;
  const T* t = static_cast<const T*>(ptrs.teacher[l]) + r * width;
  const A gs = grad_scale[l];
  A loss;
  if constexpr (OP == DDK_ROW_HIDDEN_MSE) {
    A acc = 0;
    for (int64_t j = lane; j < width; j += G) {
      const A d = load_acc(s, j) - load_acc(t, j);
      acc += d * d;
      if (g != nullptr) g[j] = 2 * gs * d;
    }
    loss = group_reduce<G>(acc, smem, SumOp());
  } else if constexpr (OP == DDK_ROW_HIDDEN_COSINE) {
    A dot = 0, ss = 0, tt = 0;
    for (int64_t j = lane; j < width; j += G) {
      const A sj = load_acc(s, j), tj = load_acc(t, j);
      dot += sj * tj;
      ss += sj * sj;
      tt += tj * tj;
    }
    dot = group_reduce<G>(dot, smem, SumOp());
    ss = group_reduce<G>(ss, smem, SumOp());
    tt = group_reduce<G>(tt, smem, SumOp());
    const A eps = static_cast<A>(1e-8);
    const A ns = sqrt_acc(ss), nt = sqrt_acc(tt);
    const A ns_c = ns > eps ? ns : eps, nt_c = nt > eps ? nt : eps;
    const A inv = A(1) / (ns_c * nt_c);
    const A cos = dot * inv;
    loss = A(1) - cos;
    if (g != nullptr) {
      const A k_s = ns > eps ? gs * cos / (ns * ns_c) : A(0);
      const A k_t = gs * inv;
      for (int64_t j = lane; j < width; j += G) g[j] = k_s * load_acc(s, j) - k_t * load_acc(t, j);
    }
  } else if constexpr (OP == DDK_ROW_ATTENTION_KL || OP == DDK_ROW_ATTENTION_MSE) {
    const float* km = mask + b * seq;
    A sm = neg_inf<A>(), tm = neg_inf<A>();
    for (int64_t j = lane; j < width; j += G) {
      if (km[j] > 0.0f) {
        const A sj = load_acc(s, j), tj = load_acc(t, j);
        sm = sj > sm ? sj : sm;
        tm = tj > tm ? tj : tm;
      }
    }
    sm = group_reduce<G>(sm, smem, MaxOp());
    tm = group_reduce<G>(tm, smem, MaxOp());
    A zs = 0, zt = 0, dot = 0;
    for (int64_t j = lane; j < width; j += G) {
      if (km[j] > 0.0f) {
        const A sj = load_acc(s, j), tj = load_acc(t, j);
        const A e_t = exp_acc(tj - tm);
        zs += exp_acc(sj - sm);
        zt += e_t;
        dot += e_t * (tj - sj);
      }
    }
    zs = group_reduce<G>(zs, smem, SumOp());
    zt = group_reduce<G>(zt, smem, SumOp());
    const A inv_s = A(1) / zs, inv_t = A(1) / zt;
    if constexpr (OP == DDK_ROW_ATTENTION_KL) {
      dot = group_reduce<G>(dot, smem, SumOp());
      loss = dot * inv_t + (sm + log_acc(zs)) - (tm + log_acc(zt));
      if (g != nullptr) {
        for (int64_t j = lane; j < width; j += G) {
          const bool v = km[j] > 0.0f;
          const A q = exp_acc(load_acc(s, j) - sm) * inv_s;
          const A p = exp_acc(load_acc(t, j) - tm) * inv_t;
          g[j] = v ? gs * (q - p) : A(0);
        }
      }
    } else {
      A sq = 0, c = 0;
      for (int64_t j = lane; j < width; j += G) {
        if (km[j] > 0.0f) {
          const A q = exp_acc(load_acc(s, j) - sm) * inv_s;
          const A rr = q - exp_acc(load_acc(t, j) - tm) * inv_t;
          sq += rr * rr;
          c += rr * q;
        }
      }
      loss = group_reduce<G>(sq, smem, SumOp());
      c = group_reduce<G>(c, smem, SumOp());
      if (g != nullptr) {
        for (int64_t j = lane; j < width; j += G) {
          const bool v = km[j] > 0.0f;
          const A q = exp_acc(load_acc(s, j) - sm) * inv_s;
          const A rr = q - exp_acc(load_acc(t, j) - tm) * inv_t;
          g[j] = v ? 2 * gs * q * (rr - c) : A(0);
        }
      }
    }
  } else {  // DDK_ROW_SOFT_CE
    A sm = neg_inf<A>(), tm = neg_inf<A>();
    for (int64_t j = lane; j < width; j += G) {
      const A sj = load_acc(s, j) * inv_temp, tj = load_acc(t, j) * inv_temp;
      sm = sj > sm ? sj : sm;
      tm = tj > tm ? tj : tm;
    }
    sm = group_reduce<G>(sm, smem, MaxOp());
    tm = group_reduce<G>(tm, smem, MaxOp());
    A zs = 0, zt = 0, dot = 0;
    for (int64_t j = lane; j < width; j += G) {
      const A sj = load_acc(s, j) * inv_temp - sm;
      const A e_t = exp_acc(load_acc(t, j) * inv_temp - tm);
      zs += exp_acc(sj);
      zt += e_t;
      dot += e_t * sj;
    }
    zs = group_reduce<G>(zs, smem, SumOp());
    zt = group_reduce<G>(zt, smem, SumOp());
    dot = group_reduce<G>(dot, smem, SumOp());
    const A log_zs = log_acc(zs);
    const A inv_t = A(1) / zt;
    loss = log_zs - dot * inv_t;
    if (g != nullptr) {
      for (int64_t j = lane; j < width; j += G) {
        const A ls = load_acc(s, j) * inv_temp - sm - log_zs;
        const A p = exp_acc(load_acc(t, j) * inv_temp - tm) * inv_t;
        g[j] = gs * (exp_acc(ls) - p);
      }
    }
  }
  if (lane == 0) row_loss[row] = loss;
}

template <typename T, int OP>
int launch(const void* const* students, const void* const* teachers, int64_t layers,
           const float* mask, int64_t batch, int64_t heads, int64_t seq, int64_t width,
           const void* grad_scale, double inv_temperature, void* row_loss, void* grad,
           cudaStream_t stream) {
  typedef typename AccOf<T>::type A;
  const int64_t per_layer = batch * heads * seq;
  for (int64_t l0 = 0; l0 < layers; l0 += kMaxLayersPerLaunch) {
    const int64_t n = layers - l0 < kMaxLayersPerLaunch ? layers - l0 : kMaxLayersPerLaunch;
    LayerPtrs ptrs;
    for (int64_t k = 0; k < kMaxLayersPerLaunch; ++k) {
      ptrs.student[k] = k < n ? students[l0 + k] : nullptr;
      ptrs.teacher[k] = k < n ? teachers[l0 + k] : nullptr;
    }
    const A* gs = static_cast<const A*>(grad_scale) + l0;
    A* rl = static_cast<A*>(row_loss) + l0 * per_layer;
    A* gr = grad != nullptr ? static_cast<A*>(grad) + l0 * per_layer * width : nullptr;
    const int64_t rows = n * per_layer;
    const bool warp_rows = width <= kWarpRowMaxWidth;
    const int64_t rows_per_block = warp_rows ? kThreads / 32 : 1;
    const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
    if (blocks > 0x7fffffffLL) return kErrTooManyRows;
    if (blocks == 0) continue;
    if (warp_rows) {
      rows_kernel<T, OP, 32><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          ptrs, n, mask, batch, heads, seq, width, gs, static_cast<A>(inv_temperature), rl, gr);
    } else {
      rows_kernel<T, OP, kThreads><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          ptrs, n, mask, batch, heads, seq, width, gs, static_cast<A>(inv_temperature), rl, gr);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

template <typename T>
int launch_for_op(int op, const void* const* students, const void* const* teachers, int64_t layers,
                  const float* mask, int64_t batch, int64_t heads, int64_t seq, int64_t width,
                  const void* grad_scale, double inv_temperature, void* row_loss, void* grad,
                  cudaStream_t stream) {
#define DDK_LAUNCH(OP)                                                                                 \
  return launch<T, OP>(students, teachers, layers, mask, batch, heads, seq, width, grad_scale,       \
                       inv_temperature, row_loss, grad, stream)
  switch (op) {
    case DDK_ROW_HIDDEN_MSE:
      DDK_LAUNCH(DDK_ROW_HIDDEN_MSE);
    case DDK_ROW_HIDDEN_COSINE:
      DDK_LAUNCH(DDK_ROW_HIDDEN_COSINE);
    case DDK_ROW_ATTENTION_KL:
      DDK_LAUNCH(DDK_ROW_ATTENTION_KL);
    case DDK_ROW_ATTENTION_MSE:
      DDK_LAUNCH(DDK_ROW_ATTENTION_MSE);
    case DDK_ROW_SOFT_CE:
      DDK_LAUNCH(DDK_ROW_SOFT_CE);
    default:
      return kErrBadOp;
  }
#undef DDK_LAUNCH
}

}  // namespace

extern "C" int ddk_rows_cuda(int dtype, int op, const void* const* students,
                             const void* const* teachers, int64_t layers, const float* mask,
                             int64_t batch, int64_t heads, int64_t seq, int64_t width,
                             const void* grad_scale, double inv_temperature, void* row_loss,
                             void* grad, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DDK_DTYPE_F32:
      return launch_for_op<float>(op, students, teachers, layers, mask, batch, heads, seq, width,
                                  grad_scale, inv_temperature, row_loss, grad, st);
    case DDK_DTYPE_F64:
      return launch_for_op<double>(op, students, teachers, layers, mask, batch, heads, seq, width,
                                   grad_scale, inv_temperature, row_loss, grad, st);
    case DDK_DTYPE_F16:
      return launch_for_op<__half>(op, students, teachers, layers, mask, batch, heads, seq, width,
                                   grad_scale, inv_temperature, row_loss, grad, st);
    case DDK_DTYPE_BF16:
      return launch_for_op<__nv_bfloat16>(op, students, teachers, layers, mask, batch, heads, seq,
                                          width, grad_scale, inv_temperature, row_loss, grad, st);
    default:
      return kErrBadDtype;
  }
}

extern "C" const char* ddk_cuda_error_string(int code) {
  switch (code) {
    case kErrTooManyRows:
      return "too many rows for one launch (more than 2^31 - 1 blocks)";
    case kErrBadOp:
      return "unknown row op";
    case kErrBadDtype:
      return "unsupported dtype code";
    default:
      return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}
