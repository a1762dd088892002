// fsck.sharedfs's structure walk: see fsck_walk.h and docs/fsck.md. Everything here reads;
// nothing writes.
#include "mkfs/fsck_walk.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <deque>
#include <functional>
#include <limits>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

namespace sharedfs::mkfs::internal {

// ---------------------------------------------------------------------------------------
// BlockBitmap

BlockBitmap::BlockBitmap(uint64_t nbits)
    : nbits_(nbits), chunks_(static_cast<size_t>((nbits + kChunkBits - 1) >> kChunkShift)) {}

bool BlockBitmap::test(uint64_t bit) const {
  if (bit >= nbits_) return false;
  const auto& chunk = chunks_[bit >> kChunkShift];
  if (!chunk) return false;
  const uint64_t i = bit & (kChunkBits - 1);
  return (chunk[i / 64] >> (i % 64)) & 1;
}

bool BlockBitmap::test_and_set(uint64_t bit) {
  SHAREDFS_CHECK(bit < nbits_, "bit past the end of a block bitmap");
  auto& chunk = chunks_[bit >> kChunkShift];
  if (!chunk) chunk = std::make_unique<uint64_t[]>(kChunkWords);  // zeroed
  const uint64_t i = bit & (kChunkBits - 1);
  const uint64_t mask = uint64_t{1} << (i % 64);
  const bool was = chunk[i / 64] & mask;
  chunk[i / 64] |= mask;
  return was;
}

std::optional<uint64_t> BlockBitmap::next_set(uint64_t from) const {
  if (from >= nbits_) return std::nullopt;
  for (uint64_t ci = from >> kChunkShift; ci < chunks_.size(); ++ci) {
    const auto& chunk = chunks_[ci];
    if (!chunk) continue;
    const uint64_t start = ci == (from >> kChunkShift) ? (from & (kChunkBits - 1)) : 0;
    for (uint64_t w = start / 64; w < kChunkWords; ++w) {
      uint64_t word = chunk[w];
      if (w == start / 64) word &= ~uint64_t{0} << (start % 64);
      if (word != 0) return (ci << kChunkShift) + w * 64 + std::countr_zero(word);
    }
  }
  return std::nullopt;
}

uint64_t BlockBitmap::count() const {
  uint64_t n = 0;
  for (const auto& chunk : chunks_) {
    if (!chunk) continue;
    for (size_t w = 0; w < kChunkWords; ++w) n += std::popcount(chunk[w]);
  }
  return n;
}

namespace {

using format::DirEntry;
using format::Extent;
using format::FileType;
using format::Inode;

// fs::Directory::kMaxDepth (docs/directories.md): the hash table never has more slots.
constexpr uint32_t kMaxDirDepth = 20;
// Far beyond any real tree (a root of 160 entries over nodes of 168 holds 160 * 168^7
// extents at depth 8); deeper is damage, and the limit bounds the recursion.
constexpr uint16_t kMaxExtentDepth = 8;
// Directory entries gathered before the inodes they name are read, in block order (about
// 100 MiB of entries at most), and inodes decoded at a time.
constexpr size_t kEntryBatch = size_t{1} << 20;
constexpr uint64_t kInodeChunk = 2048;
// Leaf heads read together.
constexpr size_t kLeafBatch = 128;
// Batched reads read through gaps of up to this many unwanted blocks (cheaper than another
// I/O), up to 4 MiB per I/O.
constexpr uint64_t kReadGapBlocks = 16;
constexpr uint64_t kMaxReadBytes = uint64_t{4} << 20;
// Doubly claimed blocks whose owners are looked up (pass 1B); more are reported unnamed.
constexpr size_t kMaxDupBlocks = size_t{1} << 20;
constexpr size_t kMaxOwnersPerBlock = 8;
constexpr size_t kBitmapCacheBlocks = 4096;
constexpr uint64_t kUnknownPointer = std::numeric_limits<uint64_t>::max();

enum class Use : uint8_t { kInode, kExtentNode, kData, kDirTable, kDirLeaf, kXattr };

// Who points at a block, for messages.
struct Owner {
  uint64_t ino = 0;
  Use use = Use::kData;
  uint64_t logical = 0;  // kData / kDirTable: file block; kDirLeaf: first table slot
  uint64_t from = 0;     // block holding the pointer

  bool same_claim(const Owner& o) const {
    return ino == o.ino && use == o.use && logical == o.logical;
  }
};

std::string label(uint64_t ino, std::string_view path) {
  return path.empty() ? fmt::format("inode {}", ino) : fmt::format("inode {} ({})", ino, path);
}

std::string describe(const Owner& o, std::string_view path) {
  const std::string who = label(o.ino, path);
  switch (o.use) {
    case Use::kInode:
      return fmt::format("the inode block of {}", who);
    case Use::kExtentNode:
      return fmt::format("an extent tree node of {}", who);
    case Use::kData:
      return fmt::format("data of {} at file block {}", who, o.logical);
    case Use::kDirTable:
      return fmt::format("hash table block {} of {}", o.logical, who);
    case Use::kDirLeaf:
      return fmt::format("a directory leaf of {} (table slot {})", who, o.logical);
    case Use::kXattr:
      return fmt::format("the xattr block of {}", who);
  }
  return who;
}

std::string_view type_name(FileType t) {
  switch (t) {
    case FileType::kRegular:
      return "regular file";
    case FileType::kDirectory:
      return "directory";
    case FileType::kCharDev:
      return "character device";
    case FileType::kBlockDev:
      return "block device";
    case FileType::kFifo:
      return "fifo";
    case FileType::kSocket:
      return "socket";
    case FileType::kSymlink:
      return "symlink";
    case FileType::kUnknown:
      break;
  }
  return "unknown type";
}

std::string join_path(std::string_view dir, std::string_view name) {
  std::string p(dir);
  if (p.empty() || p.back() != '/') p += '/';
  p += name;
  return p;
}

bool entry_less(const DirEntry& a, const DirEntry& b) {
  return a.hash != b.hash ? a.hash < b.hash : a.name < b.name;
}

class Walker {
 public:
  explicit Walker(const WalkInput& in)
      : dev_(*in.dev),
        sb_(in.sb),
        g_(sb_.geo),
        bs_(g_.block_size),
        bitmap_ok_(in.bitmap_ok),
        on_inodes_(in.on_inodes),
        one_(bs_),
        io_(std::max<uint64_t>(kMaxReadBytes, bs_)),
        inode_bits_(g_.total_blocks),
        dir_bits_(g_.total_blocks) {
    out_.referenced = BlockBitmap(g_.total_blocks);
    out_.inodes_per_ag.assign(g_.ag_count, 0);
    bitmap_ok_.resize(g_.ag_count, false);
  }

  Result<WalkResult> run() {
    RETURN_IF_ERROR(walk_root());
    RETURN_IF_ERROR(drain_queue());
    RETURN_IF_ERROR(walk_orphan_lists());
    RETURN_IF_ERROR(drain_queue());  // removed directories found on orphan lists
    for (const auto& [ino, path] : flagged_orphans_) {
      if (!on_orphan_list_.contains(ino)) {
        problem(ino, label(ino, path), "is flagged as an orphan but is on no orphan list");
      }
    }
    check_link_counts();
    if (!dup_claims_.empty()) RETURN_IF_ERROR(attribute_duplicates());
    if (on_inodes_) on_inodes_(out_.inodes);
    return std::move(out_);
  }

 private:
  struct QueuedDir {
    uint64_t ino;
    std::string path;
    bool orphan;
  };

  // State of the directory whose entries are being read.
  struct DirCtx {
    uint64_t ino = 0;
    std::string path;
    bool orphan = false;
    uint64_t entries = 0;
    uint64_t subdirs = 0;
  };

  struct Named {
    DirEntry entry;
    uint64_t where;  // block holding the entry: the directory inode or a leaf
  };

  // Link counts of non-directories whose count is not 1 or that are named more than once.
  struct LinkCount {
    uint32_t nlink = 0;
    uint32_t names = 0;
    std::string path;  // of the first name
  };

  struct DupClaim {
    Owner owner;
    std::string path;
    uint64_t first_dup;
    uint64_t dups;
    uint64_t start;
    uint64_t count;
  };

  struct LeafRun {
    uint64_t first_slot;
    uint64_t slots;
    uint64_t blkno;
  };

  format::BlockContext ctx(uint64_t blkno) const { return {blkno, sb_.fs_tag()}; }

  void problem(uint64_t blkno, std::string structure, std::string what) {
    if (attributing_) return;
    out_.problems.push_back({blkno, std::move(structure), std::move(what), false});
  }
  void incomplete() {
    if (!attributing_) out_.complete = false;
  }

  // Whether [start, start + count) lies in one AG's data area (past its header and bitmap
  // blocks): the only blocks the allocator hands out.
  bool in_data_area(uint64_t start, uint64_t count) const {
    if (count == 0 || start >= g_.total_blocks) return false;
    const auto ag = g_.ag_of(start);
    if (!ag) return false;
    const uint64_t end = g_.ag_header_blkno(*ag) + g_.ag_size(*ag);
    return start >= g_.ag_first_data_block(*ag) && count <= end - start;
  }

  // ---------------------------------------------------------------------------------------
  // Reading

  Status read_one(uint64_t blkno) {
    return dev_.read(blkno * bs_, one_.span()).with_context(fmt::format("reading block {}", blkno));
  }

  // Reads every block of `blocks` (ascending; repeats allowed), reading through small gaps
  // so that neighbours share one I/O, and hands each to fn(index, block) in order. fn must
  // not read anything itself (it would reuse the buffer).
  Status read_many(const std::vector<uint64_t>& blocks,
                   const std::function<void(size_t, std::span<const std::byte>)>& fn) {
    const uint64_t max_run = std::max<uint64_t>(1, kMaxReadBytes / bs_);
    size_t i = 0;
    while (i < blocks.size()) {
      size_t j = i + 1;
      while (j < blocks.size() && blocks[j] - blocks[j - 1] <= kReadGapBlocks &&
             blocks[j] - blocks[i] < max_run) {
        ++j;
      }
      const uint64_t first = blocks[i];
      const uint64_t n = blocks[j - 1] - first + 1;
      auto span = io_.span().first(n * bs_);
      RETURN_IF_ERROR(
          dev_.read(first * bs_, span)
              .with_context(fmt::format("reading blocks {}..{}", first, first + n - 1)));
      for (size_t k = i; k < j; ++k) fn(k, span.subspan((blocks[k] - first) * bs_, bs_));
      i = j;
    }
    return Status::ok();
  }

  // The bits of one bitmap block, for AGs whose bitmap fsck found sound.
  Result<const std::vector<uint8_t>*> bitmap_bits(uint32_t ag, uint32_t index) {
    const uint64_t blk = g_.bitmap_blkno(ag, index);
    if (auto it = bitmap_cache_.find(blk); it != bitmap_cache_.end()) return &it->second;
    if (bitmap_cache_.size() >= kBitmapCacheBlocks) bitmap_cache_.clear();
    RETURN_IF_ERROR(read_one(blk));
    auto bm = format::BitmapBlock::decode(one_.span(), ctx(blk));
    if (!bm) return bm.status();  // checked before the walk; changed under us
    return &(bitmap_cache_[blk] = std::move(bm->bits));
  }

  // ---------------------------------------------------------------------------------------
  // Claims: every pointer to a block goes through here.

  // Records that `o` uses [start, start + count). True when the caller should read what is
  // there: the range lies in a data area and none of it was claimed before (so a structure
  // reached twice is read once, which also ends loops).
  Result<bool> claim(uint64_t start, uint64_t count, const Owner& o, std::string_view path) {
    if (attributing_) return attribute(start, count, o);
    if (!in_data_area(start, count)) {
      const uint64_t last = count == 0 ? start : start + std::min(count, UINT64_MAX - start) - 1;
      problem(
          o.from, label(o.ino, path),
          fmt::format("{} points at block{} {}{}, outside every AG's data area", describe(o, path),
                      count == 1 ? "" : "s", start, count == 1 ? "" : fmt::format("..{}", last)));
      incomplete();
      return false;
    }
    uint64_t dups = 0, first_dup = 0;
    for (uint64_t b = start; b < start + count; ++b) {
      if (!out_.referenced.test_and_set(b)) continue;
      if (dups++ == 0) first_dup = b;
      if (dup_blocks_.size() < kMaxDupBlocks) dup_blocks_.push_back(b);
    }
    if (dups > 0) dup_claims_.push_back({o, std::string(path), first_dup, dups, start, count});

    // In use, so it must be marked allocated.
    const uint32_t ag = *g_.ag_of(start);
    if (bitmap_ok_[ag]) {
      const uint64_t head = g_.ag_header_blkno(ag);
      const uint64_t per = g_.bits_per_bitmap_block();
      uint64_t clear = 0, first_clear = 0;
      const std::vector<uint8_t>* bits = nullptr;
      for (uint64_t b = start; b < start + count; ++b) {
        const uint64_t bit = b - head;
        const uint64_t i = bit % per;
        if (!bits || i == 0) {
          ASSIGN_OR_RETURN(bits, bitmap_bits(ag, static_cast<uint32_t>(bit / per)));
        }
        if ((*bits)[i / 8] >> (i % 8) & 1) continue;
        if (clear++ == 0) first_clear = b;
      }
      if (clear > 0) {
        problem(first_clear, label(o.ino, path),
                count == 1 ? fmt::format("{} is block {}, which the AG {} bitmap marks free",
                                         describe(o, path), start, ag)
                           : fmt::format("{} is blocks {}..{}, of which {} (from {}) the AG {} "
                                         "bitmap marks free",
                                         describe(o, path), start, start + count - 1, clear,
                                         first_clear, ag));
      }
    }
    return dups == 0;
  }

  // Pass 1B: records the owners of the blocks found claimed twice.
  bool attribute(uint64_t start, uint64_t count, const Owner& o) {
    if (!in_data_area(start, count)) return false;
    bool revisit = false;
    for (auto it = std::lower_bound(dup_blocks_.begin(), dup_blocks_.end(), start);
         it != dup_blocks_.end() && *it < start + count; ++it) {
      auto& owners = owners_[*it];
      if (owners.size() < kMaxOwnersPerBlock) owners.push_back(o);
      if (!visited_dups_.insert(*it).second) revisit = true;
    }
    return !revisit;
  }

  Status attribute_duplicates() {
    std::sort(dup_blocks_.begin(), dup_blocks_.end());
    dup_blocks_.erase(std::unique(dup_blocks_.begin(), dup_blocks_.end()), dup_blocks_.end());
    attributing_ = true;
    std::vector<uint64_t> batch;
    for (auto b = inode_bits_.next_set(0); b; b = inode_bits_.next_set(*b + 1)) {
      batch.push_back(*b);
      if (batch.size() == kInodeChunk) {
        RETURN_IF_ERROR(attribute_batch(batch));
        batch.clear();
      }
    }
    RETURN_IF_ERROR(attribute_batch(batch));
    attributing_ = false;

    for (const DupClaim& c : dup_claims_) {
      std::vector<std::string> others;
      if (auto it = owners_.find(c.first_dup); it != owners_.end()) {
        for (const Owner& o : it->second) {
          if (!o.same_claim(c.owner)) others.push_back(describe(o, {}));
        }
      }
      const std::string blocks =
          c.count == 1 ? fmt::format("block {}", c.start)
                       : fmt::format("blocks {}..{} ({} of them from block {})", c.start,
                                     c.start + c.count - 1, c.dups, c.first_dup);
      std::string by;
      for (const auto& o : others) by += (by.empty() ? "" : "; ") + o;
      problem(c.first_dup, label(c.owner.ino, c.path),
              fmt::format("{} is {}, also used by {}", describe(c.owner, c.path), blocks,
                          by.empty() ? std::string("another structure") : by));
    }
    return Status::ok();
  }

  // Re-walks the blocks of the inodes in `inos` (ascending) to find who else claims the
  // doubly claimed blocks.
  Status attribute_batch(const std::vector<uint64_t>& inos) {
    std::vector<std::optional<Inode>> decoded(inos.size());
    RETURN_IF_ERROR(read_many(inos, [&](size_t k, std::span<const std::byte> blk) {
      if (auto n = Inode::decode(blk, ctx(inos[k]))) decoded[k] = std::move(*n);
    }));
    for (size_t k = 0; k < inos.size(); ++k) {
      if (!decoded[k]) continue;
      const uint64_t ino = inos[k];
      const Inode& n = *decoded[k];
      (void)attribute(ino, 1, {ino, Use::kInode, 0, ino});
      uint64_t owned = 0;
      RETURN_IF_ERROR(scan_xattr(ino, n, {}, owned));
      if (S_ISDIR(n.mode)) {
        if (!(n.flags & Inode::kInlineData) && (n.flags & Inode::kHashedDir)) {
          DirCtx d{ino, {}, false, 0, 0};
          RETURN_IF_ERROR(walk_hashed(d, n, owned));
        }
      } else if (!(n.flags & Inode::kInlineData)) {
        RETURN_IF_ERROR(walk_extents(ino, n, {}, Use::kData, nullptr, owned));
      }
    }
    return Status::ok();
  }

  // ---------------------------------------------------------------------------------------
  // Inodes

  void check_inode_fields(uint64_t ino, const Inode& n, std::string_view path) {
    const FileType type = format::file_type_of_mode(n.mode);
    if (type == FileType::kUnknown) {
      problem(ino, label(ino, path), fmt::format("mode {:o} has no known file type", n.mode));
    }
    constexpr uint32_t kKnownFlags = Inode::kInlineData | Inode::kOrphan | Inode::kHashedDir;
    if (n.flags & ~kKnownFlags) {
      problem(ino, label(ino, path), fmt::format("unknown flags {:#x}", n.flags & ~kKnownFlags));
    }
    if (type == FileType::kDirectory) {
      if ((n.flags & Inode::kInlineData) && (n.flags & Inode::kHashedDir)) {
        problem(ino, label(ino, path), "directory is flagged both inline and hashed");
      }
    } else {
      if (n.flags & Inode::kHashedDir) {
        problem(ino, label(ino, path), "a non-directory is flagged as a hashed directory");
      }
      if (n.dir_entries != 0 || n.dir_depth != 0) {
        problem(ino, label(ino, path),
                fmt::format("a non-directory has directory fields set (entries {}, depth {})",
                            n.dir_entries, n.dir_depth));
      }
    }
    if (type == FileType::kSymlink) {
      if (!(n.flags & Inode::kInlineData)) {
        problem(ino, label(ino, path), "symlink target is not stored inline");
      } else if (n.inline_data.empty() || n.size != n.inline_data.size()) {
        problem(
            ino, label(ino, path),
            fmt::format("symlink size {} but a target of {} bytes", n.size, n.inline_data.size()));
      }
    }
  }

  // An inode met for the first time, named by a directory (`from`: the block holding the
  // entry) or on an orphan list: counts it, claims its block and checks its fields.
  // Directories are queued; other inodes have their blocks walked now.
  Status found_inode(uint64_t ino, const Inode& n, const std::string& path, uint64_t from,
                     bool orphan) {
    inode_bits_.test_and_set(ino);
    ++out_.inodes;
    ++out_.inodes_per_ag[*g_.ag_of(ino)];
    if (on_inodes_ && out_.inodes % 1024 == 0) on_inodes_(out_.inodes);
    ASSIGN_OR_RETURN(bool fresh, claim(ino, 1, {ino, Use::kInode, 0, from}, path));
    (void)fresh;  // a block also claimed as something else: reported; still an inode here
    check_inode_fields(ino, n, path);
    if ((n.flags & Inode::kOrphan) && !orphan) flagged_orphans_.emplace_back(ino, path);
    if (S_ISDIR(n.mode)) {
      dir_bits_.test_and_set(ino);
      ++out_.directories;
      queue_.push_back({ino, path, orphan});
      return Status::ok();
    }
    if (!orphan && n.nlink != 1) links_[ino] = {n.nlink, 1, path};
    uint64_t owned = 0;
    RETURN_IF_ERROR(scan_xattr(ino, n, path, owned));
    if (!(n.flags & Inode::kInlineData)) {
      RETURN_IF_ERROR(walk_extents(ino, n, path, Use::kData, nullptr, owned));
    }
    check_block_count(ino, n, path, owned);
    return Status::ok();
  }

  void check_block_count(uint64_t ino, const Inode& n, std::string_view path, uint64_t owned) {
    if (n.blocks != owned) {
      problem(ino, label(ino, path),
              fmt::format("block count is {} but it owns {} blocks (data, tree, directory and "
                          "xattr blocks)",
                          n.blocks, owned));
    }
  }

  Status scan_xattr(uint64_t ino, const Inode& n, std::string_view path, uint64_t& owned) {
    if (n.xattr_block == 0) return Status::ok();
    ++owned;
    const uint64_t blk = n.xattr_block;
    ASSIGN_OR_RETURN(bool fresh, claim(blk, 1, {ino, Use::kXattr, 0, ino}, path));
    if (!fresh || attributing_) return Status::ok();
    RETURN_IF_ERROR(read_one(blk));
    auto x = format::XattrBlock::decode(one_.span(), ctx(blk));
    if (!x) {
      problem(blk, label(ino, path), x.status().message());
    } else if (x->owner != ino) {
      problem(blk, label(ino, path),
              fmt::format("xattr block {} belongs to inode {}", blk, x->owner));
    } else {
      for (size_t i = 1; i < x->entries.size(); ++i) {
        if (!(x->entries[i - 1].name < x->entries[i].name)) {
          problem(blk, label(ino, path),
                  fmt::format("xattr names \"{}\" and \"{}\" are out of order or repeated",
                              x->entries[i - 1].name, x->entries[i].name));
          break;
        }
      }
    }
    return Status::ok();
  }

  // ---------------------------------------------------------------------------------------
  // Extent trees

  // Walks the extent tree of `ino`, claiming nodes and extents (as `use`); adds every block
  // it points at to `owned`; leaf extents go to `leaves` when given.
  Status walk_extents(uint64_t ino, const Inode& n, std::string_view path, Use use,
                      std::vector<Extent>* leaves, uint64_t& owned) {
    if (n.extent_depth > kMaxExtentDepth) {
      problem(ino, label(ino, path),
              fmt::format("extent tree depth {} is impossible", n.extent_depth));
      incomplete();
      return Status::ok();
    }
    if (n.extent_depth > 0 && n.extent_root.empty()) {
      problem(ino, label(ino, path),
              fmt::format("extent tree of depth {} has an empty root", n.extent_depth));
    }
    return walk_node(ino, path, n.extent_root, n.extent_depth, 0,
                     std::numeric_limits<uint64_t>::max(), ino, use, leaves, owned);
  }

  // `entries` of a node at `depth` held in block `where` (the inode for the root). Routing
  // (ExtentTree::route: the last entry whose key is <= the block, entry 0 when none is)
  // sends file blocks [lo, hi) here, so everything below must lie inside that range.
  Status walk_node(uint64_t ino, std::string_view path, const std::vector<Extent>& entries,
                   uint16_t depth, uint64_t lo, uint64_t hi, uint64_t where, Use use,
                   std::vector<Extent>* leaves, uint64_t& owned) {
    const std::string node_name =
        where == ino ? std::string("extent root") : fmt::format("extent node {}", where);
    if (depth == 0) {
      uint64_t prev_end = 0;
      bool first = true;
      for (const Extent& e : entries) {
        if (e.length == 0) {
          problem(
              where, label(ino, path),
              fmt::format("{}: the extent at file block {} has length 0", node_name, e.logical));
          continue;
        }
        if (e.logical > std::numeric_limits<uint64_t>::max() - e.length) {
          problem(where, label(ino, path),
                  fmt::format("{}: the extent at file block {} runs past the largest file block",
                              node_name, e.logical));
          continue;
        }
        const uint64_t end = e.logical + e.length;
        if (e.flags & ~Extent::kUnwritten) {
          problem(where, label(ino, path),
                  fmt::format("{}: the extent at file block {} has unknown flags {:#x}", node_name,
                              e.logical, e.flags));
        }
        if (!first && e.logical < prev_end) {
          problem(where, label(ino, path),
                  fmt::format("{}: the extent at file block {} overlaps or precedes the one "
                              "before it (ending at {})",
                              node_name, e.logical, prev_end));
        }
        if (e.logical < lo || end > hi) {
          problem(where, label(ino, path),
                  fmt::format("{}: the extent of file blocks [{}, {}) is not inside [{}, {}), the "
                              "range its index entry routes here: lookups miss it",
                              node_name, e.logical, end, lo, hi));
        }
        first = false;
        prev_end = std::max(prev_end, end);
        owned += e.length;
        ASSIGN_OR_RETURN(bool fresh,
                         claim(e.physical, e.length, {ino, use, e.logical, where}, path));
        (void)fresh;
        if (leaves) leaves->push_back(e);
      }
      return Status::ok();
    }
    for (size_t i = 0; i < entries.size(); ++i) {
      const Extent& ix = entries[i];
      if (i > 0 && ix.logical <= entries[i - 1].logical) {
        problem(where, label(ino, path),
                fmt::format("{}: index keys {} and {} are not increasing", node_name,
                            entries[i - 1].logical, ix.logical));
      } else if (i > 0 && (ix.logical < lo || ix.logical >= hi)) {
        problem(where, label(ino, path),
                fmt::format("{}: index key {} is outside [{}, {}), the range routed here",
                            node_name, ix.logical, lo, hi));
      }
      if (ix.length != 0 || ix.flags != 0) {
        problem(where, label(ino, path),
                fmt::format("{}: index entry {} has length {} and flags {:#x}; both must be 0",
                            node_name, i, ix.length, ix.flags));
      }
      const uint64_t child_lo = i == 0 ? lo : std::max(lo, ix.logical);
      const uint64_t child_hi = i + 1 < entries.size() ? std::min(hi, entries[i + 1].logical) : hi;
      ++owned;
      ASSIGN_OR_RETURN(bool fresh,
                       claim(ix.physical, 1, {ino, Use::kExtentNode, ix.logical, where}, path));
      if (!fresh) continue;
      RETURN_IF_ERROR(read_one(ix.physical));
      auto node = format::ExtentNode::decode(one_.span(), ctx(ix.physical));
      if (!node) {
        problem(ix.physical, label(ino, path), node.status().message());
        incomplete();
        continue;
      }
      if (node->owner != ino || node->depth != depth - 1) {
        problem(ix.physical, label(ino, path),
                fmt::format("extent node {} belongs to inode {} at depth {}; expected inode {} "
                            "at depth {}",
                            ix.physical, node->owner, node->depth, ino, depth - 1));
        incomplete();
        continue;
      }
      if (node->entries.empty()) {
        problem(ix.physical, label(ino, path),
                fmt::format("extent node {} is empty (empty nodes are freed)", ix.physical));
      }
      RETURN_IF_ERROR(walk_node(ino, path, node->entries, static_cast<uint16_t>(depth - 1),
                                child_lo, child_hi, ix.physical, use, leaves, owned));
    }
    return Status::ok();
  }

  // ---------------------------------------------------------------------------------------
  // Directories

  Status walk_root() {
    const uint64_t root = sb_.root_inode;
    const std::string name = "root directory inode";
    if (!in_data_area(root, 1)) {
      problem(0, "superblock", fmt::format("root inode {} is outside every AG's data area", root));
      incomplete();
      return Status::ok();
    }
    RETURN_IF_ERROR(read_one(root));
    auto n = Inode::decode(one_.span(), ctx(root));
    if (!n) {
      problem(root, name, n.status().message());
      incomplete();
      return Status::ok();
    }
    if (!S_ISDIR(n->mode)) {
      problem(root, name, fmt::format("mode {:o} is not a directory", n->mode));
      incomplete();
      return Status::ok();
    }
    if (n->parent != root) {
      problem(root, label(root, "/"), fmt::format("parent is {}, not the root itself", n->parent));
    }
    return found_inode(root, *n, "/", root, /*orphan=*/false);
  }

  Status drain_queue() {
    while (!queue_.empty()) {
      QueuedDir q = std::move(queue_.front());
      queue_.pop_front();
      RETURN_IF_ERROR(read_one(q.ino));
      auto n = Inode::decode(one_.span(), ctx(q.ino));
      if (!n) {  // it decoded when found: the device changed under us
        problem(q.ino, label(q.ino, q.path), n.status().message());
        incomplete();
        continue;
      }
      RETURN_IF_ERROR(walk_dir(q, *n));
    }
    return Status::ok();
  }

  Status walk_dir(const QueuedDir& q, const Inode& n) {
    DirCtx d{q.ino, q.path, q.orphan, 0, 0};
    uint64_t owned = 0;
    RETURN_IF_ERROR(scan_xattr(q.ino, n, q.path, owned));
    if (n.flags & Inode::kInlineData) {
      if (n.dir_depth != 0) {
        problem(q.ino, label(q.ino, q.path),
                fmt::format("inline directory has hash table depth {}", n.dir_depth));
      }
      auto entries = format::decode_dir_entries(std::as_bytes(std::span(n.inline_data)));
      if (!entries) {
        problem(q.ino, label(q.ino, q.path), "inline entries: " + entries.status().message());
        incomplete();
      } else {
        check_entry_order(*entries, q.ino, d);
        check_repeated_names(*entries, q.ino, d);
        for (auto& e : *entries) batch_.push_back({std::move(e), q.ino});
        RETURN_IF_ERROR(flush_entries(d));
      }
    } else if (n.flags & Inode::kHashedDir) {
      RETURN_IF_ERROR(walk_hashed(d, n, owned));
    } else {
      problem(q.ino, label(q.ino, q.path), "directory is neither inline nor hashed");
      incomplete();
    }
    if (d.entries != n.dir_entries) {
      problem(q.ino, label(q.ino, q.path),
              fmt::format("entry count is {} but it holds {} entries", n.dir_entries, d.entries));
    }
    if (q.orphan) {
      if (d.entries != 0) {
        problem(q.ino, label(q.ino, q.path),
                fmt::format("removed directory still holds {} entries", d.entries));
      }
    } else if (n.nlink != 2 + d.subdirs) {
      problem(q.ino, label(q.ino, q.path),
              fmt::format("link count is {} but it has {} subdirectories (expected {})", n.nlink,
                          d.subdirs, 2 + d.subdirs));
    }
    check_block_count(q.ino, n, q.path, owned);
    return Status::ok();
  }

  // Entries are kept sorted by (hash, name) inline and in each leaf.
  void check_entry_order(const std::vector<DirEntry>& entries, uint64_t where, const DirCtx& d) {
    for (size_t i = 1; i < entries.size(); ++i) {
      if (!entry_less(entries[i - 1], entries[i]) && entries[i - 1].name != entries[i].name) {
        problem(where, label(d.ino, d.path),
                fmt::format("entries \"{}\" and \"{}\" are out of (hash, name) order",
                            entries[i - 1].name, entries[i].name));
        return;
      }
    }
  }

  void check_repeated_names(const std::vector<DirEntry>& entries, uint64_t where, const DirCtx& d) {
    std::vector<std::string_view> names;
    names.reserve(entries.size());
    for (const auto& e : entries) names.push_back(e.name);
    std::sort(names.begin(), names.end());
    for (size_t i = 1; i < names.size(); ++i) {
      if (names[i] == names[i - 1]) {
        problem(where, label(d.ino, d.path),
                fmt::format("the name \"{}\" appears twice", names[i]));
      }
    }
  }

  // A hashed directory: its extent tree maps logical blocks [0, n) to DirIndex blocks (the
  // table of 2^dir_depth leaf pointers, DirIndex::capacity per block); each leaf of local
  // depth d serves the 2^(dir_depth - d) consecutive slots sharing its top d hash bits, and
  // may chain overflow leaves through next_leaf.
  Status walk_hashed(DirCtx& d, const Inode& n, uint64_t& owned) {
    std::vector<Extent> extents;
    RETURN_IF_ERROR(walk_extents(d.ino, n, d.path, Use::kDirTable, &extents, owned));
    const std::string who = label(d.ino, d.path);
    if (n.dir_depth > kMaxDirDepth) {
      problem(
          d.ino, who,
          fmt::format("hash table depth {} is above the largest, {}", n.dir_depth, kMaxDirDepth));
      incomplete();
      return Status::ok();
    }
    const uint32_t depth = n.dir_depth;
    const uint64_t slots = uint64_t{1} << depth;
    const uint64_t per = format::DirIndex::capacity(bs_);
    const uint64_t nblocks = (slots + per - 1) / per;

    std::vector<uint64_t> phys(nblocks, 0);
    for (const Extent& e : extents) {
      if (e.flags & Extent::kUnwritten) {
        problem(d.ino, who,
                fmt::format("hash table blocks from {} are mapped unwritten", e.logical));
      }
      if (e.logical + e.length > nblocks) {
        problem(d.ino, who,
                fmt::format("maps blocks up to {} but its hash table has {} blocks",
                            e.logical + e.length - 1, nblocks));
      }
      if (!in_data_area(e.physical, e.length)) continue;  // reported by the claim
      for (uint64_t l = e.logical; l < std::min(e.logical + e.length, nblocks); ++l) {
        phys[l] = e.physical + (l - e.logical);
      }
    }

    // The table, slot by slot; kUnknownPointer where a table block could not be read.
    std::vector<uint64_t> table(slots, kUnknownPointer);
    std::vector<std::pair<uint64_t, uint64_t>> to_read;  // (device block, table block)
    for (uint64_t b = 0; b < nblocks; ++b) {
      if (phys[b] == 0) {
        problem(d.ino, who, fmt::format("hash table block {} is not mapped", b));
        incomplete();
      } else {
        to_read.emplace_back(phys[b], b);
      }
    }
    std::sort(to_read.begin(), to_read.end());
    std::vector<uint64_t> blocks;
    for (const auto& [p, b] : to_read) blocks.push_back(p);
    RETURN_IF_ERROR(read_many(blocks, [&](size_t k, std::span<const std::byte> data) {
      const auto [p, b] = to_read[k];
      auto t = format::DirIndex::decode(data, ctx(p));
      if (!t) {
        problem(p, who, t.status().message());
        incomplete();
        return;
      }
      const uint64_t first = b * per;
      const uint64_t want = std::min(per, slots - first);
      if (t->owner != d.ino || t->first_index != first) {
        problem(p, who,
                fmt::format("hash table block {} (block {}) belongs to inode {} with first slot "
                            "{}; expected first slot {}",
                            b, p, t->owner, t->first_index, first));
        incomplete();
        return;
      }
      if (t->leaves.size() != want) {
        problem(p, who,
                fmt::format("hash table block {} holds {} pointers, expected {}", b,
                            t->leaves.size(), want));
        if (t->leaves.size() < want) incomplete();
      }
      for (uint64_t k2 = 0; k2 < std::min<uint64_t>(want, t->leaves.size()); ++k2) {
        table[first + k2] = t->leaves[k2];
      }
    }));

    // Runs of equal pointers: one leaf (chain) each.
    std::vector<LeafRun> runs;
    for (uint64_t i = 0; i < slots;) {
      const uint64_t p = table[i];
      uint64_t j = i + 1;
      while (j < slots && table[j] == p) ++j;
      if (p != kUnknownPointer) {
        if (!in_data_area(p, 1)) {
          problem(phys[i / per], who,
                  fmt::format("hash table slots {}..{} point at block {}, outside every AG's "
                              "data area",
                              i, j - 1, p));
          incomplete();
        } else {
          runs.push_back({i, j - i, p});
        }
      }
      i = j;
    }

    for (size_t r0 = 0; r0 < runs.size(); r0 += kLeafBatch) {
      const size_t r1 = std::min(runs.size(), r0 + kLeafBatch);
      std::vector<std::pair<uint64_t, size_t>> heads;  // (block, run)
      for (size_t r = r0; r < r1; ++r) {
        const LeafRun& run = runs[r];
        ++owned;
        ASSIGN_OR_RETURN(
            bool fresh,
            claim(run.blkno, 1, {d.ino, Use::kDirLeaf, run.first_slot, phys[run.first_slot / per]},
                  d.path));
        if (fresh) heads.emplace_back(run.blkno, r);
      }
      std::sort(heads.begin(), heads.end());
      std::vector<uint64_t> head_blocks;
      for (const auto& [blk, r] : heads) head_blocks.push_back(blk);
      std::vector<std::optional<format::DirLeaf>> leaves(r1 - r0);
      RETURN_IF_ERROR(read_many(head_blocks, [&](size_t k, std::span<const std::byte> data) {
        const auto [blk, r] = heads[k];
        auto l = format::DirLeaf::decode(data, ctx(blk));
        if (!l) {
          problem(blk, who, l.status().message());
          incomplete();
          return;
        }
        leaves[r - r0] = std::move(*l);
      }));
      for (size_t r = r0; r < r1; ++r) {
        if (!leaves[r - r0]) continue;
        RETURN_IF_ERROR(walk_leaf_chain(d, depth, runs[r], std::move(*leaves[r - r0]), owned));
        if (batch_.size() >= kEntryBatch) RETURN_IF_ERROR(flush_entries(d));
      }
    }
    return flush_entries(d);
  }

  // Checks one leaf (head or overflow) against the table slots that point at its chain.
  // False when it does not belong to this directory (its entries are not taken).
  bool check_leaf(const DirCtx& d, uint32_t depth, const LeafRun& run, uint64_t blk,
                  const format::DirLeaf& l, std::optional<uint16_t> head_depth) {
    const std::string who = label(d.ino, d.path);
    if (l.owner != d.ino) {
      problem(blk, who, fmt::format("directory leaf {} belongs to inode {}", blk, l.owner));
      incomplete();
      return false;
    }
    if (head_depth && l.depth != *head_depth) {
      problem(blk, who,
              fmt::format("overflow leaf {} has depth {}, its chain's head {}", blk, l.depth,
                          *head_depth));
    }
    if (l.depth > depth) {
      problem(blk, who,
              fmt::format("leaf {} has depth {}, deeper than its table ({})", blk, l.depth, depth));
      return true;
    }
    if (!head_depth) {
      const uint64_t span = uint64_t{1} << (depth - l.depth);
      if (run.first_slot % span != 0 || run.slots != span) {
        problem(blk, who,
                fmt::format("table slots {}..{} point at leaf {} of depth {}, which serves the {} "
                            "slots from {}",
                            run.first_slot, run.first_slot + run.slots - 1, blk, l.depth, span,
                            run.first_slot / span * span));
      }
    }
    if (l.depth > 0) {
      const uint64_t prefix = run.first_slot >> (depth - l.depth);
      for (const auto& e : l.entries) {
        if ((e.hash >> (32 - l.depth)) != prefix) {
          problem(blk, who,
                  fmt::format("entry \"{}\" (hash {:#010x}) is in leaf {}, which serves hash "
                              "prefix {:#x} of {} bits: lookups cannot find it",
                              e.name, e.hash, blk, prefix, l.depth));
        }
      }
    }
    check_entry_order(l.entries, blk, d);
    return true;
  }

  Status walk_leaf_chain(DirCtx& d, uint32_t depth, const LeafRun& run, format::DirLeaf head,
                         uint64_t& owned) {
    if (!check_leaf(d, depth, run, run.blkno, head, std::nullopt)) return Status::ok();
    const uint16_t head_depth = head.depth;
    std::vector<DirEntry> chain_entries;
    std::vector<uint64_t> where;
    auto take = [&](format::DirLeaf& l, uint64_t blk) {
      for (auto& e : l.entries) {
        chain_entries.push_back(std::move(e));
        where.push_back(blk);
      }
    };
    take(head, run.blkno);
    uint64_t prev = run.blkno;
    for (uint64_t next = head.next_leaf; next != 0;) {
      ++owned;
      ASSIGN_OR_RETURN(bool fresh,
                       claim(next, 1, {d.ino, Use::kDirLeaf, run.first_slot, prev}, d.path));
      if (!fresh) break;
      RETURN_IF_ERROR(read_one(next));
      auto l = format::DirLeaf::decode(one_.span(), ctx(next));
      if (!l) {
        problem(next, label(d.ino, d.path), l.status().message());
        incomplete();
        break;
      }
      if (!check_leaf(d, depth, run, next, *l, head_depth)) break;
      take(*l, next);
      prev = next;
      next = l->next_leaf;
    }
    if (attributing_) return Status::ok();
    check_repeated_names(chain_entries, run.blkno, d);
    for (size_t i = 0; i < chain_entries.size(); ++i) {
      batch_.push_back({std::move(chain_entries[i]), where[i]});
    }
    return Status::ok();
  }

  // Checks the entries gathered in batch_ and follows them. The inodes they name for the
  // first time are read in block order, kInodeChunk at a time: entries come in hash order,
  // which is no order at all on the device, so sorting the whole batch (up to a million
  // entries, a whole directory usually) turns random reads into sequential ones.
  Status flush_entries(DirCtx& d) {
    if (attributing_ || batch_.empty()) {
      batch_.clear();
      return Status::ok();
    }
    const std::string who = label(d.ino, d.path);
    // (inode, entry index) of the entries naming a block in a data area; sorted, so that
    // inodes are read in block order (kept apart from batch_ so the sort runs in cache).
    std::vector<std::pair<uint64_t, uint32_t>> order;
    order.reserve(batch_.size());
    for (uint32_t i = 0; i < batch_.size(); ++i) {
      const Named& x = batch_[i];
      const DirEntry& e = x.entry;
      if (d.orphan) {
        problem(x.where, who, fmt::format("removed directory still names \"{}\"", e.name));
      }
      if (e.name == "." || e.name == "..") {
        problem(x.where, who, fmt::format("stores an entry named \"{}\"", e.name));
      }
      if (const uint32_t h = format::dir_name_hash(e.name); e.hash != h) {
        problem(x.where, who,
                fmt::format("entry \"{}\" has hash {:#010x}, expected {:#010x}: lookups cannot "
                            "find it",
                            e.name, e.hash, h));
      }
      if (in_data_area(e.ino, 1)) {
        order.emplace_back(e.ino, i);
      } else {
        problem(x.where, who,
                fmt::format("entry \"{}\" names block {}, outside every AG's data area", e.name,
                            e.ino));
        incomplete();
      }
    }
    d.entries += batch_.size();
    std::sort(order.begin(), order.end());

    std::vector<uint64_t> want;
    std::vector<std::optional<Inode>> decoded;
    std::vector<std::string> errors;
    for (size_t pos = 0; pos < order.size();) {
      // The next chunk: entries naming at most kInodeChunk distinct inodes.
      want.clear();
      size_t end = pos;
      uint64_t distinct = 0, last = 0;
      for (; end < order.size(); ++end) {
        const uint64_t ino = order[end].first;
        if (end == pos || ino != last) {
          if (distinct == kInodeChunk) break;
          ++distinct;
          last = ino;
          if (!inode_bits_.test(ino)) want.push_back(ino);
        }
      }
      decoded.assign(want.size(), std::nullopt);
      errors.assign(want.size(), {});
      RETURN_IF_ERROR(read_many(want, [&](size_t k, std::span<const std::byte> blk) {
        auto n = Inode::decode(blk, ctx(want[k]));
        if (n) {
          decoded[k] = std::move(*n);
        } else {
          errors[k] = n.status().message();
        }
      }));
      for (; pos < end; ++pos) {
        const Named& x = batch_[order[pos].second];
        const size_t k = static_cast<size_t>(
            std::lower_bound(want.begin(), want.end(), x.entry.ino) - want.begin());
        const Inode* n =
            k < want.size() && want[k] == x.entry.ino && decoded[k] ? &*decoded[k] : nullptr;
        RETURN_IF_ERROR(follow_entry(d, who, x, n, k < errors.size() ? errors[k] : ""));
      }
    }
    batch_.clear();
    return Status::ok();
  }

  // One entry of `d`; `n`: the inode it names when that was read now (first sight).
  Status follow_entry(DirCtx& d, const std::string& who, const Named& x, const Inode* n,
                      std::string_view error) {
    const DirEntry& e = x.entry;
    if (inode_bits_.test(e.ino)) {
      if (dir_bits_.test(e.ino)) {
        problem(x.where, who,
                fmt::format("entry \"{}\" names directory {}, which {}: a directory has one "
                            "name (a loop or a hard link to a directory)",
                            e.name, e.ino,
                            e.ino == sb_.root_inode ? "is the root" : "is named elsewhere too"));
        return Status::ok();
      }
      auto [it, inserted] = links_.try_emplace(e.ino, LinkCount{1, 1, join_path(d.path, e.name)});
      ++it->second.names;
      return Status::ok();
    }
    if (!n) {
      problem(x.where, who,
              fmt::format("entry \"{}\" names block {}, which holds no valid inode: {}", e.name,
                          e.ino, error));
      incomplete();
      return Status::ok();
    }
    const std::string path = join_path(d.path, e.name);
    const FileType type = format::file_type_of_mode(n->mode);
    if (e.type != type) {
      problem(x.where, who,
              fmt::format("entry \"{}\" says {}, but inode {} is a {}", e.name, type_name(e.type),
                          e.ino, type_name(type)));
    }
    if (S_ISDIR(n->mode)) {
      ++d.subdirs;
      if (n->parent != d.ino) {
        problem(e.ino, label(e.ino, path),
                fmt::format("parent is {}, but directory {} names it", n->parent, d.ino));
      }
    }
    return found_inode(e.ino, *n, path, x.where, /*orphan=*/false);
  }

  // ---------------------------------------------------------------------------------------
  // Orphans and link counts

  Status walk_orphan_lists() {
    for (uint32_t s = 0; s < g_.slots; ++s) {
      const uint64_t blk = g_.orphan_blkno(s);
      const std::string name = fmt::format("orphan list of slot {}", s);
      RETURN_IF_ERROR(read_one(blk));
      auto list = format::OrphanList::decode(one_.span(), ctx(blk));
      if (!list || list->slot != s) continue;  // reported by the orphan-list check
      uint64_t found = 0;
      bool whole = true;
      uint64_t prev = blk;
      for (uint64_t ino = list->head; ino != 0;) {
        const std::string where = prev == blk ? name : fmt::format("orphan inode {}", prev);
        if (!in_data_area(ino, 1)) {
          problem(prev, where, fmt::format("links to block {}, outside every AG's data area", ino));
          incomplete();
          whole = false;
          break;
        }
        if (!on_orphan_list_.insert(ino).second) {
          problem(prev, where, fmt::format("links to inode {} again: the list loops", ino));
          whole = false;
          break;
        }
        ++found;
        RETURN_IF_ERROR(read_one(ino));
        auto n = Inode::decode(one_.span(), ctx(ino));
        const std::string path = fmt::format("orphan of slot {}", s);
        if (!n) {
          problem(ino, label(ino, path), n.status().message());
          incomplete();
          whole = false;
          break;
        }
        ++out_.orphans;
        if (!(n->flags & Inode::kOrphan)) {
          problem(ino, label(ino, path), "is on an orphan list but not flagged as an orphan");
        }
        if (n->nlink != 0) {
          problem(ino, label(ino, path),
                  fmt::format("is on an orphan list with link count {}", n->nlink));
        }
        if (inode_bits_.test(ino)) {
          problem(ino, label(ino, path), "is on an orphan list, yet a directory names it");
        } else {
          RETURN_IF_ERROR(found_inode(ino, *n, path, prev, /*orphan=*/true));
        }
        prev = ino;
        ino = n->next_orphan;
      }
      if (whole && found != list->count) {
        problem(blk, name,
                fmt::format("counts {} inodes but the list links {}", list->count, found));
      }
    }
    return Status::ok();
  }

  void check_link_counts() {
    for (const auto& [ino, lc] : links_) {
      if (lc.nlink == lc.names) continue;
      problem(ino, label(ino, lc.path),
              lc.nlink == 0 && !on_orphan_list_.contains(ino)
                  ? fmt::format("link count is 0 (and it is on no orphan list) but {} entries "
                                "name it",
                                lc.names)
                  : fmt::format("link count is {} but {} entries name it", lc.nlink, lc.names));
    }
  }

  device::BlockDevice& dev_;
  const format::Superblock sb_;
  const format::Geometry& g_;
  const uint32_t bs_;
  std::vector<bool> bitmap_ok_;
  std::function<void(uint64_t)> on_inodes_;
  device::AlignedBuffer one_;  // read_one()
  device::AlignedBuffer io_;   // read_many()
  WalkResult out_;

  BlockBitmap inode_bits_;  // inodes found (decoded and claimed)
  BlockBitmap dir_bits_;    // ... that are directories
  std::deque<QueuedDir> queue_;
  std::vector<Named> batch_;
  std::unordered_map<uint64_t, LinkCount> links_;
  std::vector<std::pair<uint64_t, std::string>> flagged_orphans_;
  std::unordered_set<uint64_t> on_orphan_list_;
  std::unordered_map<uint64_t, std::vector<uint8_t>> bitmap_cache_;

  // Doubly claimed blocks and, after pass 1B, who claims them.
  std::vector<DupClaim> dup_claims_;
  std::vector<uint64_t> dup_blocks_;
  bool attributing_ = false;
  std::unordered_map<uint64_t, std::vector<Owner>> owners_;
  std::unordered_set<uint64_t> visited_dups_;
};

}  // namespace

Result<WalkResult> walk_filesystem(const WalkInput& in) {
  SHAREDFS_CHECK(in.dev != nullptr, "walk without a device");
  return Walker(in).run();
}

}  // namespace sharedfs::mkfs::internal
