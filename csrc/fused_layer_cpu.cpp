// CPU kernels of the fused layer ops (see fused_layer.h): erf GELU with bias forward, its backward with
// the bias gradient, residual + LayerNorm forward and the LayerNorm backward.
//
// Each kernel is a force-inlined row loop instantiated in functions compiled for AVX-512, AVX2 and the
// baseline ISA (cpu_isa.h picks one at run time), so the `omp simd` loops vectorise for the chosen ISA.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>

#include "cpu_buffer_pool.h"
#include "cpu_isa.h"
#include "cpu_rows.h"
#include "fused_layer.h"

namespace ddk {
namespace {

using at::Tensor;

constexpr int64_t kBlockRows = 32;  // rows per work item; column sums are reduced per block
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// Phi(z) (the normal CDF, = 0.5 (1 + erf(z / sqrt 2))) and exp(-z^2 / 2), from which
// gelu(z) = z Phi(z) and gelu'(z) = Phi(z) + z exp(-z^2 / 2) / sqrt(2 pi).
// float: erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, below float's resolution of
// Phi near 1), sharing its exp(-u^2) with the slope; every operation vectorises (no library call).
DDK_ALWAYS_INLINE void gelu_terms(float z, float& cdf, float& gauss) {
  const float u = z * static_cast<float>(kInvSqrt2);
  const float t = 1.0f / (1.0f + 0.3275911f * std::fabs(u));
  const float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
                      0.254829592f) * t;
  gauss = cpu::exp_fast(-u * u);
  const float erf_abs = 1.0f - poly * gauss;
  cdf = 0.5f + 0.5f * std::copysign(erf_abs, u);
}

// float64 is the testing path: the library functions, exact to double precision.
DDK_ALWAYS_INLINE void gelu_terms(double z, double& cdf, double& gauss) {
  cdf = 0.5 * std::erfc(-z * kInvSqrt2);
  gauss = std::exp(-0.5 * z * z);
}

template <typename A>
DDK_ALWAYS_INLINE void gelu_forward_rows(A* __restrict z, const A* __restrict bias, A* __restrict a,
                                         int64_t r0, int64_t r1, int64_t k) {
  for (int64_t r = r0; r < r1; ++r) {
    A* __restrict zr = z + r * k;
    A* __restrict ar = a + r * k;
    if (bias != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        const A v = zr[j] + bias[j];
        A cdf, gauss;
        gelu_terms(v, cdf, gauss);
        zr[j] = v;
        ar[j] = v * cdf;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        const A v = zr[j];
        A cdf, gauss;
        gelu_terms(v, cdf, gauss);
        ar[j] = v * cdf;
      }
    }
  }
}

// colsum: k partial sums of this block's dz rows, or nullptr.
template <typename A>
DDK_ALWAYS_INLINE void gelu_backward_rows(const A* __restrict g, const A* __restrict z, A* __restrict dz,
                                          A* __restrict colsum, int64_t r0, int64_t r1, int64_t k) {
  const A c = static_cast<A>(kInvSqrt2Pi);
  if (colsum != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) colsum[j] = A(0);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const A* __restrict gr = g + r * k;
    const A* __restrict zr = z + r * k;
    A* __restrict dr = dz + r * k;
    if (colsum != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        A cdf, gauss;
        gelu_terms(zr[j], cdf, gauss);
        const A d = gr[j] * (cdf + zr[j] * c * gauss);
        dr[j] = d;
        colsum[j] += d;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        A cdf, gauss;
        gelu_terms(zr[j], cdf, gauss);
        dr[j] = gr[j] * (cdf + zr[j] * c * gauss);
      }
    }
  }
}

// The mean is summed around the row's first value and the variance around the mean (a second pass;
// the row is in L1): a plain float sum, or a one-pass sum of squares, loses the digits of the spread
// when |mean| >> std.
template <typename A>
DDK_ALWAYS_INLINE void residual_ln_forward_rows(const A* __restrict x, const A* __restrict y,
                                                const A* __restrict w, const A* __restrict b, A* __restrict out,
                                                A* __restrict h, A* __restrict mean, A* __restrict rstd, A eps,
                                                int64_t r0, int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    const A* __restrict xr = x + r * n;
    const A* __restrict yr = y + r * n;
    A* __restrict hr = h + r * n;
    A* __restrict orow = out + r * n;
    const A shift = xr[0] + yr[0];
    A sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const A v = xr[j] + yr[j];
      hr[j] = v;
      sum += v - shift;
    }
    const A mu = shift + sum / static_cast<A>(n);
    A var = 0;
#pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < n; ++j) {
      const A d = hr[j] - mu;
      var += d * d;
    }
    const A rs = A(1) / std::sqrt(var / static_cast<A>(n) + eps);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) orow[j] = (hr[j] - mu) * rs * w[j] + b[j];
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// dh = rstd (g w - mean(g w) - xhat mean(g w xhat)), xhat = (h - mean) rstd; the block's partial
// column sums of g xhat (dweight) and g (dbias) go to dw / db when they are not nullptr.
template <typename A>
DDK_ALWAYS_INLINE void ln_backward_rows(const A* __restrict g, const A* __restrict h, const A* __restrict mean,
                                        const A* __restrict rstd, const A* __restrict w, A* __restrict dh,
                                        A* __restrict dw, A* __restrict db, int64_t r0, int64_t r1, int64_t n) {
  if (dw != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      dw[j] = A(0);
      db[j] = A(0);
    }
  }
  for (int64_t r = r0; r < r1; ++r) {
    const A* __restrict gr = g + r * n;
    const A* __restrict hr = h + r * n;
    A* __restrict dr = dh + r * n;
    const A mu = mean[r], rs = rstd[r];
    A s_gw = 0, s_gwx = 0;
#pragma omp simd reduction(+ : s_gw, s_gwx)
    for (int64_t j = 0; j < n; ++j) {
      const A gw = gr[j] * w[j];
      s_gw += gw;
      s_gwx += gw * (hr[j] - mu) * rs;
    }
    const A c_gw = s_gw / static_cast<A>(n), c_gwx = s_gwx / static_cast<A>(n);
    if (dw != nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const A xhat = (hr[j] - mu) * rs;
        dr[j] = rs * (gr[j] * w[j] - c_gw - xhat * c_gwx);
        dw[j] += gr[j] * xhat;
        db[j] += gr[j];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const A xhat = (hr[j] - mu) * rs;
        dr[j] = rs * (gr[j] * w[j] - c_gw - xhat * c_gwx);
      }
    }
  }
}

// ---- one function per (kernel, ISA), the ISA chosen per call --------------------------------------

#if DDK_X86_MULTIVERSION
#define DDK_ISA_VARIANTS(NAME, BODY)                                                                   \
  template <typename A, typename... Args>                                                              \
  void NAME##_base(Args... args) { BODY<A>(args...); }                                                 \
  template <typename A, typename... Args>                                                              \
  DDK_TARGET_AVX2 void NAME##_avx2(Args... args) { BODY<A>(args...); }                                 \
  template <typename A, typename... Args>                                                              \
  DDK_TARGET_AVX512 void NAME##_avx512(Args... args) { BODY<A>(args...); }                             \
  template <typename A, typename... Args>                                                              \
  void NAME(Args... args) {                                                                            \
    switch (cpu_isa_level()) {                                                                         \
      case kIsaAvx512:                                                                                 \
        return NAME##_avx512<A>(args...);                                                              \
      case kIsaAvx2:                                                                                   \
        return NAME##_avx2<A>(args...);                                                                \
      default:                                                                                         \
        return NAME##_base<A>(args...);                                                                \
    }                                                                                                  \
  }
#else
#define DDK_ISA_VARIANTS(NAME, BODY)                                                                   \
  template <typename A, typename... Args>                                                              \
  void NAME(Args... args) { BODY<A>(args...); }
#endif

DDK_ISA_VARIANTS(gelu_forward_block, gelu_forward_rows)
DDK_ISA_VARIANTS(gelu_backward_block, gelu_backward_rows)
DDK_ISA_VARIANTS(residual_ln_forward_block, residual_ln_forward_rows)
DDK_ISA_VARIANTS(ln_backward_block, ln_backward_rows)

int64_t num_blocks(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }

// fn(block, first row, end row) over every block of kBlockRows rows; a work item is at least ~32K
// elements, so small tensors run on the calling thread.
template <typename F>
void for_row_blocks(int64_t rows, int64_t width, const F& fn) {
  const int64_t blocks = num_blocks(rows);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, kBlockRows * width));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) fn(blk, blk * kBlockRows, std::min(rows, (blk + 1) * kBlockRows));
  });
}

void check_rows(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() >= 1 && t.is_contiguous(), name, " must be contiguous with at least one dim");
}

void check_like(const Tensor& t, const Tensor& like, const char* name) {
  check_rows(t, name);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must be ", like.scalar_type(), ", got ",
              t.scalar_type());
}

void check_vector(const Tensor& t, const Tensor& like, const char* name) {
  check_like(t, like, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == like.size(-1), name, " must have shape [", like.size(-1), "], got ",
              t.sizes());
}

Tensor empty_like_pooled(const Tensor& t) { return pooled_empty_cpu(t.sizes(), t.scalar_type()); }

template <typename A>
void run_gelu_forward(Tensor& z, const Tensor* bias, Tensor& a) {
  const int64_t k = z.size(-1), rows = k == 0 ? 0 : z.numel() / k;
  A* zp = z.data_ptr<A>();
  A* ap = a.data_ptr<A>();
  const A* bp = bias != nullptr ? bias->data_ptr<A>() : nullptr;
  for_row_blocks(rows, k, [&](int64_t, int64_t r0, int64_t r1) { gelu_forward_block<A>(zp, bp, ap, r0, r1, k); });
}

template <typename A>
void run_gelu_backward(const Tensor& g, const Tensor& z, Tensor& dz, Tensor* partial) {
  const int64_t k = z.size(-1), rows = k == 0 ? 0 : z.numel() / k;
  const A* gp = g.data_ptr<A>();
  const A* zp = z.data_ptr<A>();
  A* dp = dz.data_ptr<A>();
  A* pp = partial != nullptr ? partial->data_ptr<A>() : nullptr;
  for_row_blocks(rows, k, [&](int64_t blk, int64_t r0, int64_t r1) {
    gelu_backward_block<A>(gp, zp, dp, pp != nullptr ? pp + blk * k : static_cast<A*>(nullptr), r0, r1, k);
  });
}

}  // namespace

Tensor gelu_bias_forward(Tensor z, const c10::optional<Tensor>& bias) {
  check_rows(z, "z");
  const Tensor* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    check_vector(*bias, z, "bias");
    b = &*bias;
  }
  Tensor a = empty_like_pooled(z);
  if (z.scalar_type() == at::kFloat) {
    run_gelu_forward<float>(z, b, a);
  } else {
    run_gelu_forward<double>(z, b, a);
  }
  return a;
}

std::vector<Tensor> gelu_bias_backward(Tensor grad, const Tensor& z, bool want_bias_grad, bool in_place) {
  check_rows(z, "z");
  check_like(grad, z, "grad");
  TORCH_CHECK(grad.sizes() == z.sizes(), "grad must have z's shape ", z.sizes(), ", got ", grad.sizes());
  Tensor dz = in_place ? grad : empty_like_pooled(z);
  const int64_t k = z.size(-1), rows = k == 0 ? 0 : z.numel() / k;
  Tensor partial, db;
  if (want_bias_grad) partial = at::empty({num_blocks(rows), k}, z.options());
  if (z.scalar_type() == at::kFloat) {
    run_gelu_backward<float>(grad, z, dz, want_bias_grad ? &partial : nullptr);
  } else {
    run_gelu_backward<double>(grad, z, dz, want_bias_grad ? &partial : nullptr);
  }
  if (want_bias_grad) db = partial.sum(0);
  return {dz, db};
}

std::vector<Tensor> residual_layer_norm_forward(const Tensor& x, const Tensor& y, const Tensor& weight,
                                                const Tensor& bias, double eps) {
  check_rows(x, "x");
  check_like(y, x, "y");
  TORCH_CHECK(y.sizes() == x.sizes(), "y must have x's shape ", x.sizes(), ", got ", y.sizes());
  check_vector(weight, x, "weight");
  check_vector(bias, x, "bias");
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  TORCH_CHECK(n > 0, "layer norm needs a non-empty last dim");
  Tensor out = empty_like_pooled(x), h = empty_like_pooled(x);
  Tensor mean = at::empty({rows}, x.options()), rstd = at::empty({rows}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "residual_layer_norm_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    for_row_blocks(rows, n, [&](int64_t, int64_t r0, int64_t r1) {
      residual_ln_forward_block<scalar_t>(xp, yp, wp, bp, op, hp, mp, rp, e, r0, r1, n);
    });
  });
  return {out, h, mean, rstd};
}

std::vector<Tensor> layer_norm_backward(const Tensor& grad, const Tensor& h, const Tensor& mean, const Tensor& rstd,
                                        const Tensor& weight, bool want_affine_grads) {
  check_rows(h, "h");
  check_like(grad, h, "grad");
  TORCH_CHECK(grad.sizes() == h.sizes(), "grad must have h's shape ", h.sizes(), ", got ", grad.sizes());
  check_vector(weight, h, "weight");
  const int64_t n = h.size(-1), rows = n == 0 ? 0 : h.numel() / n;
  check_like(mean, h, "mean");
  check_like(rstd, h, "rstd");
  TORCH_CHECK(mean.numel() == rows && rstd.numel() == rows, "mean and rstd must have ", rows, " values");
  Tensor dh = empty_like_pooled(h);
  Tensor dw_part, db_part, dw, db;
  if (want_affine_grads) {
    dw_part = at::empty({num_blocks(rows), n}, h.options());
    db_part = at::empty({num_blocks(rows), n}, h.options());
  }
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "layer_norm_backward", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* rp = rstd.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* dp = dh.data_ptr<scalar_t>();
    scalar_t* dwp = want_affine_grads ? dw_part.data_ptr<scalar_t>() : nullptr;
    scalar_t* dbp = want_affine_grads ? db_part.data_ptr<scalar_t>() : nullptr;
    for_row_blocks(rows, n, [&](int64_t blk, int64_t r0, int64_t r1) {
      ln_backward_block<scalar_t>(gp, hp, mp, rp, wp, dp, dwp != nullptr ? dwp + blk * n : dwp,
                                  dbp != nullptr ? dbp + blk * n : dbp, r0, r1, n);
    });
  });
  if (want_affine_grads) {
    dw = dw_part.sum(0);
    db = db_part.sum(0);
  }
  return {dh, dw, db};
}

}  // namespace ddk
