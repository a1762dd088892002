// Internal to fs/: directory entries, fast at millions of entries (docs/directories.md).
//
// A small directory keeps its entries in the inode's inline area. When they no longer fit
// it becomes hashed (extendible hashing, as GFS2 does): a table of 2^dir_depth leaf
// pointers, stored as DirIndex blocks in the directory's own logical blocks [0, n), indexed
// by the top dir_depth bits of the name hash; DirLeaf blocks hold the entries, each leaf
// covering the hash prefixes of its local depth. A full leaf splits (the table doubles
// when the leaf is already at the table's depth); at the maximum depth a leaf chains an
// overflow leaf. Lookup, insert and remove read one table block and one leaf (chain).
//
// Entries are kept sorted by (hash, name) everywhere, inline or in leaves, and leaves
// cover contiguous hash ranges in table order, so readdir walks hash order. A readdir
// cookie is hash << 32 | k (k: 1-based position among the entries with the same hash),
// which stays valid while the directory changes: entries added or removed elsewhere do not
// move it. Cookies 1 and 2 are "." and ".."; 0 is the start.
//
// Concurrency: a short-lived view built by the caller holding the directory inode's lock
// (PR to read, EX to change). Changes go through a journal Handle; the Inode object's
// fields (inline entries, flags, depth, extent root, block and entry counts) change in
// place and the caller re-encodes and dirties the inode block afterwards.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "allocator/allocator.h"
#include "common/status.h"
#include "format/format.h"
#include "fs/extent_tree.h"
#include "journal/journal.h"

namespace sharedfs::fs {

struct ListedEntry {
  uint64_t cookie = 0;  // resume after this entry by passing it to list()
  format::DirEntry entry;
};

class Directory {
 public:
  // The largest table depth; past it a full leaf chains overflow leaves.
  static constexpr uint32_t kMaxDepth = 20;
  static constexpr uint64_t kDotCookie = 1;
  static constexpr uint64_t kDotDotCookie = 2;

  Directory(journal::TransactionManager& tm, allocator::Allocator& alloc,
            const format::Superblock& sb, uint64_t ino, format::Inode& inode);

  Result<std::optional<format::DirEntry>> lookup(std::string_view name);
  // kAlreadyExists if the name is taken; kInvalidArgument for an invalid name.
  Status add(journal::Handle& h, const format::DirEntry& entry);
  // The removed entry; kNotFound if there is none.
  Result<format::DirEntry> remove(journal::Handle& h, std::string_view name);
  // Up to `max` entries after `cookie` in readdir order ("." and ".." not included).
  Result<std::vector<ListedEntry>> list(uint64_t cookie, size_t max);
  // Frees every leaf and table block (the directory is being deleted; it must be empty).
  Status release_blocks(journal::Handle& h);
  // Every block the directory owns (leaves, its table's blocks and extent-tree nodes):
  // what release_blocks() frees.
  Result<std::vector<allocator::BlockRange>> owned_blocks();

 private:
  struct Leaf {
    uint64_t blkno;
    format::DirLeaf leaf;
    journal::BufferRef buf;
  };

  size_t leaf_area() const;
  size_t inline_area() const;
  static bool fits(const std::vector<format::DirEntry>& entries, size_t area);

  Result<uint64_t> table_pointer(uint64_t index);
  Status set_table_pointers(journal::Handle& h, uint64_t first, uint64_t count, uint64_t leaf);
  Result<Leaf> load_leaf(uint64_t blkno);
  void store_leaf(journal::Handle& h, Leaf& l);
  Result<Leaf> new_leaf(journal::Handle& h, uint16_t depth);
  Result<journal::BufferRef> table_block(uint64_t table_block_index);
  Result<std::vector<format::DirEntry>> inline_entries() const;
  Status store_inline(const std::vector<format::DirEntry>& entries);
  Result<std::vector<Leaf>> load_chain(uint64_t head);
  Result<std::vector<uint64_t>> leaf_blocks();

  Status convert_to_hashed(journal::Handle& h, std::vector<format::DirEntry> entries);
  Status double_table(journal::Handle& h);
  Status add_hashed(journal::Handle& h, const format::DirEntry& entry);
  Result<bool> split_leaf(journal::Handle& h, Leaf& l, uint64_t index);
  uint64_t table_index(uint32_t hash) const;

  // The directory's logical blocks (its hash table), for a hashed directory only.
  ExtentTree table_map();

  journal::TransactionManager& tm_;
  allocator::Allocator& alloc_;
  const format::Superblock& sb_;
  const uint64_t ino_;
  format::Inode& inode_;
};

// The cookie of `entry`, given its position among equal hashes (1-based).
inline uint64_t dir_cookie(uint32_t hash, uint32_t k) { return (uint64_t{hash} << 32) | k; }

}  // namespace sharedfs::fs
