// A small cache of large CPU buffers for the gradients the fused losses save.
//
// Why: a fresh multi-MB CPU allocation is mmap'ed and every 4 KiB page faults on first touch; for
// the reference workload (~195 MB of gradients per step) that costs more than the kernels. Freed
// gradient buffers (e.g. after optimizer.zero_grad()) come back here and the next step reuses them.
// New blocks are 2 MiB aligned and advised for transparent huge pages, so even a first touch
// faults once per 2 MiB. Size of the cache: DDK_FAST_CPU_POOL_MB (default 1024; 0 disables).
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace ddk {

// An uninitialised CPU tensor whose memory comes from (and returns to) the pool.
at::Tensor pooled_empty_cpu(at::IntArrayRef sizes, at::ScalarType dtype);

struct PoolStats {
  int64_t cached_bytes;  // held by the pool, free for reuse
  int64_t live_bytes;    // handed out and not yet freed
  int64_t hits;          // allocations served from the cache
  int64_t misses;        // allocations that needed new memory
  int64_t limit_bytes;
};
PoolStats pool_stats();
void pool_empty();                 // returns every cached block to the system
void pool_set_limit(int64_t bytes);  // 0 disables caching

}  // namespace ddk
