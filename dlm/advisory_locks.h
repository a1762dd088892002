// dlm/advisory_locks.h — flock(2) and POSIX fcntl(2) record locks that conflict across the
// nodes of a cluster as they do between the processes of one host (issue 5, item 5).
//
// Two layers:
//   * On each node, a table of who holds what, per inode: flock owners (an open file
//     description each) in shared or exclusive mode, and POSIX owners (the kernel's lock
//     owner of a process's files) with byte ranges, split and merged as fcntl(2) does.
//     Conflicts between this node's owners are decided here, exactly.
//   * Between nodes, one DLM lock per inode and kind (resource inode:N tagged "flock" or
//     "posix"), held by the node in the strongest mode its owners need: PR while they hold
//     only shared/read locks, EX while any holds an exclusive/write lock, none otherwise.
//     A node raises it before granting an owner a lock that needs more, and lowers it when
//     its owners let go.
//
// Between nodes POSIX locks therefore conflict per file, not per byte range: two nodes that
// lock disjoint ranges of one file, at least one for writing, take turns (F_SETLKW waits,
// F_SETLK says EAGAIN, F_GETLK reports a whole-file lock with pid 0). Within a node ranges
// are exact. Two nodes that both hold read locks and both ask for a write lock form a
// conversion deadlock that the DLM breaks: one of them gets EDEADLK. Deadlocks between the
// owners of one node are not detected (the kernel would say EDEADLK; here they wait).
//
// Waiting (F_SETLKW, flock without LOCK_NB) polls `interrupted` every 50 ms; when it says
// yes the call returns EINTR at once, and a DLM request still in flight is lowered again
// once it is granted.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "dlm/lock_service.h"
#include "dlm/node_lock_gate.h"

namespace sharedfs::dlm {

struct RecordLock {
  bool write = false;
  uint64_t start = 0;
  uint64_t end = UINT64_MAX;  // inclusive last byte, as struct flock's l_start + l_len - 1
  uint64_t owner = 0;
  uint32_t pid = 0;  // 0: a lock another node holds
};

class AdvisoryLocks {
 public:
  // The two kinds never conflict with each other (as on Linux): one node-level lock each,
  // on resource inode:N tagged "flock" or "posix".
  enum class Kind : uint8_t { kFlock = 0, kPosix = 1 };

  explicit AdvisoryLocks(NodeLockGate& gate);
  ~AdvisoryLocks();
  AdvisoryLocks(const AdvisoryLocks&) = delete;
  AdvisoryLocks& operator=(const AdvisoryLocks&) = delete;

  // F_GETLK: a lock that would keep `want` (its owner, range and type) from being granted,
  // or nullopt. Asks the other nodes without waiting (a try of the node-level lock).
  Result<std::optional<RecordLock>> test(uint64_t ino, const RecordLock& want);
  // F_SETLK / F_SETLKW: takes `lock` for its owner (replacing what the owner held in the
  // range), waiting when `wait`. Errors carry their errno: EAGAIN, EINTR, EDEADLK.
  Status set(uint64_t ino, const RecordLock& lock, bool wait,
             const std::function<bool()>& interrupted);
  // F_UNLCK over [start, end] for `owner`; also what FLUSH does (0..UINT64_MAX).
  void unlock(uint64_t ino, uint64_t owner, uint64_t start, uint64_t end);

  // flock(2): LOCK_SH (exclusive=false) or LOCK_EX for the open file `owner`; a held lock of
  // the other mode is converted (not atomically, as on Linux).
  Status flock(uint64_t ino, uint64_t owner, bool exclusive, bool wait,
               const std::function<bool()>& interrupted);
  // LOCK_UN, and what RELEASE with flock_release does.
  void flock_unlock(uint64_t ino, uint64_t owner);

 private:
  struct InodeLocks;  // one inode's locks on this node
  struct State;
  // What set() and flock() share: wait out this node's conflicting owners (`conflict` says
  // why, or nullopt), get the node-level lock to `need`, then `grant`.
  Status acquire(uint64_t ino, Kind kind, LockMode need, bool wait,
                 const std::function<bool()>& interrupted,
                 const std::function<std::optional<std::string>(InodeLocks&)>& conflict,
                 const std::function<void(InodeLocks&)>& grant);
  NodeLockGate& gate_;
  std::unique_ptr<State> state_;
};

}  // namespace sharedfs::dlm
