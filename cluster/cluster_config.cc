#include "cluster/cluster_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

namespace sharedfs::cluster {
namespace {

Status config_error(std::string_view source, const std::string& what) {
  return make_status(Code::kInvalidArgument, "{}: {}", source, what);
}

// Refuses keys other than `allowed` in `t` (named `where` in messages).
Status only_known_keys(const toml::table& t, std::initializer_list<std::string_view> allowed,
                       std::string_view where, std::string_view source) {
  for (auto&& [key, value] : t) {
    if (std::find(allowed.begin(), allowed.end(), key.str()) == allowed.end()) {
      return config_error(source, fmt::format("unknown key '{}' in {}", key.str(), where));
    }
  }
  return Status::ok();
}

Result<std::string> string_field(const toml::table& t, std::string_view key, std::string_view where,
                                 std::string_view source, bool required = true) {
  const toml::node* n = t.get(key);
  if (n == nullptr) {
    if (!required) return std::string();
    return config_error(source, fmt::format("{} needs '{}'", where, key));
  }
  if (!n->is_string()) return config_error(source, fmt::format("{}.{} must be a string", where, key));
  return std::string(n->as_string()->get());
}

Result<int64_t> integer_field(const toml::table& t, std::string_view key, std::string_view where,
                              std::string_view source, std::optional<int64_t> fallback = {}) {
  const toml::node* n = t.get(key);
  if (n == nullptr) {
    if (fallback) return *fallback;
    return config_error(source, fmt::format("{} needs '{}'", where, key));
  }
  if (!n->is_integer()) return config_error(source, fmt::format("{}.{} must be an integer", where, key));
  return n->as_integer()->get();
}

// [cluster].id: what mkfs put in the superblock, any 64-bit value but 0. TOML integers are
// signed, so an id above 2^63-1 is written as a string ("0xcafe...", or decimal).
Result<uint64_t> cluster_id_field(const toml::table& t, std::string_view source) {
  const toml::node* n = t.get("id");
  if (n == nullptr) return config_error(source, "[cluster] needs 'id'");
  uint64_t id = 0;
  if (n->is_integer()) {
    const int64_t v = n->as_integer()->get();
    if (v <= 0) {
      return config_error(source, "[cluster].id must be positive (an id above 2^63-1 is written "
                                  "as a string: id = \"0x...\")");
    }
    id = static_cast<uint64_t>(v);
  } else if (n->is_string()) {
    const std::string& text = n->as_string()->get();
    size_t used = 0;
    try {
      id = std::stoull(text, &used, 0);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || text.starts_with('-') || id == 0) {
      return config_error(source, fmt::format("[cluster].id \"{}\" is not a positive 64-bit number "
                                              "(decimal or 0x hex)",
                                              text));
    }
  } else {
    return config_error(source, "[cluster].id must be an integer or a string holding one");
  }
  return id;
}

// "host:port" or "[v6]:port".
Status parse_address(const std::string& address, NodeConfig& node, std::string_view where,
                     std::string_view source) {
  std::string host;
  std::string port;
  if (address.starts_with('[')) {
    const auto close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return config_error(source, fmt::format("{}: address '{}' is not [host]:port", where, address));
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const auto colon = address.rfind(':');
    if (colon == std::string::npos || address.find(':') != colon) {
      return config_error(source, fmt::format("{}: address '{}' is not host:port", where, address));
    }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  const bool digits = !port.empty() && port.size() <= 5 &&
                      std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int p = digits ? std::stoi(port) : 0;
  if (host.empty() || p < 1 || p > 65535) {
    return config_error(source, fmt::format("{}: address '{}' needs a host and a port 1-65535", where, address));
  }
  node.host = host;
  node.port = static_cast<uint16_t>(p);
  return Status::ok();
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_status(Code::kNotFound, "cannot read {}: {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<ClusterConfig> parse(std::string_view text, std::string_view source,
                            const std::filesystem::path& base_dir) {
  toml::table doc;
  try {
    doc = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return config_error(source, fmt::format("line {}: {}", e.source().begin.line, e.description()));
  }
  RETURN_IF_ERROR(only_known_keys(doc, {"cluster", "node"}, "the file", source));
  const toml::table* c = doc["cluster"].as_table();
  if (c == nullptr) return config_error(source, "no [cluster] table");
  RETURN_IF_ERROR(only_known_keys(*c,
                                  {"name", "id", "secret", "secret_file", "heartbeat_interval_ms",
                                   "heartbeat_timeout_ms"},
                                  "[cluster]", source));
  ClusterConfig cfg;
  ASSIGN_OR_RETURN(cfg.name, string_field(*c, "name", "[cluster]", source));
  ASSIGN_OR_RETURN(uint64_t id, cluster_id_field(*c, source));
  cfg.id = static_cast<uint64_t>(id);

  ASSIGN_OR_RETURN(std::string secret, string_field(*c, "secret", "[cluster]", source, false));
  ASSIGN_OR_RETURN(std::string secret_file, string_field(*c, "secret_file", "[cluster]", source, false));
  if (secret.empty() == secret_file.empty()) {
    return config_error(source, "[cluster] needs exactly one of 'secret' and 'secret_file'");
  }
  if (!secret_file.empty()) {
    std::filesystem::path p(secret_file);
    if (p.is_relative()) p = base_dir / p;
    auto s = read_file(p.string());
    if (!s) return config_error(source, s.status().message());
    secret = std::move(*s);
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  }
  if (secret.size() < kMinSecretBytes) {
    return config_error(source, fmt::format("the cluster secret has {} bytes; use at least {}",
                                            secret.size(), kMinSecretBytes));
  }
  cfg.secret = std::move(secret);

  ASSIGN_OR_RETURN(int64_t interval, integer_field(*c, "heartbeat_interval_ms", "[cluster]", source, 500));
  ASSIGN_OR_RETURN(int64_t timeout, integer_field(*c, "heartbeat_timeout_ms", "[cluster]", source, 5000));
  if (interval < 10 || timeout < 2 * interval) {
    return config_error(source, fmt::format("heartbeat_interval_ms {} must be >= 10 and heartbeat_timeout_ms {} at "
                                            "least twice it",
                                            interval, timeout));
  }
  cfg.heartbeat_interval = std::chrono::milliseconds(interval);
  cfg.heartbeat_timeout = std::chrono::milliseconds(timeout);

  const toml::array* nodes = doc["node"].as_array();
  if (nodes == nullptr || nodes->empty()) return config_error(source, "no [[node]] entries");
  if (nodes->size() > kMaxNodes) {
    return config_error(source, fmt::format("{} nodes; at most {}", nodes->size(), kMaxNodes));
  }
  std::set<uint32_t> ids;
  std::set<std::string> names;
  std::set<std::pair<std::string, uint16_t>> addresses;
  for (size_t i = 0; i < nodes->size(); ++i) {
    const toml::table* t = (*nodes)[i].as_table();
    const std::string where = fmt::format("[[node]] #{}", i + 1);
    if (t == nullptr) return config_error(source, where + " is not a table");
    RETURN_IF_ERROR(only_known_keys(*t, {"id", "name", "address"}, where, source));
    NodeConfig n;
    ASSIGN_OR_RETURN(int64_t nid, integer_field(*t, "id", where, source));
    if (nid < 1 || nid > kMaxNodes) {
      return config_error(source, fmt::format("{}: id {} is outside 1..{}", where, nid, kMaxNodes));
    }
    n.id = static_cast<uint32_t>(nid);
    ASSIGN_OR_RETURN(n.name, string_field(*t, "name", where, source));
    ASSIGN_OR_RETURN(std::string address, string_field(*t, "address", where, source));
    RETURN_IF_ERROR(parse_address(address, n, where, source));
    if (!ids.insert(n.id).second) return config_error(source, fmt::format("node id {} appears twice", n.id));
    if (n.name.empty() || !names.insert(n.name).second) {
      return config_error(source, fmt::format("{}: name '{}' is empty or taken", where, n.name));
    }
    if (!addresses.insert({n.host, n.port}).second) {
      return config_error(source, fmt::format("{}: address {} is taken by another node", where, address));
    }
    cfg.nodes.push_back(std::move(n));
  }
  std::sort(cfg.nodes.begin(), cfg.nodes.end(), [](auto& a, auto& b) { return a.id < b.id; });
  return cfg;
}

}  // namespace

std::string NodeConfig::endpoint() const {
  return host.find(':') != std::string::npos ? fmt::format("tcp://[{}]:{}", host, port)
                                              : fmt::format("tcp://{}:{}", host, port);
}

const NodeConfig* ClusterConfig::node(uint32_t node_id) const {
  for (const auto& n : nodes) {
    if (n.id == node_id) return &n;
  }
  return nullptr;
}

Result<ClusterConfig> parse_cluster_config(std::string_view text, std::string_view source) {
  return parse(text, source, std::filesystem::current_path());
}

Result<ClusterConfig> load_cluster_config(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, read_file(path));
  return parse(text, path, std::filesystem::absolute(path).parent_path());
}

Status check_config_for_mount(const ClusterConfig& config, uint32_t node_id,
                              uint64_t device_cluster_id, uint32_t device_slots) {
  if (config.node(node_id) == nullptr) {
    return make_status(Code::kInvalidArgument, "node {} is not in the config of cluster '{}'", node_id,
                       config.name);
  }
  if (config.id != device_cluster_id) {
    return make_status(Code::kInvalidArgument,
                       "the config is for cluster id {} ('{}') but the device belongs to cluster id {}",
                       config.id, config.name, device_cluster_id);
  }
  for (const auto& n : config.nodes) {
    if (n.id > device_slots) {
      return make_status(Code::kInvalidArgument,
                         "node {} ('{}') has no journal slot: the device was made with {} slots", n.id,
                         n.name, device_slots);
    }
  }
  return Status::ok();
}

}  // namespace sharedfs::cluster
