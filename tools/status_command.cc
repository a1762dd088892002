#include "tools/status_command.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cluster/cluster_config.h"
#include "cluster/failure_manager.h"
#include "device/device.h"
#include "fs/fs.h"
#include "tools/command_error.h"
#include "tools/control_socket.h"
#include "tools/fstab.h"

namespace sharedfs::tools {

using json = nlohmann::json;

std::string node_state_path(uint64_t cluster_id, uint32_t node) {
  return fmt::format("{}/cluster-{}/node-{}", run_dir(), cluster_id, node);
}

namespace {

// The device of a mounted sharedfs (type fuse.sharedfs in /proc/mounts) of this cluster.
std::string find_mounted_device(uint64_t cluster_id) {
  std::ifstream in("/proc/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string source, target, type;
    if (!(ls >> source >> target >> type) || type != "fuse.sharedfs") continue;
    // Daemons of earlier builds, still running across an upgrade, said "sharedfs:DEVICE".
    if (source.starts_with("sharedfs:")) source = source.substr(9);
    const std::string dev = unescape_fstab_field(source);
    auto d = device::open_device(dev, {}, /*read_only=*/true);
    if (!d) continue;
    auto sb = fs::read_superblock(*d->io);
    if (sb && sb->cluster_id == cluster_id) return dev;
  }
  return {};
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

}  // namespace

// The daemons' own view (status query through a daemon of this host): nullopt when no
// daemon of the cluster runs here.
std::map<uint32_t, json> daemon_status(uint64_t cluster_id) {
  std::map<uint32_t, json> out;
  auto answer = ask_any_daemon(cluster_id, R"({"query": "status", "cluster": true})",
                               std::chrono::seconds(5));
  if (!answer) return out;
  const json a = json::parse(*answer, nullptr, /*allow_exceptions=*/false);
  if (!a.is_object() || !a.contains("nodes")) return out;
  for (const auto& n : a["nodes"]) {
    if (n.is_object() && n.contains("node")) out[n["node"].get<uint32_t>()] = n;
  }
  // A daemon of this host outside the others' view (withdrawn) answers on its own socket.
  for (const auto& sock : find_control_sockets()) {
    if (sock.cluster_id != cluster_id || out.contains(sock.node)) continue;
    auto own = control_request(sock.path, R"({"query": "status"})", std::chrono::seconds(2));
    if (!own) continue;
    json j = json::parse(*own, nullptr, false);
    if (j.is_object()) out[sock.node] = j;
  }
  return out;
}

int run_status(const std::string& config_path, const std::string& device_arg, bool as_json) {
  auto config = cluster::load_cluster_config(config_path);
  if (!config) return fail(config.status());
  std::string device = device_arg;
  if (device.empty()) device = find_mounted_device(config->id);
  if (device.empty()) {
    return fail(make_status(Code::kNotFound,
                            "no sharedfs of cluster {} is mounted here: name its device", config->id));
  }
  auto dev = device::open_device(device, {}, /*read_only=*/true);
  if (!dev) return fail(dev.status());
  auto sb = fs::read_superblock(*dev->io);
  if (!sb) return fail(sb.status());
  if (sb->cluster_id != config->id) {
    return fail(make_status(Code::kInvalidArgument, "{} belongs to cluster id {}, the config to {}",
                            device, sb->cluster_id, config->id));
  }
  auto rep = dev->reservations->report();
  if (!rep) return fail(rep.status());

  // Two looks at the heartbeats, two beats apart: a live node's counter moves.
  cluster::DiskHeartbeats beats;
  if (auto st = beats.sample(*dev->io, *sb, std::chrono::steady_clock::now()); !st) return fail(st);
  if (auto st = beats.sample_after_beats(*dev->io, *sb, config->heartbeat_interval); !st) {
    return fail(st);
  }
  const auto daemons = daemon_status(config->id);

  json out;
  out["cluster"] = config->name;
  out["cluster_id"] = config->id;
  out["device"] = device;
  const auto* holder = rep->holder();
  out["reservation"] = {{"type", std::string(device::reservation_type_name(rep->type))},
                        {"holder_key", holder ? json(fmt::format("{:#018x}", holder->key)) : json(nullptr)},
                        {"generation", rep->generation}};
  const auto now_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
  json nodes = json::array();
  for (const auto& n : config->nodes) {
    const uint32_t slot = n.id - 1;
    if (slot >= sb->geo.slots) continue;
    const auto& s = beats.slots().at(slot);
    const auto key = device::node_reservation_key(config->name, n.id);
    const auto* reg = rep->find_key(key);
    const bool moving = beats.moved(slot);
    std::string state;
    const std::string local = first_line(node_state_path(config->id, n.id));
    const auto d = daemons.find(n.id);
    const bool daemon_withdrawn = d != daemons.end() && d->second.value("state", "") == "withdrawn";
    if (local.starts_with("withdrawn") || daemon_withdrawn) {
      state = "withdrawn";
    } else if (!s.readable) {
      state = "unreadable";
    } else {
      switch (s.beat.state) {
        case format::HeartbeatState::kMounted:
          if (moving) {
            state = reg ? "alive" : "fenced";
          } else {
            state = reg ? "suspect" : "fenced";
          }
          break;
        case format::HeartbeatState::kFenced:
          state = fmt::format("recovering (node {})", s.beat.by_node);
          break;
        case format::HeartbeatState::kRecovered:
          state = fmt::format("down, recovered by {}", s.beat.by_node);
          break;
        case format::HeartbeatState::kWithdrawn:
          state = "withdrawn";
          break;
        case format::HeartbeatState::kIdle:
          state = "down";
          break;
      }
    }
    json nj{{"node", n.id}, {"name", n.name}, {"slot", slot}, {"state", state}};
    nj["heartbeat"] = {{"counter", s.readable ? s.beat.counter : 0}, {"advancing", moving}};
    nj["heartbeat"]["age_s"] =
        s.readable && s.beat.timestamp_ns != 0 && now_ns > s.beat.timestamp_ns
            ? json(static_cast<double>(now_ns - s.beat.timestamp_ns) / 1e9)
            : json(nullptr);
    nj["reservation_key"] = fmt::format("{:#018x}", key);
    nj["key_registered"] = reg != nullptr;
    nj["holds_reservation"] = reg != nullptr && reg->holds_reservation;
    if (d != daemons.end()) {
      const json& dj = d->second;
      nj["daemon"] = dj;  // what the node says of itself (version, journal, membership)
      nj["version"] = dj.value("version", "");
      if (dj.contains("journal")) nj["journal_percent"] = dj["journal"].value("percent", 0.0);
      nj["recovering"] = dj.value("recovering", false);
    } else {
      nj["daemon"] = nullptr;  // not answering: down, or a host we cannot ask
    }
    nodes.push_back(nj);
  }
  out["nodes"] = nodes;
  json others = json::array();
  // Keys on the device that belong to no configured node (another cluster, an operator).
  for (const auto& r : rep->registrants) {
    const bool ours = std::any_of(config->nodes.begin(), config->nodes.end(), [&](const auto& n) {
      return device::node_reservation_key(config->name, n.id) == r.key;
    });
    if (!ours) others.push_back({{"key", fmt::format("{:#018x}", r.key)}, {"host", r.host.to_string()}});
  }
  out["other_registrants"] = others;
  if (as_json) {
    fmt::print("{}\n", out.dump(2));
    return 0;
  }

  fmt::print("cluster \"{}\" (id {}) on {}\n", config->name, config->id, device);
  if (rep->type == device::ReservationType::kNone) {
    fmt::print("reservation: none held (generation {})\n", rep->generation);
  } else {
    fmt::print("reservation: {}, held by key {:#018x} (generation {})\n",
               device::reservation_type_name(rep->type), holder ? holder->key : 0, rep->generation);
  }
  fmt::print("{:>4}  {:<12}  {:<22}  {:>10}  {:<10}  {:<28}  {:<8}  {:>7}  {}\n", "node", "name",
             "state", "heartbeat", "age", "reservation key", "version", "journal", "recovery");
  for (const auto& nj : nodes) {
    const std::string age = nj["heartbeat"]["age_s"].is_null()
                                ? "never"
                                : fmt::format("{:.1f}s", nj["heartbeat"]["age_s"].get<double>());
    std::string key_text = nj["key_registered"].get<bool>()
                               ? nj["reservation_key"].get<std::string>() +
                                     (nj["holds_reservation"].get<bool>() ? " (holder)" : "")
                               : "not registered";
    const bool answered = !nj["daemon"].is_null();
    fmt::print("{:>4}  {:<12}  {:<22}  {:>10}  {:<10}  {:<28}  {:<8}  {:>7}  {}\n",
               nj["node"].get<uint32_t>(), nj["name"].get<std::string>(),
               nj["state"].get<std::string>(), nj["heartbeat"]["counter"].get<uint64_t>(), age,
               key_text, answered ? nj.value("version", "?") : "-",
               answered && nj.contains("journal_percent")
                   ? fmt::format("{:.0f}%", nj["journal_percent"].get<double>())
                   : "-",
               !answered ? "-" : nj.value("recovering", false) ? "in progress" : "none");
  }
  for (const auto& o : others) {
    fmt::print("other registrant: key {}, host {}\n", o["key"].get<std::string>(),
               o["host"].get<std::string>());
  }
  return 0;
}

}  // namespace sharedfs::tools
