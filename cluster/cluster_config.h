// cluster/ — the cluster configuration (DESIGN.md §6): which nodes make up the cluster,
// where each one listens, the shared secret that authenticates DLM messages, and the
// heartbeat timing. One TOML file, the same on every host:
//
//   [cluster]
//   name = "prod"                  # recorded on the device by mkfs --cluster-name
//   id = 42                        # must equal the device's cluster id (mkfs --cluster-id)
//   secret = "at least 16 bytes"   # or: secret_file = "/etc/sharedfs/secret"
//   heartbeat_interval_ms = 500    # optional
//   heartbeat_timeout_ms = 5000    # optional; a node silent this long is declared dead
//
//   [[node]]
//   id = 1                         # 1..slots; node N writes journal slot N-1
//   name = "host-a"
//   address = "10.0.0.1:7001"      # host:port the node's DLM listens on ([v6]:port too)
//
// Parsing is strict: an unknown key is an error (a typo must not silently fall back to a
// default on one host only).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace sharedfs::cluster {

inline constexpr uint32_t kMaxNodes = 16;
inline constexpr size_t kMinSecretBytes = 16;

struct NodeConfig {
  uint32_t id = 0;
  std::string name;
  std::string host;  // without brackets for IPv6
  uint16_t port = 0;

  // "tcp://host:port" for ZeroMQ.
  std::string endpoint() const;
};

struct ClusterConfig {
  std::string name;
  uint64_t id = 0;
  std::string secret;
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{5000};
  std::vector<NodeConfig> nodes;  // sorted by id

  // The node with this id, or nullptr.
  const NodeConfig* node(uint32_t node_id) const;
};

// Parses TOML text; `source` names it in error messages (a path, "<test>").
Result<ClusterConfig> parse_cluster_config(std::string_view text, std::string_view source);
// Reads and parses a file; a relative secret_file is taken relative to the config's
// directory.
Result<ClusterConfig> load_cluster_config(const std::string& path);

// What a mount checks before it touches the device: the node is in the config, its id
// fits the device's slots, and the config names the cluster the device was made for.
Status check_config_for_mount(const ClusterConfig& config, uint32_t node_id,
                              uint64_t device_cluster_id, uint32_t device_slots);

}  // namespace sharedfs::cluster
