// tunefs.sharedfs: changes label, cluster name and id, slot count and journal size of an
// unmounted sharedfs. Option parsing and printing only; the work is in tunefs.cc.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "mkfs/tunefs.h"

using namespace sharedfs;

int main(int argc, char** argv) {
  CLI::App app{"Change an unmounted sharedfs file system in place.", "tunefs.sharedfs"};
  app.footer(
      "Examples:\n"
      "  tunefs.sharedfs -n --add-slots 4 /dev/nvme1n1   show what adding 4 slots would do\n"
      "  tunefs.sharedfs --label data --cluster-name prod disk.img\n"
      "  tunefs.sharedfs --cluster-id 0x2a disk.img       the id the cluster config names\n"
      "  tunefs.sharedfs --add-slots 2 --journal-size 8M disk.img\n"
      "New slots and journals must fit in front of the first allocation group, which never\n"
      "moves; when they do not, tunefs says what would fit. Every node must be unmounted:\n"
      "tunefs refuses a device whose heartbeats advance or that has reservation keys\n"
      "registered. See docs/tunefs.md.");
  std::string path, label, cluster_name;
  uint64_t cluster_id = 0, journal = 0;
  uint32_t add_slots = 0;
  bool dry_run = false, force = false;
  app.add_option("DEVICE", path, "block device or image file")->required();
  auto* label_opt = app.add_option("-L,--label", label, "new volume label (up to 63 bytes)");
  auto* name_opt = app.add_option("--cluster-name", cluster_name, "new cluster name");
  auto* id_opt = app.add_option("--cluster-id", cluster_id,
                                "new cluster id (the [cluster] id of the cluster config)");
  app.add_option("--add-slots", add_slots, "add node slots (at most 32 in all)")
      ->check(CLI::Range(1u, format::kMaxSlots));
  auto* journal_opt =
      app.add_option("-J,--journal-size", journal, "new journal size per slot (e.g. 8M)")
          ->transform(CLI::AsSizeValue(false));
  app.add_flag("-n,--dry-run", dry_run, "print what would change; write nothing");
  app.add_flag("-f,--force", force,
               "go on although heartbeats advance or reservation keys are registered");
  CLI11_PARSE(app, argc, argv);

  auto fail = [&](const Status& st) {
    fmt::print(stderr, "tunefs.sharedfs: {}: {}\n", path, st.to_string());
    return 1;
  };
  mkfs::TuneRequest req;
  if (*label_opt) req.label = label;
  if (*name_opt) req.cluster_name = cluster_name;
  if (*id_opt) req.cluster_id = cluster_id;
  if (*journal_opt) req.journal_bytes = journal;
  req.add_slots = add_slots;

  auto dev = device::open_device(path, {}, /*read_only=*/dry_run);
  if (!dev) return fail(dev.status());
  auto plan = mkfs::plan_tune(*dev->io, req);
  if (!plan) return fail(plan.status());
  if (plan->changes.empty()) {
    fmt::print("{}: nothing to change\n", path);
    return 0;
  }
  std::vector<std::string> warnings;
  Status st = mkfs::check_not_in_use(*dev->io, *dev->reservations, plan->before, force, warnings);
  for (const auto& w : warnings) fmt::print(stderr, "tunefs.sharedfs: warning: {}\n", w);
  if (!st) return fail(st);

  fmt::print("{}{}:\n", dry_run ? "would change " : "", path);
  for (const auto& c : plan->changes) {
    fmt::print("  {:<24} {} -> {}\n", c.what, c.from.empty() ? "\"\"" : c.from,
               c.to.empty() ? "\"\"" : c.to);
  }
  if (dry_run) {
    fmt::print("dry run: nothing written\n");
    return 0;
  }
  if (st = mkfs::apply_tune(*dev->io, *plan); !st) {
    fail(st);
    if (st.code() == Code::kReservationConflict) {
      fmt::print(stderr,
                 "A cluster holds the device's reservation; see `sharedfs reservation "
                 "report {}`.\n",
                 path);
    } else if (plan->relayout) {
      fmt::print(stderr,
                 "If the slot layout change was cut short, run `tunefs.sharedfs {}` "
                 "again to finish it.\n",
                 path);
    }
    return 1;
  }
  fmt::print("done (superblock sequence {})\n", plan->after.seq);
  return 0;
}
