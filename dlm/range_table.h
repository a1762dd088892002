// dlm/range_table.h — POSIX record locks (fcntl(2) F_SETLK/F_SETLKW/F_GETLK) on one file:
// who holds which byte ranges, and who waits for which.
//
// One table per file, kept by the file's range-lock master (dlm/lock_manager.h, "range
// locks"): it holds every node's locks, so a conflict between processes of two nodes is
// decided by byte range exactly as between two processes of one host. A lock belongs to an
// owner on a node (the kernel's lock owner of a process's files); an owner's locks never
// conflict with each other, and its locks are split and merged as fcntl(2) does: a new lock
// replaces what the owner held in its range, touching locks of one type coalesce.
//
// A node keeps a table of its own owners' locks too: after a membership change the new
// master rebuilds its table from those (the locks of a departed node are gone, as a dead
// process's are).
//
// Thread-safety: none; the owner serializes.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "common/status.h"
#include "dlm/resource_name.h"

namespace sharedfs::dlm {

struct RecordLock {
  bool write = false;
  uint64_t start = 0;
  uint64_t end = UINT64_MAX;  // inclusive last byte, as struct flock's l_start + l_len - 1
  uint64_t owner = 0;
  uint32_t pid = 0;   // of the owner's process on its node; 0 where unknown
  uint32_t node = 0;  // the node of the owner (NodeId value); 0 in a table of one node
};

inline bool same_owner(const RecordLock& a, const RecordLock& b) {
  return a.node == b.node && a.owner == b.owner;
}

// How a record lock request on `name` fails (code kBusy, with the errno to hand on):
// EAGAIN, naming the lock in the way when known; EINTR, a wait given up.
Status range_lock_refused(const ResourceName& name, const std::optional<RecordLock>& by);
Status range_wait_interrupted(const ResourceName& name);

class RangeTable {
 public:
  struct Waiter {
    RecordLock lock;
    uint64_t tag = 0;  // the caller's name for the request (a request id)
  };

  // The first lock of another owner that keeps `want` from being granted.
  std::optional<RecordLock> conflict(const RecordLock& want) const;
  // Gives `lock` to its owner, replacing what the owner held in the range. No check.
  void put(RecordLock lock);
  // Takes [start, end] out of the owner's locks, splitting those that straddle it.
  void cut(uint32_t node, uint64_t owner, uint64_t start, uint64_t end);

  void enqueue(Waiter waiter) { waiting_.push_back(waiter); }
  // Removes the waiter with `tag` of `node`; false when it no longer waits.
  bool cancel(uint32_t node, uint64_t tag);
  // Grants, in queue order, every waiter nothing conflicts with any more; returns them.
  // Not strictly first come first served (neither is the kernel): a waiter in nobody's way
  // goes ahead of one that still waits.
  std::vector<Waiter> grant_waiters();

  bool empty() const { return held_.empty() && waiting_.empty(); }
  const std::vector<RecordLock>& held() const { return held_; }
  size_t waiting() const { return waiting_.size(); }

 private:
  std::vector<RecordLock> held_;  // per owner non-overlapping, sorted by (node, owner, start)
  std::deque<Waiter> waiting_;
};

}  // namespace sharedfs::dlm
