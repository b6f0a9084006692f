// Per-row math of the fused distillation losses on the CPU, shared by every instruction-set variant.
//
// Why a header of force-inlined functions: distill_loss_cpu.cpp instantiates the same bodies inside
// functions compiled for AVX-512, AVX2 and the baseline ISA (GCC/Clang `target` attribute), and
// picks one at run time. Everything called from a hot loop must be inlined into those functions, so
// the loops are vectorised for the chosen ISA; no library call (std::exp) sits in a vectorised loop.
//
// Conventions: T is the storage type of the inputs (float, double, c10::BFloat16, c10::Half); A is
// the accumulation type (double for double inputs, float otherwise). A row's gradient `g` is written
// already multiplied by `gscale` (= layer weight / element count), so the caller never rescales.
// Masks are float arrays of 0/1; masked entries are never read into a sum (NaN padding is ignored).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__) || defined(__clang__)
#define DDK_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DDK_ALWAYS_INLINE inline
#endif

namespace ddk {
namespace cpu {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// exp(x) for float without a library call: Cody-Waite reduction x = n ln2 + r and the Cephes
// minimax polynomial for exp(r) on |r| <= ln2/2 (about 2 ulp). Range handling is done on the
// integer exponent only (2^n = 0 below n = -127, inf above 128): a clamp of x itself, written as a
// select, makes GCC emit a branch and gives up vectorising the loop. Underflow is to exactly 0 for
// x < ~-87.3 (softmax arguments are <= 0; such terms are negligible against a row sum >= 1).
// NaN stays NaN.
DDK_ALWAYS_INLINE float exp_fast(float x) {
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = static_cast<int32_t>(n);  // NaN/inf give INT_MIN (cvttps2dq), then 2^n = 0, p = NaN
  e = e < -127 ? -127 : e;
  e = e > 128 ? 128 : e;
  const int32_t bits = (e + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}

DDK_ALWAYS_INLINE double exp_fast(double x) { return std::exp(x); }  // float64 is the testing path

template <typename A>
DDK_ALWAYS_INLINE A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

template <typename A>
struct BitsOf {
  using type = int32_t;
};
template <>
struct BitsOf<double> {
  using type = int64_t;
};

// m > 0 ? x : other, on the bits. A plain `?:` in these loops is turned into a branch by GCC (which
// then gives up vectorising, at least for AVX2); an AND/OR on the bits always vectorises, and a NaN
// at a masked position never leaks into the result.
template <typename A>
DDK_ALWAYS_INLINE A select_valid(float m, A x, A other) {
  using I = typename BitsOf<A>::type;
  I xi, oi;
  std::memcpy(&xi, &x, sizeof(A));
  std::memcpy(&oi, &other, sizeof(A));
  const I keep = m > 0.0f ? I(-1) : I(0);
  const I r = (xi & keep) | (oi & ~keep);
  A out;
  std::memcpy(&out, &r, sizeof(A));
  return out;
}

// ---- hidden states: one token row of d features --------------------------------------------------

// sum_j (s_j - t_j)^2; g_j = gscale * 2 (s_j - t_j).
template <typename T, typename A>
DDK_ALWAYS_INLINE A mse_token(const T* __restrict s, const T* __restrict t, int64_t d,
                              A* __restrict g, A gscale) {
  A acc = 0;
  if (g != nullptr) {
    const A two_scale = 2 * gscale;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) {
      const A diff = static_cast<A>(s[j]) - static_cast<A>(t[j]);
      acc += diff * diff;
      g[j] = two_scale * diff;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) {
      const A diff = static_cast<A>(s[j]) - static_cast<A>(t[j]);
      acc += diff * diff;
    }
  }
  return acc;
}

// 1 - cos(s, t) with each norm clamped below at eps (as torch.nn.functional.cosine_similarity).
// d cos / ds = t / (|s|_c |t|_c) - cos s / (|s| |s|_c) [|s| > eps].
template <typename T, typename A>
DDK_ALWAYS_INLINE A cosine_token(const T* __restrict s, const T* __restrict t, int64_t d,
                                 A* __restrict g, A gscale) {
  A dot = 0, ss = 0, tt = 0;
#pragma omp simd reduction(+ : dot, ss, tt)
  for (int64_t j = 0; j < d; ++j) {
    const A sj = static_cast<A>(s[j]), tj = static_cast<A>(t[j]);
    dot += sj * tj;
    ss += sj * sj;
    tt += tj * tj;
  }
  const A eps = static_cast<A>(1e-8);
  const A ns = std::sqrt(ss), nt = std::sqrt(tt);
  const A ns_c = ns > eps ? ns : eps, nt_c = nt > eps ? nt : eps;
  const A inv = 1 / (ns_c * nt_c);
  const A cos = dot * inv;
  if (g != nullptr) {
    const A k_s = ns > eps ? gscale * cos / (ns * ns_c) : A(0);
    const A k_t = gscale * inv;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      g[j] = k_s * static_cast<A>(s[j]) - k_t * static_cast<A>(t[j]);
    }
  }
  return 1 - cos;
}

// ---- attention: one query row of n keys (scores before softmax) ---------------------------------

// Row maxima over the valid keys. The max skips NaN; a NaN still reaches the loss through the sums
// (every valid key enters them), which is how non-finite inputs are detected cheaply.
template <typename T, typename A>
DDK_ALWAYS_INLINE void masked_row_max(const T* __restrict s, const T* __restrict t,
                                      const float* __restrict km, int64_t n, A& smax, A& tmax) {
  A sm = neg_inf<A>(), tm = neg_inf<A>();
#pragma omp simd reduction(max : sm, tm)
  for (int64_t j = 0; j < n; ++j) {
    const A sj = select_valid(km[j], static_cast<A>(s[j]), neg_inf<A>());
    const A tj = select_valid(km[j], static_cast<A>(t[j]), neg_inf<A>());
    sm = sj > sm ? sj : sm;
    tm = tj > tm ? tj : tm;
  }
  smax = sm;
  tmax = tm;
}

// KL(p_t || q_s) over valid keys. With e^s_j = exp(s_j - smax), e^t_j = exp(t_j - tmax):
//   KL = sum_j p_j (t_j - s_j) + (smax + log Zs) - (tmax + log Zt),  p_j = e^t_j / Zt,
// so one pass gives Zs, Zt and the dot; and d KL / ds_j = q_j - p_j.
// es/et: scratch rows of n (the exponentials, reused by the gradient pass).
template <typename T, typename A>
DDK_ALWAYS_INLINE A kl_row(const T* __restrict s, const T* __restrict t,
                           const float* __restrict km, int64_t n, A* __restrict g, A gscale,
                           A* __restrict es, A* __restrict et) {
  A smax, tmax;
  masked_row_max(s, t, km, n, smax, tmax);
  A zs = 0, zt = 0, dot = 0;
#pragma omp simd reduction(+ : zs, zt, dot)
  for (int64_t j = 0; j < n; ++j) {
    const float m = km[j];
    const A sj = static_cast<A>(s[j]), tj = static_cast<A>(t[j]);
    const A e_s = select_valid(m, exp_fast(sj - smax), A(0));
    const A e_t = select_valid(m, exp_fast(tj - tmax), A(0));
    es[j] = e_s;
    et[j] = e_t;
    zs += e_s;
    zt += e_t;
    dot += e_t * select_valid(m, tj - sj, A(0));
  }
  const A loss = dot / zt + (smax + std::log(zs)) - (tmax + std::log(zt));
  if (g != nullptr) {
    const A a = gscale / zs, b = gscale / zt;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) g[j] = a * es[j] - b * et[j];
  }
  return loss;
}

// sum_j (q_j - p_j)^2 over valid keys, q = softmax(s), p = softmax(t).
// d/ds_k = 2 q_k (r_k - sum_j r_j q_j), r = q - p.
template <typename T, typename A>
DDK_ALWAYS_INLINE A prob_mse_row(const T* __restrict s, const T* __restrict t,
                                 const float* __restrict km, int64_t n, A* __restrict g, A gscale,
                                 A* __restrict q, A* __restrict r) {
  A smax, tmax;
  masked_row_max(s, t, km, n, smax, tmax);
  A zs = 0, zt = 0;
#pragma omp simd reduction(+ : zs, zt)
  for (int64_t j = 0; j < n; ++j) {
    const A e_s = exp_fast(static_cast<A>(s[j]) - smax);
    const A e_t = exp_fast(static_cast<A>(t[j]) - tmax);
    q[j] = select_valid(km[j], e_s, A(0));
    r[j] = select_valid(km[j], e_t, A(0));
    zs += q[j];
    zt += r[j];
  }
  const A inv_s = 1 / zs, inv_t = 1 / zt;
  A loss = 0, c = 0;
#pragma omp simd reduction(+ : loss, c)
  for (int64_t j = 0; j < n; ++j) {
    const A qj = q[j] * inv_s;
    const A rj = qj - r[j] * inv_t;
    q[j] = qj;
    r[j] = rj;
    loss += rj * rj;
    c += rj * qj;
  }
  if (g != nullptr) {
    const A two_scale = 2 * gscale;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) g[j] = two_scale * q[j] * (r[j] - c);
  }
  return loss;
}

// ---- logits: soft cross-entropy row at temperature T ---------------------------------------------

// -sum_c softmax(t/T)_c log_softmax(s/T)_c; g_c = gscale (softmax(s/T)_c - softmax(t/T)_c).
template <typename T, typename A>
DDK_ALWAYS_INLINE A soft_ce_row(const T* __restrict s, const T* __restrict t, int64_t n,
                                A inv_temp, A* __restrict g, A gscale) {
  A smax = neg_inf<A>(), tmax = neg_inf<A>();
#pragma omp simd reduction(max : smax, tmax)
  for (int64_t j = 0; j < n; ++j) {
    const A sj = static_cast<A>(s[j]) * inv_temp, tj = static_cast<A>(t[j]) * inv_temp;
    smax = sj > smax ? sj : smax;
    tmax = tj > tmax ? tj : tmax;
  }
  A zs = 0, zt = 0, dot = 0;
#pragma omp simd reduction(+ : zs, zt, dot)
  for (int64_t j = 0; j < n; ++j) {
    const A sj = static_cast<A>(s[j]) * inv_temp - smax;
    const A e_t = exp_fast(static_cast<A>(t[j]) * inv_temp - tmax);
    zs += exp_fast(sj);
    zt += e_t;
    dot += e_t * sj;
  }
  const A log_zs = std::log(zs);
  // -sum p_c (s_c - log Zs) = log Zs - dot / Zt
  const A loss = log_zs - dot / zt;
  if (g != nullptr) {
    const A inv_zt = 1 / zt;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const A ls = static_cast<A>(s[j]) * inv_temp - smax - log_zs;
      const A pt = exp_fast(static_cast<A>(t[j]) * inv_temp - tmax) * inv_zt;
      g[j] = gscale * (exp_fast(ls) - pt);
    }
  }
  return loss;
}

}  // namespace cpu
}  // namespace ddk
