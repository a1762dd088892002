// The `file` backend: a regular file or a block device (a loop device) with NVMe
// reservations emulated in a ReservationTable and enforced on every read and write.
#include "device/device.h"
#include "device/raw_device.h"
#include "device/reservation_table.h"

namespace sharedfs::device {
namespace {

using internal::ReservationTable;

class FileDevice final : public BlockDevice {
 public:
  FileDevice(std::shared_ptr<internal::RawDevice> raw, std::shared_ptr<ReservationTable> table,
             HostId host)
      : raw_(std::move(raw)), table_(std::move(table)), host_(host) {}

  uint32_t sector_size() const override { return raw_->sector(); }
  uint64_t size_bytes() const override { return raw_->size(); }
  std::string describe() const override { return "file:" + raw_->path(); }

  Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions&) override {
    RETURN_IF_ERROR(raw_->check_range(offset, buf.size(), "read"));
    return table_->guarded_io(host_, ReservationTable::Access::kRead,
                              [&] { return raw_->read(offset, buf, describe()); });
  }

  Status write(uint64_t offset, std::span<const std::byte> buf, const WriteOptions& opts) override {
    RETURN_IF_ERROR(raw_->check_range(offset, buf.size(), "write"));
    return table_->guarded_io(host_, ReservationTable::Access::kWrite,
                              [&] { return raw_->write(offset, buf, opts.fua, describe()); });
  }

  // NVMe counts Flush among the write commands a reservation governs, so a fenced host's
  // flush is refused too.
  Status flush(const FlushOptions&) override {
    return table_->guarded_io(host_, ReservationTable::Access::kWrite,
                              [&] { return raw_->flush(describe()); });
  }

 private:
  const std::shared_ptr<internal::RawDevice> raw_;
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
      return internal::apply_register(s, host_, action, current, next, opts.ignore_existing_key);
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
  ASSIGN_OR_RETURN(auto raw, internal::RawDevice::open(path, opts.read_only, opts.direct_io));
  std::string state_path = opts.reservation_state_path;
  if (state_path.empty()) {
    ASSIGN_OR_RETURN(state_path, internal::default_reservation_state_path(path));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<ReservationTable> table, ReservationTable::open(state_path));

  OpenDevice dev;
  dev.io = std::make_unique<FileDevice>(std::move(raw), table, opts.host);
  dev.reservations = internal::make_emulated_reservations(table, opts.host);
  return dev;
}

}  // namespace sharedfs::device
