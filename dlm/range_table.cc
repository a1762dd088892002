// POSIX record locks on one file; see range_table.h.
#include "dlm/range_table.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <tuple>

namespace sharedfs::dlm {
namespace {

bool overlap(const RecordLock& a, const RecordLock& b) { return a.start <= b.end && b.start <= a.end; }

// Ranges of one owner that touch or overlap: [a] then [b] with no byte between them.
bool touches(const RecordLock& a, const RecordLock& b) {
  return (b.start == 0 || a.end >= b.start - 1) && (b.end == UINT64_MAX || a.start <= b.end + 1);
}

}  // namespace

Status range_lock_refused(const ResourceName& name, const std::optional<RecordLock>& by) {
  if (!by) return Status(Code::kBusy, fmt::format("record lock on {} refused", name.to_string()), EAGAIN);
  return Status(Code::kBusy,
                fmt::format("bytes {}..{} of {} are {}-locked by node {} pid {}", by->start, by->end,
                            name.to_string(), by->write ? "write" : "read", by->node, by->pid),
                EAGAIN);
}

Status range_wait_interrupted(const ResourceName& name) {
  return Status(Code::kBusy, fmt::format("wait for a record lock on {} interrupted", name.to_string()), EINTR);
}

std::optional<RecordLock> RangeTable::conflict(const RecordLock& want) const {
  for (const auto& r : held_) {
    if (!same_owner(r, want) && (r.write || want.write) && overlap(r, want)) return r;
  }
  return std::nullopt;
}

void RangeTable::cut(uint32_t node, uint64_t owner, uint64_t start, uint64_t end) {
  std::vector<RecordLock> out;
  out.reserve(held_.size() + 1);
  for (const auto& r : held_) {
    if (r.node != node || r.owner != owner || r.end < start || r.start > end) {
      out.push_back(r);
      continue;
    }
    if (r.start < start) {
      RecordLock left = r;
      left.end = start - 1;
      out.push_back(left);
    }
    if (r.end > end) {
      RecordLock right = r;
      right.start = end + 1;
      out.push_back(right);
    }
  }
  held_ = std::move(out);
}

void RangeTable::put(RecordLock lock) {
  cut(lock.node, lock.owner, lock.start, lock.end);
  std::vector<RecordLock> out;
  out.reserve(held_.size() + 1);
  for (const auto& r : held_) {
    if (same_owner(r, lock) && r.write == lock.write && touches(r, lock)) {
      lock.start = std::min(lock.start, r.start);
      lock.end = std::max(lock.end, r.end);
    } else {
      out.push_back(r);
    }
  }
  out.push_back(lock);
  std::sort(out.begin(), out.end(), [](const RecordLock& a, const RecordLock& b) {
    return std::tie(a.node, a.owner, a.start) < std::tie(b.node, b.owner, b.start);
  });
  held_ = std::move(out);
}

bool RangeTable::cancel(uint32_t node, uint64_t tag) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->lock.node == node && it->tag == tag) {
      waiting_.erase(it);
      return true;
    }
  }
  return false;
}

std::vector<RangeTable::Waiter> RangeTable::grant_waiters() {
  std::vector<Waiter> granted;
  // One pass in order suffices: a grant only adds conflicts for the waiters after it.
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (conflict(it->lock)) {
      ++it;
      continue;
    }
    put(it->lock);
    granted.push_back(*it);
    it = waiting_.erase(it);
  }
  return granted;
}

}  // namespace sharedfs::dlm
