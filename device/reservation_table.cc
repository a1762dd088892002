#include "device/reservation_table.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>

namespace sharedfs::device::internal {
namespace {

constexpr char kMagic[8] = {'S', 'F', 'P', 'R', 'S', 'T', '0', '1'};
// Lock bytes lie past the mapped state; OFD locks may cover bytes beyond end of file.
constexpr off_t kGateByte = 1 << 20;
constexpr off_t kTurnstileByte = kGateByte + 1;

Status lock_byte(int fd, short type, off_t byte) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  while (fcntl(fd, F_OFD_SETLKW, &fl) != 0) {
    if (errno == EINTR) continue;
    return errno_status(errno, "locking reservation state");
  }
  return Status::ok();
}

void unlock_byte(int fd, off_t byte) {
  struct flock fl {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  // Unlocking a lock we hold cannot fail short of a bad descriptor, which is a bug.
  SHAREDFS_CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0, "unlock of reservation state lock failed");
}

}  // namespace

struct ReservationTable::Shared {
  char magic[8];
  uint32_t version;
  uint32_t size;
  // Set by a command waiting for the gate; new I/O steps aside while it is set.
  std::atomic<uint32_t> pending;
  // Which of `copies` is current; flipped only with the gate held exclusively.
  std::atomic<uint32_t> active;
  ReservationState copies[2];
};

static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::is_trivially_copyable_v<ReservationState>);

ReservationTable::ReservationTable(std::string path, int fd, Shared* shared)
    : path_(std::move(path)), fd_(fd), shared_(shared) {}

ReservationTable::~ReservationTable() {
  munmap(shared_, sizeof(Shared));
  close(fd_);
  for (int fd : pool_) close(fd);
}

Result<std::unique_ptr<ReservationTable>> ReservationTable::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return errno_status(errno, fmt::format("opening reservation state {}", path));
  // Initialise under the exclusive gate so two first openers do not both initialise.
  int lock_fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (lock_fd < 0) {
    Status st = errno_status(errno, fmt::format("opening reservation state {}", path));
    close(fd);
    return st;
  }
  auto fail = [&](Status st) {
    close(lock_fd);
    close(fd);
    return st;
  };
  if (Status st = lock_byte(lock_fd, F_WRLCK, kGateByte); !st) return fail(st);
  struct stat sb {};
  if (fstat(fd, &sb) != 0) return fail(errno_status(errno, "stat of reservation state"));
  const bool fresh = sb.st_size == 0;
  if (fresh && ftruncate(fd, sizeof(Shared)) != 0) {
    return fail(errno_status(errno, "sizing reservation state"));
  }
  if (!fresh && static_cast<size_t>(sb.st_size) < sizeof(Shared)) {
    return fail(make_status(Code::kCorruption,
                            "{} is not a sharedfs reservation state file "
                            "(size {})",
                            path, sb.st_size));
  }
  void* map = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return fail(errno_status(errno, "mapping reservation state"));
  auto* shared = static_cast<Shared*>(map);
  // A first opener killed between sizing the file and writing the magic leaves it all
  // zero; we hold the gate exclusively, so finishing its initialisation is safe.
  static constexpr char kNoMagic[sizeof(kMagic)] = {};
  const bool unfinished = static_cast<size_t>(sb.st_size) == sizeof(Shared) &&
                          std::memcmp(shared->magic, kNoMagic, sizeof(kNoMagic)) == 0;
  if (fresh || unfinished) {
    std::memset(static_cast<void*>(shared), 0, sizeof(Shared));
    shared->version = 1;
    shared->size = sizeof(Shared);
    std::memcpy(shared->magic, kMagic, sizeof(kMagic));  // last: marks it initialised
  } else if (std::memcmp(shared->magic, kMagic, sizeof(kMagic)) != 0 || shared->version != 1 ||
             shared->size != sizeof(Shared)) {
    munmap(map, sizeof(Shared));
    return fail(make_status(Code::kCorruption,
                            "{} is not a sharedfs reservation state file (bad magic/version)",
                            path));
  }
  unlock_byte(lock_fd, kGateByte);
  auto table = std::unique_ptr<ReservationTable>(new ReservationTable(path, fd, shared));
  table->return_fd(lock_fd);
  return table;
}

Result<int> ReservationTable::take_fd() {
  {
    std::lock_guard lock(pool_mu_);
    if (!pool_.empty()) {
      int fd = pool_.back();
      pool_.pop_back();
      return fd;
    }
  }
  int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, fmt::format("opening reservation state {}", path_));
  return fd;
}

void ReservationTable::return_fd(int fd) {
  std::lock_guard lock(pool_mu_);
  pool_.push_back(fd);
}

ReservationState ReservationTable::read_state() const {
  return shared_->copies[shared_->active.load(std::memory_order_acquire) & 1];
}

Status ReservationTable::execute(const std::function<Status(ReservationState&)>& command) {
  ASSIGN_OR_RETURN(int fd, take_fd());
  Status st = lock_byte(fd, F_WRLCK, kTurnstileByte);
  if (!st) {
    return_fd(fd);
    return st;
  }
  shared_->pending.store(1, std::memory_order_seq_cst);
  st = lock_byte(fd, F_WRLCK, kGateByte);
  if (st) {
    // No I/O is in flight now and none can start: the state may change under our feet of
    // nobody.
    const uint32_t active = shared_->active.load(std::memory_order_acquire) & 1;
    ReservationState next = shared_->copies[active];
    st = command(next);
    if (st) {
      shared_->copies[active ^ 1] = next;
      shared_->active.store(active ^ 1, std::memory_order_release);
    }
    unlock_byte(fd, kGateByte);
  }
  shared_->pending.store(0, std::memory_order_seq_cst);
  unlock_byte(fd, kTurnstileByte);
  return_fd(fd);
  return st;
}

Result<ReservationReport> ReservationTable::report() {
  ASSIGN_OR_RETURN(int fd, take_fd());
  Status st = lock_byte(fd, F_RDLCK, kGateByte);
  if (!st) {
    return_fd(fd);
    return st;
  }
  ReservationState s = read_state();
  unlock_byte(fd, kGateByte);
  return_fd(fd);
  return make_report(s);
}

Status ReservationTable::guarded_io(const HostId& host, Access access,
                                    const std::function<Status()>& io) {
  ASSIGN_OR_RETURN(int fd, take_fd());
  for (;;) {
    Status st = lock_byte(fd, F_RDLCK, kGateByte);
    if (!st) break;
    if (shared_->pending.load(std::memory_order_seq_cst) != 0) {
      // A reservation command is waiting for the gate: let it through first.
      unlock_byte(fd, kGateByte);
      st = lock_byte(fd, F_RDLCK, kTurnstileByte);
      if (!st) break;
      // Holding the turnstile shared proves no command is running, so a set flag is left
      // over from a command whose process died.
      shared_->pending.store(0, std::memory_order_seq_cst);
      unlock_byte(fd, kTurnstileByte);
      continue;
    }
    const ReservationState s = read_state();
    const bool allowed = access == Access::kRead ? may_read(s, host) : may_write(s, host);
    st = allowed ? io()
                 : Status(Code::kReservationConflict,
                          fmt::format("{} refused by the reservation ({}) for host {}",
                                      access == Access::kRead ? "read" : "write",
                                      reservation_type_name(static_cast<ReservationType>(s.type)),
                                      host.to_string()),
                          EBADE);
    unlock_byte(fd, kGateByte);
    return_fd(fd);
    return st;
  }
  return_fd(fd);
  return Status(Code::kIoError, "locking reservation state failed", EIO);
}

Result<std::string> default_reservation_state_path(const std::string& device_path) {
  struct stat sb {};
  if (stat(device_path.c_str(), &sb) != 0) {
    return errno_status(errno, fmt::format("stat {}", device_path));
  }
  if (S_ISREG(sb.st_mode)) return device_path + ".pr";
  if (!S_ISBLK(sb.st_mode)) {
    return make_status(Code::kInvalidArgument, "{} is neither a regular file nor a block device",
                       device_path);
  }
  const unsigned maj = major(sb.st_rdev);
  const unsigned min = minor(sb.st_rdev);
  constexpr unsigned kLoopMajor = 7;
  if (maj == kLoopMajor) {
    std::ifstream in(fmt::format("/sys/dev/block/{}:{}/loop/backing_file", maj, min));
    std::string backing;
    if (in && std::getline(in, backing) && !backing.empty()) return backing + ".pr";
  }
  if (mkdir("/run/sharedfs", 0755) != 0 && errno != EEXIST) {
    return errno_status(errno, "creating /run/sharedfs");
  }
  return fmt::format("/run/sharedfs/pr-{}-{}", maj, min);
}

}  // namespace sharedfs::device::internal
