// Launcher API of the CUDA kernels: plain C types only, so the .cu files compile with nvcc alone
// (no torch headers), and the .cpp bindings call them with raw pointers and a stream.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Storage type of student/teacher. Outputs (row_loss, grad, grad_scale) are float64 for F64 and
// float32 for every other type.
enum {
  DDK_DTYPE_F32 = 0,
  DDK_DTYPE_F64 = 1,
  DDK_DTYPE_F16 = 2,
  DDK_DTYPE_BF16 = 3,
};

// Row operations; the values match ddk::RowOp in distill_loss.h.
enum {
  DDK_ROW_HIDDEN_MSE = 0,
  DDK_ROW_HIDDEN_COSINE = 1,
  DDK_ROW_ATTENTION_KL = 2,
  DDK_ROW_ATTENTION_MSE = 3,
  DDK_ROW_SOFT_CE = 4,
};

// One launch (per chunk of 64 layers) over every row of every layer.
//   students, teachers: host arrays of `layers` device pointers, each to [batch, heads, seq, width]
//   mask: device [batch, seq] of 0/1 floats (row validity, and key validity for attention ops);
//         NULL = every row valid (soft CE)
//   grad_scale: device [layers]; gradient rows are written times grad_scale[l]
//   inv_temperature: soft CE only
//   row_loss: device [layers, batch * heads * seq]; grad: device [layers, batch, heads, seq, width]
//         or NULL when no gradient is wanted
// Returns 0 or a cudaError_t value (see ddk_cuda_error_string).
int ddk_rows_cuda(int dtype, int op, const void* const* students, const void* const* teachers,
                  int64_t layers, const float* mask, int64_t batch, int64_t heads, int64_t seq,
                  int64_t width, const void* grad_scale, double inv_temperature, void* row_loss,
                  void* grad, void* stream);

// Text for an error code returned above (cudaGetErrorString, or a launcher argument error).
const char* ddk_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif
