// allocator/ — block and inode allocation over allocation groups (DESIGN.md §3, §4).
// docs/allocator.md describes the policy; the AG header and bitmap blocks it changes are
// in docs/on-disk-format.md §3.6 and §3.7.
//
// Every change goes through the journal: the allocator reads an AG's header and bitmap
// blocks through the TransactionManager, changes them in the cached Buffers and marks them
// dirty on the caller's Handle, so an allocation becomes durable with the transaction of
// the operation that asked for it. An AG header's free_blocks and inode_count always
// equal what its bitmap says (fsck checks this).
//
// Each AG is guarded by a process-local mutex (between this node's threads). In a cluster
// the AG's DLM lock (dlm::LockSpace::kAllocGroup, EX) is taken by the file system before
// the journal handle begins (docs/cluster.md); set_gate() tells the allocator which AGs the
// calling thread's change holds, and it allocates and frees only in those.
//
// Thread-safety: all methods may be called concurrently from any thread. Lock order: one
// AG lock at a time (never two), then the TransactionManager's own mutex (taken inside
// read/dirty/revoke). A caller may hold its own locks (inode locks) across these calls.
//
// Ownership: the Allocator keeps references to the TransactionManager, which must outlive
// it; it keeps a copy of the superblock.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "common/status.h"
#include "format/format.h"
#include "journal/journal.h"

namespace sharedfs::allocator {

// `count` device blocks from block `start`.
struct BlockRange {
  uint64_t start = 0;
  uint32_t count = 0;

  uint64_t end() const { return start + count; }  // one past the last block
  bool operator==(const BlockRange&) const = default;
};

// Totals over the data areas of all AGs (AG headers and bitmap blocks excluded).
struct Usage {
  uint64_t total_blocks = 0;
  uint64_t free_blocks = 0;
  uint64_t inodes = 0;
};

// An AG's counts as they travel in its cluster lock's value block (docs/allocator.md): the
// holder writes them when it gives the lock up; the next holder takes them as its counts
// for the AG, and skips an AG too full for its need without reading the AG's header.
struct AgCounts {
  uint64_t free_blocks = 0;
  uint64_t inodes = 0;
  bool operator==(const AgCounts&) const = default;
};
using AgValueBlock = std::array<uint8_t, 32>;
// Layout (little-endian): magic "SFAG" u32, AG index u32, free_blocks u64, inodes u64,
// the fs tag u32 (the file system it belongs to), 4 bytes zero.
AgValueBlock encode_ag_counts(uint32_t fs_tag, uint32_t ag, const AgCounts& counts);
// nullopt for bytes that are not AG `ag`'s counts of this file system (another layout, or
// never written).
std::optional<AgCounts> decode_ag_counts(uint32_t fs_tag, uint32_t ag, const AgValueBlock& bytes);

class Allocator {
 public:
  // Reads every AG header once (through `tm`) to learn the free and inode counts.
  // `home_slot`: the node's slot. The node prefers the AGs a with a % slots == home_slot %
  // slots, so the nodes of a cluster allocate without meeting, and moves on to other AGs
  // when those fill. kCorruption if an AG header is invalid or disagrees with the geometry.
  static Result<std::unique_ptr<Allocator>> open(journal::TransactionManager& tm,
                                                 const format::Superblock& sb, uint32_t home_slot);
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // Up to `want` contiguous free blocks, at least `min` (1 <= min <= want, else
  // kInvalidArgument), starting as close after `goal` as possible. goal 0 (or a block in
  // no AG) = no preference: the node's current AG, from that AG's cursor. kNoSpace if no
  // AG has `min` contiguous free blocks.
  Result<BlockRange> allocate(journal::Handle& h, uint64_t goal, uint32_t want, uint32_t min);

  // One block for an inode (inode number = block number), near `goal` (the parent
  // directory's inode); increments that AG header's inode_count.
  Result<uint64_t> allocate_inode(journal::Handle& h, uint64_t goal);

  // Frees `r`. Every block must be allocated and inside one AG's data area, otherwise
  // kCorruption naming the blocks and nothing changes (kInvalidArgument for count 0).
  // metadata=true also revokes each block through h.revoke(), so the journal never writes
  // an old metadata image over whatever the block holds next.
  Status free(journal::Handle& h, BlockRange r, bool metadata);

  // Frees inode block `ino` (as metadata) and decrements its AG's inode_count.
  Status free_inode(journal::Handle& h, uint64_t ino);

  // Blocks freed by transactions not yet committed, which allocate() skips until they are
  // (see AgState::busy). A caller that gets kNoSpace while this is non-zero may commit
  // (with no handle open) and try again.
  uint64_t busy_blocks();

  // From the in-memory per-AG counts, which are kept exact; no I/O, never blocks on an AG
  // lock. Exact when no allocation or free is in flight.
  Usage usage() const;

  // Cluster mounts: whether the calling thread's change holds AG `ag`'s cluster lock. Once
  // set, allocations skip the AGs it refuses (kNoSpace if none it allows has room), and a
  // free in an AG it refuses is kInternal with nothing changed: the caller must lock the
  // AGs of what it frees before its handle begins. Set once, before any allocation.
  using Gate = std::function<bool(uint32_t ag)>;
  void set_gate(Gate gate) { gate_ = std::move(gate); }

  // The AG of device block `blkno` (headers and bitmaps included), if any.
  std::optional<uint32_t> ag_of(uint64_t blkno) const;
  uint32_t ag_count() const;
  // The AGs the next allocations without a goal should use so that `blocks` fit (by the
  // in-memory counts): the current AG while it has room, else the first AG in the node's
  // order (home AGs first) that has, else as many AGs in that order as it takes (all, if
  // the file system is that full). The first becomes the current AG. Cluster mounts lock
  // them before the handle.
  std::vector<uint32_t> pick_ags(uint64_t blocks);
  // The device block of AG `ag`'s header (to read it without the cache or a lock).
  uint64_t header_block(uint32_t ag) const;
  // Counts of an AG this node does not hold, read from its header on the device by the
  // caller: statfs and AG choice see the other nodes' allocations.
  void note_counts(uint32_t ag, uint64_t free_blocks, uint64_t inodes);
  // The in-memory counts of AG `ag`: exact while this node holds the AG and no change is
  // in flight in it, a hint otherwise.
  AgCounts counts(uint32_t ag) const;

 private:
  struct AgState;
  struct HeaderRef;

  Allocator(journal::TransactionManager& tm, const format::Superblock& sb, uint32_t home_slot);

  Result<HeaderRef> read_header(uint32_t ag);
  void prune_busy_locked(AgState& st);
  void write_header(journal::Handle& h, uint32_t ag, HeaderRef& ref);
  // Tries AG `ag` under its lock, from AG-relative bit `from_bit` (nullopt: the AG's
  // cursor). nullopt when the AG has no run of `min` free blocks.
  Result<std::optional<BlockRange>> allocate_in(journal::Handle& h, uint32_t ag,
                                                std::optional<uint64_t> from_bit, uint32_t want,
                                                uint32_t min, bool inode);
  Result<BlockRange> allocate_any(journal::Handle& h, uint64_t goal, uint32_t want, uint32_t min,
                                  bool inode);
  Status free_range(journal::Handle& h, BlockRange r, bool metadata, bool inode);

  journal::TransactionManager& tm_;
  const format::Superblock sb_;
  const format::Geometry& geo_;  // sb_.geo
  const uint32_t tag_;
  const uint32_t home_slot_;
  std::unique_ptr<AgState[]> ags_;  // one per AG
  std::vector<uint32_t> order_;     // home AGs in index order, then every other AG
  uint64_t total_blocks_ = 0;       // sum of the AG data areas; fixed at open
  // The AG that allocations without a goal start in: the last AG such an allocation used.
  std::atomic<uint32_t> current_ag_{0};
  Gate gate_;  // empty: every AG may be used
};

}  // namespace sharedfs::allocator
