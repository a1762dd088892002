// dlm/lock_service.h — the lock interface the file system takes every metadata lock
// through (DESIGN.md §4).
//
// A lock names a resource (an inode, an allocation group, the rename lock, ...) and a mode:
// NL (held for nothing but the name), PR (shared: may read and cache), EX (may change).
// PR is compatible with PR; EX with nothing but NL. Callers take several locks in the
// fixed global order of docs/locking.md; nothing detects deadlocks.
//
// Single node, the LocalLockService serves these locks inside the process. The cluster's
// DLM (issue "dlm") implements the same interface and adds blocking callbacks: before a
// cached lock is given up the holder writes back and drops what the lock covers.
//
// Thread-safety: all methods may be called from any thread. A Lock is a move-only RAII
// guard; destroying it releases the lock.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"

namespace sharedfs::dlm {

enum class LockMode : uint8_t { kNL = 0, kPR = 1, kEX = 2 };
std::string_view lock_mode_name(LockMode mode);
// Whether `a` held by one owner lets another owner hold `b`.
bool compatible(LockMode a, LockMode b);

// What a lock covers. The order of the enumerators is part of the global lock order
// (docs/locking.md): a thread holding a lock of one space takes only locks of later spaces,
// and within one space (inodes) ascending ids unless a documented rule says otherwise.
enum class LockSpace : uint8_t {
  kRename = 0,      // id 0: directory renames that move a directory (one cluster-wide)
  kInode = 1,       // id: inode number. Covers the inode, its mapping, its entries, xattrs
  kOrphanList = 2,  // id: slot. Covers the slot's orphan-list block and chain links
  // id: AG index. Covers the AG header and bitmap. EX excludes other nodes; the cluster
  // service shares it between this node's threads (the allocator orders them per AG).
  kAllocGroup = 3,
  kSlotTable = 4,   // id 0: the slot table
  // id: inode number. Held PR while this node's kernel may use the inode (lookup count
  // above zero); EX, only by try_lock, to free an unlinked inode nobody uses. Never cached:
  // a node that lets go of it lets go at the DLM at once. Taken under the inode's lock.
  kOpen = 5,
};
std::string_view lock_space_name(LockSpace space);

struct LockName {
  LockSpace space = LockSpace::kInode;
  uint64_t id = 0;
  auto operator<=>(const LockName&) const = default;
  std::string to_string() const;
};

class LockService;

// The bytes of a lock's value block (LockValueBlock, dlm/resource_name.h): a few bytes
// that travel with a cached lock from node to node, such as an allocation group's counts.
inline constexpr size_t kLvbSize = 32;
using ValueBlockBytes = std::array<uint8_t, kLvbSize>;

class Lock {
 public:
  Lock() = default;
  Lock(Lock&& other) noexcept;
  Lock& operator=(Lock&& other) noexcept;
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  ~Lock() { reset(); }

  bool held() const { return service_ != nullptr; }
  const LockName& name() const { return name_; }
  LockMode mode() const { return mode_; }
  // Releases now (the destructor does the same).
  void reset();

 private:
  friend class LockService;
  Lock(LockService* service, LockName name, LockMode mode)
      : service_(service), name_(name), mode_(mode) {}
  LockService* service_ = nullptr;
  LockName name_;
  LockMode mode_ = LockMode::kNL;
};

class LockService {
 public:
  virtual ~LockService() = default;
  // Waits until `name` can be held in `mode` and returns the guard. Fails only when the
  // node can no longer take locks (withdrawn, shut down).
  virtual Result<Lock> lock(LockName name, LockMode mode) = 0;
  // Like lock(), but kBusy instead of waiting when the lock cannot be had at once. Only for
  // spaces that are never cached (kOpen): a cached lock is "held" by a node that merely
  // used it once, so an answer would mean nothing.
  virtual Result<Lock> try_lock(LockName name, LockMode mode) = 0;
  // The value block of a lock the caller holds, as the DLM handed it to this node with the
  // grant; nullopt when nobody vouches for it (never written, or the last EX holder died
  // before writing it back): the caller rebuilds what it caches from the device. Writing
  // it back is what the cluster service's flush hook returns (cluster_lock_service.h). Locks of one
  // process carry no values: nothing needs to travel, so this is always nullopt there.
  virtual std::optional<ValueBlockBytes> value_block(const Lock& lock) const {
    (void)lock;
    return std::nullopt;
  }

 protected:
  Lock make_lock(LockName name, LockMode mode) { return Lock(this, name, mode); }

 private:
  friend class Lock;
  virtual void unlock(const LockName& name, LockMode mode) = 0;
};

// Locks between the threads of one process: what a node mounted without a cluster uses.
std::unique_ptr<LockService> make_local_lock_service();

}  // namespace sharedfs::dlm
