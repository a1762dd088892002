// sharedfs: the operator's command: mount, cluster status, read-only inspection of a device
// (debug), persistent-reservation administration (reservation), and the live cluster views
// `locks` and `top`.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "device/device.h"
#include "fs/fs.h"
#include "tools/command_error.h"
#include "tools/debug_command.h"
#include "tools/mount_command.h"
#include "tools/mount_helper.h"
#include "tools/ops_commands.h"
#include "tools/status_command.h"

using namespace sharedfs;
using tools::fail;

namespace {

int reservation_report(device::Reservations& resv) {
  auto r = resv.report();
  if (!r) return fail(r.status());
  fmt::print("generation   {}\n", r->generation);
  fmt::print("reservation  {}\n", device::reservation_type_name(r->type));
  fmt::print("registrants  {}\n", r->registrants.size());
  for (const auto& reg : r->registrants) {
    fmt::print("  key {:#018x}  host {}{}\n", reg.key, reg.host.to_string(),
               reg.holds_reservation ? "  holds the reservation" : "");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // mount(8) runs mount.sharedfs, a link to this program, for type sharedfs.
  if (tools::invoked_as_mount_helper(argv[0])) {
    return tools::run_mount_helper(std::vector<std::string>(argv + 1, argv + argc),
                                   tools::run_mount);
  }
  CLI::App app{"sharedfs: a shared-disk cluster file system.", "sharedfs"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  sharedfs status --config /etc/sharedfs/cluster.toml\n"
      "  sharedfs debug superblock /dev/nvme1n1\n"
      "  sharedfs reservation report disk.img\n"
      "  sharedfs reservation register disk.img --node 1 --cluster-id 0x2a --cluster-name prod\n"
      "  sharedfs reservation preempt --abort disk.img --node 1 --cluster-id 0x2a\n"
      "      --cluster-name prod --victim-node 3");

  int rc = 0;
  app.add_subcommand("version", "print the version")->callback([] {
    fmt::print("sharedfs {}\n", SHAREDFS_VERSION);
  });

  // --- mount
  tools::MountArgs margs;
  auto* mount = app.add_subcommand("mount", "mount a sharedfs device with FUSE");
  mount->add_option("DEVICE", margs.device, "block device or image file")->required();
  mount->add_option("MOUNTPOINT", margs.mountpoint, "directory to mount on")->required();
  mount->add_flag("-f,--foreground", margs.foreground, "stay in the foreground");
  mount->add_flag("-d,--debug", margs.debug, "log every FUSE request (implies -f)");
  mount->add_option("-o", margs.options,
                    "mount options: FUSE/kernel ones (ro, allow_other, ...) and "
                    "no_writeback_cache, entry_timeout=S, attr_timeout=S, threads=N, read_ahead_kb=N, commit=S, "
                    "metrics=HOST:PORT (Prometheus endpoint), stats_file=PATH");
  mount->add_option("--node", margs.node, "node id (its journal slot is node - 1)")
      ->default_val(1);
  mount->add_option("--config", margs.config,
                    "cluster config (TOML): mount as node --node of that cluster; without it "
                    "the node runs alone");
  mount->add_flag("--update-fstab", margs.update_fstab,
                  "once mounted, put the fstab line that mounts it again (type fuse.sharedfs) "
                  "into the fstab, in place of the line for MOUNTPOINT");
  mount->add_option("--fstab", margs.fstab, "the fstab --update-fstab writes")
      ->envname("SHAREDFS_FSTAB")
      ->capture_default_str();
  mount->callback([&] {
    if (margs.debug) margs.foreground = true;
    rc = tools::run_mount(margs);
  });

  // --- status
  std::string status_config, status_device;
  bool status_json = false;
  auto* status = app.add_subcommand(
      "status", "each node's state (alive, suspect, fenced, recovering, withdrawn, down), disk "
                "heartbeat, reservation key, version, journal use and recovery");
  status->add_option("--config", status_config, "the cluster config (TOML)")->required();
  status->add_option("DEVICE", status_device,
                     "the shared device (default: that of a mounted sharedfs of this cluster)");
  status->add_flag("--json", status_json, "one JSON object instead of the table");
  status->footer("Examples:\n  sharedfs status --config /etc/sharedfs/cluster.toml\n"
                 "  sharedfs status --config /etc/sharedfs/cluster.toml --json /dev/nvme1n1");
  status->callback([&] { rc = tools::run_status(status_config, status_device, status_json); });

  // --- locks
  tools::OpsTarget ops_target;
  bool locks_busy = false, locks_json = false;
  size_t locks_limit = 1000;
  auto* locks = app.add_subcommand(
      "locks", "cluster-wide DLM locks: each resource's master, holders and waiters with their "
               "wait times (asks every node through a daemon of this host)");
  locks->add_flag("--busy", locks_busy, "only resources someone waits for");
  locks->add_flag("--json", locks_json, "one JSON object instead of the table");
  locks->add_option("--limit", locks_limit, "at most this many resources per node")
      ->capture_default_str();
  locks->add_option("--config", ops_target.config,
                    "the cluster config, when daemons of several clusters run here");
  locks->footer("Examples:\n  sharedfs locks --busy\n  sharedfs locks --json --limit 100");
  locks->callback([&] { rc = tools::run_locks(ops_target, locks_busy, locks_json, locks_limit); });

  // --- top
  double top_interval = 1.0;
  unsigned top_count = 0;
  bool top_json = false;
  auto* top = app.add_subcommand(
      "top", "live per-node rates: requests and latency, lock traffic, cache hits, device MB/s");
  top->add_option("-i,--interval", top_interval, "seconds between refreshes")->capture_default_str();
  top->add_option("-n,--count", top_count, "refreshes before exiting (0: until interrupted)")
      ->capture_default_str();
  top->add_flag("--json", top_json, "one JSON object per refresh, one per line");
  top->add_option("--config", ops_target.config,
                  "the cluster config, when daemons of several clusters run here");
  top->footer("Examples:\n  sharedfs top\n  sharedfs top --json -n 10 -i 0.5");
  top->callback([&] { rc = tools::run_top(ops_target, top_interval, top_count, top_json); });

  // --- debug
  tools::add_debug_command(app, rc);

  std::string dev_path;
  // --- reservation
  auto* resv = app.add_subcommand(
      "reservation", "NVMe persistent reservations on the device (emulated on image files)");
  resv->require_subcommand(1);
  std::string host_hex, type_name = "wero", cluster_name;
  uint32_t node = 0;
  uint64_t cluster_id = 0, key = 0, victim = 0, new_key = 0;
  uint32_t victim_node = 0;
  bool abort = false, ignore_key = false;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("DEVICE", dev_path, "block device or image file")->required();
    sub->add_option("--host-id", host_hex, "act as this NVMe Host ID (32 hex digits)");
    sub->add_option("--node", node, "act as the host of this node id (with --cluster-id)");
    sub->add_option("--cluster-id", cluster_id,
                    "cluster id, for --node's Host ID (default: the device's)");
    sub->add_option("--cluster-name", cluster_name,
                    "cluster name, for the keys of --node and --victim-node (default: the "
                    "device's)");
  };
  auto host_of = [&]() -> Result<device::HostId> {
    if (!host_hex.empty()) {
      auto h = device::HostId::parse(host_hex);
      if (!h) return make_status(Code::kInvalidArgument, "bad host id {}", host_hex);
      return *h;
    }
    if (node != 0 || cluster_id != 0) return device::node_host_id(dev_path, cluster_id, node);
    return device::HostId{};
  };
  auto run = [&](const std::function<Status(device::Reservations&)>& cmd) {
    // The cluster's name and id default to the device's own (its superblock), as the
    // daemons of a cluster formatted with that name use them.
    if ((cluster_name.empty() || cluster_id == 0) && (node != 0 || victim_node != 0)) {
      if (auto peek = device::open_device(dev_path, {}, /*read_only=*/true)) {
        if (auto sb = fs::read_superblock(*peek->io)) {
          if (cluster_name.empty()) cluster_name = sb->cluster_name;
          if (cluster_id == 0) cluster_id = sb->cluster_id;
        }
      }
    }
    // Keys default to the node's own (see node_reservation_key) when acting as --node.
    if (key == 0 && node != 0) key = device::node_reservation_key(cluster_name, node);
    if (victim == 0 && victim_node != 0) {
      victim = device::node_reservation_key(cluster_name, victim_node);
    }
    auto host = host_of();
    if (!host) {
      rc = fail(host.status());
      return;
    }
    auto dev = device::open_device(dev_path, *host, false);
    if (!dev) {
      rc = fail(dev.status());
      return;
    }
    Status st = cmd(*dev->reservations);
    rc = st ? 0 : fail(st);
  };
  auto type_of = [&]() -> device::ReservationType {
    auto t = device::parse_reservation_type(type_name);
    return t.value_or(device::ReservationType::kNone);  // kNone is refused as invalid
  };

  auto* report = resv->add_subcommand("report", "registrants, holder and generation");
  add_common(report);
  report->callback([&] {
    auto dev = device::open_device(dev_path, {}, true);
    rc = dev ? reservation_report(*dev->reservations) : fail(dev.status());
  });
  auto* reg = resv->add_subcommand("register", "register this host's key");
  add_common(reg);
  reg->add_option("--key", key, "the key (default with --node: the node's key)");
  reg->callback([&] { run([&](auto& r) { return r.register_key(key); }); });
  auto* unreg = resv->add_subcommand("unregister", "remove this host's registration");
  add_common(unreg);
  unreg->add_option("--key", key, "the current key");
  unreg->add_flag("--ignore-key", ignore_key, "without knowing the current key");
  unreg->callback([&] {
    run([&](auto& r) { return r.unregister_key(key, {.ignore_existing_key = ignore_key}); });
  });
  auto* replace = resv->add_subcommand("replace", "replace this host's key");
  add_common(replace);
  replace->add_option("--key", key, "the current key");
  replace->add_option("--new-key", new_key, "the new key")->required();
  replace->callback([&] { run([&](auto& r) { return r.replace_key(key, new_key); }); });
  auto* acquire = resv->add_subcommand("acquire", "take the reservation");
  add_common(acquire);
  acquire->add_option("--key", key, "this host's key (default with --node: the node's key)");
  acquire->add_option("--type", type_name, "we, ea, wero, earo, wear, eaar")->capture_default_str();
  acquire->callback([&] { run([&](auto& r) { return r.acquire(key, type_of()); }); });
  auto* release = resv->add_subcommand("release", "give up the reservation");
  add_common(release);
  release->add_option("--key", key, "this host's key (default with --node: the node's key)");
  release->add_option("--type", type_name, "the reservation's type")->capture_default_str();
  release->callback([&] { run([&](auto& r) { return r.release(key, type_of()); }); });
  auto* clear = resv->add_subcommand("clear", "release and remove every registration");
  add_common(clear);
  clear->add_option("--key", key, "this host's key (default with --node: the node's key)");
  clear->callback([&] { run([&](auto& r) { return r.clear(key); }); });
  auto* preempt = resv->add_subcommand("preempt", "remove another host's key (fence it)");
  add_common(preempt);
  preempt->add_option("--key", key, "this host's key (default with --node: the node's key)");
  preempt->add_option("--victim", victim, "the key to preempt");
  preempt->add_option("--victim-node", victim_node,
                      "preempt this node's key (with --cluster-name)");
  preempt->add_option("--type", type_name, "reservation type to hold afterwards")
      ->capture_default_str();
  preempt->add_flag("--abort", abort, "preempt-and-abort: also abort the victim's I/O");
  preempt->callback([&] {
    run([&](auto& r) {
      return abort ? r.preempt_and_abort(key, victim, type_of())
                   : r.preempt(key, victim, type_of());
    });
  });

  // mount.fuse3 (type fuse.sharedfs) runs `sharedfs DEVICE MOUNTPOINT -o OPTIONS`.
  std::vector<std::string> words = tools::with_implied_mount(
      std::vector<std::string>(argv, argv + argc), [&](const std::string& w) {
        return !app.get_subcommands([&](const CLI::App* s) { return s->check_name(w); }).empty();
      });
  std::vector<char*> words_c;
  for (auto& w : words) words_c.push_back(w.data());
  CLI11_PARSE(app, static_cast<int>(words_c.size()), words_c.data());
  return rc;
}
