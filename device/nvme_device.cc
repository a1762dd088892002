// The `nvme` backend: direct I/O on an NVMe namespace block device, persistent reservations
// through libnvme (see docs/device-nvme.md).
//
// What libnvme 1.3 puts on the wire, which the test interposer (tests/nvme/nvme_shim.cc)
// answers: nvme_get_nsid issues NVME_IOCTL_ID; nvme_resv_{register,acquire,release,report}
// issue NVME_IOCTL_IO_CMD (the 32-bit-result struct nvme_passthru_cmd, not the IO64 form);
// nvme_get_features_host_id issues NVME_IOCTL_ADMIN_CMD.
//
// A libnvme call returns 0 on success, -1 with errno when the ioctl itself failed, and
// otherwise the NVMe status field as the kernel hands it back: status code in bits 7:0,
// status code type in bits 10:8, CRD/More/DNR above.
#include <endian.h>
#include <fmt/format.h>
#include <libnvme.h>

#include <cerrno>
#include <cstring>

#include "device/device.h"
#include "device/raw_device.h"

namespace sharedfs::device {
namespace {

// The Reservation Status data structure in its extended form (EDS=1): a 64-byte header,
// then one 64-byte Registered Controller Extended Data Structure per registrant.
constexpr size_t kResvHeaderSize = 64;
constexpr size_t kResvEntrySize = 64;
static_assert(sizeof(nvme_resv_status) == kResvHeaderSize);
static_assert(sizeof(nvme_registered_ctrl_ext) == kResvEntrySize);
// Room for a full 16-node cluster plus tools on the first try; a report that says there
// are more registrants is simply asked again with a buffer of the size it names.
constexpr uint32_t kInitialReportEntries = 64;
constexpr int kReportAttempts = 4;

constexpr const char* kHostIdAdvice =
    "every node needs a distinct, stable NVMe Host ID (nvme-cli: /etc/nvme/hostid for "
    "fabrics connections, or `nvme set-feature <ctrl> -f 0x81` on a local controller)";

// Maps a libnvme return value to a Status; `err` is errno as it was right after the call
// (building the context string may allocate and clobber errno).
Status nvme_status(int rc, int err, std::string_view what) {
  if (rc == 0) return Status::ok();
  if (rc < 0) return errno_status(err, what);  // EBADE becomes kReservationConflict
  const int sct = (rc >> NVME_SCT_SHIFT) & NVME_SCT_MASK;
  const int sc = rc & NVME_SC_MASK;
  std::string message =
      fmt::format("{}: NVMe status {:#x} ({})", what, rc, nvme_status_to_string(rc, false));
  if (sct == NVME_SCT_GENERIC && sc == NVME_SC_RESERVATION_CONFLICT) {
    return Status(Code::kReservationConflict, std::move(message), EBADE);
  }
  if (sct == NVME_SCT_GENERIC && sc == NVME_SC_INVALID_FIELD) {
    return Status(Code::kInvalidArgument, std::move(message), EINVAL);
  }
  // Anything else is the device failing the command; the controller's Do Not Retry bit is
  // exactly the "trying again may help" answer the callers want.
  return Status(Code::kIoError, std::move(message), EIO, (rc & NVME_SC_DNR) == 0);
}

// One descriptor serves the I/O half and the reservations half (both act for the same
// host); it is closed when the last of them goes.
using internal::RawDevice;

class NvmeBlockDevice final : public BlockDevice {
 public:
  explicit NvmeBlockDevice(std::shared_ptr<RawDevice> raw) : raw_(std::move(raw)) {}

  uint32_t sector_size() const override { return raw_->sector(); }
  uint64_t size_bytes() const override { return raw_->size(); }
  std::string describe() const override { return "nvme:" + raw_->path(); }

  // A fenced host's reads and writes fail in the kernel with EBADE (reservation conflict),
  // which errno_status turns into kReservationConflict: no check of our own is needed,
  // the controller enforces the reservation.
  Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions&) override {
    RETURN_IF_ERROR(raw_->check_range(offset, buf.size(), "read"));
    return raw_->read(offset, buf, describe());
  }
  Status write(uint64_t offset, std::span<const std::byte> buf, const WriteOptions& opts) override {
    RETURN_IF_ERROR(raw_->check_range(offset, buf.size(), "write"));
    return raw_->write(offset, buf, opts.fua, describe());
  }
  Status flush(const FlushOptions&) override { return raw_->flush(describe()); }

 private:
  const std::shared_ptr<RawDevice> raw_;
};

class NvmeReservations final : public Reservations {
 public:
  NvmeReservations(std::shared_ptr<RawDevice> raw, uint32_t nsid, HostId host)
      : raw_(std::move(raw)), nsid_(nsid), host_(host) {}

  HostId host_id() const override { return host_; }

  Status register_key(ReservationKey new_key, const RegisterOptions& opts) override {
    return reg(NVME_RESERVATION_RREGA_REGISTER_KEY, 0, new_key, opts,
               fmt::format("register of key {:#x}", new_key));
  }
  Status unregister_key(ReservationKey current_key, const RegisterOptions& opts) override {
    return reg(NVME_RESERVATION_RREGA_UNREGISTER_KEY, current_key, 0, opts,
               fmt::format("unregister of key {:#x}", current_key));
  }
  Status replace_key(ReservationKey current_key, ReservationKey new_key,
                     const RegisterOptions& opts) override {
    return reg(NVME_RESERVATION_RREGA_REPLACE_KEY, current_key, new_key, opts,
               fmt::format("replace of key {:#x} by {:#x}", current_key, new_key));
  }

  Status acquire(ReservationKey current_key, ReservationType type) override {
    return acq(
        NVME_RESERVATION_RACQA_ACQUIRE, current_key, 0, type,
        fmt::format("acquire ({}) with key {:#x}", reservation_type_name(type), current_key));
  }
  Status preempt(ReservationKey current_key, ReservationKey victim_key,
                 ReservationType type) override {
    return acq(NVME_RESERVATION_RACQA_PREEMPT, current_key, victim_key, type,
               fmt::format("preempt of key {:#x} ({}) with key {:#x}", victim_key,
                           reservation_type_name(type), current_key));
  }
  Status preempt_and_abort(ReservationKey current_key, ReservationKey victim_key,
                           ReservationType type) override {
    // The controller aborts the victims' outstanding commands before it completes this
    // one, so when it returns no victim write can still land.
    return acq(NVME_RESERVATION_RACQA_PREEMPT_AND_ABORT, current_key, victim_key, type,
               fmt::format("preempt-and-abort of key {:#x} ({}) with key {:#x}", victim_key,
                           reservation_type_name(type), current_key));
  }

  Status release(ReservationKey current_key, ReservationType type) override {
    return rel(
        NVME_RESERVATION_RRELA_RELEASE, current_key, type,
        fmt::format("release ({}) with key {:#x}", reservation_type_name(type), current_key));
  }
  Status clear(ReservationKey current_key) override {
    // Clear ignores the type field; 0 keeps it well-formed.
    return rel(NVME_RESERVATION_RRELA_CLEAR, current_key, ReservationType::kNone,
               fmt::format("clear with key {:#x}", current_key));
  }

  Result<ReservationReport> report() override {
    uint32_t entries = kInitialReportEntries;
    for (int attempt = 0; attempt < kReportAttempts; ++attempt) {
      const size_t len = kResvHeaderSize + size_t{entries} * kResvEntrySize;
      AlignedBuffer buf(len);  // aligned so the kernel can map it without a bounce buffer
      __u32 result = 0;
      nvme_resv_report_args args = {
          .result = &result,
          .report = reinterpret_cast<nvme_resv_status*>(buf.data()),
          .args_size = static_cast<int>(sizeof(nvme_resv_report_args)),
          .fd = raw_->fd(),
          .timeout = NVME_DEFAULT_IOCTL_TIMEOUT,
          .nsid = nsid_,
          .len = static_cast<__u32>(len),
          // The extended structure carries 128-bit Host IDs, the only kind we accept.
          .eds = true,
      };
      const int rc = nvme_resv_report(&args);
      const int err = errno;
      RETURN_IF_ERROR(nvme_status(rc, err, context("reservation report")));

      nvme_resv_status header;
      std::memcpy(&header, buf.data(), sizeof(header));
      const uint32_t count = uint32_t{header.regctl[0]} | uint32_t{header.regctl[1]} << 8;
      if (count > entries) {
        // Registrants were added since the header size was chosen: ask again for all.
        entries = count;
        continue;
      }
      if (header.rtype > static_cast<uint8_t>(ReservationType::kExclusiveAccessAllRegistrants)) {
        return make_status(Code::kIoError, "{}: reservation report has unknown type {:#x}",
                           describe(), header.rtype);
      }
      ReservationReport report;
      report.generation = le32toh(header.gen);
      report.type = static_cast<ReservationType>(header.rtype);
      report.registrants.reserve(count);
      for (uint32_t i = 0; i < count; ++i) {
        nvme_registered_ctrl_ext entry;
        std::memcpy(&entry, buf.data() + kResvHeaderSize + size_t{i} * kResvEntrySize,
                    sizeof(entry));
        Registrant r;
        static_assert(sizeof(entry.hostid) == sizeof(r.host.bytes));
        std::memcpy(r.host.bytes.data(), entry.hostid, sizeof(entry.hostid));
        r.key = le64toh(entry.rkey);
        r.holds_reservation = (entry.rcsts & 0x1) != 0;  // RCSTS bit 0: holds reservation
        report.registrants.push_back(r);
      }
      return report;
    }
    return Status(Code::kIoError, context("reservation report: the registrant count kept growing"),
                  EAGAIN,
                  /*retryable=*/true);
  }

 private:
  std::string describe() const { return "nvme:" + raw_->path(); }
  std::string context(std::string_view what) const {
    return fmt::format("{} on {} (nsid {}, host {})", what, raw_->path(), nsid_, host_.to_string());
  }

  Status reg(nvme_resv_rrega action, ReservationKey current, ReservationKey next,
             const RegisterOptions& opts, const std::string& what) {
    __u32 result = 0;
    nvme_resv_register_args args = {
        .crkey = current,
        .nrkey = next,
        .result = &result,
        .args_size = static_cast<int>(sizeof(nvme_resv_register_args)),
        .fd = raw_->fd(),
        .timeout = NVME_DEFAULT_IOCTL_TIMEOUT,
        .nsid = nsid_,
        .rrega = action,
        // Whether registrations survive a power loss is the operator's choice on the
        // namespace (and not every device supports it); registering must not change it.
        .cptpl = NVME_RESERVATION_CPTPL_NO_CHANGE,
        .iekey = opts.ignore_existing_key,
    };
    const int rc = nvme_resv_register(&args);
    const int err = errno;
    return nvme_status(rc, err, context(what));
  }

  Status acq(nvme_resv_racqa action, ReservationKey current, ReservationKey victim,
             ReservationType type, const std::string& what) {
    __u32 result = 0;
    nvme_resv_acquire_args args = {
        .crkey = current,
        .nrkey = victim,  // PRKEY: the key whose registrations a preempt removes
        .result = &result,
        .args_size = static_cast<int>(sizeof(nvme_resv_acquire_args)),
        .fd = raw_->fd(),
        .timeout = NVME_DEFAULT_IOCTL_TIMEOUT,
        .nsid = nsid_,
        .rtype = static_cast<nvme_resv_rtype>(type),
        .racqa = action,
        .iekey = false,
    };
    const int rc = nvme_resv_acquire(&args);
    const int err = errno;
    return nvme_status(rc, err, context(what));
  }

  Status rel(nvme_resv_rrela action, ReservationKey current, ReservationType type,
             const std::string& what) {
    __u32 result = 0;
    nvme_resv_release_args args = {
        .crkey = current,
        .result = &result,
        .args_size = static_cast<int>(sizeof(nvme_resv_release_args)),
        .fd = raw_->fd(),
        .timeout = NVME_DEFAULT_IOCTL_TIMEOUT,
        .nsid = nsid_,
        .rtype = static_cast<nvme_resv_rtype>(type),
        .rrela = action,
        .iekey = false,
    };
    const int rc = nvme_resv_release(&args);
    const int err = errno;
    return nvme_status(rc, err, context(what));
  }

  const std::shared_ptr<RawDevice> raw_;
  const uint32_t nsid_;
  const HostId host_;
};

// Reads the controller's 128-bit Host Identifier and checks that it can carry
// reservations for this node.
Result<HostId> checked_host_id(int fd, const std::string& path, const NvmeOpenOptions& opts) {
  HostId host;
  const int rc =
      nvme_get_features_host_id(fd, NVME_GET_FEATURES_SEL_CURRENT, /*exhid=*/true,
                                static_cast<__u32>(host.bytes.size()), host.bytes.data());
  const int err = errno;
  if (rc != 0) {
    // Invalid Field here usually means the controller only has a 64-bit Host ID, which
    // the extended reservation report (and so we) cannot use.
    return nvme_status(rc, err,
                       fmt::format("reading the 128-bit NVMe Host ID (Get Features 0x81) "
                                   "of {}; {}",
                                   path, kHostIdAdvice));
  }
  if (host.is_zero()) {
    return make_status(Code::kInvalidArgument,
                       "{}: the controller's NVMe Host ID is zero, so persistent reservations "
                       "cannot tell this host from others; {}",
                       path, kHostIdAdvice);
  }
  if (opts.expected_host && *opts.expected_host != host) {
    return make_status(Code::kInvalidArgument,
                       "{}: the controller's NVMe Host ID is {} but this node is configured "
                       "with {}; {}",
                       path, host.to_string(), opts.expected_host->to_string(), kHostIdAdvice);
  }
  return host;
}

}  // namespace

Result<OpenDevice> open_nvme_device(const std::string& path, const NvmeOpenOptions& opts) {
  // A regular stand-in file answers NVMe ioctls only through the test interposer; a
  // namespace block device always takes O_DIRECT.
  ASSIGN_OR_RETURN(auto raw, RawDevice::open(path, opts.read_only, /*direct=*/true));
  __u32 nsid = 0;
  if (nvme_get_nsid(raw->fd(), &nsid) != 0) {
    const int err = errno;
    return Status(Code::kInvalidArgument,
                  fmt::format("{} is not an NVMe namespace (NVME_IOCTL_ID failed)", path), err);
  }
  ASSIGN_OR_RETURN(HostId host, checked_host_id(raw->fd(), path, opts));

  OpenDevice dev;
  dev.io = std::make_unique<NvmeBlockDevice>(raw);
  dev.reservations = std::make_unique<NvmeReservations>(raw, nsid, host);
  return dev;
}

}  // namespace sharedfs::device
