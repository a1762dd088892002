// dlm/range_lock_gate.h — POSIX record locks (fcntl(2) F_SETLK, F_SETLKW, F_GETLK) taken
// for this node's processes in the cluster's range tables (dlm/range_table.h): byte ranges
// conflict between processes of different nodes exactly as between processes of one host.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "common/status.h"
#include "dlm/range_table.h"
#include "dlm/resource_name.h"

namespace sharedfs::dlm {

class DlmNode;

class RangeLockGate {
 public:
  virtual ~RangeLockGate() = default;
  // F_SETLK / F_SETLKW: `lock` for its owner, replacing what the owner held in the range.
  // Failures have code kBusy and an errno: EAGAIN (not waiting, another owner is in the
  // way), EINTR (`interrupted` said yes while waiting; polled every 50 ms).
  virtual Status lock(const ResourceName& name, const RecordLock& lock, bool wait,
                      const std::function<bool()>& interrupted) = 0;
  // F_GETLK: the lock that keeps `want` from being granted, or nullopt. A lock of another
  // node has pid 0: its pid means nothing on this host.
  virtual Result<std::optional<RecordLock>> test(const ResourceName& name, const RecordLock& want) = 0;
  // F_UNLCK of [start, end] for `owner`.
  virtual void unlock(const ResourceName& name, uint64_t owner, uint64_t start, uint64_t end) = 0;
};

// Through the node's DLM (LockManager::range_lock and friends). The DlmNode outlives it.
std::unique_ptr<RangeLockGate> make_dlm_range_gate(DlmNode& node);
// One node alone: a table in this process (tests of the gate's users).
std::unique_ptr<RangeLockGate> make_local_range_gate();

}  // namespace sharedfs::dlm
