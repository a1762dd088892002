// dlm/membership.h — who is in the cluster, as the cluster layer hands it to the DLM, and
// which member masters a resource.
//
// A member is a node id plus an incarnation (a number that grows each time the node
// starts), so a node that restarts is a new member: locks of its old incarnation are those
// of a departed node. The epoch grows with every change; all nodes see the same list for
// one epoch.
#pragma once

#include <compare>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/types.h"
#include "dlm/resource_name.h"

namespace sharedfs::dlm {

struct Member {
  NodeId id;
  uint64_t incarnation = 0;
  auto operator<=>(const Member&) const = default;
  std::string to_string() const;
};

struct Membership {
  uint64_t epoch = 0;
  std::vector<Member> members;
  bool operator==(const Membership&) const = default;
};

// Rendezvous (highest random weight) hashing: every member scores the resource and the
// highest score masters it. Removing a member moves only the resources it mastered; adding
// one moves only the resources it now wins. Depends on node ids, not incarnations, so a
// restarted node masters what it mastered before. `members` must not be empty.
NodeId master_of(const ResourceName& name, std::span<const Member> members);

}  // namespace sharedfs::dlm
