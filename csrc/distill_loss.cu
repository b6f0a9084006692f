// CUDA kernels of the fused distillation losses. Plain CUDA: no torch headers (see the launcher API).
#include <cuda_runtime.h>
#include <math.h>
#include "distill_loss_cuda.h"

namespace {

constexpr int kThreads = 256;

__device__ float block_reduce_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = (threadIdx.x < blockDim.x / 32) ? shared[lane] : -INFINITY;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}

__device__ float block_reduce_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = (threadIdx.x < blockDim.x / 32) ? shared[lane] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}

// One block per row: softmax of both rows at temperature T, the row's loss and its gradient.
__global__ void soft_ce_kernel(const float* __restrict__ s, const float* __restrict__ t,
                               float* __restrict__ row_loss, float* __restrict__ grad,
                               int64_t classes, float inv_t, float grad_scale) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const float* sr = s + row * classes;
  const float* tr = t + row * classes;
  float smax = -INFINITY, tmax = -INFINITY;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
    smax = fmaxf(smax, sr[c] * inv_t);
    tmax = fmaxf(tmax, tr[c] * inv_t);
  }
  smax = block_reduce_max(smax, shared);
  tmax = block_reduce_max(tmax, shared);
  float ssum = 0.f, tsum = 0.f;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
    ssum += __expf(sr[c] * inv_t - smax);
    tsum += __expf(tr[c] * inv_t - tmax);
  }
  ssum = block_reduce_sum(ssum, shared);
  tsum = block_reduce_sum(tsum, shared);
  const float slog = logf(ssum);
  float acc = 0.f;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
    const float ls = sr[c] * inv_t - smax - slog;
    const float pt = __expf(tr[c] * inv_t - tmax) / tsum;
    acc -= pt * ls;
    if (grad) grad[row * classes + c] = grad_scale * (__expf(ls) - pt);
  }
  acc = block_reduce_sum(acc, shared);
  if (threadIdx.x == 0) row_loss[row] = acc;
}

}  // namespace

extern "C" int ddk_soft_ce_cuda(const float* student, const float* teacher, float* row_loss,
                                float* grad, int64_t rows, int64_t classes, float temperature,
                                void* stream) {
  if (rows == 0) return 0;
  const float grad_scale = temperature / static_cast<float>(rows);
  soft_ce_kernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      student, teacher, row_loss, grad, classes, 1.f / temperature, grad_scale);
  return static_cast<int>(cudaGetLastError());
}
