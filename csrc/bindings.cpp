// pybind11 bindings and device dispatch of ddk_fast._C.
#include <torch/extension.h>

#include "distill_loss.h"
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#elif __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#ifndef TORCH_VERSION
#define TORCH_VERSION "unknown"
#endif
#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include "distill_loss_cuda.h"
#endif

namespace {

void check_float_matrix(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D [B, C], got ", x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, name, " must be float32, got ", x.scalar_type());
}

std::vector<torch::Tensor> soft_ce(const torch::Tensor& student, const torch::Tensor& teacher,
                                   double temperature, bool need_grad) {
  check_float_matrix(student, "student_logits");
  check_float_matrix(teacher, "teacher_logits");
  TORCH_CHECK(student.sizes() == teacher.sizes(), "student_logits ", student.sizes(),
              " and teacher_logits ", teacher.sizes(), " must have the same shape");
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  if (student.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(student.device());
    auto s = student.contiguous();
    auto t = teacher.contiguous();
    auto row_loss = torch::empty({s.size(0)}, s.options());
    auto grad = need_grad ? torch::empty_like(s) : torch::Tensor();
    int err = ddk_soft_ce_cuda(s.data_ptr<float>(), t.data_ptr<float>(), row_loss.data_ptr<float>(),
                               need_grad ? grad.data_ptr<float>() : nullptr, s.size(0), s.size(1),
                               static_cast<float>(temperature),
                               c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "ddk_soft_ce_cuda failed with CUDA error ", err);
    return {row_loss, grad};
#else
    TORCH_CHECK(false, "ddk_fast._C was built without CUDA kernels");
#endif
  }
  return ddk::soft_ce_cpu(student, teacher, temperature, need_grad);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ddk_fast fused distillation losses (CPU OpenMP and CUDA)";
  m.attr("TORCH_VERSION") = TORCH_VERSION;
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
#ifdef _OPENMP
  m.attr("WITH_OPENMP") = true;
#else
  m.attr("WITH_OPENMP") = false;
#endif
  m.def("soft_ce", &soft_ce, "fused soft cross-entropy rows + student gradient",
        py::arg("student"), py::arg("teacher"), py::arg("temperature"), py::arg("need_grad"));
}
