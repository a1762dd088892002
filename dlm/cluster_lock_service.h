// dlm/cluster_lock_service.h — the LockService of a node in a cluster: fs/ takes its locks
// through it exactly as through the local one (dlm/lock_service.h).
//
// A lock() first makes sure the node holds the resource's cached DLM lock in at least the
// mode (LockCache: no message when it already does), then takes the same mode between the
// node's own threads. Released locks stay cached. When another node needs a conflicting
// mode, the flush hook runs on the service's flusher thread (never the DLM driver thread,
// so it may do I/O and wait) once no thread of this node uses the lock, and only then is
// the lock given up or lowered.
//
// Membership and journal replay reach the DLM through node().
//
// Thread-safety: all methods may be called from any thread. The flush hook runs on one
// flusher thread, one flush at a time.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "dlm/dlm_node.h"
#include "dlm/lock_service.h"

namespace sharedfs::dlm {

class ClusterLockService final : public LockService {
 public:
  // Before the node's lock on `name` goes down to `new_mode`: commit the journal, write
  // back and drop what the lock covers, invalidate the kernel's caches.
  using FlushHook = std::function<void(const LockName& name, LockMode new_mode)>;

  static Result<std::unique_ptr<ClusterLockService>> start(DlmNodeOptions options, FlushHook flush);
  ~ClusterLockService() override;

  Result<Lock> lock(LockName name, LockMode mode) override;
  DlmNode& node() { return *node_; }

 private:
  ClusterLockService() = default;
  void unlock(const LockName& name, LockMode mode) override;
  void flusher();

  FlushHook flush_;
  std::unique_ptr<DlmNode> node_;
  std::unique_ptr<LockService> local_;  // exclusion between this node's threads

  std::mutex mu_;
  // The local guards behind the Locks we handed out, by name and mode (interchangeable).
  std::multimap<std::pair<LockName, LockMode>, Lock> held_;  // GUARDED_BY(mu_)
  std::deque<std::function<void()>> flushes_;                // GUARDED_BY(mu_)
  bool stop_ = false;                                        // GUARDED_BY(mu_)
  std::condition_variable cv_;
  std::thread flusher_;
};

}  // namespace sharedfs::dlm
