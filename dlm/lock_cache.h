// dlm/lock_cache.h — lock caching for the file system (DESIGN.md §4): a node takes each
// resource's DLM lock once, keeps it after its users are done, and gives it up only when a
// blocking callback says another node waits, after the caller's flush hook has written
// back and dropped what the lock covers. A node that alone uses a resource sends nothing
// after the first grant.
//
// The cache holds the node-level lock; exclusion between the threads of one node is the
// caller's (a local reader-writer lock per resource). A user must not wait for a stronger
// mode while it holds the same resource: the lock cannot be given up under it.
//
// Thread-safety: as LockManager, whose calls it makes: the owner serializes all calls.
// Callbacks (completions, the flush hook) run on the caller's thread.
#pragma once

#include <array>
#include <deque>
#include <functional>
#include <map>
#include <optional>

#include "dlm/lock_manager.h"

namespace sharedfs::dlm {

class LockCache {
 public:
  // Before a cached lock goes down to `new_mode` (NL, or PR from EX when a reader waits):
  // commit, write back and invalidate what the lock covers, then call `done` (at once or
  // later). While the hook runs, new users of the resource wait.
  using FlushHook =
      std::function<void(const ResourceName& name, LockMode new_mode, std::function<void()> done)>;
  using Done = std::function<void(const Status&)>;
  // Another node waits for `name` and users still hold it: users that pin the lock
  // (ClusterLockService keeps one per resource so its threads hit without the driver)
  // should let go soon. Runs once per episode, from inside the LockCache: it must not
  // call the LockCache back directly (post instead).
  using BlockedHook = std::function<void(const ResourceName& name)>;

  LockCache(LockManager& manager, FlushHook flush, BlockedHook blocked = {});
  LockCache(const LockCache&) = delete;
  LockCache& operator=(const LockCache&) = delete;

  // `done` runs once the node holds `name` in at least `mode` for one more user: at once,
  // without a message, when the cached lock is strong enough and nobody waits for it.
  void acquire(const ResourceName& name, LockMode mode, Done done);
  // One user is done. The lock stays cached.
  void release(const ResourceName& name);

  // The mode the node holds `name` in, nullopt when not cached.
  std::optional<LockMode> cached_mode(const ResourceName& name) const;
  int users(const ResourceName& name) const;
  // The LockManager's id of the cached lock (to read or set its value block).
  std::optional<LockId> lock_id(const ResourceName& name) const;

  // One cached lock as `sharedfs locks` shows it.
  struct CachedLock {
    ResourceName name;
    std::optional<LockMode> granted;
    int users = 0;
    size_t local_waiters = 0;                  // this node's threads waiting for a stronger mode
    std::optional<LockMode> wanted_elsewhere;  // another node waits: give it up when free
    bool flushing = false;                     // a request or the flush hook is in progress
  };
  // With `busy_only`, only locks someone waits for (here or elsewhere) or in transition.
  // At most `limit`; `total` gets how many are cached.
  std::vector<CachedLock> snapshot(bool busy_only, size_t limit, size_t* total) const;
  // Resources with an entry (cached, or being acquired).
  size_t size() const { return entries_.size(); }
  // Cached locks by the mode granted (NL, PR, EX), without listing them.
  std::array<size_t, 3> count_by_mode() const;

 private:
  struct Waiter {
    LockMode mode;
    Done done;
  };
  struct Entry {
    std::optional<LockId> id;
    std::optional<LockMode> granted;
    int users = 0;
    bool busy = false;  // a request or the flush hook is in progress
    // The strongest mode another node waits for since we last gave up: do not hand the
    // lock to new users, give it up when the current ones are done.
    std::optional<LockMode> blocked;
    bool users_told = false;  // the blocked hook ran for this episode
    // An up-convert was cancelled (conversion deadlock): retry after we gave up.
    bool stalled = false;
    std::deque<Waiter> waiters;
  };

  void pump(const ResourceName& name);
  void on_blocking(const ResourceName& name, LockMode waiting);

  LockManager& manager_;
  FlushHook flush_;
  BlockedHook blocked_;
  std::map<ResourceName, Entry> entries_;
};

}  // namespace sharedfs::dlm
