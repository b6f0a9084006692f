// pybind11 bindings and device dispatch of ddk_fast._C.
//
// Every fused loss goes through the same shape: check the arguments, build RowsArgs (raw pointers of
// all layers, no stacking copy), run the row kernels once for all layers (CPU: rows_cpu, CUDA:
// ddk_rows_cuda), then reduce the row losses per layer in double. The kernels write the student
// gradient already multiplied by grad_scale[l] / element count, so a loss that is the last node of
// the graph needs no further pass over the data.
#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cpu_buffer_pool.h"
#include "distill_loss.h"
#include "fused_layer.h"
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

using torch::Tensor;

at::ScalarType acc_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_dtype(const Tensor& x, const std::string& name) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, name,
              " must be float32, float64, bfloat16 or float16, got ", dt);
}

#ifdef WITH_CUDA
int cuda_dtype_code(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return DDK_DTYPE_F32;
    case at::kDouble:
      return DDK_DTYPE_F64;
    case at::kHalf:
      return DDK_DTYPE_F16;
    case at::kBFloat16:
      return DDK_DTYPE_BF16;
    default:
      TORCH_CHECK(false, "unsupported dtype ", dtype);
  }
}
#endif

// Runs the row kernels on the device of the inputs.
void launch_rows(const Tensor& like, ddk::RowOp op, const ddk::RowsArgs& args) {
  if (like.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(like.device());
    const int err = ddk_rows_cuda(cuda_dtype_code(like.scalar_type()), static_cast<int>(op),
                                  args.student.data(), args.teacher.data(),
                                  static_cast<int64_t>(args.student.size()), args.mask, args.batch,
                                  args.heads, args.seq, args.width, args.grad_scale,
                                  args.inv_temperature, args.row_loss, args.grad,
                                  c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "ddk_rows_cuda failed: ", ddk_cuda_error_string(err));
    return;
#else
    TORCH_CHECK(false, "ddk_fast._C was built without CUDA kernels");
#endif
  }
  TORCH_CHECK(like.device().is_cpu(), "fused distillation losses run on CPU or CUDA, got ", like.device());
  ddk::rows_cpu(like.scalar_type(), op, args);
}

ddk::RowOp parse_layer_op(const std::string& op) {
  if (op == "hidden_mse") return ddk::RowOp::kHiddenMse;
  if (op == "hidden_cosine") return ddk::RowOp::kHiddenCosine;
  if (op == "attention_kl") return ddk::RowOp::kAttentionKl;
  if (op == "attention_mse") return ddk::RowOp::kAttentionMse;
  TORCH_CHECK(false, "op must be one of hidden_mse, hidden_cosine, attention_kl, attention_mse, got '",
              op, "'");
}

// Fused layer-wise loss over L layers.
//   hidden_*:    students[l], teachers[l]: [B, S, d]
//   attention_*: students[l], teachers[l]: [B, A, S, S] (scores before softmax)
//   grad_scale:  [L] (the layer weights); token_mask: [B, S] (nonzero = token) or None.
// Returns {per_layer [L] (normalised, unweighted), grad [L, *student shape] of
// sum_l grad_scale[l] * per_layer[l] w.r.t. every student (undefined if !need_grad)}.
// Outputs are float32 (float64 for float64 inputs).
std::vector<Tensor> layer_loss(const std::vector<Tensor>& students, const std::vector<Tensor>& teachers,
                               const Tensor& grad_scale, const c10::optional<Tensor>& token_mask,
                               const std::string& op_name, bool need_grad) {
  const ddk::RowOp op = parse_layer_op(op_name);
  const bool attention = op == ddk::RowOp::kAttentionKl || op == ddk::RowOp::kAttentionMse;
  const int64_t layers = static_cast<int64_t>(students.size());
  TORCH_CHECK(layers >= 1, "student must hold at least one layer, got 0");
  TORCH_CHECK(static_cast<int64_t>(teachers.size()) == layers, "teacher has ", teachers.size(),
              " layers but student has ", layers);
  TORCH_CHECK(grad_scale.dim() == 1 && grad_scale.numel() == layers, "layer_weights must have shape [",
              layers, "], got ", grad_scale.sizes());
  const Tensor& first = students[0];
  const int64_t want_dim = attention ? 4 : 3;
  TORCH_CHECK(first.dim() == want_dim, "student[0] must be ", attention ? "[B, A, S, S]" : "[B, S, d]",
              ", got shape ", first.sizes());
  if (attention) {
    TORCH_CHECK(first.size(2) == first.size(3), "student[0] attention scores must be square in the last two dims [B, A, S, S], got ",
                first.sizes());
  }
  check_dtype(first, "student[0]");
  const auto dtype = first.scalar_type();
  const auto acc = acc_type(dtype);
  const auto device = first.device();

  ddk::RowsArgs args;
  std::vector<Tensor> keep;  // contiguous copies (no-ops for contiguous inputs) stay alive here
  keep.reserve(2 * layers);
  for (int64_t l = 0; l < layers; ++l) {
    const Tensor& s = students[l];
    const Tensor& t = teachers[l];
    TORCH_CHECK(s.sizes() == first.sizes(), "student[", l, "] has shape ", s.sizes(), ", expected ",
                first.sizes(), " (all layers alike)");
    TORCH_CHECK(t.sizes() == first.sizes(), "teacher[", l, "] has shape ", t.sizes(),
                " but student[", l, "] has ", s.sizes());
    TORCH_CHECK(s.scalar_type() == dtype && t.scalar_type() == dtype, "student[", l, "] and teacher[", l,
                "] must both be ", dtype, ", got ", s.scalar_type(), " and ", t.scalar_type());
    TORCH_CHECK(s.device() == device && t.device() == device, "student[", l, "] and teacher[", l,
                "] must be on ", device, ", got ", s.device(), " and ", t.device());
    keep.push_back(s.contiguous());
    keep.push_back(t.contiguous());
    args.student.push_back(keep[2 * l].data_ptr());
    args.teacher.push_back(keep[2 * l + 1].data_ptr());
  }
  args.batch = first.size(0);
  args.heads = attention ? first.size(1) : 1;
  args.seq = attention ? first.size(2) : first.size(1);
  args.width = attention ? first.size(3) : first.size(2);

  Tensor mask;
  if (token_mask.has_value() && token_mask->defined()) {
    TORCH_CHECK(token_mask->dim() == 2 && token_mask->size(0) == args.batch && token_mask->size(1) == args.seq,
                "token_mask must have shape [", args.batch, ", ", args.seq, "], got ", token_mask->sizes());
    mask = token_mask->to(device).ne(0).to(at::kFloat).contiguous();
  } else {
    mask = at::ones({args.batch, args.seq}, first.options().dtype(at::kFloat));
  }
  args.mask = mask.data_ptr<float>();

  // Element count of the mean, kept on the device (no host sync).
  Tensor count;
  const auto f64 = first.options().dtype(at::kDouble);
  switch (op) {
    case ddk::RowOp::kHiddenMse:
      count = mask.sum(at::kDouble) * static_cast<double>(args.width);
      break;
    case ddk::RowOp::kHiddenCosine:
      count = mask.sum(at::kDouble);
      break;
    case ddk::RowOp::kAttentionKl:
      count = mask.sum(at::kDouble) * static_cast<double>(args.heads);
      break;
    default: {
      const Tensor per_batch = mask.sum(1, false, at::kDouble);
      count = (per_batch * per_batch).sum() * static_cast<double>(args.heads);
    }
  }
  count = count.clamp_min(1.0).to(f64);  // no valid token at all: the loss is 0, not NaN

  const Tensor scale = (grad_scale.to(device, at::kDouble) / count).to(acc).contiguous();
  args.grad_scale = scale.data_ptr();
  const int64_t rows = args.batch * args.heads * args.seq;
  Tensor row_loss = at::empty({layers, rows}, first.options().dtype(acc));
  args.row_loss = row_loss.data_ptr();
  Tensor grad;
  if (need_grad) {
    std::vector<int64_t> shape{layers};
    for (auto v : first.sizes()) shape.push_back(v);
    // CPU: pooled memory (a fresh buffer would page-fault on every step, see cpu_buffer_pool.h).
    grad = first.is_cuda() ? at::empty(shape, first.options().dtype(acc)) : ddk::pooled_empty_cpu(shape, acc);
    args.grad = grad.data_ptr();
  }
  launch_rows(first, op, args);
  const Tensor per_layer = (row_loss.sum(1, false, at::kDouble) / count).to(acc);
  return {per_layer, grad};
}

// Soft cross-entropy rows at temperature T: {row_loss [B] (-sum_c p_t log q_s, un-normalised),
// grad [B, C] of T^2 * mean_b(row_loss) w.r.t. student (undefined if !need_grad)}.
std::vector<Tensor> soft_ce(const Tensor& student, const Tensor& teacher, double temperature, bool need_grad) {
  TORCH_CHECK(student.dim() == 2, "student_logits must be 2-D [B, C], got ", student.dim(), "-D");
  TORCH_CHECK(teacher.dim() == 2, "teacher_logits must be 2-D [B, C], got ", teacher.dim(), "-D");
  TORCH_CHECK(student.sizes() == teacher.sizes(), "student_logits ", student.sizes(), " and teacher_logits ",
              teacher.sizes(), " must have the same shape");
  check_dtype(student, "student_logits");
  TORCH_CHECK(teacher.scalar_type() == student.scalar_type(), "teacher_logits must be ",
              student.scalar_type(), " like student_logits, got ", teacher.scalar_type());
  TORCH_CHECK(teacher.device() == student.device(), "teacher_logits must be on ", student.device(),
              ", got ", teacher.device());
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  const auto acc = acc_type(student.scalar_type());
  const Tensor s = student.contiguous();
  const Tensor t = teacher.contiguous();
  const int64_t rows = s.size(0);
  ddk::RowsArgs args;
  args.student.push_back(s.data_ptr());
  args.teacher.push_back(t.data_ptr());
  args.batch = 1;
  args.seq = rows;
  args.width = s.size(1);
  args.inv_temperature = 1.0 / temperature;
  const Tensor scale = at::full({1}, temperature / static_cast<double>(std::max<int64_t>(rows, 1)),
                                s.options().dtype(acc));
  args.grad_scale = scale.data_ptr();
  Tensor row_loss = at::empty({rows}, s.options().dtype(acc));
  args.row_loss = row_loss.data_ptr();
  Tensor grad;
  if (need_grad) {
    grad = at::empty(s.sizes(), s.options().dtype(acc));
    args.grad = grad.data_ptr();
  }
  if (rows > 0 && args.width > 0) launch_rows(s, ddk::RowOp::kSoftCe, args);
  return {row_loss, grad};
}

// grad * scale in `dtype` (the backward of a loss that is not the last node, or of low-precision
// inputs); CPU results come from the gradient-buffer pool.
Tensor scale_grad(const Tensor& grad, const Tensor& scale, at::ScalarType dtype) {
  TORCH_CHECK(scale.numel() == 1, "scale must hold one value, got ", scale.numel());
  Tensor out = grad.is_cuda() ? at::empty(grad.sizes(), grad.options().dtype(dtype))
                              : ddk::pooled_empty_cpu(grad.sizes(), dtype);
  at::mul_out(out, grad, scale.to(grad.device(), grad.scalar_type()).reshape({}));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ddk_fast fused distillation losses (CPU OpenMP + SIMD, and CUDA)";
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
  m.def("layer_loss", &layer_loss,
        "fused layer-wise loss: {per_layer [L], grad [L, ...] of sum_l grad_scale[l] * per_layer[l]}",
        py::arg("students"), py::arg("teachers"), py::arg("grad_scale"), py::arg("token_mask"),
        py::arg("op"), py::arg("need_grad"));
  m.def("soft_ce", &soft_ce, "fused soft cross-entropy rows + student gradient", py::arg("student"),
        py::arg("teacher"), py::arg("temperature"), py::arg("need_grad"));
  m.def("scale_grad", &scale_grad, "grad * scale in dtype (pooled on CPU)", py::arg("grad"), py::arg("scale"),
        py::arg("dtype"));
  m.def("cpu_pool_stats", [] {
    const auto st = ddk::pool_stats();
    py::dict d;
    d["cached_bytes"] = st.cached_bytes;
    d["live_bytes"] = st.live_bytes;
    d["hits"] = st.hits;
    d["misses"] = st.misses;
    d["limit_bytes"] = st.limit_bytes;
    return d;
  }, "statistics of the CPU gradient-buffer pool");
  m.def("cpu_pool_empty", &ddk::pool_empty, "free every cached CPU gradient buffer");
  m.def("cpu_pool_set_limit", &ddk::pool_set_limit,
        "bytes the CPU gradient-buffer pool may cache (0 disables caching; empties the pool)",
        py::arg("bytes"));
  m.def("gelu_bias_forward", &ddk::gelu_bias_forward,
        "erf GELU of z + bias; z is updated in place to z + bias (CPU, float32/float64)", py::arg("z"),
        py::arg("bias") = py::none());
  m.def("gelu_bias_backward", &ddk::gelu_bias_backward, "{grad * gelu'(z), row sum of it (if asked)}",
        py::arg("grad"), py::arg("z"), py::arg("want_bias_grad"), py::arg("in_place") = false);
  m.def("residual_layer_norm_forward", &ddk::residual_layer_norm_forward,
        "{LayerNorm(x + y), x + y, mean, rstd} over the last dim (CPU)", py::arg("x"), py::arg("y"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("layer_norm_backward", &ddk::layer_norm_backward, "{dh, dweight, dbias} of LayerNorm(h) (CPU)",
        py::arg("grad"), py::arg("h"), py::arg("mean"), py::arg("rstd"), py::arg("weight"),
        py::arg("want_affine_grads"));
  m.def("cpu_isa", &ddk::cpu_isa, "instruction set the CPU kernels use: avx512, avx2 or base");
  m.def("set_cpu_isa", &ddk::set_cpu_isa, "use a lower instruction set for the CPU kernels (testing)",
        py::arg("name"));
}
