#include "dlm/cluster_lock_service.h"

#include <future>

namespace sharedfs::dlm {

namespace {
LockName lock_name_of(const ResourceName& r) {
  return LockName{static_cast<LockSpace>(r.type), r.id};
}
}  // namespace

Result<std::unique_ptr<ClusterLockService>> ClusterLockService::start(DlmNodeOptions options,
                                                                      FlushHook flush) {
  std::unique_ptr<ClusterLockService> svc(new ClusterLockService());
  svc->flush_ = std::move(flush);
  svc->local_ = make_local_lock_service();
  svc->flusher_ = std::thread([s = svc.get()] { s->flusher(); });
  ClusterLockService* self = svc.get();
  auto node = DlmNode::start(std::move(options), [self](const ResourceName& name, LockMode new_mode,
                                                        std::function<void()> done) {
    // On the driver thread: hand the flush over, come back through post().
    std::lock_guard lock(self->mu_);
    self->flushes_.push_back([self, name, new_mode, done = std::move(done)] {
      if (self->flush_) self->flush_(lock_name_of(name), new_mode);
      self->node_->post([done](LockManager&, LockCache&) { done(); });
    });
    self->cv_.notify_one();
  });
  if (!node.is_ok()) return node.status();
  svc->node_ = std::move(node).value();
  return svc;
}

ClusterLockService::~ClusterLockService() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  flusher_.join();
  node_.reset();
}

void ClusterLockService::flusher() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !flushes_.empty(); });
    if (stop_) return;
    auto job = std::move(flushes_.front());
    flushes_.pop_front();
    lock.unlock();
    job();
    lock.lock();
  }
}

Result<Lock> ClusterLockService::lock(LockName name, LockMode mode) {
  const ResourceName r = ResourceName::from(name);
  std::promise<Status> granted;
  node_->post([&](LockManager&, LockCache& cache) {
    cache.acquire(r, mode, [&](const Status& s) { granted.set_value(s); });
  });
  RETURN_IF_ERROR(granted.get_future().get());
  auto local = local_->lock(name, mode);
  if (!local.is_ok()) {
    node_->post([r](LockManager&, LockCache& cache) { cache.release(r); });
    return local.status();
  }
  {
    std::lock_guard guard(mu_);
    held_.emplace(std::pair(name, mode), std::move(local).value());
  }
  return make_lock(name, mode);
}

void ClusterLockService::unlock(const LockName& name, LockMode mode) {
  Lock local;
  {
    std::lock_guard guard(mu_);
    auto it = held_.find(std::pair(name, mode));
    SHAREDFS_CHECK(it != held_.end(), "unlock of a cluster lock not held");
    local = std::move(it->second);
    held_.erase(it);
  }
  local.reset();
  const ResourceName r = ResourceName::from(name);
  node_->post([r](LockManager&, LockCache& cache) { cache.release(r); });
}

}  // namespace sharedfs::dlm
