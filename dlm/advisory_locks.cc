// Cluster-wide flock and POSIX record locks; see advisory_locks.h.
#include "dlm/advisory_locks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

namespace sharedfs::dlm {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

ResourceName flock_name(uint64_t ino) {
  return ResourceName::make(static_cast<uint8_t>(LockSpace::kInode), ino, "flock");
}
ResourceName posix_name(uint64_t ino) {
  return ResourceName::make(static_cast<uint8_t>(LockSpace::kInode), ino, "posix");
}

LockMode mode_for(bool exclusive) { return exclusive ? LockMode::kEX : LockMode::kPR; }

}  // namespace

// ---------------------------------------------------------------------------------------
// Record locks: the range tables decide.

Result<std::optional<RecordLock>> AdvisoryLocks::test(uint64_t ino, const RecordLock& want) {
  return ranges_.test(posix_name(ino), want);
}

Status AdvisoryLocks::set(uint64_t ino, const RecordLock& lock, bool wait,
                          const std::function<bool()>& interrupted) {
  return ranges_.lock(posix_name(ino), lock, wait, interrupted);
}

void AdvisoryLocks::unlock(uint64_t ino, uint64_t owner, uint64_t start, uint64_t end) {
  ranges_.unlock(posix_name(ino), owner, start, end);
}

// ---------------------------------------------------------------------------------------
// flock: this node's owners, and the node-level lock that stands for them.

struct AdvisoryLocks::State {
  struct Inode {
    std::map<uint64_t, bool> owners;   // owner -> exclusive
    int raises = 0;                    // threads raising the node-level lock right now
    LockMode raising = LockMode::kNL;  // the strongest of those raises
    LockMode granted = LockMode::kNL;  // what the gate has granted and not been told to lower
  };

  std::mutex mu;
  std::condition_variable cv;  // a lock went away
  std::map<uint64_t, Inode> inodes;

  // What the node-level lock must stay at: the owners' locks and the raises in progress.
  static LockMode need(const Inode& n) {
    LockMode m = n.raises > 0 ? n.raising : LockMode::kNL;
    for (const auto& [owner, ex] : n.owners) m = std::max(m, mode_for(ex));
    return m;
  }
  // mu held: tells the gate what the node needs now. Under mu, so that a raise registered
  // later can never be undone by a lower computed earlier.
  void lower(NodeLockGate& gate, uint64_t ino) {
    auto it = inodes.find(ino);
    const LockMode m = it == inodes.end() ? LockMode::kNL : need(it->second);
    gate.lower(flock_name(ino), m);
    if (it == inodes.end()) return;
    it->second.granted = std::min(it->second.granted, m);
    if (it->second.owners.empty() && it->second.raises == 0 && it->second.granted == LockMode::kNL) {
      inodes.erase(it);
    }
  }
};

AdvisoryLocks::AdvisoryLocks(NodeLockGate& gate, RangeLockGate& ranges)
    : gate_(gate), ranges_(ranges), state_(std::make_unique<State>()) {}
AdvisoryLocks::~AdvisoryLocks() = default;

// Waits out this node's conflicting owners, makes sure the node-level lock is at least what
// the mode needs (raising it through the gate, without holding mu), then grants.
Status AdvisoryLocks::flock(uint64_t ino, uint64_t owner, bool exclusive, bool wait,
                            const std::function<bool()>& interrupted) {
  const LockMode need = mode_for(exclusive);
  std::unique_lock l(state_->mu);
  {
    // A conversion lets go of the old lock first, as Linux does.
    auto it = state_->inodes.find(ino);
    if (it != state_->inodes.end()) {
      auto mine = it->second.owners.find(owner);
      if (mine != it->second.owners.end()) {
        if (mine->second == exclusive) return Status::ok();
        it->second.owners.erase(mine);
        state_->cv.notify_all();
      }
    }
  }
  for (;;) {
    State::Inode& n = state_->inodes[ino];
    const bool local_conflict = std::any_of(n.owners.begin(), n.owners.end(), [&](const auto& o) {
      return o.first != owner && (o.second || exclusive);
    });
    if (local_conflict) {
      const bool stop = !wait || (interrupted && interrupted());
      if (stop) {
        state_->lower(gate_, ino);
        return lock_refused(wait ? EINTR : EAGAIN, fmt::format("inode {} is flock()ed on this node", ino));
      }
      state_->cv.wait_for(l, kPoll);
      continue;
    }
    if (n.granted >= need) {
      n.owners[owner] = exclusive;
      state_->lower(gate_, ino);  // e.g. the last exclusive owner turned shared: EX may go to PR
      state_->cv.notify_all();
      return Status::ok();
    }
    // Raise first; while we do, the need we raise for counts (State::need).
    ++n.raises;
    n.raising = std::max(n.raising, need);
    l.unlock();
    Status st = gate_.raise(flock_name(ino), need, wait, interrupted);
    l.lock();
    State::Inode& after = state_->inodes[ino];
    if (--after.raises == 0) after.raising = LockMode::kNL;
    if (!st) {
      state_->lower(gate_, ino);
      return st;
    }
    after.granted = std::max(after.granted, need);
    // Loop: this node's owners may have changed while we waited.
  }
}

void AdvisoryLocks::flock_unlock(uint64_t ino, uint64_t owner) {
  {
    std::lock_guard l(state_->mu);
    auto it = state_->inodes.find(ino);
    if (it == state_->inodes.end()) return;
    it->second.owners.erase(owner);
    state_->lower(gate_, ino);
  }
  state_->cv.notify_all();
}

}  // namespace sharedfs::dlm
