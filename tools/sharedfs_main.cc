// sharedfs: the operator's command: mount, cluster status, read-only inspection of a device
// (debug) and persistent-reservation administration (reservation). `locks` and `top` come
// with the operations tooling.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "device/device.h"
#include "format/format.h"
#include "fs/fs.h"
#include "tools/mount_command.h"
#include "tools/mount_helper.h"
#include "tools/status_command.h"

using namespace sharedfs;

namespace {

int fail(const Status& st) {
  fmt::print(stderr, "sharedfs: {}\n", st.to_string());
  return 1;
}

using fs::read_superblock;

std::string age(uint64_t then_ns) {
  if (then_ns == 0) return "never";
  const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return fmt::format("{:.1f}s ago",
                     (static_cast<double>(now) - static_cast<double>(then_ns)) / 1e9);
}

int debug_superblock(device::BlockDevice& dev) {
  auto sb = read_superblock(dev);
  if (!sb) return fail(sb.status());
  const auto& g = sb->geo;
  fmt::print("block size         {}\n", g.block_size);
  fmt::print("total blocks       {}\n", g.total_blocks);
  fmt::print("cluster id         {:#018x}\n", sb->cluster_id);
  fmt::print("cluster name       {}\n", sb->cluster_name);
  fmt::print("label              {}\n", sb->label);
  fmt::print("slots              {}\n", g.slots);
  fmt::print("slot table         block {}\n", g.slot_table_blkno);
  fmt::print("heartbeats         blocks {}..{}\n", g.heartbeat_start,
             g.heartbeat_start + g.slots - 1);
  fmt::print("orphan lists       blocks {}..{}\n", g.orphan_start, g.orphan_start + g.slots - 1);
  fmt::print("journals           from block {}, {} blocks each\n", g.journal_start,
             g.journal_blocks);
  fmt::print("allocation groups  {} x {} blocks from block {} (last {} blocks)\n", g.ag_count,
             g.ag_blocks, g.ag_start, g.last_ag_blocks);
  fmt::print("root inode         {}\n", sb->root_inode);
  fmt::print("backup superblock  block {}\n", g.backup_superblock());
  fmt::print("sequence           {}\n", sb->seq);
  return 0;
}

template <typename T>
Result<T> read_struct(device::BlockDevice& dev, const format::Superblock& sb, uint64_t blkno) {
  device::AlignedBuffer buf(sb.geo.block_size);
  RETURN_IF_ERROR(dev.read(blkno * sb.geo.block_size, buf.span()));
  return T::decode(buf.span(), {blkno, sb.fs_tag()});
}

int debug_slots(device::BlockDevice& dev) {
  auto sb = read_superblock(dev);
  if (!sb) return fail(sb.status());
  auto table = read_struct<format::SlotTable>(dev, *sb, sb->geo.slot_table_blkno);
  if (!table) return fail(table.status());
  fmt::print("{:>4}  {:<6}  {:>5}  {:<32}  {:<18}  {}\n", "slot", "state", "node", "host id", "key",
             "mounted");
  for (size_t i = 0; i < table->slots.size(); ++i) {
    const auto& e = table->slots[i];
    device::HostId host{e.host_id};
    fmt::print("{:>4}  {:<6}  {:>5}  {:<32}  {:#018x}  {}\n", i,
               e.state == format::SlotState::kInUse ? "in-use" : "free", e.node_id,
               host.to_string(), e.reservation_key, age(e.mounted_ns));
  }
  return 0;
}

int debug_heartbeats(device::BlockDevice& dev) {
  auto sb = read_superblock(dev);
  if (!sb) return fail(sb.status());
  fmt::print("{:>4}  {:>5}  {:<9}  {:>12}  {}\n", "slot", "node", "state", "counter", "written");
  int rc = 0;
  for (uint32_t s = 0; s < sb->geo.slots; ++s) {
    auto hb = read_struct<format::Heartbeat>(dev, *sb, sb->geo.heartbeat_blkno(s));
    if (!hb) {
      fmt::print("{:>4}  {}\n", s, hb.status().to_string());
      rc = 1;
      continue;
    }
    const auto state = format::heartbeat_state_name(hb->state);
    fmt::print("{:>4}  {:>5}  {:<9}  {:>12}  {}\n", s, hb->node_id, state, hb->counter,
               age(hb->timestamp_ns));
  }
  return rc;
}

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
      "  sharedfs reservation register disk.img --node 1 --cluster-id 0x2a\n"
      "  sharedfs reservation preempt --abort disk.img --node 1 --cluster-id 0x2a --victim-node 3");

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
                    "no_writeback_cache, entry_timeout=S, attr_timeout=S, threads=N, read_ahead_kb=N, commit=S");
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
  auto* status = app.add_subcommand(
      "status", "each node's state (alive, suspect, fenced, recovering, withdrawn, down), disk "
                "heartbeat and reservation key");
  status->add_option("--config", status_config, "the cluster config (TOML)")->required();
  status->add_option("DEVICE", status_device,
                     "the shared device (default: that of a mounted sharedfs of this cluster)");
  status->callback([&] { rc = tools::run_status(status_config, status_device); });

  // --- debug
  std::string dev_path;
  auto* debug = app.add_subcommand("debug", "read-only inspection of a device");
  debug->require_subcommand(1);
  auto open_ro = [&]() { return device::open_device(dev_path, {}, /*read_only=*/true); };
  for (auto [name, help, fn] :
       {std::tuple{"superblock", "the superblock and geometry", &debug_superblock},
        std::tuple{"slots", "the slot table: which node uses which slot", &debug_slots},
        std::tuple{"heartbeats", "each slot's disk heartbeat", &debug_heartbeats}}) {
    auto* sub = debug->add_subcommand(name, help);
    sub->add_option("DEVICE", dev_path, "block device or image file")->required();
    sub->callback([&, fn = fn] {
      auto dev = open_ro();
      rc = dev ? fn(*dev->io) : fail(dev.status());
    });
  }

  // --- reservation
  auto* resv = app.add_subcommand(
      "reservation", "NVMe persistent reservations on the device (emulated on image files)");
  resv->require_subcommand(1);
  std::string host_hex, type_name = "wero";
  uint32_t node = 0;
  uint64_t cluster_id = 0, key = 0, victim = 0, new_key = 0;
  uint32_t victim_node = 0;
  bool abort = false, ignore_key = false;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("DEVICE", dev_path, "block device or image file")->required();
    sub->add_option("--host-id", host_hex, "act as this NVMe Host ID (32 hex digits)");
    sub->add_option("--node", node, "act as the host of this node id (with --cluster-id)");
    sub->add_option("--cluster-id", cluster_id, "cluster id, for --node");
  };
  auto host_of = [&]() -> Result<device::HostId> {
    if (!host_hex.empty()) {
      auto h = device::HostId::parse(host_hex);
      if (!h) return make_status(Code::kInvalidArgument, "bad host id {}", host_hex);
      return *h;
    }
    if (node != 0 || cluster_id != 0) return device::HostId::for_node(cluster_id, node);
    return device::HostId{};
  };
  auto run = [&](const std::function<Status(device::Reservations&)>& cmd) {
    // Keys default to the node's own (see node_reservation_key) when acting as --node.
    if (key == 0 && node != 0) key = device::node_reservation_key(cluster_id, node);
    if (victim == 0 && victim_node != 0) {
      victim = device::node_reservation_key(cluster_id, victim_node);
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
  preempt->add_option("--victim-node", victim_node, "preempt this node's key (with --cluster-id)");
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
