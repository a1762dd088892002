#include "device/raw_device.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "device/device.h"

namespace sharedfs::device::internal {

Result<std::shared_ptr<RawDevice>> RawDevice::open(const std::string& path, bool read_only,
                                                   bool direct) {
  const int mode = read_only ? O_RDONLY : O_RDWR;
  int fd = -1;
  if (direct) {
    fd = ::open(path.c_str(), mode | O_DIRECT | O_CLOEXEC);
    // tmpfs and a few others refuse O_DIRECT; the page cache is then the "device".
    if (fd < 0 && errno != EINVAL) return errno_status(errno, "opening " + path);
  }
  if (fd < 0) fd = ::open(path.c_str(), mode | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "opening " + path);

  auto fail = [&](Status st) {
    close(fd);
    return st;
  };
  struct stat sb {};
  if (fstat(fd, &sb) != 0) return fail(errno_status(errno, "stat " + path));
  uint64_t size = 0;
  uint32_t sector = 512;
  if (S_ISREG(sb.st_mode)) {
    size = static_cast<uint64_t>(sb.st_size);
  } else if (S_ISBLK(sb.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) return fail(errno_status(errno, "size of " + path));
    int ssz = 0;
    if (ioctl(fd, BLKSSZGET, &ssz) != 0) return fail(errno_status(errno, "sector of " + path));
    sector = static_cast<uint32_t>(ssz);
  } else {
    return fail(make_status(Code::kInvalidArgument,
                            "{} is neither a regular file nor a block device", path));
  }
  if (sector == 0 || sector > kIoAlignment) {
    return fail(make_status(Code::kUnsupported,
                            "{} has a {}-byte logical block size; at most {} is supported", path,
                            sector, kIoAlignment));
  }
  size -= size % sector;
  return std::shared_ptr<RawDevice>(new RawDevice(path, fd, size, sector, S_ISBLK(sb.st_mode)));
}

RawDevice::~RawDevice() { close(fd_); }

Status RawDevice::check_range(uint64_t offset, size_t len, const char* what) const {
  if (offset % sector_ != 0 || len % sector_ != 0) {
    return make_status(Code::kInvalidArgument, "{} at {} of {} bytes is not {}-byte aligned", what,
                       offset, len, sector_);
  }
  if (offset > size_ || len > size_ - offset) {
    return make_status(Code::kInvalidArgument, "{} at {} of {} bytes is past the end ({})", what,
                       offset, len, size_);
  }
  return Status::ok();
}

Status RawDevice::read(uint64_t offset, std::span<std::byte> buf, std::string_view who) const {
  size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n =
        pread(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno,
                          fmt::format("read of {} bytes at {} on {}", buf.size(), offset, who));
    }
    if (n == 0) return make_status(Code::kIoError, "short read at {} on {}", offset + done, who);
    done += static_cast<size_t>(n);
  }
  return Status::ok();
}

Status RawDevice::write(uint64_t offset, std::span<const std::byte> buf, bool fua,
                        std::string_view who) const {
  size_t done = 0;
  while (done < buf.size()) {
    struct iovec iov {
      const_cast<std::byte*>(buf.data() + done), buf.size() - done
    };
    // RWF_DSYNC on an O_DIRECT block device makes the block layer send the write with FUA
    // (or follow it with a flush where the device has no FUA).
    const ssize_t n =
        pwritev2(fd_, &iov, 1, static_cast<off_t>(offset + done), fua ? RWF_DSYNC : 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno,
                          fmt::format("write of {} bytes at {} on {}", buf.size(), offset, who));
    }
    if (n == 0) return make_status(Code::kIoError, "short write at {} on {}", offset + done, who);
    done += static_cast<size_t>(n);
  }
  return Status::ok();
}

Status RawDevice::flush(std::string_view who) const {
  if (fdatasync(fd_) != 0) return errno_status(errno, fmt::format("flush of {}", who));
  return Status::ok();
}

}  // namespace sharedfs::device::internal
