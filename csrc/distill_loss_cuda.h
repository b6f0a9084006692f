// Launcher API of the CUDA kernels: plain C types only, so the .cu files compile with nvcc alone
// (no torch headers), and the .cpp bindings call them with raw pointers and a stream.
#pragma once
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// Soft cross-entropy at temperature T over rows of C classes (float32, row-major [B, C]).
// Writes per-row loss terms to row_loss[B] and, when grad != nullptr, d(mean loss * T^2)/d student.
int ddk_soft_ce_cuda(const float* student, const float* teacher, float* row_loss, float* grad,
                     int64_t rows, int64_t classes, float temperature, void* stream);

#ifdef __cplusplus
}
#endif
