// Fused memory-bound passes of the masked encoder layer on the CPU (float32, and float64 for tests).
//
// Why: around the GEMMs a layer runs the erf GELU, its slope, the bias gradient, the residual add and
// LayerNorm as separate passes over [tokens, width] tensors; each kernel here does one pass where torch
// does two or three. Rows are split into fixed blocks (at::parallel_for, so torch's thread count is
// respected) and column sums are reduced per block then summed, so results do not depend on the
// number of threads.
#pragma once
#include <torch/extension.h>

#include <vector>

namespace ddk {

// a = gelu(z + bias) (erf GELU). z [M, K] contiguous is updated in place to z + bias (the
// pre-activation the backward needs); bias [K] may be undefined (z is then left as it is).
at::Tensor gelu_bias_forward(at::Tensor z, const c10::optional<at::Tensor>& bias);

// {dz = grad * gelu'(z), db = sum over rows of dz (undefined unless want_bias_grad)}.
// in_place: dz is written into grad (the caller owns grad).
std::vector<at::Tensor> gelu_bias_backward(at::Tensor grad, const at::Tensor& z, bool want_bias_grad,
                                           bool in_place);

// {out = LayerNorm(x + y) * weight + bias, h = x + y, mean [M], rstd [M]} over the last dim.
std::vector<at::Tensor> residual_layer_norm_forward(const at::Tensor& x, const at::Tensor& y,
                                                    const at::Tensor& weight, const at::Tensor& bias,
                                                    double eps);

// {dh, dweight, dbias} of out = LayerNorm(h) * weight + bias (dweight/dbias undefined unless
// want_affine_grads).
std::vector<at::Tensor> layer_norm_backward(const at::Tensor& grad, const at::Tensor& h, const at::Tensor& mean,
                                            const at::Tensor& rstd, const at::Tensor& weight,
                                            bool want_affine_grads);

}  // namespace ddk
