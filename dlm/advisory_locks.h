// dlm/advisory_locks.h — flock(2) and POSIX fcntl(2) record locks that conflict across the
// nodes of a cluster as they do between the processes of one host (issue 5, item 5).
//
// flock(2): a per-node table of flock owners (an open file description each) in shared or
// exclusive mode, plus one DLM lock per inode (resource inode:N tagged "flock") held by the
// node in the strongest mode its owners need: PR while they hold only shared locks, EX while
// any holds an exclusive one, none otherwise. A node raises it before granting an owner a
// lock that needs more, and lowers it when its owners let go. Two nodes that both hold
// shared locks and both ask for exclusive ones form a conversion deadlock that the DLM
// breaks: one of them gets EDEADLK.
//
// POSIX record locks (fcntl(2)) go to the cluster's range tables (dlm/range_lock_gate.h,
// resource inode:N tagged "posix"): byte ranges conflict between nodes exactly as between
// the processes of one host; F_GETLK reports a lock of another node with pid 0. Deadlocks
// between owners are not detected (the kernel would say EDEADLK; here they wait until
// interrupted).
//
// Waiting (F_SETLKW, flock without LOCK_NB) polls `interrupted` every 50 ms; when it says
// yes the call returns EINTR.
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
#include "dlm/range_lock_gate.h"

namespace sharedfs::dlm {

class AdvisoryLocks {
 public:
  // The two kinds never conflict with each other (as on Linux): resources inode:N tagged
  // "flock" (through `gate`) and "posix" (through `ranges`).
  AdvisoryLocks(NodeLockGate& gate, RangeLockGate& ranges);
  ~AdvisoryLocks();
  AdvisoryLocks(const AdvisoryLocks&) = delete;
  AdvisoryLocks& operator=(const AdvisoryLocks&) = delete;

  // F_GETLK: a lock that would keep `want` (its owner, range and type) from being granted,
  // or nullopt.
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
  struct State;
  NodeLockGate& gate_;
  RangeLockGate& ranges_;
  std::unique_ptr<State> state_;
};

}  // namespace sharedfs::dlm
