#include "dlm/membership.h"

#include <fmt/format.h>

#include <cassert>

namespace sharedfs::dlm {

std::string Member::to_string() const { return fmt::format("{}.{}", id.value, incarnation); }

NodeId master_of(const ResourceName& name, std::span<const Member> members) {
  assert(!members.empty());
  const uint64_t h = name.hash();
  NodeId best{};
  uint64_t best_score = 0;
  bool first = true;
  for (const Member& m : members) {
    // One multiply-xorshift round of (resource hash, node id): independent scores per node.
    uint64_t x = h ^ (static_cast<uint64_t>(m.id.value) * 0xD6E8FEB86659FD93ull);
    x = (x ^ (x >> 32)) * 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    if (first || x > best_score || (x == best_score && m.id < best)) {
      best = m.id;
      best_score = x;
      first = false;
    }
  }
  return best;
}

}  // namespace sharedfs::dlm
