// The `file` backend: a regular file or a block device (a loop device) with NVMe
// reservations emulated in a ReservationTable and enforced on every read and write.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>

#include "device/device.h"
#include "device/reservation_table.h"

namespace sharedfs::device {
namespace {

using internal::ReservationTable;

class FileDevice final : public BlockDevice {
 public:
  FileDevice(std::string path, int fd, uint64_t size, uint32_t sector,
             std::shared_ptr<ReservationTable> table, HostId host)
      : path_(std::move(path)),
        fd_(fd),
        size_(size),
        sector_(sector),
        table_(std::move(table)),
        host_(host) {}
  ~FileDevice() override { close(fd_); }

  uint32_t sector_size() const override { return sector_; }
  uint64_t size_bytes() const override { return size_; }
  std::string describe() const override { return "file:" + path_; }

  Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions&) override {
    RETURN_IF_ERROR(check_range(offset, buf.size(), "read"));
    return table_->guarded_io(host_, ReservationTable::Access::kRead, [&]() -> Status {
      size_t done = 0;
      while (done < buf.size()) {
        const ssize_t n = pread(fd_, buf.data() + done, buf.size() - done,
                                static_cast<off_t>(offset + done));
        if (n < 0) {
          if (errno == EINTR) continue;
          return errno_status(errno, fmt::format("read of {} bytes at {} on {}", buf.size(),
                                                 offset, describe()));
        }
        if (n == 0) return make_status(Code::kIoError, "short read at {} on {}", offset + done,
                                       describe());
        done += static_cast<size_t>(n);
      }
      return Status::ok();
    });
  }

  Status write(uint64_t offset, std::span<const std::byte> buf,
               const WriteOptions& opts) override {
    RETURN_IF_ERROR(check_range(offset, buf.size(), "write"));
    return table_->guarded_io(host_, ReservationTable::Access::kWrite, [&]() -> Status {
      size_t done = 0;
      while (done < buf.size()) {
        struct iovec iov {
          const_cast<std::byte*>(buf.data() + done), buf.size() - done
        };
        const ssize_t n = pwritev2(fd_, &iov, 1, static_cast<off_t>(offset + done),
                                   opts.fua ? RWF_DSYNC : 0);
        if (n < 0) {
          if (errno == EINTR) continue;
          return errno_status(errno, fmt::format("write of {} bytes at {} on {}", buf.size(),
                                                 offset, describe()));
        }
        done += static_cast<size_t>(n);
      }
      return Status::ok();
    });
  }

  Status flush(const FlushOptions&) override {
    if (fdatasync(fd_) != 0) return errno_status(errno, "flush of " + describe());
    return Status::ok();
  }

 private:
  Status check_range(uint64_t offset, size_t len, const char* what) const {
    if (offset % sector_ != 0 || len % sector_ != 0) {
      return make_status(Code::kInvalidArgument, "{} at {} of {} bytes is not {}-byte aligned",
                         what, offset, len, sector_);
    }
    if (offset > size_ || len > size_ - offset) {
      return make_status(Code::kInvalidArgument, "{} at {} of {} bytes is past the end ({})",
                         what, offset, len, size_);
    }
    return Status::ok();
  }

  const std::string path_;
  const int fd_;
  const uint64_t size_;
  const uint32_t sector_;
  const std::shared_ptr<ReservationTable> table_;
  const HostId host_;
};

class EmulatedReservations final : public Reservations {
 public:
  EmulatedReservations(std::shared_ptr<ReservationTable> table, HostId host)
      : table_(std::move(table)), host_(host) {}

  HostId host_id() const override { return host_; }

  Status register_key(ReservationKey new_key, const RegisterOptions& opts) override {
    return reg(internal::RegisterAction::kRegister, 0, new_key, opts);
  }
  Status unregister_key(ReservationKey current_key, const RegisterOptions& opts) override {
    return reg(internal::RegisterAction::kUnregister, current_key, 0, opts);
  }
  Status replace_key(ReservationKey current_key, ReservationKey new_key,
                     const RegisterOptions& opts) override {
    return reg(internal::RegisterAction::kReplace, current_key, new_key, opts);
  }
  Status acquire(ReservationKey current_key, ReservationType type) override {
    return acq(internal::AcquireAction::kAcquire, current_key, 0, type);
  }
  Status preempt(ReservationKey current_key, ReservationKey victim_key,
                 ReservationType type) override {
    return acq(internal::AcquireAction::kPreempt, current_key, victim_key, type);
  }
  Status preempt_and_abort(ReservationKey current_key, ReservationKey victim_key,
                           ReservationType type) override {
    // The table runs every command with the I/O gate held exclusively, so victim writes
    // in flight have completed (before the preempt) or will fail their check (after it).
    return acq(internal::AcquireAction::kPreemptAndAbort, current_key, victim_key, type);
  }
  Status release(ReservationKey current_key, ReservationType type) override {
    return table_->execute([&](internal::ReservationState& s) {
      return internal::apply_release(s, host_, internal::ReleaseAction::kRelease, current_key,
                                     type);
    });
  }
  Status clear(ReservationKey current_key) override {
    return table_->execute([&](internal::ReservationState& s) {
      return internal::apply_release(s, host_, internal::ReleaseAction::kClear, current_key,
                                     ReservationType::kNone);
    });
  }
  Result<ReservationReport> report() override { return table_->report(); }

 private:
  Status reg(internal::RegisterAction action, ReservationKey current, ReservationKey next,
             const RegisterOptions& opts) {
    return table_->execute([&](internal::ReservationState& s) {
      return internal::apply_register(s, host_, action, current, next,
                                      opts.ignore_existing_key);
    });
  }
  Status acq(internal::AcquireAction action, ReservationKey current, ReservationKey victim,
             ReservationType type) {
    return table_->execute([&](internal::ReservationState& s) {
      return internal::apply_acquire(s, host_, action, current, victim, type);
    });
  }

  const std::shared_ptr<ReservationTable> table_;
  const HostId host_;
};

}  // namespace

namespace internal {
std::unique_ptr<Reservations> make_emulated_reservations(std::shared_ptr<ReservationTable> table,
                                                         HostId host) {
  return std::make_unique<EmulatedReservations>(std::move(table), host);
}
}  // namespace internal

Result<OpenDevice> open_file_device(const std::string& path, const FileOpenOptions& opts) {
  const int mode = opts.read_only ? O_RDONLY : O_RDWR;
  int fd = -1;
  if (opts.direct_io) {
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
  size -= size % sector;

  std::string state_path = opts.reservation_state_path;
  if (state_path.empty()) {
    auto p = internal::default_reservation_state_path(path);
    if (!p) return fail(p.status());
    state_path = *p;
  }
  auto table = ReservationTable::open(state_path);
  if (!table) return fail(table.status());
  std::shared_ptr<ReservationTable> shared_table = std::move(*table);

  OpenDevice dev;
  dev.io = std::make_unique<FileDevice>(path, fd, size, sector, shared_table, opts.host);
  dev.reservations = internal::make_emulated_reservations(shared_table, opts.host);
  return dev;
}

}  // namespace sharedfs::device
