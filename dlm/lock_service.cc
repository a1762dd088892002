#include "dlm/lock_service.h"

#include <fmt/format.h>

#include <array>
#include <condition_variable>
#include <mutex>
#include <unordered_map>

#include "common/types.h"

namespace sharedfs::dlm {

std::string_view lock_mode_name(LockMode mode) {
  switch (mode) {
    case LockMode::kNL:
      return "NL";
    case LockMode::kPR:
      return "PR";
    case LockMode::kEX:
      return "EX";
  }
  return "?";
}

bool compatible(LockMode a, LockMode b) {
  if (a == LockMode::kNL || b == LockMode::kNL) return true;
  return a == LockMode::kPR && b == LockMode::kPR;
}

std::string_view lock_space_name(LockSpace space) {
  switch (space) {
    case LockSpace::kRename:
      return "rename";
    case LockSpace::kInode:
      return "inode";
    case LockSpace::kOrphanList:
      return "orphans";
    case LockSpace::kAllocGroup:
      return "ag";
    case LockSpace::kSlotTable:
      return "slots";
    case LockSpace::kOpen:
      return "open";
  }
  return "?";
}

std::string LockName::to_string() const { return fmt::format("{}:{}", lock_space_name(space), id); }

Lock::Lock(Lock&& other) noexcept
    : service_(other.service_), name_(other.name_), mode_(other.mode_) {
  other.service_ = nullptr;
}

Lock& Lock::operator=(Lock&& other) noexcept {
  if (this != &other) {
    reset();
    service_ = other.service_;
    name_ = other.name_;
    mode_ = other.mode_;
    other.service_ = nullptr;
  }
  return *this;
}

void Lock::reset() {
  if (service_ != nullptr) {
    service_->unlock(name_, mode_);
    service_ = nullptr;
  }
}

namespace {

struct NameHash {
  size_t operator()(const LockName& n) const {
    return std::hash<uint64_t>()(n.id * 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(n.space));
  }
};

// Readers-writer state per resource, kept only while somebody holds or waits for it.
// Writers waiting block new readers, so a stream of readers cannot starve a writer.
class LocalLockService final : public LockService {
 public:
  Result<Lock> lock(LockName name, LockMode mode) override {
    if (mode == LockMode::kNL) return make_lock(name, mode);
    Shard& s = shard(name);
    std::unique_lock guard(s.mu);
    State& st = s.states[name];
    ++st.users;
    if (mode == LockMode::kEX) {
      ++st.ex_waiting;
      s.cv.wait(guard, [&] { return !st.ex_held && st.readers == 0; });
      --st.ex_waiting;
      st.ex_held = true;
    } else {
      s.cv.wait(guard, [&] { return !st.ex_held && st.ex_waiting == 0; });
      ++st.readers;
    }
    return make_lock(name, mode);
  }

  Result<Lock> try_lock(LockName name, LockMode mode) override {
    SHAREDFS_CHECK(name.space == LockSpace::kOpen, "try_lock is for open locks only");
    if (mode == LockMode::kNL) return make_lock(name, mode);
    Shard& s = shard(name);
    std::lock_guard guard(s.mu);
    State& st = s.states[name];
    const bool free = !st.ex_held && st.ex_waiting == 0 && (mode == LockMode::kPR || st.readers == 0);
    if (!free) {
      if (st.users == 0) s.states.erase(name);
      return make_status(Code::kBusy, "{} is held", name.to_string());
    }
    ++st.users;
    if (mode == LockMode::kEX) {
      st.ex_held = true;
    } else {
      ++st.readers;
    }
    return make_lock(name, mode);
  }

 private:
  struct State {
    int readers = 0;
    int ex_waiting = 0;
    bool ex_held = false;
    int users = 0;  // holders and waiters: the entry is erased when this reaches 0
  };
  struct Shard {
    std::mutex mu;
    std::condition_variable cv;
    std::unordered_map<LockName, State, NameHash> states;
  };

  void unlock(const LockName& name, LockMode mode) override {
    if (mode == LockMode::kNL) return;
    Shard& s = shard(name);
    std::lock_guard guard(s.mu);
    auto it = s.states.find(name);
    SHAREDFS_CHECK(it != s.states.end(), "unlock of a lock not held");
    State& st = it->second;
    if (mode == LockMode::kEX) {
      SHAREDFS_CHECK(st.ex_held, "EX unlock without EX held");
      st.ex_held = false;
    } else {
      SHAREDFS_CHECK(st.readers > 0, "PR unlock without PR held");
      --st.readers;
    }
    if (--st.users == 0) s.states.erase(it);
    s.cv.notify_all();
  }

  Shard& shard(const LockName& name) { return shards_[NameHash()(name) % shards_.size()]; }

  std::array<Shard, 64> shards_;
};

}  // namespace

std::unique_ptr<LockService> make_local_lock_service() {
  return std::make_unique<LocalLockService>();
}

}  // namespace sharedfs::dlm
