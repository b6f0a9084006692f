// Declarations shared by the CPU kernels and the bindings.
#pragma once
#include <torch/extension.h>
#include <vector>

namespace ddk {

// Soft cross-entropy rows: returns {row_loss [B] (un-normalised -sum p_t log q_s), grad [B, C] of
// T^2 * mean_b(row_loss) w.r.t. student (undefined when need_grad is false)}.
std::vector<torch::Tensor> soft_ce_cpu(const torch::Tensor& student, const torch::Tensor& teacher,
                                       double temperature, bool need_grad);

}  // namespace ddk
