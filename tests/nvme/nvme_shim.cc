// libsharedfs_nvme_shim.so: an LD_PRELOAD interposer that makes a regular file look like
// an NVMe namespace (nsid 1) to libnvme, so the `nvme` backend runs its real libnvme calls
// in tests (see docs/device-nvme.md).
//
// Environment:
//   SHAREDFS_NVME_SHIM_FILE    the stand-in file; only descriptors of that file (same
//                              st_dev/st_ino) are answered, every other ioctl goes through.
//   SHAREDFS_NVME_SHIM_HOSTID  this process's 128-bit Host ID, 32 hex digits; unset means
//                              zero (a controller whose Host ID was never set). The whole
//                              process is one host, as a real host is one controller.
//
// Reservation commands run against the same emulated state as the file backend: the
// ReservationTable at default_reservation_state_path(stand-in) ("<file>.pr"), changed by
// the apply_* functions of reservation_logic.h. So a file-backend opener and an nvme-
// backend opener of one stand-in see and fence each other.
//
// The controller's enforcement is emulated too: pread/pwrite/preadv2/pwritev2 on a
// descriptor that identified itself as a namespace (NVME_IOCTL_ID) run under
// ReservationTable::guarded_io, so a preempted host's writes fail with EBADE as the kernel
// reports a Reservation Conflict completion. Descriptors that never issued NVME_IOCTL_ID
// (the file backend's own, which guards itself) are left alone, so guards never nest.
#include <dlfcn.h>
#include <endian.h>
#include <libnvme.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "device/reservation_logic.h"
#include "device/reservation_table.h"

namespace {

using sharedfs::Code;
using sharedfs::Result;
using sharedfs::Status;
using sharedfs::device::HostId;
using sharedfs::device::ReservationKey;
using sharedfs::device::ReservationReport;
using sharedfs::device::ReservationType;
namespace internal = sharedfs::device::internal;

constexpr uint32_t kNsid = 1;
constexpr size_t kResvHeaderSize = 64;
constexpr size_t kResvEntrySize = 64;

// ---------------------------------------------------------------------------------------
// The functions we wrap, looked up past ourselves (libc, or ASan's interceptors first).

template <typename Fn>
Fn next(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

using IoctlFn = int (*)(int, unsigned long, ...);
using CloseFn = int (*)(int);
using PreadFn = ssize_t (*)(int, void*, size_t, off_t);
using PwriteFn = ssize_t (*)(int, const void*, size_t, off_t);
using PreadvFn = ssize_t (*)(int, const struct iovec*, int, off_t, int);
using PwritevFn = ssize_t (*)(int, const struct iovec*, int, off_t, int);

// ---------------------------------------------------------------------------------------
// Which descriptors are the stand-in.

struct FileKey {
  dev_t dev;
  ino_t ino;
  bool operator==(const FileKey&) const = default;
};

std::optional<std::string> standin_path() {
  const char* p = std::getenv("SHAREDFS_NVME_SHIM_FILE");
  if (p == nullptr || *p == '\0') return std::nullopt;
  return std::string(p);
}

std::optional<FileKey> key_of_fd(int fd) {
  struct stat sb {};
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) return std::nullopt;
  return FileKey{sb.st_dev, sb.st_ino};
}

// The stand-in's path when `fd` refers to it.
std::optional<std::string> standin_for(int fd) {
  auto path = standin_path();
  if (!path) return std::nullopt;
  struct stat sb {};
  if (stat(path->c_str(), &sb) != 0) return std::nullopt;
  auto key = key_of_fd(fd);
  if (!key || !(*key == FileKey{sb.st_dev, sb.st_ino})) return std::nullopt;
  return path;
}

// Descriptors that identified themselves as a namespace. Heap-allocated and never freed:
// close() runs during exit, after static destructors.
struct NamespaceFds {
  std::mutex mu;
  std::map<int, FileKey> fds;  // GUARDED_BY(mu)
  std::atomic<int> count{0};   // lets I/O on other descriptors skip the mutex
};

NamespaceFds& namespace_fds() {
  static auto* fds = new NamespaceFds;
  return *fds;
}

void remember_namespace_fd(int fd, FileKey key) {
  auto& n = namespace_fds();
  std::lock_guard lock(n.mu);
  n.fds[fd] = key;
  n.count.store(static_cast<int>(n.fds.size()));
}

void forget_namespace_fd(int fd) {
  auto& n = namespace_fds();
  if (n.count.load() == 0) return;
  std::lock_guard lock(n.mu);
  n.fds.erase(fd);
  n.count.store(static_cast<int>(n.fds.size()));
}

bool is_namespace_fd(int fd) {
  auto& n = namespace_fds();
  if (n.count.load() == 0) return false;
  std::optional<FileKey> known;
  {
    std::lock_guard lock(n.mu);
    auto it = n.fds.find(fd);
    if (it == n.fds.end()) return false;
    known = it->second;
  }
  // dup2() over a remembered number would otherwise inherit its guard.
  auto key = key_of_fd(fd);
  return key && *key == *known;
}

// ---------------------------------------------------------------------------------------
// The shared reservation state.

// One table per process for the current stand-in. Reopened when the sidecar is replaced
// (a new test's file) and after fork(): a child must not take OFD locks through its
// parent's open file descriptions, which would merge with the parent's locks.
struct TableCache {
  std::mutex mu;
  pid_t pid = 0;                                      // GUARDED_BY(mu)
  std::string path;                                   // GUARDED_BY(mu)
  FileKey key{};                                      // GUARDED_BY(mu)
  std::shared_ptr<internal::ReservationTable> table;  // GUARDED_BY(mu)
};

Result<std::shared_ptr<internal::ReservationTable>> table_for(const std::string& standin) {
  ASSIGN_OR_RETURN(std::string path, internal::default_reservation_state_path(standin));
  static auto* cache = new TableCache;
  std::lock_guard lock(cache->mu);
  struct stat sb {};
  if (cache->table && cache->pid == getpid() && cache->path == path &&
      stat(path.c_str(), &sb) == 0 && FileKey{sb.st_dev, sb.st_ino} == cache->key) {
    return cache->table;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<internal::ReservationTable> table,
                   internal::ReservationTable::open(path));
  if (stat(path.c_str(), &sb) != 0) return sharedfs::errno_status(errno, "stat " + path);
  cache->pid = getpid();
  cache->path = path;
  cache->key = FileKey{sb.st_dev, sb.st_ino};
  cache->table = std::move(table);
  return cache->table;
}

// This process's Host ID; nullopt when the variable is malformed.
std::optional<HostId> shim_host() {
  const char* hex = std::getenv("SHAREDFS_NVME_SHIM_HOSTID");
  if (hex == nullptr || *hex == '\0') return HostId{};
  return HostId::parse(hex);
}

// ---------------------------------------------------------------------------------------
// NVMe commands. Return values follow the kernel's passthrough ioctls: 0, the NVMe status
// field (status code | type << 8 | DNR ...), or -1 with errno when the "transport" fails.

constexpr int status_of(int sc) { return sc | NVME_SC_DNR; }

int nvme_result(const Status& st) {
  switch (st.code()) {
    case Code::kOk:
      return 0;
    case Code::kReservationConflict:
      return status_of(NVME_SC_RESERVATION_CONFLICT);
    case Code::kInvalidArgument:
      return status_of(NVME_SC_INVALID_FIELD);
    // A full registrant table: NVMe has no dedicated status for it.
    case Code::kNoSpace:
      return status_of(NVME_SC_INTERNAL);
    default:
      // The emulation itself failed (locking or mapping the sidecar): fail the ioctl, as
      // the kernel does when it cannot get a command to the controller.
      errno = st.to_errno();
      return -1;
  }
}

uint64_t le64_at(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return le64toh(v);
}

// The Reservation Status extended data structure (NVMe Base 2.0, figure "Reservation
// Status Extended Data Structure"), truncated to `max_len` bytes like a transfer of NUMD
// dwords would be.
std::vector<std::byte> encode_report(const ReservationReport& r, size_t max_len) {
  std::vector<std::byte> out(kResvHeaderSize + r.registrants.size() * kResvEntrySize);
  nvme_resv_status header;
  std::memset(&header, 0, sizeof(header));
  header.gen = htole32(r.generation);
  header.rtype = static_cast<uint8_t>(r.type);
  const auto count = static_cast<uint16_t>(r.registrants.size());
  header.regctl[0] = static_cast<uint8_t>(count & 0xff);
  header.regctl[1] = static_cast<uint8_t>(count >> 8);
  header.ptpls = 0;  // the emulated namespace does not claim persist-through-power-loss
  std::memcpy(out.data(), &header, sizeof(header));
  for (size_t i = 0; i < r.registrants.size(); ++i) {
    const auto& reg = r.registrants[i];
    nvme_registered_ctrl_ext e;
    std::memset(&e, 0, sizeof(e));
    // Each host reaches the namespace through its own controller; a stable per-entry id
    // is all a report consumer can rely on anyway.
    e.cntlid = htole16(static_cast<uint16_t>(i + 1));
    e.rcsts = reg.holds_reservation ? 0x1 : 0x0;
    e.rkey = htole64(reg.key);
    std::memcpy(e.hostid, reg.host.bytes.data(), sizeof(e.hostid));
    std::memcpy(out.data() + kResvHeaderSize + i * kResvEntrySize, &e, sizeof(e));
  }
  if (out.size() > max_len) out.resize(max_len);
  return out;
}

template <typename Cmd>
int io_command(Cmd* cmd, const std::string& standin) {
  cmd->result = 0;
  if (cmd->nsid != kNsid) return status_of(NVME_SC_INVALID_NS);
  const std::optional<HostId> host = shim_host();
  if (!host) {
    errno = EINVAL;
    return -1;
  }
  auto* data = reinterpret_cast<std::byte*>(static_cast<uintptr_t>(cmd->addr));
  const uint32_t cdw10 = cmd->cdw10;
  auto table_or = table_for(standin);
  if (!table_or) return nvme_result(table_or.status());
  internal::ReservationTable& table = **table_or;

  switch (cmd->opcode) {
    case nvme_cmd_resv_register: {
      // CDW10: RREGA 2:0, IEKEY 3, CPTPL 31:30. Data: CRKEY, NRKEY (8 bytes each).
      const uint32_t rrega = cdw10 & 0x7;
      const bool iekey = (cdw10 >> 3) & 0x1;
      const uint32_t cptpl = cdw10 >> 30;
      // No PTPL support is claimed, so only "no change" is a valid CPTPL.
      if (rrega > 2 || cptpl != NVME_RESERVATION_CPTPL_NO_CHANGE) {
        return status_of(NVME_SC_INVALID_FIELD);
      }
      if (data == nullptr || cmd->data_len < 16) return status_of(NVME_SC_DATA_XFER_ERROR);
      const ReservationKey crkey = le64_at(data);
      const ReservationKey nrkey = le64_at(data + 8);
      return nvme_result(table.execute([&](internal::ReservationState& s) {
        return internal::apply_register(s, *host, static_cast<internal::RegisterAction>(rrega),
                                        crkey, nrkey, iekey);
      }));
    }
    case nvme_cmd_resv_acquire: {
      // CDW10: RACQA 2:0, IEKEY 3, RTYPE 15:8. Data: CRKEY, PRKEY.
      const uint32_t racqa = cdw10 & 0x7;
      const auto rtype = static_cast<ReservationType>((cdw10 >> 8) & 0xff);
      if (racqa > 2) return status_of(NVME_SC_INVALID_FIELD);
      if (data == nullptr || cmd->data_len < 16) return status_of(NVME_SC_DATA_XFER_ERROR);
      const ReservationKey crkey = le64_at(data);
      const ReservationKey prkey = le64_at(data + 8);
      return nvme_result(table.execute([&](internal::ReservationState& s) {
        return internal::apply_acquire(s, *host, static_cast<internal::AcquireAction>(racqa), crkey,
                                       prkey, rtype);
      }));
    }
    case nvme_cmd_resv_release: {
      // CDW10: RRELA 2:0, IEKEY 3, RTYPE 15:8. Data: CRKEY.
      const uint32_t rrela = cdw10 & 0x7;
      const auto rtype = static_cast<ReservationType>((cdw10 >> 8) & 0xff);
      if (rrela > 1) return status_of(NVME_SC_INVALID_FIELD);
      if (data == nullptr || cmd->data_len < 8) return status_of(NVME_SC_DATA_XFER_ERROR);
      const ReservationKey crkey = le64_at(data);
      return nvme_result(table.execute([&](internal::ReservationState& s) {
        return internal::apply_release(s, *host, static_cast<internal::ReleaseAction>(rrela), crkey,
                                       rtype);
      }));
    }
    case nvme_cmd_resv_report: {
      // CDW10: NUMD, 0-based dwords to transfer. CDW11: EDS bit 0.
      const uint64_t numd_bytes = (uint64_t{cdw10} + 1) * 4;
      const bool eds = cmd->cdw11 & 0x1;
      // Host IDs here are 128-bit, which only the extended structure can carry.
      if (!eds) return status_of(NVME_SC_HOSTID_FORMAT);
      if (data == nullptr) return status_of(NVME_SC_DATA_XFER_ERROR);
      auto report = table.report();
      if (!report) return nvme_result(report.status());
      const size_t max_len = static_cast<size_t>(std::min<uint64_t>(numd_bytes, cmd->data_len));
      const std::vector<std::byte> bytes = encode_report(*report, max_len);
      std::memcpy(data, bytes.data(), bytes.size());
      return 0;
    }
    default:
      return status_of(NVME_SC_INVALID_OPCODE);
  }
}

template <typename Cmd>
int admin_command(Cmd* cmd) {
  cmd->result = 0;
  if (cmd->opcode != nvme_admin_get_features) return status_of(NVME_SC_INVALID_OPCODE);
  // CDW10: FID 7:0, SEL 10:8. CDW11 for Host Identifier: EXHID bit 0.
  const uint32_t fid = cmd->cdw10 & 0xff;
  const uint32_t sel = (cmd->cdw10 >> 8) & 0x7;
  if (fid != NVME_FEAT_FID_HOST_ID || sel > NVME_GET_FEATURES_SEL_SAVED) {
    return status_of(NVME_SC_INVALID_FIELD);
  }
  // The emulated controller keeps a 128-bit Host ID only.
  if ((cmd->cdw11 & 0x1) == 0) return status_of(NVME_SC_INVALID_FIELD);
  auto* data = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(cmd->addr));
  if (data == nullptr || cmd->data_len < 16) return status_of(NVME_SC_DATA_XFER_ERROR);
  const std::optional<HostId> host = shim_host();
  if (!host) {
    errno = EINVAL;
    return -1;
  }
  std::memcpy(data, host->bytes.data(), host->bytes.size());
  return 0;
}

// Runs one read or write on a namespace descriptor the way the controller would: refused
// with a reservation conflict (EBADE) when this host may not, atomically with respect to
// reservation commands otherwise.
template <typename Io>
ssize_t guarded(int fd, internal::ReservationTable::Access access, Io io) {
  if (!is_namespace_fd(fd)) return io();
  const int saved_errno = errno;
  auto path = standin_path();
  const std::optional<HostId> host = shim_host();
  if (!path || !host) {
    errno = EIO;
    return -1;
  }
  auto table = table_for(*path);
  if (!table) {
    errno = table.status().to_errno();
    return -1;
  }
  ssize_t n = -1;
  int io_errno = 0;
  Status st = (*table)->guarded_io(*host, access, [&]() -> Status {
    errno = saved_errno;
    n = io();
    io_errno = errno;
    return Status::ok();
  });
  if (!st) {
    errno = st.to_errno();  // EBADE for a conflict
    return -1;
  }
  errno = io_errno;
  return n;
}

}  // namespace

#define SHIM_EXPORT extern "C" __attribute__((visibility("default")))

// Lets the test tell "not preloaded" from a real failure.
SHIM_EXPORT int sharedfs_nvme_shim_present() { return 1; }

SHIM_EXPORT int ioctl(int fd, unsigned long request, ...) noexcept {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  static const IoctlFn real = next<IoctlFn>("ioctl");

  const bool nvme = request == NVME_IOCTL_ID || request == NVME_IOCTL_IO_CMD ||
                    request == NVME_IOCTL_IO64_CMD || request == NVME_IOCTL_ADMIN_CMD ||
                    request == NVME_IOCTL_ADMIN64_CMD;
  if (nvme) {
    // nvme_get_nsid() clears errno and treats any errno left set as failure, so a success
    // must leave errno as it found it.
    const int saved_errno = errno;
    if (auto standin = standin_for(fd)) {
      int rc = 0;
      switch (request) {
        case NVME_IOCTL_ID:
          if (auto key = key_of_fd(fd)) remember_namespace_fd(fd, *key);
          rc = static_cast<int>(kNsid);
          break;
        case NVME_IOCTL_IO_CMD:
          rc = io_command(static_cast<nvme_passthru_cmd*>(arg), *standin);
          break;
        case NVME_IOCTL_IO64_CMD:
          rc = io_command(static_cast<nvme_passthru_cmd64*>(arg), *standin);
          break;
        case NVME_IOCTL_ADMIN_CMD:
          rc = admin_command(static_cast<nvme_passthru_cmd*>(arg));
          break;
        case NVME_IOCTL_ADMIN64_CMD:
          rc = admin_command(static_cast<nvme_passthru_cmd64*>(arg));
          break;
        default:
          break;
      }
      if (rc >= 0) errno = saved_errno;
      return rc;
    }
    errno = saved_errno;
  }
  if (real == nullptr) {
    errno = ENOSYS;
    return -1;
  }
  return real(fd, request, arg);
}

SHIM_EXPORT int close(int fd) {
  static const CloseFn real = next<CloseFn>("close");
  forget_namespace_fd(fd);
  return real(fd);
}

SHIM_EXPORT ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  static const PreadFn real = next<PreadFn>("pread");
  return guarded(fd, internal::ReservationTable::Access::kRead,
                 [&] { return real(fd, buf, n, off); });
}

SHIM_EXPORT ssize_t pread64(int fd, void* buf, size_t n, off_t off) {
  static const PreadFn real = next<PreadFn>("pread64");
  return guarded(fd, internal::ReservationTable::Access::kRead,
                 [&] { return real(fd, buf, n, off); });
}

SHIM_EXPORT ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  static const PwriteFn real = next<PwriteFn>("pwrite");
  return guarded(fd, internal::ReservationTable::Access::kWrite,
                 [&] { return real(fd, buf, n, off); });
}

SHIM_EXPORT ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
  static const PwriteFn real = next<PwriteFn>("pwrite64");
  return guarded(fd, internal::ReservationTable::Access::kWrite,
                 [&] { return real(fd, buf, n, off); });
}

SHIM_EXPORT ssize_t preadv2(int fd, const struct iovec* iov, int cnt, off_t off, int flags) {
  static const PreadvFn real = next<PreadvFn>("preadv2");
  return guarded(fd, internal::ReservationTable::Access::kRead,
                 [&] { return real(fd, iov, cnt, off, flags); });
}

SHIM_EXPORT ssize_t pwritev2(int fd, const struct iovec* iov, int cnt, off_t off, int flags) {
  static const PwritevFn real = next<PwritevFn>("pwritev2");
  return guarded(fd, internal::ReservationTable::Access::kWrite,
                 [&] { return real(fd, iov, cnt, off, flags); });
}
