#include "device/counting_device.h"

namespace sharedfs::device {

Status CountingDevice::read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) {
  ++reads_;
  read_bytes_ += buf.size();
  return base_.read(offset, buf, opts);
}

Status CountingDevice::write(uint64_t offset, std::span<const std::byte> buf,
                             const WriteOptions& opts) {
  ++writes_;
  write_bytes_ += buf.size();
  return base_.write(offset, buf, opts);
}

Status CountingDevice::flush(const FlushOptions& opts) {
  ++flushes_;
  return base_.flush(opts);
}

CountingDevice::Counts CountingDevice::counts() const {
  return {reads_.load(), read_bytes_.load(), writes_.load(), write_bytes_.load(), flushes_.load()};
}

}  // namespace sharedfs::device
