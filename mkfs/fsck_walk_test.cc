// fsck's structure walk (docs/fsck.md) on images laid out by hand: mkfs, then inodes,
// directories (inline and hashed), extent trees, xattr blocks and orphan lists written with
// format/'s encoders, the way fs/ lays them out but without fs/, then damaged on purpose.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <unordered_map>

#include "common/test_util.h"
#include "journal/journal.h"
#include "mkfs/mkfs.h"

namespace sharedfs::mkfs {
namespace {

namespace stdfs = std::filesystem;
using device::AlignedBuffer;
using format::DirEntry;
using format::Extent;
using format::FileType;
using format::Inode;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint32_t kMaxDirDepth = 20;  // fs::Directory::kMaxDepth

bool entry_less(const DirEntry& a, const DirEntry& b) {
  return a.hash != b.hash ? a.hash < b.hash : a.name < b.name;
}

FileType type_of(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return FileType::kDirectory;
    case S_IFLNK:
      return FileType::kSymlink;
    case S_IFIFO:
      return FileType::kFifo;
    default:
      return FileType::kRegular;
  }
}

struct FileSpec {
  uint32_t mode = S_IFREG | 0644;
  uint64_t extents = 0;    // one-block extents at file blocks 0, 2, 4, ...
  size_t fanout = 0;       // entries per tree node; 0: as many as fit
  uint16_t min_depth = 0;  // build at least this deep a tree
  bool xattr = false;      // give it an xattr block
  std::string symlink;     // a symlink with this target
};

// Lays out a file system by hand on mkfs's output. Keeps the AG bitmaps and headers and the
// directories in memory; finish() lays out the directories (inline when the entries fit,
// hashed otherwise) and writes everything. Writes to consecutive blocks are combined.
class ImageBuilder {
 public:
  ImageBuilder(device::BlockDevice& dev, const format::Superblock& sb)
      : dev_(dev),
        sb_(sb),
        g_(sb_.geo),
        bs_(g_.block_size),
        scratch_(bs_),
        pending_(kPendingBlocks * bs_) {
    for (uint32_t ag = 0; ag < g_.ag_count; ++ag) {
      hdr_.push_back(read<format::AgHeader>(g_.ag_header_blkno(ag)));
      std::vector<format::BitmapBlock> bms;
      for (uint32_t i = 0; i < g_.bitmap_blocks(ag); ++i) {
        bms.push_back(read<format::BitmapBlock>(g_.bitmap_blkno(ag, i)));
      }
      bm_.push_back(std::move(bms));
    }
    cursor_ = g_.ag_first_data_block(0);
    dirs_[root()] = Dir{read<Inode>(root()), {}, false, false, kMaxDirDepth};
  }

  uint64_t root() const { return sb_.root_inode; }
  uint32_t bs() const { return bs_; }
  format::BlockContext ctx(uint64_t blk) const { return {blk, sb_.fs_tag()}; }

  // ---- blocks
  bool allocated(uint64_t blk) const {
    const uint32_t ag = *g_.ag_of(blk);
    const uint64_t bit = blk - g_.ag_header_blkno(ag);
    const uint64_t per = g_.bits_per_bitmap_block();
    return bm_[ag][bit / per].test(bit % per);
  }
  void mark(uint64_t blk, bool used) {
    const uint32_t ag = *g_.ag_of(blk);
    const uint64_t bit = blk - g_.ag_header_blkno(ag);
    const uint64_t per = g_.bits_per_bitmap_block();
    bm_[ag][bit / per].set(bit % per, used);
  }
  // `n` contiguous free blocks from the cursor on.
  uint64_t alloc(uint32_t n = 1) {
    for (;;) {
      auto ag = g_.ag_of(cursor_);
      EXPECT_TRUE(ag.has_value()) << "image full";
      const uint64_t end = g_.ag_header_blkno(*ag) + g_.ag_size(*ag);
      if (cursor_ + n > end) {
        cursor_ = g_.ag_first_data_block(*ag + 1);
        continue;
      }
      bool free = true;
      for (uint64_t b = cursor_; b < cursor_ + n && free; ++b) free = !allocated(b);
      if (!free) {
        ++cursor_;
        continue;
      }
      for (uint64_t b = cursor_; b < cursor_ + n; ++b) mark(b, true);
      cursor_ += n;
      return cursor_ - n;
    }
  }
  uint64_t new_inode_block() {
    const uint64_t ino = alloc(1);
    ++hdr_[*g_.ag_of(ino)].inode_count;
    return ino;
  }

  void write_block(uint64_t blk, std::span<const std::byte> data) {
    if (pending_n_ > 0 && (blk != pending_start_ + pending_n_ || pending_n_ == kPendingBlocks)) {
      flush_writes();
    }
    if (pending_n_ == 0) pending_start_ = blk;
    std::memcpy(pending_.data() + pending_n_ * bs_, data.data(), bs_);
    ++pending_n_;
  }
  void flush_writes() {
    if (pending_n_ == 0) return;
    ASSERT_OK(dev_.write(pending_start_ * bs_, pending_.span().first(pending_n_ * bs_)));
    pending_n_ = 0;
  }
  template <typename T>
  void put(uint64_t blk, const T& v) {
    v.encode(scratch_.span(), ctx(blk));
    write_block(blk, scratch_.span());
  }
  template <typename T>
  T read(uint64_t blk) {
    flush_writes();
    AlignedBuffer buf(bs_);
    EXPECT_OK(dev_.read(blk * bs_, buf.span()));
    auto v = T::decode(buf.span(), ctx(blk));
    EXPECT_TRUE(v.is_ok()) << v.status().to_string();
    return v.is_ok() ? std::move(*v) : T{};
  }
  template <typename T>
  void modify(uint64_t blk, const std::function<void(T&)>& fn) {
    T v = read<T>(blk);
    fn(v);
    put(blk, v);
    flush_writes();
  }

  bool allocated_on_disk(uint64_t blk) {
    const uint32_t ag = *g_.ag_of(blk);
    const uint64_t bit = blk - g_.ag_header_blkno(ag);
    const uint64_t per = g_.bits_per_bitmap_block();
    return read<format::BitmapBlock>(g_.bitmap_blkno(ag, static_cast<uint32_t>(bit / per)))
        .test(bit % per);
  }

  // ---- the tree
  // hashed: lay it out hashed even if the entries fit inline; max_depth: the largest
  // hash-table depth, past which full leaves chain overflow leaves.
  uint64_t mkdir(uint64_t parent, const std::string& name, bool hashed = false,
                 uint32_t max_depth = kMaxDirDepth) {
    const uint64_t ino = new_inode_block();
    Inode n;
    n.generation = ino;
    n.mode = S_IFDIR | 0755;
    n.nlink = 2;
    n.flags = Inode::kInlineData;
    n.parent = parent == 0 ? ino : parent;
    put(ino, n);  // rewritten by finish()
    dirs_[ino] = Dir{n, {}, hashed, parent == 0, max_depth};
    if (parent != 0) add_entry(parent, name, ino, FileType::kDirectory);
    return ino;
  }

  // parent 0: named by no directory (an orphan to be).
  uint64_t mkfile(uint64_t parent, const std::string& name, const FileSpec& spec = {}) {
    const uint64_t ino = new_inode_block();
    Inode n;
    n.generation = ino;
    n.mode = spec.symlink.empty() ? spec.mode : (S_IFLNK | 0777);
    n.nlink = 1;
    if (!spec.symlink.empty()) {
      n.flags = Inode::kInlineData;
      n.inline_data.assign(spec.symlink.begin(), spec.symlink.end());
      n.size = spec.symlink.size();
    } else if (spec.extents > 0) {
      std::vector<Extent> leaves;
      for (uint64_t k = 0; k < spec.extents; ++k) {
        leaves.push_back({2 * k, alloc(1), 1, 0});
      }
      n.size = 2 * spec.extents * bs_;
      n.blocks = spec.extents;
      build_tree(ino, std::move(leaves), spec.fanout, spec.min_depth, n);
    }
    if (spec.xattr) {
      const uint64_t x = alloc(1);
      put(x, format::XattrBlock{.owner = ino, .entries = {{"user.a", {1, 2, 3}}}});
      n.xattr_block = x;
      ++n.blocks;
    }
    put(ino, n);
    if (parent != 0) add_entry(parent, name, ino, type_of(n.mode));
    return ino;
  }

  void link(uint64_t parent, const std::string& name, uint64_t ino) {
    flush_writes();
    Inode n = read<Inode>(ino);
    ++n.nlink;
    put(ino, n);
    add_entry(parent, name, ino, type_of(n.mode));
  }

  void add_entry(uint64_t dir, const std::string& name, uint64_t ino, FileType type) {
    dirs_.at(dir).entries.push_back({ino, format::dir_name_hash(name), type, name});
  }

  // Puts `ino` (named by nothing, or about to be) on `slot`'s orphan list with nlink 0.
  void orphan(uint64_t ino, uint32_t slot) {
    if (auto it = dirs_.find(ino); it != dirs_.end()) {
      it->second.orphan = true;
      orphans_[slot].push_back(ino);
      return;
    }
    flush_writes();
    Inode n = read<Inode>(ino);
    n.nlink = 0;
    n.flags |= Inode::kOrphan;
    n.next_orphan = orphans_[slot].empty() ? 0 : orphans_[slot].back();
    put(ino, n);
    orphans_[slot].push_back(ino);
  }

  // Lays out the directories and writes the orphan lists, bitmaps and headers.
  void finish() {
    for (auto& [ino, d] : dirs_) {
      Inode& n = d.inode;
      uint64_t subdirs = 0;
      for (const auto& e : d.entries) subdirs += e.type == FileType::kDirectory ? 1 : 0;
      n.nlink = d.orphan ? 0 : static_cast<uint32_t>(2 + subdirs);
      n.dir_entries = d.entries.size();
      std::sort(d.entries.begin(), d.entries.end(), entry_less);
      size_t bytes = 0;
      for (const auto& e : d.entries) bytes += format::dir_entry_size(e.name.size());
      if (!d.hashed && bytes <= Inode::inline_capacity(bs_)) {
        n.inline_data.resize(bytes);
        if (bytes > 0) {  // encode_dir_entries memsets area.data(), null when empty
          std::vector<std::byte> area(bytes);
          ASSERT_OK(format::encode_dir_entries(area, d.entries));
          std::memcpy(n.inline_data.data(), area.data(), bytes);
        }
      } else {
        layout_hashed(ino, d);
      }
      if (d.orphan) {
        n.flags |= Inode::kOrphan;
        auto& list = orphans_[orphan_slot_of(ino)];
        const auto pos = std::find(list.begin(), list.end(), ino);
        n.next_orphan = pos == list.begin() ? 0 : *std::prev(pos);
      }
      put(ino, n);
    }
    for (const auto& [slot, list] : orphans_) {
      put(g_.orphan_blkno(slot), format::OrphanList{.slot = slot,
                                                    .count = static_cast<uint32_t>(list.size()),
                                                    .head = list.empty() ? 0 : list.back()});
    }
    for (uint32_t ag = 0; ag < g_.ag_count; ++ag) {
      const uint64_t size = g_.ag_size(ag);
      const uint64_t per = g_.bits_per_bitmap_block();
      uint64_t used = 0;
      for (uint32_t i = 0; i < bm_[ag].size(); ++i) {
        used += bm_[ag][i].count_set(std::min(per, size - std::min(size, i * per)));
        put(g_.bitmap_blkno(ag, i), bm_[ag][i]);
      }
      hdr_[ag].free_blocks = size - used;
      put(g_.ag_header_blkno(ag), hdr_[ag]);
    }
    flush_writes();
  }

  // After finish(): blocks of a hashed directory.
  std::vector<uint64_t> leaves_of(uint64_t dir) const { return leaves_.at(dir); }

  // After finish(): marks a block used or free on disk, keeping the AG's free count right.
  void set_allocated(uint64_t blk, bool used) {
    const uint32_t ag = *g_.ag_of(blk);
    const uint64_t bit = blk - g_.ag_header_blkno(ag);
    const uint64_t per = g_.bits_per_bitmap_block();
    bool was = false;
    modify<format::BitmapBlock>(g_.bitmap_blkno(ag, static_cast<uint32_t>(bit / per)),
                                [&](format::BitmapBlock& bm) {
                                  was = bm.test(bit % per);
                                  bm.set(bit % per, used);
                                });
    if (was != used) {
      modify<format::AgHeader>(g_.ag_header_blkno(ag), [&](format::AgHeader& h) {
        h.free_blocks = used ? h.free_blocks - 1 : h.free_blocks + 1;
      });
    }
    mark(blk, used);
  }
  void add_inode_count(uint64_t ino, int delta) {
    modify<format::AgHeader>(g_.ag_header_blkno(*g_.ag_of(ino)),
                             [&](format::AgHeader& h) { h.inode_count += delta; });
  }

 private:
  static constexpr uint64_t kPendingBlocks = 1024;

  struct Dir {
    Inode inode;
    std::vector<DirEntry> entries;
    bool hashed;
    bool orphan;
    uint32_t max_depth;
  };

  uint32_t orphan_slot_of(uint64_t ino) const {
    for (const auto& [slot, list] : orphans_) {
      if (std::find(list.begin(), list.end(), ino) != list.end()) return slot;
    }
    return 0;
  }

  // Turns leaf extents into a tree whose root fits the inode, as ExtentTree would have.
  void build_tree(uint64_t ino, std::vector<Extent> level, size_t fanout, uint16_t min_depth,
                  Inode& n) {
    const size_t node_cap = format::ExtentNode::capacity(bs_);
    const size_t per = fanout == 0 ? node_cap : std::min(fanout, node_cap);
    uint16_t depth = 0;
    while (level.size() > Inode::extent_root_capacity(bs_) || depth < min_depth) {
      std::vector<Extent> up;
      for (size_t i = 0; i < level.size(); i += per) {
        format::ExtentNode node{.owner = ino, .depth = depth};
        node.entries.assign(
            level.begin() + static_cast<std::ptrdiff_t>(i),
            level.begin() + static_cast<std::ptrdiff_t>(std::min(level.size(), i + per)));
        const uint64_t blk = alloc(1);
        put(blk, node);
        ++n.blocks;
        up.push_back({node.entries.front().logical, blk, 0, 0});
      }
      level = std::move(up);
      ++depth;
    }
    n.extent_root = std::move(level);
    n.extent_depth = depth;
  }

  size_t leaf_area() const { return bs_ - format::DirLeaf::kEntriesOffset; }

  // Extendible hashing as docs/directories.md describes it: the smallest table depth at
  // which every bucket fits a leaf (at most max_dir_depth_, where leaves chain), buddies
  // merged into one shallower leaf wherever their entries fit together.
  void layout_hashed(uint64_t ino, Dir& d) {
    auto& es = d.entries;  // sorted by (hash, name)
    auto fits = [&](size_t lo, size_t hi) {
      size_t b = 0;
      for (size_t i = lo; i < hi; ++i) b += format::dir_entry_size(es[i].name.size());
      return b <= leaf_area();
    };
    auto bucket_end = [&](size_t lo, uint32_t depth) {
      if (depth == 0) return es.size();
      const uint32_t top = es[lo].hash >> (32 - depth);
      size_t hi = lo;
      while (hi < es.size() && (es[hi].hash >> (32 - depth)) == top) ++hi;
      return hi;
    };
    uint32_t depth = 0;
    for (; depth < d.max_depth; ++depth) {
      bool all = true;
      for (size_t lo = 0; lo < es.size() && all;) {
        const size_t hi = bucket_end(lo, depth);
        all = fits(lo, hi);
        lo = hi;
      }
      if (all) break;
    }
    const uint64_t slots = uint64_t{1} << depth;
    std::vector<uint64_t> table(slots, 0);
    auto& leaf_list = leaves_[ino];
    // Leaf (chain) for entries [lo, hi) of local depth `ld`, hash prefix `prefix`.
    std::function<void(size_t, size_t, uint64_t, uint32_t)> build =
        [&](size_t lo, size_t hi, uint64_t prefix, uint32_t ld) {
          if (ld < depth && !fits(lo, hi)) {
            const uint32_t bit = 31 - ld;
            size_t mid = lo;
            while (mid < hi && !((es[mid].hash >> bit) & 1)) ++mid;
            build(lo, mid, prefix * 2, ld + 1);
            build(mid, hi, prefix * 2 + 1, ld + 1);
            return;
          }
          // Chunks that fit, chained.
          std::vector<std::pair<size_t, size_t>> chunks;
          size_t start = lo, bytes = 0;
          for (size_t i = lo; i < hi; ++i) {
            const size_t sz = format::dir_entry_size(es[i].name.size());
            if (bytes + sz > leaf_area()) {
              chunks.emplace_back(start, i);
              start = i;
              bytes = 0;
            }
            bytes += sz;
          }
          chunks.emplace_back(start, hi);
          std::vector<uint64_t> blks;
          for (size_t c = 0; c < chunks.size(); ++c) blks.push_back(alloc(1));
          for (size_t c = 0; c < chunks.size(); ++c) {
            format::DirLeaf leaf{.owner = ino,
                                 .depth = static_cast<uint16_t>(ld),
                                 .next_leaf = c + 1 < chunks.size() ? blks[c + 1] : 0};
            leaf.entries.assign(es.begin() + static_cast<std::ptrdiff_t>(chunks[c].first),
                                es.begin() + static_cast<std::ptrdiff_t>(chunks[c].second));
            put(blks[c], leaf);
            leaf_list.push_back(blks[c]);
          }
          const uint64_t span = uint64_t{1} << (depth - ld);
          for (uint64_t s = prefix * span; s < (prefix + 1) * span; ++s) table[s] = blks[0];
          d.inode.blocks += blks.size();
        };
    d.inode.blocks = d.inode.xattr_block != 0 ? 1 : 0;
    build(0, es.size(), 0, 0);
    const uint64_t per = format::DirIndex::capacity(bs_);
    const uint64_t nblocks = (slots + per - 1) / per;
    const uint64_t start = alloc(static_cast<uint32_t>(nblocks));
    for (uint64_t b = 0; b < nblocks; ++b) {
      format::DirIndex t{.owner = ino, .first_index = static_cast<uint32_t>(b * per)};
      t.leaves.assign(table.begin() + static_cast<std::ptrdiff_t>(b * per),
                      table.begin() + static_cast<std::ptrdiff_t>(std::min(slots, (b + 1) * per)));
      put(start + b, t);
    }
    d.inode.blocks += nblocks;
    d.inode.flags = Inode::kHashedDir;
    d.inode.inline_data.clear();
    d.inode.extent_root = {{0, start, static_cast<uint32_t>(nblocks), 0}};
    d.inode.extent_depth = 0;
    d.inode.dir_depth = depth;
  }

  device::BlockDevice& dev_;
  const format::Superblock sb_;
  const format::Geometry& g_;
  const uint32_t bs_;
  AlignedBuffer scratch_;
  AlignedBuffer pending_;
  uint64_t pending_start_ = 0;
  uint64_t pending_n_ = 0;
  std::vector<format::AgHeader> hdr_;
  std::vector<std::vector<format::BitmapBlock>> bm_;
  uint64_t cursor_ = 0;
  std::unordered_map<uint64_t, Dir> dirs_;
  std::map<uint32_t, std::vector<uint64_t>> orphans_;  // slot -> inodes, oldest first
  std::unordered_map<uint64_t, std::vector<uint64_t>> leaves_;
};

class FsckWalkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        stdfs::path("/var/tmp") / ("sharedfs-fsck-walk-" + std::to_string(getpid()) + "-" +
                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    stdfs::create_directories(dir_);
    image_ = (dir_ / "disk.img").string();
  }
  void TearDown() override { stdfs::remove_all(dir_); }

  // A fresh file system on a sparse image, and a builder over it.
  void make(uint64_t size = 256 * kMiB, uint32_t slots = 2) {
    FILE* f = fopen(image_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fclose(f);
    stdfs::resize_file(image_, size);
    auto dev = device::open_file_device(image_, {});
    ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
    dev_ = std::move(*dev);
    auto sb = make_filesystem(*dev_.io, {.slots = slots});
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
    sb_ = *sb;
    b_ = std::make_unique<ImageBuilder>(*dev_.io, sb_);
  }

  FsckReport fsck(bool repair = false) {
    auto r = check_filesystem(*dev_.io, {.repair = repair, .verbose = true});
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    if (r.is_ok() && std::getenv("FSCK_WALK_PRINT")) {
      std::printf("fsck%s:\n%s", repair ? " -y" : "", describe(*r).c_str());
    }
    return r.is_ok() ? *r : FsckReport{};
  }

  static std::string describe(const FsckReport& r) {
    std::string s;
    for (const auto& p : r.problems) {
      s += std::to_string(p.blkno) + ": " + p.structure + ": " + p.what +
           (p.fixed ? " [FIXED]" : "") + "\n";
    }
    for (const auto& n : r.notes) s += "note: " + n + "\n";
    return s;
  }
  static size_t count(const FsckReport& r, std::string_view text) {
    size_t n = 0;
    for (const auto& p : r.problems) n += p.what.find(text) != std::string::npos ? 1 : 0;
    return n;
  }

  // A tree with a bit of everything fsck walks.
  struct Tree {
    uint64_t a, b, inline_dir, hashed, chained, file, big, deep, linked, sym, xfile, fifo;
  };
  Tree populate() {
    ImageBuilder& b = *b_;
    Tree t{};
    t.a = b.mkdir(b.root(), "a");
    t.b = b.mkdir(t.a, "b");
    t.inline_dir = b.mkdir(t.b, "small");
    for (int i = 0; i < 20; ++i) b.mkfile(t.inline_dir, "f" + std::to_string(i));
    t.hashed = b.mkdir(b.root(), "hashed", /*hashed=*/true);
    for (int i = 0; i < 700; ++i) b.mkfile(t.hashed, "entry-" + std::to_string(i));
    b.mkdir(t.hashed, "sub");
    t.file = b.mkfile(t.a, "data", {.extents = 5});
    t.big = b.mkfile(t.a, "big", {.extents = 400});  // depth-1 tree
    t.deep = b.mkfile(t.a, "deep", {.extents = 30, .fanout = 3, .min_depth = 2});
    t.linked = b.mkfile(t.a, "one");
    b.link(t.b, "two", t.linked);
    b.link(b.root(), "three", t.linked);
    t.sym = b.mkfile(t.b, "sym", {.symlink = "../data"});
    t.xfile = b.mkfile(t.b, "xattrs", {.extents = 2, .xattr = true});
    t.fifo = b.mkfile(b.root(), "fifo", {.mode = S_IFIFO | 0600});
    return t;
  }

  stdfs::path dir_;
  std::string image_;
  device::OpenDevice dev_;
  format::Superblock sb_;
  std::unique_ptr<ImageBuilder> b_;
};

TEST_F(FsckWalkTest, EmptyRootIsClean) {
  make();
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 0) << describe(r);
  EXPECT_EQ(r.inodes, 1u);
  EXPECT_EQ(r.directories, 1u);
}

TEST_F(FsckWalkTest, BuiltTreeIsClean) {
  make();
  Tree t = populate();
  // A directory whose leaves chain: a one-bit table and more than two leaves of names.
  t.chained = b_->mkdir(b_->root(), "chained", /*hashed=*/true, /*max_depth=*/1);
  for (int i = 0; i < 600; ++i) b_->mkfile(t.chained, "c" + std::to_string(i));
  // Orphans: an open-unlinked file with data and a removed (hashed, empty) directory.
  const uint64_t gone = b_->mkfile(0, "", {.extents = 3});
  b_->orphan(gone, 1);
  const uint64_t gone_dir = b_->mkdir(0, "", /*hashed=*/true);
  b_->orphan(gone_dir, 1);
  b_->finish();
  EXPECT_GT(b_->leaves_of(t.hashed).size(), 4u);
  EXPECT_GT(b_->leaves_of(t.chained).size(), 2u);

  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 0) << describe(r);
  // root, a, b, small + 20, hashed + 700 + sub, data, big, deep, one, sym, xattrs, fifo,
  // chained + 600, two orphans.
  EXPECT_EQ(r.inodes, 1u + 3 + 20 + 1 + 700 + 1 + 7 + 1 + 600 + 2);
  EXPECT_EQ(r.directories, 8u);
  // -y has nothing to do either.
  EXPECT_EQ(fsck(true).exit_code(), 0);
}

TEST_F(FsckWalkTest, LeakedBlockIsReportedAndFreedWithRepair) {
  make();
  populate();
  b_->finish();
  const uint64_t leaked = b_->alloc(3);
  b_->set_allocated(leaked, true);
  b_->set_allocated(leaked + 1, true);
  b_->set_allocated(leaked + 2, true);

  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4) << describe(r);
  ASSERT_EQ(r.problems.size(), 1u) << describe(r);
  EXPECT_EQ(r.problems[0].blkno, leaked);
  EXPECT_NE(r.problems[0].what.find("leaked"), std::string::npos);
  const uint64_t free_before = r.free_blocks;

  auto fix = fsck(true);
  EXPECT_EQ(fix.exit_code(), 1) << describe(fix);
  auto again = fsck();
  EXPECT_EQ(again.exit_code(), 0) << describe(again);
  EXPECT_EQ(again.free_blocks, free_before + 3);
}

TEST_F(FsckWalkTest, LostInodeIsLeakedAndMiscountedUntilRepaired) {
  make();
  populate();
  const uint64_t lost = b_->mkfile(0, "", {.extents = 2});  // named by nothing
  b_->finish();
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  EXPECT_EQ(count(r, "leaked"), 1u) << describe(r);  // inode and its two blocks: one run
  EXPECT_EQ(count(r, "inode count"), 1u) << describe(r);
  EXPECT_EQ(r.problems.size(), 2u) << describe(r);
  (void)lost;
  auto fix = fsck(true);
  EXPECT_EQ(fix.exit_code(), 1) << describe(fix);
  auto again = fsck();
  EXPECT_EQ(again.exit_code(), 0) << describe(again);
}

TEST_F(FsckWalkTest, WrongAgInodeCountIsFixed) {
  make();
  populate();
  b_->finish();
  b_->add_inode_count(b_->root(), 5);
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  ASSERT_EQ(r.problems.size(), 1u) << describe(r);
  EXPECT_EQ(r.problems[0].blkno, sb_.geo.ag_header_blkno(0));
  EXPECT_EQ(fsck(true).exit_code(), 1);
  EXPECT_EQ(fsck().exit_code(), 0);
}

TEST_F(FsckWalkTest, DoublyReferencedBlockNamesBothOwners) {
  make();
  Tree t = populate();
  b_->finish();
  // "data"'s third extent now also points at "big"'s first data block.
  const Inode big = b_->read<Inode>(t.big);
  ASSERT_EQ(big.extent_depth, 1);
  const uint64_t node = big.extent_root[0].physical;
  const uint64_t shared = b_->read<format::ExtentNode>(node).entries[0].physical;
  uint64_t old = 0;
  b_->modify<Inode>(t.file, [&](Inode& n) {
    old = n.extent_root[2].physical;
    n.extent_root[2].physical = shared;
  });
  b_->set_allocated(old, false);

  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4) << describe(r);
  ASSERT_EQ(r.problems.size(), 1u) << describe(r);
  const auto& p = r.problems[0];
  EXPECT_EQ(p.blkno, shared);
  EXPECT_NE(p.what.find(fmt::format("inode {}", t.file)), std::string::npos) << p.what;
  EXPECT_NE(p.what.find(fmt::format("inode {}", t.big)), std::string::npos) << p.what;
  // Not something -y may fix.
  auto fix = fsck(true);
  EXPECT_EQ(fix.exit_code(), 4) << describe(fix);
}

TEST_F(FsckWalkTest, WrongLinkCounts) {
  make();
  Tree t = populate();
  b_->finish();
  b_->modify<Inode>(t.file, [](Inode& n) { n.nlink = 2; });
  b_->modify<Inode>(t.linked, [](Inode& n) { n.nlink = 2; });  // has three names
  b_->modify<Inode>(t.a, [](Inode& n) { n.nlink = 7; });
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  EXPECT_EQ(r.problems.size(), 3u) << describe(r);
  EXPECT_EQ(count(r, "link count is 2 but 1 entries"), 1u) << describe(r);
  EXPECT_EQ(count(r, "link count is 2 but 3 entries"), 1u) << describe(r);
  EXPECT_EQ(count(r, "link count is 7 but it has 1 subdirectories"), 1u) << describe(r);
  EXPECT_EQ(fsck(true).exit_code(), 4);  // not repaired yet
}

TEST_F(FsckWalkTest, EntryNamingAFreedBlock) {
  make();
  Tree t = populate();
  b_->finish();
  // The inode of "data" was freed (bit cleared, AG count lowered) but its entry remains.
  b_->set_allocated(t.file, false);
  b_->add_inode_count(t.file, -1);
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  EXPECT_EQ(count(r, "marks free"), 1u) << describe(r);
  EXPECT_EQ(count(r, "inode count"), 1u) << describe(r);

  // An entry naming a block that never held an inode.
  const uint64_t junk = b_->alloc(1);
  b_->set_allocated(junk, false);
  b_->modify<Inode>(t.b, [&](Inode& n) {
    auto es = *format::decode_dir_entries(std::as_bytes(std::span(n.inline_data)));
    for (auto& e : es) {
      if (e.name == "sym") e.ino = junk;
    }
    std::vector<std::byte> area(n.inline_data.size());
    ASSERT_OK(format::encode_dir_entries(area, es));
    std::memcpy(n.inline_data.data(), area.data(), area.size());
  });
  r = fsck();
  EXPECT_EQ(count(r, "holds no valid inode"), 1u) << describe(r);
  // The walk missed an inode: the symlink's block now looks leaked, and -y must not free it.
  EXPECT_EQ(count(r, "leaked"), 1u) << describe(r);
  auto fix = fsck(true);
  EXPECT_EQ(fix.exit_code(), 4) << describe(fix);
  EXPECT_EQ(count(fix, "not freed"), 1u) << describe(fix);
  EXPECT_TRUE(b_->allocated_on_disk(t.sym));
}

TEST_F(FsckWalkTest, BadHashes) {
  make();
  Tree t = populate();
  b_->finish();
  // An inline entry with the wrong hash.
  b_->modify<Inode>(t.inline_dir, [&](Inode& n) {
    auto es = *format::decode_dir_entries(std::as_bytes(std::span(n.inline_data)));
    es[3].hash ^= 0x100;
    std::vector<std::byte> area(n.inline_data.size());
    ASSERT_OK(format::encode_dir_entries(area, es));
    std::memcpy(n.inline_data.data(), area.data(), area.size());
  });
  // An entry moved to a leaf that does not serve its hash (with a correct hash).
  const auto leaves = b_->leaves_of(t.hashed);
  ASSERT_GE(leaves.size(), 2u);
  DirEntry moved;
  b_->modify<format::DirLeaf>(leaves.back(), [&](format::DirLeaf& l) {
    moved = l.entries.back();
    l.entries.pop_back();
  });
  // Into the emptiest other leaf, so that it fits.
  uint64_t target = leaves.front();
  size_t fewest = SIZE_MAX;
  for (size_t i = 0; i + 1 < leaves.size(); ++i) {
    const size_t n = b_->read<format::DirLeaf>(leaves[i]).entries.size();
    if (n < fewest) {
      fewest = n;
      target = leaves[i];
    }
  }
  b_->modify<format::DirLeaf>(target, [&](format::DirLeaf& l) {
    l.entries.push_back(moved);
    std::sort(l.entries.begin(), l.entries.end(), entry_less);
  });
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  EXPECT_EQ(count(r, "expected 0x"), 1u) << describe(r);
  EXPECT_EQ(count(r, "lookups cannot find it"), 2u) << describe(r);
  EXPECT_EQ(r.problems.size(), 2u) << describe(r);
}

TEST_F(FsckWalkTest, ExtentTreeDamage) {
  make();
  Tree t = populate();
  b_->finish();
  // Overlapping extents in the root of "data".
  b_->modify<Inode>(t.file, [](Inode& n) { n.extent_root[1].logical = 0; });
  auto r = fsck();
  EXPECT_EQ(count(r, "overlaps or precedes"), 1u) << describe(r);

  // An index key of "deep" raised above the blocks its child holds.
  make();
  t = populate();
  b_->finish();
  Inode deep = b_->read<Inode>(t.deep);
  ASSERT_EQ(deep.extent_depth, 2);
  ASSERT_GE(deep.extent_root.size(), 2u);
  b_->modify<Inode>(t.deep, [](Inode& n) { n.extent_root[1].logical += 3; });
  r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  EXPECT_GE(count(r, "lookups miss it"), 1u) << describe(r);

  // A node that belongs to another inode: the walk cannot trust what is below.
  make();
  t = populate();
  b_->finish();
  deep = b_->read<Inode>(t.deep);
  b_->modify<format::ExtentNode>(deep.extent_root[0].physical,
                                 [](format::ExtentNode& n) { n.owner += 1; });
  r = fsck();
  EXPECT_EQ(count(r, "belongs to inode"), 1u) << describe(r);
  auto fix = fsck(true);
  EXPECT_EQ(count(fix, "not freed"), count(fix, "leaked")) << describe(fix);
}

TEST_F(FsckWalkTest, BlockCountMismatch) {
  make();
  Tree t = populate();
  b_->finish();
  b_->modify<Inode>(t.big, [](Inode& n) { ++n.blocks; });
  b_->modify<Inode>(t.hashed, [](Inode& n) { n.blocks = 1; });
  auto r = fsck();
  EXPECT_EQ(count(r, "block count is"), 2u) << describe(r);
  EXPECT_EQ(r.problems.size(), 2u) << describe(r);
}

TEST_F(FsckWalkTest, DirectoryProblems) {
  make();
  Tree t = populate();
  // "b" named a second time by its parent: a directory with two names.
  b_->add_entry(t.a, "b-again", t.b, FileType::kDirectory);
  // A regular file's entry claiming to be a symlink.
  const uint64_t f = b_->mkfile(t.a, "typed");
  b_->finish();
  b_->modify<Inode>(f, [](Inode& n) {
    n.mode = S_IFLNK | 0777;
    n.flags = Inode::kInlineData;
    n.inline_data = {'x'};
    n.size = 1;
  });
  b_->modify<Inode>(t.inline_dir, [&](Inode& n) { n.parent = t.a; });
  auto r = fsck();
  EXPECT_EQ(count(r, "a directory has one name"), 1u) << describe(r);
  EXPECT_EQ(count(r, "is a symlink"), 1u) << describe(r);
  EXPECT_EQ(count(r, fmt::format("parent is {}", t.a)), 1u) << describe(r);
  // The builder counted "b-again" in a's link count; the walk counts b once.
  EXPECT_EQ(count(r, "link count is 4 but it has 1 subdirectories"), 1u) << describe(r);
  EXPECT_EQ(r.problems.size(), 4u) << describe(r);
}

TEST_F(FsckWalkTest, OrphanProblems) {
  make();
  Tree t = populate();
  const uint64_t good = b_->mkfile(0, "", {.extents = 1});
  b_->orphan(good, 0);
  const uint64_t linked = b_->mkfile(0, "");
  b_->orphan(linked, 0);
  b_->finish();
  // An orphan that still has a link count, a named file on an orphan list, a file with
  // nlink 0 on no list, and a file flagged orphan on no list.
  b_->modify<Inode>(linked, [](Inode& n) { n.nlink = 1; });
  b_->modify<Inode>(t.xfile, [](Inode& n) { n.nlink = 0; });
  b_->modify<Inode>(t.fifo, [](Inode& n) { n.flags |= Inode::kOrphan; });
  auto r = fsck();
  EXPECT_EQ(count(r, "on an orphan list with link count 1"), 1u) << describe(r);
  EXPECT_EQ(count(r, "link count is 0 (and it is on no orphan list)"), 1u) << describe(r);
  EXPECT_EQ(count(r, "flagged as an orphan but is on no orphan list"), 1u) << describe(r);
  EXPECT_EQ(r.problems.size(), 3u) << describe(r);

  // A named inode put at the head of slot 1's list.
  b_->modify<Inode>(t.xfile, [](Inode& n) {
    n.nlink = 1;
    n.flags |= Inode::kOrphan;
  });
  b_->modify<format::OrphanList>(sb_.geo.orphan_blkno(1), [&](format::OrphanList& l) {
    l.head = t.xfile;
    l.count = 1;
  });
  r = fsck();
  EXPECT_EQ(count(r, "yet a directory names it"), 1u) << describe(r);
}

TEST_F(FsckWalkTest, XattrBlockProblems) {
  make();
  Tree t = populate();
  b_->finish();
  const uint64_t x = b_->read<Inode>(t.xfile).xattr_block;
  b_->modify<format::XattrBlock>(x, [](format::XattrBlock& xb) { xb.owner = 1; });
  b_->set_allocated(x, false);
  auto r = fsck();
  EXPECT_EQ(count(r, "belongs to inode 1"), 1u) << describe(r);
  EXPECT_EQ(count(r, "marks free"), 1u) << describe(r);
}

TEST_F(FsckWalkTest, CorruptLeafMakesTheWalkIncomplete) {
  make();
  Tree t = populate();
  b_->finish();
  const uint64_t leaf = b_->leaves_of(t.hashed)[1];
  AlignedBuffer buf(b_->bs());
  ASSERT_OK(dev_.io->read(leaf * b_->bs(), buf.span()));
  buf.data()[200] ^= std::byte{1};
  ASSERT_OK(dev_.io->write(leaf * b_->bs(), buf.span()));
  auto r = fsck(true);
  EXPECT_EQ(r.exit_code(), 4) << describe(r);
  EXPECT_GE(count(r, "checksum"), 1u) << describe(r);
  // The inodes that leaf named are unaccounted for, but nothing is freed.
  EXPECT_GE(count(r, "not freed"), 1u) << describe(r);
  for (const auto& p : r.problems) EXPECT_FALSE(p.fixed) << p.what;
}

TEST_F(FsckWalkTest, DirtyJournalFindingsAreNotCounted) {
  make();
  populate();
  b_->finish();
  const uint64_t leaked = b_->alloc(1);
  b_->set_allocated(leaked, true);
  {
    auto j = journal::Journal::open(*dev_.io, sb_, 1);
    ASSERT_TRUE(j.is_ok()) << j.status().to_string();
    journal::Transaction txn;
    std::vector<std::byte> image(sb_.geo.block_size, std::byte{0x11});
    txn.write(sb_.geo.ag_first_data_block(1) + 100, image);
    ASSERT_OK((*j)->commit(std::move(txn)).status());
  }  // crash: the journal stays dirty
  auto r = fsck();
  EXPECT_EQ(r.exit_code(), 4);
  ASSERT_EQ(r.problems.size(), 1u) << describe(r);
  EXPECT_NE(r.problems[0].what.find("journal dirty: run fsck -y or mount to replay"),
            std::string::npos);
  bool noted = false;
  for (const auto& n : r.notes) noted |= n.find("leaked") != std::string::npos;
  EXPECT_TRUE(noted) << describe(r);
  // -y replays first, then walks and frees the leak.
  auto fix = fsck(true);
  EXPECT_EQ(fix.exit_code(), 1) << describe(fix);
  EXPECT_EQ(fsck().exit_code(), 0);
}

// Checksummed garbage: random bytes written into walked structures and the block re-sealed,
// so that decoding passes and every later check meets hostile values (huge depths, counts
// and pointers, loops). fsck must neither crash nor hang nor fail operationally.
TEST_F(FsckWalkTest, SurvivesResealedRandomDamage) {
  make();
  populate();
  const uint64_t gone = b_->mkfile(0, "", {.extents = 3});
  b_->orphan(gone, 1);
  b_->finish();
  const uint32_t bs = b_->bs();
  std::vector<uint64_t> targets;
  AlignedBuffer buf(bs);
  const auto& g = sb_.geo;
  for (uint64_t blk = g.ag_first_data_block(0); blk < g.ag_header_blkno(0) + g.ag_size(0); ++blk) {
    if (!b_->allocated(blk)) continue;
    ASSERT_OK(dev_.io->read(blk * bs, buf.span()));
    const auto type = static_cast<format::BlockType>(format::peek_magic(buf.span()));
    if (type == format::BlockType::kInode || type == format::BlockType::kExtentNode ||
        type == format::BlockType::kDirLeaf || type == format::BlockType::kDirIndex ||
        type == format::BlockType::kXattr) {
      targets.push_back(blk);
    }
  }
  for (uint32_t s = 0; s < sb_.geo.slots; ++s) targets.push_back(g.orphan_blkno(s));
  ASSERT_GT(targets.size(), 100u);

  uint64_t seed = 7;
  if (const char* env = std::getenv("FSCK_WALK_FUZZ_SEED")) seed = std::strtoull(env, nullptr, 10);
  std::mt19937_64 rng(seed);
  AlignedBuffer saved(bs);
  int rounds = 200;
  if (const char* env = std::getenv("FSCK_WALK_FUZZ_ROUNDS")) rounds = std::atoi(env);
  for (int round = 0; round < rounds; ++round) {
    const uint64_t blk = targets[rng() % targets.size()];
    ASSERT_OK(dev_.io->read(blk * bs, saved.span()));
    std::memcpy(buf.data(), saved.data(), bs);
    const auto type = static_cast<format::BlockType>(format::peek_magic(buf.span()));
    uint64_t seq = 0;
    std::memcpy(&seq, buf.data() + 16, 8);
    // Mostly the fixed fields and the first entries, where the pointers and counts are.
    const int changes = 1 + static_cast<int>(rng() % 4);
    for (int c = 0; c < changes; ++c) {
      const size_t off = 32 + rng() % (rng() % 2 ? 128 : 480);
      buf.data()[off] = static_cast<std::byte>(rng());
    }
    format::seal_block(buf.span(), type, b_->ctx(blk), seq);
    ASSERT_OK(dev_.io->write(blk * bs, buf.span()));
    auto r = check_filesystem(*dev_.io, {});
    ASSERT_TRUE(r.is_ok()) << "round " << round << ", block " << blk << ": "
                           << r.status().to_string();
    ASSERT_OK(dev_.io->write(blk * bs, saved.span()));
  }
  EXPECT_EQ(fsck().exit_code(), 0);
}

// A directory of many entries: the walk must stay fast (the default size keeps the unit
// test short; FSCK_WALK_BIG_DIR=1000000 checks the million-entry case).
TEST_F(FsckWalkTest, BigDirectoryIsWalkedQuickly) {
  uint64_t n = 20000;
  if (const char* env = std::getenv("FSCK_WALK_BIG_DIR")) n = std::strtoull(env, nullptr, 10);
  const uint64_t need = n * 4096 * 11 / 10 + 512 * kMiB;
  make(need, 2);
  const uint64_t dir = b_->mkdir(b_->root(), "big", /*hashed=*/true);
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < n; ++i) b_->mkfile(dir, fmt::format("file-{:08}", i));
  b_->finish();
  const auto t1 = std::chrono::steady_clock::now();
  auto r = fsck();
  const auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(r.exit_code(), 0) << describe(r);
  EXPECT_EQ(r.inodes, n + 2);
  const double build_s = std::chrono::duration<double>(t1 - t0).count();
  const double fsck_s = std::chrono::duration<double>(t2 - t1).count();
  std::printf("%llu entries: built in %.2f s, fsck in %.2f s\n", static_cast<unsigned long long>(n),
              build_s, fsck_s);
  EXPECT_LT(fsck_s, 2.0 + static_cast<double>(n) / 50000.0);
}

}  // namespace
}  // namespace sharedfs::mkfs
