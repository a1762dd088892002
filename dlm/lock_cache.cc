#include "dlm/lock_cache.h"

#include <utility>

namespace sharedfs::dlm {

LockCache::LockCache(LockManager& manager, FlushHook flush, BlockedHook blocked)
    : manager_(manager), flush_(std::move(flush)), blocked_(std::move(blocked)) {}

void LockCache::acquire(const ResourceName& name, LockMode mode, Done done) {
  entries_[name].waiters.push_back(Waiter{mode, std::move(done)});
  pump(name);
}

void LockCache::release(const ResourceName& name) {
  auto it = entries_.find(name);
  SHAREDFS_CHECK(it != entries_.end() && it->second.users > 0, "release of a lock not acquired");
  --it->second.users;
  pump(name);
}

std::optional<LockMode> LockCache::cached_mode(const ResourceName& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? std::nullopt : it->second.granted;
}

int LockCache::users(const ResourceName& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? 0 : it->second.users;
}

std::optional<LockId> LockCache::lock_id(const ResourceName& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? std::nullopt : it->second.id;
}

void LockCache::on_blocking(const ResourceName& name, LockMode waiting) {
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  if (!e.blocked || *e.blocked < waiting) e.blocked = waiting;
  pump(name);
}

void LockCache::pump(const ResourceName& name) {
  Entry& e = entries_.at(name);
  while (!e.busy) {
    // 1. Someone elsewhere waits: give up as soon as our users are done.
    if (e.blocked && e.granted && !compatible(*e.granted, *e.blocked)) {
      if (e.users > 0) {
        // Users that pin the lock must hear of it, however the blocking state arose.
        if (blocked_ && !e.users_told) {
          e.users_told = true;
          blocked_(name);
        }
        return;
      }
      const LockMode target = *e.blocked == LockMode::kPR && *e.granted == LockMode::kEX
                                  ? LockMode::kPR
                                  : LockMode::kNL;
      e.busy = true;
      flush_(name, target, [this, name, target] {
        Entry& entry = entries_.at(name);
        const Status st =
            manager_.convert(*entry.id, target, {}, [this, name, target](LockId, const Status& s) {
              Entry& en = entries_.at(name);
              SHAREDFS_CHECK(s.is_ok(), "a down-convert cannot fail");
              en.granted = target;
              en.blocked.reset();
              en.users_told = false;
              en.stalled = false;
              en.busy = false;
              pump(name);
            });
        SHAREDFS_CHECK(st.is_ok(), "down-convert of a cached lock refused");
      });
      return;
    }
    e.blocked.reset();  // nothing of ours is in the way (any more)
    e.users_told = false;
    if (e.waiters.empty()) return;
    Waiter& w = e.waiters.front();
    if (e.granted && *e.granted >= w.mode) {
      ++e.users;
      Done done = std::move(w.done);
      e.waiters.pop_front();
      done(Status::ok());
      continue;
    }
    if (e.stalled) return;  // waiting for the blocking callback that breaks the deadlock
    // 2. Ask for a stronger mode: a new lock or an up-convert.
    e.busy = true;
    const LockMode mode = w.mode;
    auto on_done = [this, name, mode](LockId id, const Status& s) {
      Entry& en = entries_.at(name);
      en.busy = false;
      if (s.is_ok()) {
        en.id = id;
        en.granted = mode;
        // Those who asked get the grant even if another node already waits: otherwise a
        // busy lock could ping-pong away before any local user ran.
        while (!en.waiters.empty() && en.waiters.front().mode <= mode) {
          ++en.users;
          Done done = std::move(en.waiters.front().done);
          en.waiters.pop_front();
          done(Status::ok());
        }
      } else if (en.id) {
        en.stalled = true;  // conversion deadlock: another node converts; we give up first
      }
      pump(name);
    };
    if (!e.id) {
      manager_.lock(
          name, mode, {}, [this, name](LockMode waiting) { on_blocking(name, waiting); }, on_done);
    } else {
      const Status st = manager_.convert(*e.id, mode, {}, on_done);
      SHAREDFS_CHECK(st.is_ok(), "up-convert of a cached lock refused");
    }
    return;
  }
}

std::array<size_t, 3> LockCache::count_by_mode() const {
  std::array<size_t, 3> out{};
  for (const auto& [name, e] : entries_) {
    if (e.granted) ++out[static_cast<size_t>(*e.granted)];
  }
  return out;
}

std::vector<LockCache::CachedLock> LockCache::snapshot(bool busy_only, size_t limit,
                                                       size_t* total) const {
  std::vector<CachedLock> out;
  if (total != nullptr) *total = entries_.size();
  for (const auto& [name, e] : entries_) {
    const bool busy = e.busy || e.blocked.has_value() || !e.waiters.empty();
    if (busy_only && !busy) continue;
    if (out.size() >= limit) break;
    out.push_back({name, e.granted, e.users, e.waiters.size(), e.blocked, e.busy});
  }
  return out;
}

}  // namespace sharedfs::dlm
