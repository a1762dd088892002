// Internal to mkfs/: fsck.sharedfs's structure walk (docs/fsck.md, passes 1-4).
//
// The walk reads the device directly and decodes with format/ only; it shares no code with
// fs/, so that it is an independent oracle for the file system's crash tests. It starts at
// the root inode, follows every directory entry, extent tree, hash table, leaf chain, xattr
// block and orphan list, checks what it reads, and records every block something points
// at. It changes nothing: the caller (fsck.cc) compares the result with the AG bitmaps and
// headers and decides what to repair.
//
// Memory: one bit per device block for blocks in use and one each for inodes found and
// directories found, kept as sparse bitmaps (chunks are allocated where bits get set);
// per-inode state only for inodes whose link count is not 1 and for directories waiting
// in the queue. Reads are batched: the inodes a batch of directory entries names are read
// in a few large I/Os, in block order.
//
// Thread-safety: none; one walk owns its device for its duration.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "common/status.h"
#include "device/device.h"
#include "format/format.h"
#include "mkfs/mkfs.h"

namespace sharedfs::mkfs::internal {

// One bit per device block, in chunks of 2^15 bits allocated on first set.
class BlockBitmap {
 public:
  explicit BlockBitmap(uint64_t nbits = 0);

  uint64_t size() const { return nbits_; }
  bool test(uint64_t bit) const;
  // Sets the bit and returns its previous value.
  bool test_and_set(uint64_t bit);
  // The first set bit at or after `from`, if any.
  std::optional<uint64_t> next_set(uint64_t from) const;
  uint64_t count() const;

 private:
  static constexpr unsigned kChunkShift = 15;
  static constexpr uint64_t kChunkBits = uint64_t{1} << kChunkShift;
  static constexpr size_t kChunkWords = kChunkBits / 64;
  uint64_t nbits_ = 0;
  std::vector<std::unique_ptr<uint64_t[]>> chunks_;
};

struct WalkInput {
  device::BlockDevice* dev = nullptr;
  format::Superblock sb;
  // Per AG: every bitmap block decoded and is consistent with the geometry (fsck's AG
  // check). The walk reads the bitmaps of these AGs to check that what it finds in use is
  // marked allocated; blocks in other AGs are only recorded.
  std::vector<bool> bitmap_ok;
  // Progress: called with the number of inodes found so far, now and then and at the end.
  std::function<void(uint64_t inodes)> on_inodes;
};

struct WalkResult {
  // Problems found, in the order found (blkno: the block they are about).
  std::vector<FsckProblem> problems;
  // Every block the walk found in use: inodes, extent-tree nodes, data extents, directory
  // hash-table and leaf blocks, xattr blocks.
  BlockBitmap referenced;
  // Inodes found (named by a directory, or on an orphan list) per AG.
  std::vector<uint64_t> inodes_per_ag;
  // False when some structure that owns blocks or names inodes could not be read or
  // trusted (a decode failure, a pointer outside every AG's data area, a node of another
  // owner): blocks it owns may then look unused, so nothing may be freed on the walk's
  // word.
  bool complete = true;
  uint64_t inodes = 0;
  uint64_t directories = 0;
  uint64_t orphans = 0;
};

// Walks the tree from the superblock's root inode and every slot's orphan list. A Status
// error only when the device cannot be read.
Result<WalkResult> walk_filesystem(const WalkInput& in);

}  // namespace sharedfs::mkfs::internal
