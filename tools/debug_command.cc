#include "tools/debug_command.h"

#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <functional>
#include <memory>

#include "device/device.h"
#include "tools/command_error.h"
#include "tools/debug_inspect.h"

namespace sharedfs::tools {
namespace {

using debug::Json;

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::string age(uint64_t then_ns) {
  if (then_ns == 0) return "never";
  return fmt::format("{:.1f}s ago",
                     (static_cast<double>(now_ns()) - static_cast<double>(then_ns)) / 1e9);
}

// UTC, to the nanosecond: what the inode holds, readable.
std::string timestamp(uint64_t ns) {
  const auto secs = static_cast<time_t>(ns / 1000000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return fmt::format("{}.{:09d} UTC", buf, ns % 1000000000);
}

void print_superblock(const Json& j) {
  fmt::print("block size         {}\n", j["block_size"].get<uint32_t>());
  fmt::print("total blocks       {}\n", j["total_blocks"].get<uint64_t>());
  fmt::print("uuid               {}\n", j["uuid"].get<std::string>());
  fmt::print("cluster id         {:#018x}\n", j["cluster_id"].get<uint64_t>());
  fmt::print("cluster name       {}\n", j["cluster_name"].get<std::string>());
  fmt::print("label              {}\n", j["label"].get<std::string>());
  const auto slots = j["slots"].get<uint64_t>();
  fmt::print("slots              {}\n", slots);
  fmt::print("slot table         block {}\n", j["slot_table_blkno"].get<uint64_t>());
  const auto hb = j["heartbeat_start"].get<uint64_t>();
  const auto orphans = j["orphan_start"].get<uint64_t>();
  fmt::print("heartbeats         blocks {}..{}\n", hb, hb + slots - 1);
  fmt::print("orphan lists       blocks {}..{}\n", orphans, orphans + slots - 1);
  fmt::print("journals           from block {}, {} blocks each\n",
             j["journal_start"].get<uint64_t>(), j["journal_blocks"].get<uint64_t>());
  fmt::print("allocation groups  {} x {} blocks from block {} (last {} blocks)\n",
             j["ag_count"].get<uint32_t>(), j["ag_blocks"].get<uint64_t>(),
             j["ag_start"].get<uint64_t>(), j["last_ag_blocks"].get<uint64_t>());
  fmt::print("root inode         {}\n", j["root_inode"].get<uint64_t>());
  fmt::print("backup superblock  block {} ({})\n", j["backup_superblock"].get<uint64_t>(),
             j["backup_status"].get<std::string>());
  fmt::print("sequence           {}\n", j["seq"].get<uint64_t>());
  fmt::print("created            {}\n", timestamp(j["created_ns"].get<uint64_t>()));
}

void print_slots(const Json& j) {
  fmt::print("{:>4}  {:<6}  {:>5}  {:<32}  {:<18}  {}\n", "slot", "state", "node", "host id", "key",
             "mounted");
  for (const auto& s : j["slots"]) {
    fmt::print("{:>4}  {:<6}  {:>5}  {:<32}  {:<18}  {}\n", s["slot"].get<uint32_t>(),
               s["state"].get<std::string>(), s["node_id"].get<uint32_t>(),
               s["host_id"].get<std::string>(), s["reservation_key"].get<std::string>(),
               age(s["mounted_ns"].get<uint64_t>()));
  }
}

void print_heartbeats(const Json& j) {
  fmt::print("{:>4}  {:>5}  {:<9}  {:>12}  {}\n", "slot", "node", "state", "counter", "written");
  for (const auto& s : j["heartbeats"]) {
    if (s.contains("error")) {
      fmt::print("{:>4}  {}\n", s["slot"].get<uint32_t>(), s["error"].get<std::string>());
      continue;
    }
    fmt::print("{:>4}  {:>5}  {:<9}  {:>12}  {}\n", s["slot"].get<uint32_t>(),
               s["node_id"].get<uint32_t>(), s["state"].get<std::string>(),
               s["counter"].get<uint64_t>(), age(s["timestamp_ns"].get<uint64_t>()));
  }
}

std::string join(const Json& array) {
  std::string out;
  for (const auto& v : array) {
    if (!out.empty()) out += ", ";
    out += v.is_string() ? v.get<std::string>() : v.dump();
  }
  return out;
}

void print_inode(const Json& j) {
  fmt::print("inode        {} ({})\n", j["inode"].get<uint64_t>(), j["type"].get<std::string>());
  fmt::print("mode         {}\n", j["mode"].get<std::string>());
  fmt::print("uid/gid      {}/{}\n", j["uid"].get<uint32_t>(), j["gid"].get<uint32_t>());
  fmt::print("size         {}\n", j["size"].get<uint64_t>());
  fmt::print("nlink        {}\n", j["nlink"].get<uint32_t>());
  fmt::print("blocks       {}\n", j["blocks"].get<uint64_t>());
  fmt::print("generation   {}\n", j["generation"].get<uint64_t>());
  for (const char* t : {"atime", "mtime", "ctime", "btime"}) {
    fmt::print("{:<12} {}\n", t, timestamp(j[std::string(t) + "_ns"].get<uint64_t>()));
  }
  fmt::print("flags        {:#x} ({})\n", j["flags_value"].get<uint32_t>(), join(j["flags"]));
  fmt::print("parent       {}\n", j["parent"].get<uint64_t>());
  if (j["rdev"].get<uint32_t>() != 0) fmt::print("rdev         {}\n", j["rdev"].get<uint32_t>());
  if (j["next_orphan"].get<uint64_t>() != 0) {
    fmt::print("next orphan  {}\n", j["next_orphan"].get<uint64_t>());
  }
  if (j.contains("inline_bytes")) {
    fmt::print("inline data  {} bytes\n", j["inline_bytes"].get<uint64_t>());
  }
  if (j.contains("target")) fmt::print("target       {}\n", j["target"].get<std::string>());
  if (j.contains("extents")) {
    fmt::print("extents      {} (tree depth {}, tree blocks: {})\n", j["extents"].size(),
               j["extent_depth"].get<uint32_t>(), join(j["extent_tree_blocks"]));
    for (const auto& e : j["extents"]) {
      fmt::print("  logical {:>10}  physical {:>12}  length {:>8}{}\n",
                 e["logical"].get<uint64_t>(), e["physical"].get<uint64_t>(),
                 e["length"].get<uint32_t>(), e["unwritten"].get<bool>() ? "  unwritten" : "");
    }
  }
  if (j.contains("xattrs")) {
    fmt::print("xattrs       block {}\n", j["xattr_block"].get<uint64_t>());
    for (const auto& x : j["xattrs"]) {
      fmt::print("  {} = {}\n", x["name"].get<std::string>(), x["value"].get<std::string>());
    }
  }
  if (j.contains("entries")) {
    const auto found = j["entries_found"].get<uint64_t>();
    fmt::print("entries      {} (inode says {}{})\n", found, j["dir_entries"].get<uint64_t>(),
               j["dir_depth"].get<uint32_t>() != 0
                   ? fmt::format(", hash table depth {}", j["dir_depth"].get<uint32_t>())
                   : "");
    for (const auto& e : j["entries"]) {
      fmt::print("  {:>12}  {:<12}  {}\n", e["inode"].get<uint64_t>(), e["type"].get<std::string>(),
                 e["name"].get<std::string>());
    }
    if (j["entries"].size() < found) {
      fmt::print("  ... {} more (--max-entries)\n", found - j["entries"].size());
    }
  }
}

void print_journal(const Json& j) {
  fmt::print("slot           {} (journal header at block {})\n", j["slot"].get<uint32_t>(),
             j["header_block"].get<uint64_t>());
  fmt::print("state          {}{}\n", j["state"].get<std::string>(),
             j["needs_replay"].get<bool>() ? ", needs replay" : ", nothing to replay");
  fmt::print("log            blocks {}..{}\n", j["log_start"].get<uint64_t>(),
             j["log_end"].get<uint64_t>() - 1);
  fmt::print("tail           block {}, sequence {}\n", j["tail_block"].get<uint64_t>(),
             j["tail_sequence"].get<uint64_t>());
  fmt::print("head           block {}, next sequence {} ({} blocks in use)\n",
             j["head_block"].get<uint64_t>(), j["next_sequence"].get<uint64_t>(),
             j["used_blocks"].get<uint64_t>());
  fmt::print("transactions   {}\n", j["transactions"].size());
  if (!j["transactions"].empty()) {
    fmt::print("  {:>10}  {:>10}  {:>6}  {:>6}  {:>7}  {}\n", "sequence", "start", "blocks",
               "images", "revokes", "targets");
  }
  for (const auto& t : j["transactions"]) {
    fmt::print("  {:>10}  {:>10}  {:>6}  {:>6}  {:>7}  {}\n", t["sequence"].get<uint64_t>(),
               t["start"].get<uint64_t>(), t["blocks"].get<uint64_t>(), t["images"].get<uint64_t>(),
               t["revokes"].size(), join(t["targets"]));
  }
  fmt::print("log ends       {}\n", j["end_reason"].get<std::string>());
}

// Options shared by the debug subcommands; owned by the callbacks.
struct DebugArgs {
  std::string device;
  bool json = false;
  uint64_t inode = 0;
  uint32_t slot = 0;
  size_t max_entries = 1000;
};

int run(const DebugArgs& args, const std::function<Result<Json>(device::BlockDevice&)>& inspect,
        void (*print)(const Json&)) {
  auto report = [&](const Status& st) {
    if (args.json) fmt::print("{}\n", Json{{"error", st.to_string()}}.dump());
    return fail(st);
  };
  // Read-only: safe while other hosts have the device mounted, and no reservation needed.
  auto dev = device::open_device(args.device, {}, /*read_only=*/true);
  if (!dev) return report(dev.status());
  auto j = inspect(*dev->io);
  if (!j) return report(j.status());
  if (args.json) {
    fmt::print("{}\n", j->dump(2));
  } else {
    print(*j);
  }
  return 0;
}

}  // namespace

void add_debug_command(CLI::App& app, int& rc) {
  auto args = std::make_shared<DebugArgs>();
  auto* debug = app.add_subcommand(
      "debug", "read-only inspection of a device (safe while other hosts have it mounted)");
  debug->require_subcommand(1);
  debug->footer(
      "Examples:\n"
      "  sharedfs debug superblock /dev/nvme1n1\n"
      "  sharedfs debug inode 1 disk.img            the root directory\n"
      "  sharedfs debug journal 0 disk.img --json   node 1's journal, as replay sees it");
  auto add = [&](const char* name, const char* help) {
    auto* sub = debug->add_subcommand(name, help);
    sub->add_flag("--json", args->json, "print one JSON object");
    return sub;
  };
  auto device_arg = [&](CLI::App* sub) {
    sub->add_option("DEVICE", args->device, "block device or image file")->required();
  };

  auto* sb = add("superblock", "the superblock and geometry");
  device_arg(sb);
  sb->callback([&rc, args] { rc = run(*args, debug::inspect_superblock, print_superblock); });

  auto* slots = add("slots", "the slot table: which node uses which slot");
  device_arg(slots);
  slots->callback([&rc, args] { rc = run(*args, debug::inspect_slots, print_slots); });

  auto* hb = add("heartbeats", "each slot's disk heartbeat");
  device_arg(hb);
  hb->callback([&rc, args] { rc = run(*args, debug::inspect_heartbeats, print_heartbeats); });

  auto* inode = add("inode", "one inode: fields, extents, xattrs, directory entries");
  inode
      ->add_option("N", args->inode,
                   "inode number as `ls -i` on a mount shows it (its block number; 1: the root)")
      ->required();
  device_arg(inode);
  inode->add_option("--max-entries", args->max_entries, "directory entries listed at most")
      ->capture_default_str();
  inode->footer(
      "Examples:\n  sharedfs debug inode 1 /dev/nvme1n1          the root directory\n"
      "  sharedfs debug inode $(stat -c %i /mnt/shared/file) /dev/nvme1n1 --json");
  inode->callback([&rc, args] {
    rc = run(
        *args,
        [&](device::BlockDevice& dev) {
          return debug::inspect_inode(
              dev, args->inode, {.max_entries = args->max_entries, .device_name = args->device});
        },
        print_inode);
  });

  auto* journal = add("journal",
                      "a slot's journal: header and the transactions replay would "
                      "apply");
  journal->add_option("SLOT", args->slot, "slot number (node N uses slot N-1)")->required();
  device_arg(journal);
  journal->footer("Example:\n  sharedfs debug journal 2 /dev/nvme1n1     the journal of node 3");
  journal->callback([&rc, args] {
    rc = run(
        *args,
        [&](device::BlockDevice& dev) {
          return debug::inspect_journal(dev, args->slot, args->device);
        },
        print_journal);
  });
}

}  // namespace sharedfs::tools
