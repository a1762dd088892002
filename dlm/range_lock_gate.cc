// Record locks through the cluster's range tables; see range_lock_gate.h.
#include "dlm/range_lock_gate.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

#include "dlm/dlm_node.h"

namespace sharedfs::dlm {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

class LocalRangeGate final : public RangeLockGate {
 public:
  Status lock(const ResourceName& name, const RecordLock& lock, bool wait,
              const std::function<bool()>& interrupted) override {
    std::unique_lock l(mu_);
    for (;;) {
      auto c = tables_[name].conflict(lock);
      if (!c) break;
      if (!wait) return range_lock_refused(name, c);
      if (interrupted && interrupted()) return range_wait_interrupted(name);
      cv_.wait_for(l, kPoll);
    }
    tables_[name].put(lock);
    return Status::ok();
  }

  Result<std::optional<RecordLock>> test(const ResourceName& name, const RecordLock& want) override {
    std::lock_guard l(mu_);
    return tables_[name].conflict(want);
  }

  void unlock(const ResourceName& name, uint64_t owner, uint64_t start, uint64_t end) override {
    {
      std::lock_guard l(mu_);
      auto it = tables_.find(name);
      if (it == tables_.end()) return;
      it->second.cut(0, owner, start, end);
      if (it->second.empty()) tables_.erase(it);
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<ResourceName, RangeTable> tables_;  // GUARDED_BY(mu_)
};

// Each request waits for its completion from the driver thread in a state of its own,
// shared with the completion: a caller that stops waiting leaves it to the completion.
class DlmRangeGate final : public RangeLockGate {
 public:
  explicit DlmRangeGate(DlmNode& node) : node_(node) {}

  Status lock(const ResourceName& name, const RecordLock& lock, bool wait,
              const std::function<bool()>& interrupted) override {
    auto p = std::make_shared<Pending>();
    p->name = name;
    p->lock = lock;
    node_.post([this, p, wait](LockManager& lm, LockCache&) {
      const uint64_t id = lm.range_lock(p->name, p->lock, wait, completion(p));
      std::lock_guard l(p->mu);
      p->req_id = id;
    });
    std::unique_lock l(p->mu);
    std::optional<std::chrono::steady_clock::time_point> cancelled_at;
    while (!p->status) {
      if (!cancelled_at && interrupted && interrupted()) {
        // The master answers a cancel at once: EINTR, or ok when the grant was on its way.
        cancelled_at = std::chrono::steady_clock::now();
        node_.post([p](LockManager& lm, LockCache&) {
          std::optional<uint64_t> id;
          {
            std::lock_guard pl(p->mu);
            id = p->req_id;
          }
          if (id) lm.range_cancel(*id);
        });
      }
      if (cancelled_at && std::chrono::steady_clock::now() - *cancelled_at > kCancelAnswer) {
        // No answer (the master is unreachable until the next view): stop waiting; a
        // grant that still comes is given back (completion()).
        p->abandoned = true;
        return range_wait_interrupted(name);
      }
      p->cv.wait_for(l, kPoll);
    }
    return *p->status;
  }

  Result<std::optional<RecordLock>> test(const ResourceName& name, const RecordLock& want) override {
    auto p = std::make_shared<Pending>();
    p->name = name;
    p->lock = want;
    node_.post([this, p](LockManager& lm, LockCache&) { lm.range_test(p->name, p->lock, completion(p)); });
    std::unique_lock l(p->mu);
    p->cv.wait(l, [&] { return p->status.has_value(); });
    if (!p->status->is_ok()) return *p->status;
    std::optional<RecordLock> c = p->conflict;
    if (c && c->node != node_.self().id.value) c->pid = 0;
    return c;
  }

  // Returns once the master has the range out (as on one host, another process may take it
  // as soon as the unlock or the close returns), or after kUnlockAnswer: the master is
  // unreachable until the next view, whose rebuild comes from our table, already cut.
  void unlock(const ResourceName& name, uint64_t owner, uint64_t start, uint64_t end) override {
    auto p = std::make_shared<Pending>();
    p->name = name;
    node_.post([this, p, owner, start, end](LockManager& lm, LockCache&) {
      lm.range_unlock(p->name, owner, start, end, completion(p));
    });
    std::unique_lock l(p->mu);
    if (!p->cv.wait_for(l, kUnlockAnswer, [&] { return p->status.has_value(); })) {
      spdlog::warn("record lock unlock on {}: no answer from its master in {} s; going on",
                   name.to_string(), kUnlockAnswer.count());
    }
  }

 private:
  // How long an interrupted wait waits for the master's answer to its cancel.
  static constexpr auto kCancelAnswer = std::chrono::seconds(2);
  static constexpr auto kUnlockAnswer = std::chrono::seconds(5);

  struct Pending {
    ResourceName name;
    RecordLock lock;
    std::mutex mu;
    std::condition_variable cv;
    std::optional<uint64_t> req_id;       // GUARDED_BY(mu)
    std::optional<Status> status;         // GUARDED_BY(mu)
    std::optional<RecordLock> conflict;   // GUARDED_BY(mu)
    bool abandoned = false;               // GUARDED_BY(mu): the caller stopped waiting
  };

  // Runs on the driver thread.
  RangeCompletion completion(std::shared_ptr<Pending> p) {
    return [p, node = &node_](const Status& s, std::optional<RecordLock> c) {
      std::lock_guard l(p->mu);
      p->status = s;
      p->conflict = c;
      p->cv.notify_all();
      // Nobody takes this grant any more: given back, and with it whatever the owner held
      // in the range before (the process was told EINTR, and may ask again).
      if (p->abandoned && s.is_ok()) {
        node->post([name = p->name, r = p->lock](LockManager& lm, LockCache&) {
          lm.range_unlock(name, r.owner, r.start, r.end);
        });
      }
    };
  }

  DlmNode& node_;
};

}  // namespace

std::unique_ptr<RangeLockGate> make_dlm_range_gate(DlmNode& node) {
  return std::make_unique<DlmRangeGate>(node);
}

std::unique_ptr<RangeLockGate> make_local_range_gate() { return std::make_unique<LocalRangeGate>(); }

}  // namespace sharedfs::dlm
