// Cluster-wide flock and POSIX record locks; see advisory_locks.h.
#include "dlm/advisory_locks.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

namespace sharedfs::dlm {
namespace {

using Kind = AdvisoryLocks::Kind;
constexpr auto kPoll = std::chrono::milliseconds(50);

bool overlap(const RecordLock& a, const RecordLock& b) { return a.start <= b.end && b.start <= a.end; }

// The node-level lock of one kind on one inode.
ResourceName name_of(AdvisoryLocks::Kind kind, uint64_t ino) {
  return ResourceName::make(static_cast<uint8_t>(LockSpace::kInode), ino,
                            kind == AdvisoryLocks::Kind::kFlock ? "flock" : "posix");
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The table

struct AdvisoryLocks::InodeLocks {
  // One kind of lock on the inode, as this node sees it.
  struct Side {
    int raises = 0;  // threads raising the node-level lock right now
    LockMode raising = LockMode::kNL;
    LockMode granted = LockMode::kNL;  // what the gate has granted and not been told to lower
  };
  std::vector<RecordLock> records;  // per owner non-overlapping, sorted by (owner, start)
  std::map<uint64_t, bool> flocks;  // owner -> exclusive
  Side side[2];                     // indexed by Kind
};

struct AdvisoryLocks::State {
  using Inode = InodeLocks;
  using Side = InodeLocks::Side;

  std::mutex mu;
  std::condition_variable cv;  // a lock went away
  std::map<uint64_t, Inode> inodes;

  static LockMode mode_for(bool write) { return write ? LockMode::kEX : LockMode::kPR; }

  // What the node-level lock must stay at: the owners' locks and the raises in progress.
  static LockMode need(const Inode& n, Kind kind) {
    const Side& side = n.side[static_cast<int>(kind)];
    LockMode m = side.raises > 0 ? side.raising : LockMode::kNL;
    if (kind == Kind::kPosix) {
      for (const auto& r : n.records) m = std::max(m, mode_for(r.write));
    } else {
      for (const auto& [owner, ex] : n.flocks) m = std::max(m, mode_for(ex));
    }
    return m;
  }
  // mu held: tells the gate what the node needs now. Under mu, so that a raise registered
  // later can never be undone by a lower computed earlier.
  void lower(NodeLockGate& gate, uint64_t ino, Kind kind) {
    auto it = inodes.find(ino);
    const LockMode m = it == inodes.end() ? LockMode::kNL : need(it->second, kind);
    if (it != inodes.end()) {
      Side& side = it->second.side[static_cast<int>(kind)];
      side.granted = std::min(side.granted, m);
    }
    gate.lower(name_of(kind, ino), m);
    forget_if_unused(ino);
  }
  void forget_if_unused(uint64_t ino) {
    auto it = inodes.find(ino);
    if (it == inodes.end() || !it->second.records.empty() || !it->second.flocks.empty()) return;
    for (const Side& side : it->second.side) {
      if (side.raises > 0 || side.granted != LockMode::kNL) return;
    }
    inodes.erase(it);
  }
};

AdvisoryLocks::AdvisoryLocks(NodeLockGate& gate) : gate_(gate), state_(std::make_unique<State>()) {}
AdvisoryLocks::~AdvisoryLocks() = default;

namespace {

// The first lock of another owner that conflicts with `want`.
std::optional<RecordLock> local_conflict(const std::vector<RecordLock>& records, const RecordLock& want) {
  for (const auto& r : records) {
    if (r.owner != want.owner && (r.write || want.write) && overlap(r, want)) return r;
  }
  return std::nullopt;
}

// `owner`'s locks with [start, end] taken out (split where they straddle it).
void cut(std::vector<RecordLock>& records, uint64_t owner, uint64_t start, uint64_t end) {
  std::vector<RecordLock> out;
  for (const auto& r : records) {
    if (r.owner != owner || r.end < start || r.start > end) {
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
  records = std::move(out);
}

// Adds `lock` (its range cut out of the owner's locks first) and merges it with the owner's
// touching locks of the same type, as fcntl(2) coalesces.
void put(std::vector<RecordLock>& records, RecordLock lock) {
  cut(records, lock.owner, lock.start, lock.end);
  std::vector<RecordLock> out;
  for (const auto& r : records) {
    const bool touches = (lock.start == 0 || r.end >= lock.start - 1) &&
                         (lock.end == UINT64_MAX || r.start <= lock.end + 1);
    if (r.owner == lock.owner && r.write == lock.write && touches) {
      lock.start = std::min(lock.start, r.start);
      lock.end = std::max(lock.end, r.end);
    } else {
      out.push_back(r);
    }
  }
  out.push_back(lock);
  std::sort(out.begin(), out.end(), [](const RecordLock& a, const RecordLock& b) {
    return std::tie(a.owner, a.start) < std::tie(b.owner, b.start);
  });
  records = std::move(out);
}

}  // namespace

// The protocol both kinds share: wait out this node's conflicting owners, make sure the
// node-level lock is at least `need` (raising it through the gate, without holding mu),
// then grant. `conflict` and `grant` run under mu.
Status AdvisoryLocks::acquire(uint64_t ino, Kind kind, LockMode need, bool wait,
                              const std::function<bool()>& interrupted,
                              const std::function<std::optional<std::string>(InodeLocks&)>& conflict,
                              const std::function<void(InodeLocks&)>& grant) {
  std::unique_lock l(state_->mu);
  for (;;) {
    InodeLocks& n = state_->inodes[ino];
    InodeLocks::Side& side = n.side[static_cast<int>(kind)];
    if (auto why = conflict(n)) {
      const bool stop = !wait || (interrupted && interrupted());
      if (stop) {
        state_->lower(gate_, ino, kind);
        return lock_refused(wait ? EINTR : EAGAIN, *why);
      }
      state_->cv.wait_for(l, kPoll);
      continue;
    }
    if (side.granted >= need) {
      grant(n);
      state_->lower(gate_, ino, kind);  // e.g. a write lock turned read: EX may go to PR
      state_->cv.notify_all();
      return Status::ok();
    }
    // Raise first; while we do, the need we raise for counts (State::need).
    ++side.raises;
    side.raising = std::max(side.raising, need);
    l.unlock();
    Status st = gate_.raise(name_of(kind, ino), need, wait, interrupted);
    l.lock();
    InodeLocks::Side& after = state_->inodes[ino].side[static_cast<int>(kind)];
    if (--after.raises == 0) after.raising = LockMode::kNL;
    if (!st) {
      state_->lower(gate_, ino, kind);
      return st;
    }
    after.granted = std::max(after.granted, need);
    // Loop: this node's owners may have changed while we waited.
  }
}

Result<std::optional<RecordLock>> AdvisoryLocks::test(uint64_t ino, const RecordLock& want) {
  const LockMode need = State::mode_for(want.write);
  {
    std::lock_guard l(state_->mu);
    auto it = state_->inodes.find(ino);
    if (it != state_->inodes.end()) {
      if (auto c = local_conflict(it->second.records, want)) return std::optional<RecordLock>(*c);
      // The node holds what the other nodes would have to give up for this.
      if (it->second.side[static_cast<int>(Kind::kPosix)].granted >= need) {
        return std::optional<RecordLock>();
      }
    }
  }
  // Ask the other nodes: a try of the node-level lock, given back at once.
  Status st = gate_.raise(name_of(Kind::kPosix, ino), need, false, {});
  {
    std::lock_guard l(state_->mu);
    state_->lower(gate_, ino, Kind::kPosix);
  }
  if (st) return std::optional<RecordLock>();
  if (st.to_errno() != EAGAIN) return st;
  // Another node holds a lock in the way; which range or process, it cannot say.
  return std::optional<RecordLock>(RecordLock{.write = true, .start = 0, .end = UINT64_MAX, .owner = 0, .pid = 0});
}

Status AdvisoryLocks::set(uint64_t ino, const RecordLock& lock, bool wait,
                          const std::function<bool()>& interrupted) {
  return acquire(
      ino, Kind::kPosix, State::mode_for(lock.write), wait, interrupted,
      [&](InodeLocks& n) -> std::optional<std::string> {
        auto c = local_conflict(n.records, lock);
        if (!c) return std::nullopt;
        return fmt::format("inode {} bytes {}..{} are locked by pid {}", ino, c->start, c->end, c->pid);
      },
      [&](InodeLocks& n) { put(n.records, lock); });
}

void AdvisoryLocks::unlock(uint64_t ino, uint64_t owner, uint64_t start, uint64_t end) {
  {
    std::lock_guard l(state_->mu);
    auto it = state_->inodes.find(ino);
    if (it == state_->inodes.end()) return;
    cut(it->second.records, owner, start, end);
    state_->lower(gate_, ino, Kind::kPosix);
  }
  state_->cv.notify_all();
}

Status AdvisoryLocks::flock(uint64_t ino, uint64_t owner, bool exclusive, bool wait,
                            const std::function<bool()>& interrupted) {
  {
    // A conversion lets go of the old lock first, as Linux does.
    std::lock_guard l(state_->mu);
    auto it = state_->inodes.find(ino);
    if (it != state_->inodes.end()) {
      auto mine = it->second.flocks.find(owner);
      if (mine != it->second.flocks.end()) {
        if (mine->second == exclusive) return Status::ok();
        it->second.flocks.erase(mine);
        state_->cv.notify_all();
      }
    }
  }
  return acquire(
      ino, Kind::kFlock, State::mode_for(exclusive), wait, interrupted,
      [&](InodeLocks& n) -> std::optional<std::string> {
        for (const auto& [other, ex] : n.flocks) {
          if (other != owner && (ex || exclusive)) {
            return fmt::format("inode {} is flock()ed on this node", ino);
          }
        }
        return std::nullopt;
      },
      [&](InodeLocks& n) { n.flocks[owner] = exclusive; });
}

void AdvisoryLocks::flock_unlock(uint64_t ino, uint64_t owner) {
  {
    std::lock_guard l(state_->mu);
    auto it = state_->inodes.find(ino);
    if (it == state_->inodes.end()) return;
    it->second.flocks.erase(owner);
    state_->lower(gate_, ino, Kind::kFlock);
  }
  state_->cv.notify_all();
}

}  // namespace sharedfs::dlm
