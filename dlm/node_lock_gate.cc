// The node-level DLM lock per resource; see node_lock_gate.h.
#include "dlm/node_lock_gate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>

#include "dlm/dlm_node.h"

namespace sharedfs::dlm {
namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);

class LocalGate final : public NodeLockGate {
 public:
  Status raise(const ResourceName&, LockMode, bool, const std::function<bool()>&) override {
    return Status::ok();
  }
  void lower(const ResourceName&, LockMode, bool) override {}
  bool wait_idle(std::chrono::milliseconds) override { return true; }
};

// One DLM lock per resource, requested on the driver thread. A request in flight marks
// the entry busy; whoever wants something else waits for it, except lower(), which only
// records what is wanted: the completion of the request in flight lowers afterwards.
class DlmGate final : public NodeLockGate {
 public:
  explicit DlmGate(DlmNode& node) : node_(node) {}

  // Requests in flight complete into entries_: wait for them. An owner whose requests can
  // no longer complete (the node left or withdrew) asks wait_idle() first and, if it says
  // no, leaves the gate undestroyed (ClusterLockService).
  ~DlmGate() override {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return idle(); });
  }

  bool wait_idle(std::chrono::milliseconds timeout) override {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, timeout, [&] { return idle(); });
  }

  Status raise(const ResourceName& r, LockMode mode, bool wait,
               const std::function<bool()>& interrupted) override {
    std::unique_lock l(mu_);
    Entry* e = &entries_[r];
    e->wanted = std::max(e->wanted, mode);
    while (e->busy) {
      if (interrupted && interrupted()) return lock_refused(EINTR, "interrupted");
      cv_.wait_for(l, kPoll);
      e = &entries_[r];
    }
    if (e->granted >= mode) return Status::ok();
    // Our own request: it completes into `result`, unless we stop waiting first.
    auto result = std::make_shared<std::optional<Status>>();
    start_request(r, *e, mode, !wait, result);
    while (!result->has_value()) {
      if (interrupted && interrupted()) {
        // The request goes on; its completion lowers the lock again to what is wanted.
        return lock_refused(EINTR, "interrupted while waiting for another node's lock");
      }
      cv_.wait_for(l, kPoll);
    }
    return **result;
  }

  void lower(const ResourceName& r, LockMode mode, bool wait) override {
    std::unique_lock l(mu_);
    auto it = entries_.find(r);
    if (it == entries_.end()) return;
    it->second.wanted = mode;
    if (it->second.busy) return;  // the request in flight lowers when it completes
    settle(r, it->second);
    if (!wait) return;
    cv_.wait(l, [&] {
      auto e = entries_.find(r);
      return e == entries_.end() || !e->second.busy;
    });
  }

 private:
  struct Entry {
    std::optional<LockId> id;
    LockMode granted = LockMode::kNL;
    LockMode wanted = LockMode::kNL;  // what the table needs; settle() lowers to it
    bool busy = false;
  };


  // mu_ held. Lock (no id yet) or up-convert to `mode`.
  void start_request(const ResourceName& r, Entry& e, LockMode mode, bool try_only,
                     std::shared_ptr<std::optional<Status>> result) {
    e.busy = true;
    const std::optional<LockId> id = e.id;
    node_.post([this, r, id, mode, try_only, result](LockManager& lm, LockCache&) {
      auto done = [this, r, mode, result](LockId got, const Status& s) {
        std::lock_guard l(mu_);
        Entry& en = entries_[r];
        en.busy = false;
        if (s.is_ok()) {
          en.id = got;
          en.granted = mode;
        } else if (!en.id || en.granted == LockMode::kNL) {
          en.id.reset();  // a refused first lock leaves nothing behind
        }
        *result = s;
        settle(r, en);
        cv_.notify_all();
      };
      if (!id) {
        lm.lock(r, mode, LockFlags{try_only}, {}, done);
      } else if (auto st = lm.convert(*id, mode, LockFlags{try_only}, done); !st) {
        done(*id, st);
      }
    });
  }

  // mu_ held, entry not busy: gives up what nobody needs any more.
  void settle(const ResourceName& r, Entry& e) {
    if (e.busy || !e.id || e.wanted >= e.granted) {
      if (!e.id && !e.busy && e.wanted == LockMode::kNL) entries_.erase(r);
      return;
    }
    e.busy = true;
    const LockId id = *e.id;
    const LockMode to = e.wanted;
    node_.post([this, r, id, to](LockManager& lm, LockCache&) {
      auto done = [this, r, to](LockId, const Status& s) {
        std::lock_guard l(mu_);
        Entry& en = entries_[r];
        en.busy = false;
        if (!s.is_ok()) spdlog::warn("advisory lock {}: lowering: {}", r.to_string(), s.to_string());
        en.granted = to;
        if (to == LockMode::kNL) en.id.reset();
        settle(r, en);
        cv_.notify_all();
      };
      Status st = to == LockMode::kNL ? lm.unlock(id, done) : lm.convert(id, to, LockFlags{}, done);
      if (!st) done(id, st);
    });
  }

  DlmNode& node_;
  std::mutex mu_;
  std::condition_variable cv_;
  // With mu_ held: no request in flight.
  bool idle() const {
    return std::none_of(entries_.begin(), entries_.end(), [](const auto& e) { return e.second.busy; });
  }
  std::map<ResourceName, Entry> entries_;  // GUARDED_BY(mu_)
};

}  // namespace

std::unique_ptr<NodeLockGate> make_dlm_lock_gate(DlmNode& node) {
  return std::make_unique<DlmGate>(node);
}

std::unique_ptr<NodeLockGate> make_local_lock_gate() { return std::make_unique<LocalGate>(); }

}  // namespace sharedfs::dlm
