// Internal to fs/: the map from a file's logical blocks to device blocks.
//
// A B+tree of extents, as in ext4: the root lives in the inode (Inode::extent_root,
// extent_depth), deeper levels in ExtentNode blocks. Leaves (depth 0) hold extents sorted
// by logical block and never overlapping; index levels hold (first logical block, child
// block) entries. Routing takes the last index entry whose key is <= the block sought
// (entry 0 when none is): keys are lowered when a smaller block is inserted and never
// raised, which keeps every child's blocks below the next entry's key; an extent that would
// cross the next key (refilling a punched hole) goes to the next child, whose key is lowered.
//
// Concurrency and ownership: an ExtentTree is a short-lived view over one inode, built by
// the caller that holds the inode's lock (PR for lookups, EX for changes) and the decoded
// inode. Changes go through a journal Handle: node blocks are dirtied directly; the
// inode's root, depth and block count change in the Inode object, which the caller
// re-encodes into its buffer and dirties afterwards.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "allocator/allocator.h"
#include "common/status.h"
#include "format/format.h"
#include "journal/journal.h"

namespace sharedfs::fs {

struct Mapping {
  uint64_t logical = 0;
  uint64_t physical = 0;  // 0: a hole
  uint64_t length = 0;    // blocks from `logical` with this mapping (holes: to the next extent)
  bool unwritten = false;
  bool is_hole() const { return physical == 0; }
};

class ExtentTree {
 public:
  ExtentTree(journal::TransactionManager& tm, allocator::Allocator& alloc,
             const format::Superblock& sb, uint64_t ino, format::Inode& inode);

  // The mapping at `logical`: the extent containing it, or the hole up to the next one.
  Result<Mapping> lookup(uint64_t logical);
  // The extents overlapping [start, end), in order.
  Result<std::vector<format::Extent>> extents(uint64_t start, uint64_t end);
  // The tree's own blocks (index and leaf nodes below the root in the inode).
  Result<std::vector<uint64_t>> node_blocks();
  // The first extent ending after `logical` (for SEEK_DATA / SEEK_HOLE), if any.
  Result<std::optional<format::Extent>> next_extent(uint64_t logical);

  // Maps the blocks of `e`, which must all be unmapped now. Merges with contiguous
  // neighbours.
  Status insert(journal::Handle& h, const format::Extent& e);
  // Unmaps [start, end) and returns the device blocks that were mapped there (the caller
  // frees them: they are file data). Tree blocks that empty are freed here.
  Result<std::vector<allocator::BlockRange>> remove(journal::Handle& h, uint64_t start,
                                                    uint64_t end);

 private:
  struct Node {
    uint64_t blkno = 0;  // 0: the root in the inode
    uint16_t depth = 0;
    std::vector<format::Extent> entries;
    journal::BufferRef buf;
  };

  size_t capacity(const Node& n) const;
  Node root() const;
  Result<Node> load(uint64_t blkno, uint16_t expected_depth);
  void store(journal::Handle& h, Node& n);
  Result<Node> new_node(journal::Handle& h, uint16_t depth);
  Status free_node(journal::Handle& h, uint64_t blkno);
  static size_t route(const Node& n, uint64_t logical);

  struct Split {
    uint64_t key;
    uint64_t blkno;
  };
  Result<std::optional<Split>> insert_into(journal::Handle& h, Node& n, const format::Extent& e);
  Status remove_from(journal::Handle& h, Node& n, uint64_t start, uint64_t end,
                     std::vector<allocator::BlockRange>& freed,
                     std::vector<format::Extent>& reinsert);
  Result<std::optional<format::Extent>> first_from(Node& n, uint64_t logical);
  Status collect(Node& n, uint64_t start, uint64_t end, std::vector<format::Extent>& out);
  Status collect_nodes(const Node& n, std::vector<uint64_t>& out);

  journal::TransactionManager& tm_;
  allocator::Allocator& alloc_;
  const format::Superblock& sb_;
  const uint64_t ino_;
  format::Inode& inode_;
};

}  // namespace sharedfs::fs
