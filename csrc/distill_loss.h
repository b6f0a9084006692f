// Declarations shared by the CPU kernels and the bindings.
#pragma once
#include <torch/extension.h>
#include <string>
#include <vector>

namespace ddk {

// Which per-row loss a launch computes.
enum class RowOp : int {
  kHiddenMse = 0,     // row = one token's d features
  kHiddenCosine = 1,  // row = one token's d features
  kAttentionKl = 2,   // row = one query's S key scores
  kAttentionMse = 3,  // row = one query's S key scores
  kSoftCe = 4,        // row = one example's C logits
};

// All layers of one fused loss, as raw pointers. Layer l, row r = ((b * heads + h) * seq + i) holds
// `width` contiguous values at student[l] + r * width. Outputs are in the accumulation type
// (double for double inputs, float otherwise).
struct RowsArgs {
  std::vector<const void*> student;  // [L] pointers to [batch, heads, seq, width]
  std::vector<const void*> teacher;  // [L] same shapes and dtype as student
  const float* mask = nullptr;       // [batch, seq] of 0/1 (row validity, and key validity for
                                     // attention); nullptr = all valid (soft CE only)
  int64_t batch = 0, heads = 1, seq = 0, width = 0;
  const void* grad_scale = nullptr;  // [L]: gradient rows are written times grad_scale[l]
  double inv_temperature = 1.0;      // soft CE only
  void* row_loss = nullptr;          // [L, batch * heads * seq] un-normalised row losses
  void* grad = nullptr;              // [L, batch, heads, seq, width] or nullptr (no gradient)
};

// Runs `op` over every row of every layer with at::parallel_for (work item = row).
void rows_cpu(at::ScalarType dtype, RowOp op, const RowsArgs& args);

// Instruction set of the CPU kernels: "avx512", "avx2" or "base" (detected once at load;
// DDK_FAST_CPU_ISA or set_cpu_isa can lower it, e.g. to test every variant on one machine).
std::string cpu_isa();
std::string set_cpu_isa(const std::string& name);  // returns the ISA now in use

}  // namespace ddk
