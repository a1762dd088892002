// device/counting_device.h — a BlockDevice that counts the I/O passing through it to
// another one: operations, bytes and latencies, for the daemon's statistics (`sharedfs
// top`, the metrics endpoint, `-o stats_file=`) and for benchmarks that must show, say, that a second pass over a dataset reads nothing.
//
// Thread-safety: like the device it wraps; the counters are atomics.
// Ownership: does not own the wrapped device, which must outlive it.
#pragma once

#include <atomic>
#include <cstdint>

#include "common/latency_histogram.h"
#include "device/device.h"

namespace sharedfs::device {

class CountingDevice final : public BlockDevice {
 public:
  explicit CountingDevice(BlockDevice& base) : base_(base) {}

  uint32_t sector_size() const override { return base_.sector_size(); }
  uint64_t size_bytes() const override { return base_.size_bytes(); }
  std::string describe() const override { return base_.describe(); }
  Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) override;
  Status write(uint64_t offset, std::span<const std::byte> buf, const WriteOptions& opts) override;
  Status flush(const FlushOptions& opts) override;
  using BlockDevice::flush;
  using BlockDevice::read;
  using BlockDevice::write;

  struct Counts {
    uint64_t reads = 0;
    uint64_t read_bytes = 0;
    uint64_t writes = 0;
    uint64_t write_bytes = 0;
    uint64_t flushes = 0;
  };
  Counts counts() const;
  // How long reads, writes and flushes took in the wrapped device.
  const LatencyHistogram& read_latency() const { return read_latency_; }
  const LatencyHistogram& write_latency() const { return write_latency_; }
  const LatencyHistogram& flush_latency() const { return flush_latency_; }

 private:
  BlockDevice& base_;
  LatencyHistogram read_latency_, write_latency_, flush_latency_;
  std::atomic<uint64_t> reads_{0}, read_bytes_{0}, writes_{0}, write_bytes_{0}, flushes_{0};
};

}  // namespace sharedfs::device
