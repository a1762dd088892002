// `sharedfs status`: what an operator looks at when a node failed (docs/failure.md): each
// configured node's state, its disk heartbeat and its reservation key, and who holds the
// device's reservation.
//
// The states come from the shared device (heartbeat blocks watched over two intervals, the
// reservation report), so it works from any host that sees the device, with or without a
// mount. Where a daemon of the cluster runs on this host, every node's daemon is asked too
// (tools/node_report.h): version, journal use, recovery in progress. A withdrawn node cannot write to the device any more: its daemon says so in a
// file on its own host (node_state_path), which status reads where it finds one.
#pragma once

#include <cstdint>
#include <string>

namespace sharedfs::tools {

// Where a daemon of this host records that it withdrew: /run/sharedfs/cluster-<id>/node-<N>.
std::string node_state_path(uint64_t cluster_id, uint32_t node);

// `device` empty: the device of the first sharedfs mount of this cluster in /proc/mounts.
// Returns the exit code (0, or 1 with a message).
// With `as_json`, one JSON object: the cluster, the reservation, and per node its state,
// heartbeat, key and (where its daemon answers) what it says of itself.
int run_status(const std::string& config_path, const std::string& device, bool as_json = false);

}  // namespace sharedfs::tools
