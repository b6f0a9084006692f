// CPU kernels of the fused distillation losses (OpenMP over rows, fp32 accumulation).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

#include "distill_loss.h"

namespace ddk {

std::vector<torch::Tensor> soft_ce_cpu(const torch::Tensor& student, const torch::Tensor& teacher,
                                       double temperature, bool need_grad) {
  const int64_t rows = student.size(0), classes = student.size(1);
  auto s = student.contiguous();
  auto t = teacher.contiguous();
  auto row_loss = torch::empty({rows}, s.options());
  auto grad = need_grad ? torch::empty_like(s) : torch::Tensor();
  const float* sp = s.data_ptr<float>();
  const float* tp = t.data_ptr<float>();
  float* lp = row_loss.data_ptr<float>();
  float* gp = need_grad ? grad.data_ptr<float>() : nullptr;
  const float inv_t = 1.f / static_cast<float>(temperature);
  const float grad_scale = static_cast<float>(temperature) / static_cast<float>(rows);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* sr = sp + r * classes;
      const float* tr = tp + r * classes;
      float smax = -INFINITY, tmax = -INFINITY;
      for (int64_t c = 0; c < classes; ++c) {
        smax = std::max(smax, sr[c] * inv_t);
        tmax = std::max(tmax, tr[c] * inv_t);
      }
      double ssum = 0, tsum = 0;
      for (int64_t c = 0; c < classes; ++c) {
        ssum += std::exp(sr[c] * inv_t - smax);
        tsum += std::exp(tr[c] * inv_t - tmax);
      }
      const float slog = static_cast<float>(std::log(ssum));
      const float tinv = static_cast<float>(1.0 / tsum);
      double acc = 0;
      for (int64_t c = 0; c < classes; ++c) {
        const float ls = sr[c] * inv_t - smax - slog;
        const float pt = std::exp(tr[c] * inv_t - tmax) * tinv;
        acc -= static_cast<double>(pt) * ls;
        if (gp) gp[r * classes + c] = grad_scale * (std::exp(ls) - pt);
      }
      lp[r] = static_cast<float>(acc);
    }
  });
  return {row_loss, grad};
}

}  // namespace ddk
