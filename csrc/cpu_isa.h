// Instruction-set variants of the CPU kernels, chosen once at run time and shared by every kernel file.
//
// Why one chooser: the fused losses and the fused layer ops must run the same variant (one
// DDK_FAST_CPU_ISA / set_cpu_isa switch tests every variant of both on one machine).
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define DDK_X86_MULTIVERSION 1
#define DDK_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DDK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")))
#else
#define DDK_X86_MULTIVERSION 0
#endif

namespace ddk {

enum CpuIsa : int { kIsaBase = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

// The variant in use now (the best the CPU supports, lowered by DDK_FAST_CPU_ISA or set_cpu_isa).
int cpu_isa_level();

}  // namespace ddk
