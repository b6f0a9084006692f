// CPU buffer pool for the saved gradients of the fused losses (see cpu_buffer_pool.h).
#include "cpu_buffer_pool.h"

#include <cstdlib>
#include <map>
#include <mutex>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ddk {
namespace {

constexpr size_t kAlign = size_t(2) << 20;     // 2 MiB: huge-page aligned
constexpr size_t kMinPooled = size_t(4) << 20;  // smaller buffers use the ordinary allocator

class Pool {
 public:
  Pool() {
    int64_t mb = 1024;
    if (const char* env = std::getenv("DDK_FAST_CPU_POOL_MB")) {
      if (env[0] != '\0') mb = std::atoll(env);
    }
    limit_ = mb < 0 ? 0 : mb * (int64_t(1) << 20);
  }

  void* take(size_t bytes) {
    const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Best fit, accepting at most 25% slack so a small request does not pin a huge block.
      auto it = free_.lower_bound(rounded);
      if (it != free_.end() && it->first <= rounded + rounded / 4) {
        void* p = it->second;
        cached_ -= static_cast<int64_t>(it->first);
        live_ += static_cast<int64_t>(it->first);
        sizes_[p] = it->first;
        free_.erase(it);
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, kAlign, rounded) == 0 && p != nullptr, "out of memory allocating ",
                rounded, " bytes for a fused-loss gradient");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE);  // best effort; ignored where THP is off
#endif
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = rounded;
    live_ += static_cast<int64_t>(rounded);
    return p;
  }

  void give_back(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sizes_.find(p);
    const size_t size = it->second;
    sizes_.erase(it);
    live_ -= static_cast<int64_t>(size);
    if (cached_ + static_cast<int64_t>(size) <= limit_) {
      free_.emplace(size, p);
      cached_ += static_cast<int64_t>(size);
    } else {
      std::free(p);
    }
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
  }

  void set_limit(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes < 0 ? 0 : bytes;
    }
    empty();
  }

  PoolStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cached_, live_, hits_, misses_, limit_};
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // size -> block
  std::map<void*, size_t> sizes_;      // live block -> size
  int64_t cached_ = 0, live_ = 0, hits_ = 0, misses_ = 0, limit_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

at::Tensor pooled_empty_cpu(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (bytes < kMinPooled) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  void* p = pool().take(bytes);
  return at::from_blob(p, sizes, [](void* q) { pool().give_back(q); },
                       at::TensorOptions().dtype(dtype).device(at::kCPU));
}

PoolStats pool_stats() { return pool().stats(); }
void pool_empty() { pool().empty(); }
void pool_set_limit(int64_t bytes) { pool().set_limit(bytes); }

}  // namespace ddk
