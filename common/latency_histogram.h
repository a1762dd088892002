// common/latency_histogram.h — a lock-free latency histogram with fixed bounds, cheap
// enough for every FUSE request and device I/O: an observation is three relaxed atomic
// adds. The bounds are Prometheus-style "le" bounds in seconds (tools/metrics.h exports
// them as histograms; `sharedfs top` derives averages from count and sum).
//
// Thread-safety: observe() and snapshot() from any thread. A snapshot taken during
// observations may be off by those in flight (count, sum and buckets are separate atomics).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace sharedfs {

class LatencyHistogram {
 public:
  // Upper bounds in nanoseconds: 10 µs .. 10 s, then +Inf (the last bucket).
  static constexpr std::array<uint64_t, 19> kBoundsNs = {
      10'000,        25'000,        50'000,        100'000,       250'000,
      500'000,       1'000'000,     2'500'000,     5'000'000,     10'000'000,
      25'000'000,    50'000'000,    100'000'000,   250'000'000,   500'000'000,
      1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
  static constexpr size_t kBuckets = kBoundsNs.size() + 1;

  struct Snapshot {
    std::array<uint64_t, kBuckets> buckets{};  // not cumulative
    uint64_t count = 0;
    uint64_t sum_ns = 0;
  };

  void observe(std::chrono::nanoseconds took) {
    const uint64_t ns = took.count() < 0 ? 0 : static_cast<uint64_t>(took.count());
    size_t i = 0;
    while (i < kBoundsNs.size() && ns > kBoundsNs[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(ns, std::memory_order_relaxed);
  }

  Snapshot snapshot() const {
    Snapshot s;
    for (size_t i = 0; i < kBuckets; ++i)
      s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    s.count = count_.load(std::memory_order_relaxed);
    s.sum_ns = sum_ns_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0};
};

}  // namespace sharedfs
