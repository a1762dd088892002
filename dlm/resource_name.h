// dlm/resource_name.h — what a DLM lock is taken on, and the value block that travels with it.
//
// A resource is named by a type (the file system uses dlm::LockSpace values), a 64-bit id
// and a short tag that tells apart several locks on one object (an inode's "meta" lock and
// its "open" lock). Names are plain values: compare, hash and copy freely.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dlm/lock_service.h"

namespace sharedfs::dlm {

inline constexpr size_t kTagSize = 8;

struct ResourceName {
  uint8_t type = 0;
  uint64_t id = 0;
  std::array<char, kTagSize> tag{};  // zero-padded; not NUL-terminated when full

  // `tag` longer than kTagSize is cut (asserted in debug builds: a caller bug).
  static ResourceName make(uint8_t type, uint64_t id, std::string_view tag = {});
  static ResourceName from(const LockName& name, std::string_view tag = {}) {
    return make(static_cast<uint8_t>(name.space), name.id, tag);
  }

  std::string_view tag_view() const;
  std::string to_string() const;
  // Stable across processes and builds: the master of a resource is chosen from it.
  uint64_t hash() const;
  auto operator<=>(const ResourceName&) const = default;
};

// Lock value block: a few bytes the holders of a resource share through the lock itself
// (an allocation group's free count, an inode's size). A grant in PR or EX hands the holder
// the master's copy; an EX holder's copy is written back when it converts down or unlocks.
// `valid` is false when nobody can vouch for the bytes (never written, or an EX holder
// died before writing back): the holder must rebuild them from the device. `seq` counts
// writes; recovery keeps the highest.
struct LockValueBlock {
  ValueBlockBytes bytes{};
  bool valid = false;
  uint64_t seq = 0;
  bool operator==(const LockValueBlock&) const = default;
};

}  // namespace sharedfs::dlm
