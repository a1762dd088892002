#include "tools/status_command.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cluster/cluster_config.h"
#include "cluster/failure_manager.h"
#include "device/device.h"
#include "fs/fs.h"
#include "tools/fstab.h"

namespace sharedfs::tools {

std::string node_state_path(uint64_t cluster_id, uint32_t node) {
  return fmt::format("/run/sharedfs/cluster-{}/node-{}", cluster_id, node);
}

namespace {

int fail(const Status& st) {
  fmt::print(stderr, "sharedfs: {}\n", st.to_string());
  return 1;
}

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

int run_status(const std::string& config_path, const std::string& device_arg) {
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

  fmt::print("cluster \"{}\" (id {}) on {}\n", config->name, config->id, device);
  const auto* holder = rep->holder();
  if (rep->type == device::ReservationType::kNone) {
    fmt::print("reservation: none held (generation {})\n", rep->generation);
  } else {
    fmt::print("reservation: {}, held by key {:#018x} (generation {})\n",
               device::reservation_type_name(rep->type), holder ? holder->key : 0, rep->generation);
  }
  fmt::print("{:>4}  {:<12}  {:<22}  {:>10}  {:<13}  {}\n", "node", "name", "state", "heartbeat",
             "last change", "reservation key");
  const auto now_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count());
  for (const auto& n : config->nodes) {
    const uint32_t slot = n.id - 1;
    if (slot >= sb->geo.slots) continue;
    const auto& s = beats.slots().at(slot);
    const auto key = device::node_reservation_key(config->id, n.id);
    const auto* reg = rep->find_key(key);
    const bool moving = beats.moved(slot);
    std::string state;
    const std::string local = first_line(node_state_path(config->id, n.id));
    if (local.starts_with("withdrawn")) {
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
    std::string age = "never";
    if (s.readable && s.beat.timestamp_ns != 0 && now_ns > s.beat.timestamp_ns) {
      age = fmt::format("{:.1f}s ago", static_cast<double>(now_ns - s.beat.timestamp_ns) / 1e9);
    }
    std::string key_text = reg ? fmt::format("{:#018x}{}", key, reg->holds_reservation ? " (holder)" : "")
                               : "not registered";
    fmt::print("{:>4}  {:<12}  {:<22}  {:>10}  {:<13}  {}\n", n.id, n.name, state,
               s.readable ? s.beat.counter : 0, age, key_text);
  }
  // Keys on the device that belong to no configured node (another cluster, an operator).
  for (const auto& r : rep->registrants) {
    const bool ours = std::any_of(config->nodes.begin(), config->nodes.end(), [&](const auto& n) {
      return device::node_reservation_key(config->id, n.id) == r.key;
    });
    if (!ours) fmt::print("other registrant: key {:#018x}, host {}\n", r.key, r.host.to_string());
  }
  return 0;
}

}  // namespace sharedfs::tools
