// fsck.sharedfs: checks (and with -y repairs) a sharedfs device. Exit codes as e2fsck:
// 0 clean, 1 errors fixed, 4 errors left uncorrected, 8 operational error, 16 usage.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "mkfs/mkfs.h"
#include "mkfs/progress.h"

using namespace sharedfs;

int main(int argc, char** argv) {
  CLI::App app{"Check a sharedfs file system. Run it only while no node has it mounted.",
               "fsck.sharedfs"};
  app.footer(
      "Exit status: 0 clean, 1 errors fixed, 4 errors left uncorrected, 8 operational error,\n"
      "16 usage error.\n"
      "Examples:\n"
      "  fsck.sharedfs -n /dev/nvme1n1     check only (the default)\n"
      "  fsck.sharedfs -y disk.img         repair what can be repaired safely\n"
      "  fsck.sharedfs -n -v -q /dev/sdb   say what is checked, no progress bar\n"
      "A progress bar is drawn on a terminal only (never when piped, or with -q).");
  std::string path;
  bool no = false, yes = false, verbose = false, quiet = false;
  app.add_option("DEVICE", path, "block device or image file")->required();
  auto* n = app.add_flag("-n", no, "check only; change nothing (default)");
  app.add_flag("-y,-p,-a", yes, "repair every problem that can be repaired safely")->excludes(n);
  app.add_flag("-v,--verbose", verbose, "say what is checked");
  app.add_flag("-q,--quiet", quiet, "no progress bar");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 16;
  }

  auto dev = device::open_file_device(path, {.read_only = !yes});
  if (!dev) {
    fmt::print(stderr, "fsck.sharedfs: {}\n", dev.status().to_string());
    return 8;
  }
  mkfs::ProgressLine progress(quiet);
  mkfs::FsckOptions opts{.repair = yes, .verbose = verbose};
  opts.progress = [&](std::string_view phase, uint64_t done, uint64_t total) {
    progress.update(phase, done, total);
  };
  auto report = mkfs::check_filesystem(*dev->io, opts);
  progress.finish();
  if (!report) {
    fmt::print(stderr, "fsck.sharedfs: {}\n", report.status().to_string());
    if (report.status().code() == Code::kNotFound) {
      fmt::print(stderr, "Is {} the right device? `mkfs.sharedfs {}` creates a file system.\n",
                 path, path);
    }
    return 8;
  }
  for (const auto& line : report->notes) fmt::print("{}\n", line);
  size_t fixed = 0;
  for (const auto& p : report->problems) {
    fmt::print("block {}: {}: {}{}\n", p.blkno, p.structure, p.what, p.fixed ? " [FIXED]" : "");
    fixed += p.fixed ? 1 : 0;
  }
  const auto& g = report->superblock->geo;
  if (report->problems.empty()) {
    fmt::print("{}: clean, {} node slots, {} AGs, {}/{} blocks free\n", path, g.slots, g.ag_count,
               report->free_blocks, g.total_blocks);
  } else {
    fmt::print("{}: {} problem(s), {} fixed, {} left\n", path, report->problems.size(), fixed,
               report->problems.size() - fixed);
    if (!yes && fixed < report->problems.size()) {
      fmt::print(
          "To repair what can be repaired safely, run `fsck.sharedfs -y {}` while no node "
          "has it mounted.\n",
          path);
    }
  }
  return report->exit_code();
}
