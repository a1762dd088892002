// mkfs/ — creating (mkfs.sharedfs) and checking (fsck.sharedfs) a sharedfs device.
//
// Both work on a BlockDevice so tests can run them on any backend, the fault injector
// included; the command-line programs in this folder only parse options, open the device
// and print.
//
// Thread-safety: none needed; each call owns the device for its duration. Both assume no
// node has the device mounted.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "device/device.h"
#include "format/format.h"

namespace sharedfs::mkfs {

// Called with (done, total) as allocation groups are written.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;
// Called with the phase a long check is in and (done, total) within it; a new phase name
// starts a new line of progress.
using PhaseProgressFn = std::function<void(std::string_view phase, uint64_t done, uint64_t total)>;

struct MkfsOptions {
  uint32_t slots = format::kDefaultSlots;
  uint64_t journal_bytes = 0;  // per slot; 0 = default for the device size
  uint32_t block_size = format::kDefaultBlockSize;
  uint64_t ag_bytes = 0;  // 0 = default
  std::string label;
  std::string cluster_name;
  std::optional<uint64_t> cluster_id;  // random when unset
  ProgressFn progress;
};

// Writes a new, empty file system (root directory included) and returns its superblock.
// Writes only metadata: the superblocks, the slot table, heartbeat, orphan and journal
// header blocks, and each AG's header and bitmap; a 1 TiB device formats in seconds.
Result<format::Superblock> make_filesystem(device::BlockDevice& dev, const MkfsOptions& opts);

// Writes the slot area of `sb`'s geometry as mkfs leaves it: the slot table with every
// slot free, idle heartbeats, empty orphan lists, and clean, empty journals whose first
// transaction will carry `tail_sequence`. Not the superblocks. Only while no node uses the
// device (mkfs, tunefs).
Status write_slot_area(device::BlockDevice& dev, const format::Superblock& sb,
                       uint64_t tail_sequence);

// The file system type already on `path` ("ext4", "xfs", "btrfs", "sharedfs", ...), or
// nullopt when libblkid and our own probe find none.
Result<std::optional<std::string>> detect_signature(const std::string& path);

// Erases every signature libblkid can find (as wipefs does) so no other tool mistakes the
// device for what it was.
Status wipe_signatures(const std::string& path);

// ---------------------------------------------------------------------------------------
// fsck

struct FsckOptions {
  bool repair = false;  // -y; otherwise -n: change nothing
  bool verbose = false;
  // false: check the allocation structures only, not the tree (for tests of the allocator,
  // which allocate blocks and inodes that no file owns).
  bool walk_tree = true;
  PhaseProgressFn progress;
};

struct FsckProblem {
  uint64_t blkno = 0;
  std::string structure;  // "AG header 3", "heartbeat block of slot 2", ...
  std::string what;
  bool fixed = false;
};

struct FsckReport {
  std::vector<FsckProblem> problems;
  // What was checked (verbose), and, whatever the verbosity, what the structure walk found
  // while a journal still needs replay (those findings are not problems: see docs/fsck.md).
  std::vector<std::string> notes;
  std::optional<format::Superblock> superblock;
  uint64_t free_blocks = 0;  // counted from the bitmaps that could be read
  uint64_t inodes = 0;       // found by the structure walk (named, or on an orphan list)
  uint64_t directories = 0;

  // e2fsck's convention: 0 clean, 1 errors fixed, 4 errors left uncorrected.
  int exit_code() const;
};

// Checks every structure this version knows (docs/fsck.md): the fixed regions, the AGs,
// then the whole tree from the root inode and every orphan list, reconciled with the AG
// bitmaps and inode counts. With opts.repair, fixes what is safe. A
// Status error means the check could not run (exit code 8): the device cannot be read,
// or carries no sharedfs at all.
Result<FsckReport> check_filesystem(device::BlockDevice& dev, const FsckOptions& opts);

}  // namespace sharedfs::mkfs
