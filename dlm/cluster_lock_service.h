// dlm/cluster_lock_service.h — the LockService of a node in a cluster: fs/ takes its locks
// through it exactly as through the local one (dlm/lock_service.h).
//
// Per resource the service pins one user of the node's LockCache while it holds the lock,
// so a thread that needs a mode the node already holds takes it under the service's mutex,
// without waking the DLM driver thread (the fast path). Otherwise the thread asks the
// LockCache on the driver thread and waits. On top the service keeps readers-writer
// exclusion between the node's threads (EX waiters block new PR takers, like
// LocalLockService).
//
// When another node waits (LockCache's blocked hook), the fast path closes for that
// resource; once no thread of this node uses it, the service lets go of its LockCache
// users, the flush hook runs on the service's flusher thread (it may do I/O and wait;
// never the driver thread) and the node's lock goes down.
//
// Membership and journal replay reach the DLM through node().
//
// Thread-safety: all methods may be called from any thread. Lock order: mu_, then the
// uncached locks' gate (node_lock_gate.h), then the DlmNode's queue lock (post()); nothing
// is called on the LockCache while mu_ is held.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "common/latency_histogram.h"
#include "dlm/dlm_node.h"
#include "dlm/lock_service.h"
#include "dlm/node_lock_gate.h"

namespace sharedfs::dlm {

class ClusterLockService final : public LockService {
 public:
  // Before the node's lock on `name` goes down to `new_mode`: commit the journal, write
  // back and drop what the lock covers, invalidate the kernel's caches. Returns the value
  // block to write back when the node leaves EX (nullopt: the one it was granted with,
  // unchanged); nothing of this node changes what the value describes after the flush.
  using FlushHook =
      std::function<std::optional<ValueBlockBytes>(const LockName& name, LockMode new_mode)>;

  static Result<std::unique_ptr<ClusterLockService>> start(DlmNodeOptions options, FlushHook flush);
  ~ClusterLockService() override;

  Result<Lock> lock(LockName name, LockMode mode) override;
  Result<Lock> try_lock(LockName name, LockMode mode) override;
  std::optional<ValueBlockBytes> value_block(const Lock& lock) const override;
  DlmNode& node() { return *node_; }
  // After the file system let go of every lock: waits for this node's uncached lock
  // requests still in flight (they are answered only while we are a member), then leaves
  // the cluster (DlmNode::leave).
  Status leave(std::chrono::milliseconds timeout);
  // This node was fenced: every lock() and try_lock() from now on, and every one still
  // waiting, fails with kIoError; held locks stay until their guards go.
  void withdraw();

  // Locks taken without the driver thread (tests, the control socket's stats query).
  uint64_t fast_path_hits() const;
  // How long lock() took to grant, by mode (PR, EX): the wait for other
  // nodes and for this node's other threads together.
  const LatencyHistogram& wait_latency(LockMode mode) const {
    return wait_latency_[static_cast<size_t>(mode)];
  }

 private:
  struct Entry {
    // LockCache users we hold; while > 0 the node holds at least `mode`.
    int cache_users = 0;
    LockMode mode = LockMode::kNL;
    // Threads that counted on the node-level lock (holding or waiting locally).
    int local_users = 0;
    // Another node waits: no fast path; let go when local_users reaches 0.
    bool revoking = false;
    // Exclusion between this node's threads.
    int readers = 0;
    bool writer = false;
    int writers_waiting = 0;
    // The value block read at the node's last grant; nullopt when invalid.
    std::optional<ValueBlockBytes> value;
  };

  // An uncached lock (LockSpace::kOpen): this node's threads share a PR (holders counts
  // them) and exclude each other otherwise; the node-level DLM lock is raised through
  // uncached_gate_ for the first holder and given back when the last one is done.
  struct Uncached {
    LockMode mode = LockMode::kNL;
    int holders = 0;
    bool raising = false;  // a thread of ours is asking the DLM for it
  };

  ClusterLockService() = default;
  // Locks that exclude other nodes but not this node's threads (EX taken as shared here).
  static bool shared_between_threads(const LockName& name);
  void unlock(const LockName& name, LockMode mode) override;
  // lock() without the timing.
  Result<Lock> lock_waiting(LockName name, LockMode mode);
  Result<Lock> lock_uncached(LockName name, LockMode mode, bool try_only);
  void unlock_uncached(const ResourceName& r);
  void on_blocked(const ResourceName& name);
  // With mu_ held: LockCache users to hand back now that `e` may have become idle.
  static int users_to_release(Entry& e);
  void release_cache_users(const ResourceName& name, int count);
  void flusher();

  FlushHook flush_;
  std::unique_ptr<DlmNode> node_;
  std::unique_ptr<NodeLockGate> uncached_gate_;  // over node_; destroyed before it

  mutable std::mutex mu_;
  std::condition_variable local_cv_;           // exclusion waits
  std::map<ResourceName, Entry> entries_;      // GUARDED_BY(mu_)
  std::map<ResourceName, Uncached> uncached_;  // GUARDED_BY(mu_)
  uint64_t fast_hits_ = 0;                     // GUARDED_BY(mu_)
  std::deque<std::function<void()>> flushes_;  // GUARDED_BY(mu_)
  bool stop_ = false;                          // GUARDED_BY(mu_)
  std::atomic<bool> withdrawn_{false};
  std::array<LatencyHistogram, 3> wait_latency_;  // by LockMode
  std::condition_variable flush_cv_;
  std::thread flusher_;
};

}  // namespace sharedfs::dlm
