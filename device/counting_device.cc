#include "device/counting_device.h"

#include <chrono>

namespace sharedfs::device {

Status CountingDevice::read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) {
  ++reads_;
  read_bytes_ += buf.size();
  const auto start = std::chrono::steady_clock::now();
  Status st = base_.read(offset, buf, opts);
  read_latency_.observe(std::chrono::steady_clock::now() - start);
  return st;
}

Status CountingDevice::write(uint64_t offset, std::span<const std::byte> buf,
                             const WriteOptions& opts) {
  ++writes_;
  write_bytes_ += buf.size();
  const auto start = std::chrono::steady_clock::now();
  Status st = base_.write(offset, buf, opts);
  write_latency_.observe(std::chrono::steady_clock::now() - start);
  return st;
}

Status CountingDevice::flush(const FlushOptions& opts) {
  ++flushes_;
  const auto start = std::chrono::steady_clock::now();
  Status st = base_.flush(opts);
  flush_latency_.observe(std::chrono::steady_clock::now() - start);
  return st;
}

CountingDevice::Counts CountingDevice::counts() const {
  return {reads_.load(), read_bytes_.load(), writes_.load(), write_bytes_.load(), flushes_.load()};
}

}  // namespace sharedfs::device
