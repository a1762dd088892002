// mkfs.sharedfs: formats a shared device. Option parsing and printing only; the work is
// make_filesystem() in mkfs.cc.
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include "mkfs/mkfs.h"
#include "mkfs/progress.h"

using namespace sharedfs;

namespace {

std::string human(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.{}f} {}", v, u == 0 ? 0 : 1, units[u]);
}

void print_geometry(const std::string& path, const format::Superblock& sb) {
  const auto& g = sb.geo;
  const uint64_t bs = g.block_size;
  fmt::print("sharedfs created on {}\n", path);
  fmt::print("  uuid:               {}\n", format::uuid_to_string(sb.uuid));
  fmt::print("  cluster id:         {:#018x}{}\n", sb.cluster_id,
             sb.cluster_name.empty() ? "" : " (" + sb.cluster_name + ")");
  if (!sb.label.empty()) fmt::print("  label:              {}\n", sb.label);
  fmt::print("  block size:         {}\n", bs);
  fmt::print("  size:               {} blocks ({})\n", g.total_blocks, human(g.total_blocks * bs));
  fmt::print("  node slots:         {}\n", g.slots);
  fmt::print("  journals:           {} per slot, blocks {}..{}\n", human(g.journal_blocks * bs),
             g.journal_start, g.journal_start + g.slots * g.journal_blocks - 1);
  fmt::print(
      "  allocation groups:  {} of {}{}, from block {}\n", g.ag_count, human(g.ag_blocks * bs),
      g.last_ag_blocks != g.ag_blocks ? fmt::format(" (last {})", human(g.last_ag_blocks * bs))
                                      : std::string(),
      g.ag_start);
  fmt::print("  root directory:     inode {}\n", sb.root_inode);
  fmt::print("  backup superblock:  block {}\n", g.backup_superblock());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Create a sharedfs cluster file system on a shared device.", "mkfs.sharedfs"};
  app.footer(
      "Examples:\n"
      "  mkfs.sharedfs /dev/nvme1n1                      defaults for a 16-host cluster\n"
      "  mkfs.sharedfs --nodes 4 --journal-size 64M --label data /dev/sdb\n"
      "  truncate -s 10G disk.img && mkfs.sharedfs disk.img\n"
      "  mkfs.sharedfs -q --cluster-id 0x2a --cluster-name prod /dev/nvme1n1\n"
      "Choose --nodes for the most hosts that will ever mount at once: tunefs.sharedfs can\n"
      "add slots later only by shrinking every journal (see docs/tunefs.md).\n"
      "Every host that mounts the device needs a distinct, stable NVMe Host ID.");
  std::string path;
  mkfs::MkfsOptions opts;
  uint64_t journal = 0, ag = 0, block_size = format::kDefaultBlockSize, cluster_id = 0;
  bool force = false, quiet = false;
  app.add_option("DEVICE", path, "block device or image file")->required();
  app.add_option("-N,--nodes", opts.slots, "node slots: hosts that may mount at once")
      ->capture_default_str()
      ->check(CLI::Range(1u, format::kMaxSlots));
  app.add_option("-J,--journal-size", journal, "journal size per node slot (e.g. 64M)")
      ->transform(CLI::AsSizeValue(false));
  app.add_option("-b,--block-size", block_size, "block size in bytes")
      ->capture_default_str()
      ->transform(CLI::AsSizeValue(false));
  app.add_option("--ag-size", ag, "allocation group size (e.g. 1G)")
      ->transform(CLI::AsSizeValue(false));
  app.add_option("-L,--label", opts.label, "volume label");
  app.add_option("--cluster-name", opts.cluster_name, "cluster name recorded on the device");
  app.add_option("--cluster-id", cluster_id,
                 "cluster id the cluster config must name (default: random)");
  app.add_flag("-f,--force", force, "overwrite an existing file system");
  app.add_flag("-q,--quiet", quiet, "print nothing but errors");
  CLI11_PARSE(app, argc, argv);

  opts.journal_bytes = journal;
  opts.ag_bytes = ag;
  opts.block_size = static_cast<uint32_t>(block_size);
  if (cluster_id != 0) opts.cluster_id = cluster_id;

  if (access(path.c_str(), F_OK) != 0) {
    fmt::print(stderr,
               "mkfs.sharedfs: {} does not exist: name a block device, or create an image file "
               "first (truncate -s 10G {})\n",
               path, path);
    return 1;
  }
  auto existing = mkfs::detect_signature(path);
  if (!existing) {
    fmt::print(stderr, "mkfs.sharedfs: {}: {}\n", path, existing.status().to_string());
    return 1;
  }
  if (*existing) {
    if (!force) {
      fmt::print(stderr,
                 "mkfs.sharedfs: {} already carries a signature: {}.\n"
                 "Everything on it would be lost; rerun with --force to format it anyway.\n",
                 path, **existing);
      return 1;
    }
    if (Status st = mkfs::wipe_signatures(path); !st) {
      fmt::print(stderr, "mkfs.sharedfs: {}: {}\n", path, st.to_string());
      return 1;
    }
  }

  auto dev = device::open_file_device(path, {});
  if (!dev) {
    fmt::print(stderr, "mkfs.sharedfs: {}\n", dev.status().to_string());
    return 1;
  }
  mkfs::ProgressLine progress(quiet);
  opts.progress = [&](uint64_t done, uint64_t total) {
    progress.update("writing allocation groups", done, total);
  };
  auto sb = mkfs::make_filesystem(*dev->io, opts);
  progress.finish();
  if (!sb) {
    fmt::print(stderr, "mkfs.sharedfs: {}: {}\n", path, sb.status().to_string());
    if (sb.status().code() == Code::kReservationConflict) {
      fmt::print(stderr,
                 "The device is reserved by a cluster; see `sharedfs reservation report "
                 "{}`.\n",
                 path);
    }
    return 1;
  }
  if (!quiet) print_geometry(path, *sb);
  return 0;
}
