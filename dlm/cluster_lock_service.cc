#include "dlm/cluster_lock_service.h"

#include <future>

#include <spdlog/spdlog.h>

namespace sharedfs::dlm {

namespace {
LockName lock_name_of(const ResourceName& r) {
  return LockName{static_cast<LockSpace>(r.type), r.id};
}
Status withdrawn_status(const LockName& name) {
  return make_status(Code::kIoError, "{}: this node withdrew from the cluster", name.to_string());
}
// How often a thread waiting for the DLM looks whether the node withdrew meanwhile.
constexpr auto kWithdrawPoll = std::chrono::milliseconds(50);
}  // namespace

void ClusterLockService::withdraw() {
  {
    std::lock_guard l(mu_);
    withdrawn_ = true;
  }
  local_cv_.notify_all();
}

Result<std::unique_ptr<ClusterLockService>> ClusterLockService::start(DlmNodeOptions options,
                                                                      FlushHook flush) {
  std::unique_ptr<ClusterLockService> svc(new ClusterLockService());
  svc->flush_ = std::move(flush);
  svc->flusher_ = std::thread([s = svc.get()] { s->flusher(); });
  ClusterLockService* self = svc.get();
  auto node = DlmNode::start(
      std::move(options),
      [self](const ResourceName& name, LockMode new_mode, std::function<void()> done) {
        // On the driver thread: hand the flush over, come back through post().
        std::lock_guard lock(self->mu_);
        self->flushes_.push_back([self, name, new_mode, done = std::move(done)] {
          std::optional<ValueBlockBytes> bytes;
          if (self->flush_) bytes = self->flush_(lock_name_of(name), new_mode);
          self->node_->post([name, bytes, done](LockManager& m, LockCache& cache) {
            // Only an EX holder writes back; the LockCache converts down after done().
            const auto id = cache.lock_id(name);
            if (bytes && id && m.granted_mode(*id) == LockMode::kEX) {
              if (auto st = m.set_value_block(*id, *bytes); !st) {
                spdlog::error("value block of {}: {}", name.to_string(), st.to_string());
              }
            }
            done();
          });
        });
        self->flush_cv_.notify_one();
      },
      [self](const ResourceName& name) { self->on_blocked(name); });
  if (!node.is_ok()) return node.status();
  svc->node_ = std::move(node).value();
  svc->uncached_gate_ = make_dlm_lock_gate(*svc->node_);
  return svc;
}

ClusterLockService::~ClusterLockService() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  flush_cv_.notify_all();
  flusher_.join();
  if (withdrawn_ || !uncached_gate_->wait_idle(std::chrono::seconds(1))) {
    // Requests in flight that nobody will answer (we withdrew, or left with some still
    // going): the gate is left to the process's exit rather than waited for forever (its
    // completions never run once node_ is gone).
    (void)uncached_gate_.release();
  }
  uncached_gate_.reset();
  node_.reset();
}

void ClusterLockService::flusher() {
  std::unique_lock lock(mu_);
  for (;;) {
    flush_cv_.wait(lock, [&] { return stop_ || !flushes_.empty(); });
    if (stop_) return;
    auto job = std::move(flushes_.front());
    flushes_.pop_front();
    lock.unlock();
    job();
    lock.lock();
  }
}

Status ClusterLockService::leave(std::chrono::milliseconds timeout) {
  if (!withdrawn_ && !uncached_gate_->wait_idle(timeout)) {
    spdlog::warn("node {}: open-lock requests still in flight when leaving the cluster",
                 node_->self().id.value);
  }
  return node_->leave(timeout);
}

uint64_t ClusterLockService::fast_path_hits() const {
  std::lock_guard lock(mu_);
  return fast_hits_;
}

Result<Lock> ClusterLockService::try_lock(LockName name, LockMode mode) {
  SHAREDFS_CHECK(name.space == LockSpace::kOpen, "try_lock is for open locks only");
  if (withdrawn_) return withdrawn_status(name);
  if (mode == LockMode::kNL) return make_lock(name, mode);
  return lock_uncached(name, mode, /*try_only=*/true);
}

Result<Lock> ClusterLockService::lock_uncached(LockName name, LockMode mode, bool try_only) {
  const ResourceName r = ResourceName::from(name);
  std::unique_lock l(mu_);
  for (;;) {
    Uncached& u = uncached_[r];
    if (!u.raising && u.holders == 0) {
      u.raising = true;
      break;
    }
    if (!u.raising && mode == LockMode::kPR && u.mode == LockMode::kPR) {
      ++u.holders;  // our own threads share a PR
      return make_lock(name, mode);
    }
    if (try_only && !u.raising) {
      return make_status(Code::kBusy, "{} is held on this node", name.to_string());
    }
    if (withdrawn_) return withdrawn_status(name);
    local_cv_.wait(l);
  }
  l.unlock();
  Status st = uncached_gate_->raise(r, mode, /*wait=*/!try_only,
                                    [this] { return withdrawn_.load(); });
  if (!st && withdrawn_) st = withdrawn_status(name);
  if (!st) uncached_gate_->lower(r, LockMode::kNL, /*wait=*/false);
  l.lock();
  if (st) {
    Uncached& u = uncached_[r];
    u.raising = false;
    u.mode = mode;
    u.holders = 1;
  } else {
    uncached_.erase(r);
  }
  l.unlock();
  local_cv_.notify_all();
  if (!st) return st;
  return make_lock(name, mode);
}

void ClusterLockService::unlock_uncached(const ResourceName& r) {
  {
    std::lock_guard l(mu_);
    auto it = uncached_.find(r);
    SHAREDFS_CHECK(it != uncached_.end() && it->second.holders > 0,
                   "unlock of an uncached lock not held");
    if (--it->second.holders > 0) return;
    uncached_.erase(it);
    // Under mu_, so a later raise for the same name is asked of the gate after this.
    uncached_gate_->lower(r, LockMode::kNL, /*wait=*/false);
  }
  local_cv_.notify_all();
}

// An AG's lock keeps other nodes out of its header and bitmaps; this node's threads are
// ordered by the allocator's own mutex per AG, and a change holds its AG locks for its whole
// length (data writes included), so exclusion between them here would serialise the node.
bool ClusterLockService::shared_between_threads(const LockName& name) {
  return name.space == LockSpace::kAllocGroup;
}

Result<Lock> ClusterLockService::lock(LockName name, LockMode mode) {
  if (mode == LockMode::kNL) return make_lock(name, mode);  // excludes nothing, anywhere
  const auto start = std::chrono::steady_clock::now();
  auto lock = lock_waiting(name, mode);
  if (lock) wait_latency_[static_cast<size_t>(mode)].observe(std::chrono::steady_clock::now() - start);
  return lock;
}

Result<Lock> ClusterLockService::lock_waiting(LockName name, LockMode mode) {
  if (withdrawn_) return withdrawn_status(name);
  if (name.space == LockSpace::kOpen) return lock_uncached(name, mode, /*try_only=*/false);
  const ResourceName r = ResourceName::from(name);
  std::unique_lock l(mu_);
  Entry& e = entries_[r];  // std::map: stable while other entries come and go
  if (e.cache_users > 0 && e.mode >= mode && !e.revoking) {
    ++e.local_users;
    ++fast_hits_;
  } else {
    // Slow path: one more LockCache user. The grant counts us as a local user on the
    // driver thread, so a revocation in between cannot take the lock from under us.
    l.unlock();
    // Shared with the completion: a withdrawn node stops waiting before the DLM answers.
    auto granted = std::make_shared<std::promise<Status>>();
    node_->post([this, r, mode, granted](LockManager& m, LockCache& cache) {
      cache.acquire(r, mode, [this, r, mode, granted, &m, &cache](const Status& s) {
        if (s.is_ok()) {
          // The value block as granted: read here, on the driver thread, so that the
          // fast path never needs the driver for it.
          std::optional<ValueBlockBytes> value;
          if (const auto id = cache.lock_id(r)) {
            if (auto lvb = m.value_block(*id); lvb && lvb->valid) value = lvb->bytes;
          }
          std::lock_guard g(mu_);
          Entry& en = entries_[r];
          ++en.cache_users;
          ++en.local_users;
          en.mode = std::max(en.mode, mode);
          en.value = value;
        }
        granted->set_value(s);
      });
    });
    auto done = granted->get_future();
    while (done.wait_for(kWithdrawPoll) != std::future_status::ready) {
      if (withdrawn_) return withdrawn_status(name);
    }
    RETURN_IF_ERROR(done.get());
    l.lock();
  }
  // Exclusion between our threads; waiting EX takers hold off new PR takers. A withdrawn
  // node's waiters give up (what they counted stays counted: nothing is used any more).
  if (mode == LockMode::kEX && !shared_between_threads(name)) {
    ++e.writers_waiting;
    local_cv_.wait(l, [&] { return withdrawn_ || (!e.writer && e.readers == 0); });
    --e.writers_waiting;
    if (withdrawn_) return withdrawn_status(name);
    e.writer = true;
  } else {
    local_cv_.wait(l, [&] { return withdrawn_ || (!e.writer && e.writers_waiting == 0); });
    if (withdrawn_) return withdrawn_status(name);
    ++e.readers;
  }
  return make_lock(name, mode);
}

std::optional<ValueBlockBytes> ClusterLockService::value_block(const Lock& lock) const {
  std::lock_guard l(mu_);
  auto it = entries_.find(ResourceName::from(lock.name()));
  SHAREDFS_CHECK(lock.held() && it != entries_.end() && it->second.local_users > 0,
                 "value block of a cluster lock not held");
  return it->second.value;
}

int ClusterLockService::users_to_release(Entry& e) {
  if (e.local_users > 0) return 0;
  int n = 0;
  if (e.revoking) {
    n = e.cache_users;  // another node waits: let go entirely
    e.cache_users = 0;
    e.mode = LockMode::kNL;
    e.revoking = false;
  } else if (e.cache_users > 1) {
    n = e.cache_users - 1;  // keep one pinned for the fast path
    e.cache_users = 1;
  }
  return n;
}

void ClusterLockService::release_cache_users(const ResourceName& name, int count) {
  if (count == 0) return;
  node_->post([name, count](LockManager&, LockCache& cache) {
    for (int i = 0; i < count; ++i) cache.release(name);
  });
}

void ClusterLockService::unlock(const LockName& name, LockMode mode) {
  if (mode == LockMode::kNL) return;
  const ResourceName r = ResourceName::from(name);
  if (name.space == LockSpace::kOpen) return unlock_uncached(r);
  int release = 0;
  {
    std::lock_guard l(mu_);
    auto it = entries_.find(r);
    SHAREDFS_CHECK(it != entries_.end() && it->second.local_users > 0,
                   "unlock of a cluster lock not held");
    Entry& e = it->second;
    if (mode == LockMode::kEX && !shared_between_threads(name)) {
      e.writer = false;
    } else {
      --e.readers;
    }
    --e.local_users;
    release = users_to_release(e);
  }
  local_cv_.notify_all();
  release_cache_users(r, release);
}

void ClusterLockService::on_blocked(const ResourceName& name) {
  // On the driver thread, from inside the LockCache: release through post() so the
  // LockCache is not re-entered while it handles the blocking callback.
  int release = 0;
  {
    std::lock_guard l(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || it->second.cache_users == 0) return;
    it->second.revoking = true;
    release = users_to_release(it->second);
  }
  release_cache_users(name, release);
}

}  // namespace sharedfs::dlm
