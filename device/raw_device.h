// Internal to device/: a descriptor of a regular file or block device opened for direct
// I/O, with the plain POSIX read/write/flush loops both the file and the nvme backends
// use. The backends add what differs: reservation enforcement (file) or libnvme (nvme).
//
// Thread-safety: const methods may be called concurrently (pread/pwrite on one fd).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"

namespace sharedfs::device::internal {

class RawDevice {
 public:
  // Opens with O_DIRECT when `direct` (falling back to buffered I/O only where the file
  // system refuses O_DIRECT, as tmpfs does) and reads size and logical sector size.
  static Result<std::shared_ptr<RawDevice>> open(const std::string& path, bool read_only,
                                                 bool direct);
  ~RawDevice();
  RawDevice(const RawDevice&) = delete;
  RawDevice& operator=(const RawDevice&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  uint32_t sector() const { return sector_; }
  bool is_block_device() const { return is_block_; }

  // kInvalidArgument unless [offset, offset+len) is sector-aligned and inside the device.
  Status check_range(uint64_t offset, size_t len, const char* what) const;
  // Whole-buffer transfers (retrying short transfers and EINTR); `who` names the device
  // in errors. A refusal by a reservation arrives as EBADE: kReservationConflict.
  Status read(uint64_t offset, std::span<std::byte> buf, std::string_view who) const;
  Status write(uint64_t offset, std::span<const std::byte> buf, bool fua,
               std::string_view who) const;
  Status flush(std::string_view who) const;

 private:
  RawDevice(std::string path, int fd, uint64_t size, uint32_t sector, bool is_block)
      : path_(std::move(path)), fd_(fd), size_(size), sector_(sector), is_block_(is_block) {}

  const std::string path_;
  const int fd_;
  const uint64_t size_;
  const uint32_t sector_;
  const bool is_block_;
};

}  // namespace sharedfs::device::internal
