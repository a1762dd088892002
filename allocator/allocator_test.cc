#include "allocator/allocator.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "common/test_util.h"
#include "mkfs/mkfs.h"

namespace sharedfs::allocator {
namespace {

namespace fs = std::filesystem;
using device::AlignedBuffer;
using journal::Handle;

constexpr uint64_t kMiB = 1 << 20;

// A sparse image in /var/tmp formatted by mkfs, with slot 0's journal, a transaction
// manager over it and an allocator on top. The default file system: 512 MiB, 2 slots and
// 128 MiB AGs (32768 blocks: two bitmap blocks each, so runs can cross a bitmap block),
// four AGs: 0 and 2 are slot 0's, 1 and 3 slot 1's.
class AllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("allocator-test");
    image_ = (dir_ / "disk.img").string();
  }

  void TearDown() override {
    alloc_.reset();
    tm_.reset();
    journal_.reset();
    dev_.reset();
    fs::remove_all(dir_);  // the image and the ".pr" reservation sidecar beside it
  }

  void format(uint64_t bytes = 512 * kMiB,
              mkfs::MkfsOptions opts = {
                  .slots = 2, .journal_bytes = 4 * kMiB, .ag_bytes = 128 * kMiB}) {
    testing::make_sparse_file(image_, bytes);
    auto d = device::open_file_device(image_, {});
    ASSERT_TRUE(d.is_ok()) << d.status().to_string();
    dev_ = std::move(d->io);
    auto sb = mkfs::make_filesystem(*dev_, opts);
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
    sb_ = *sb;
    bs_ = sb_.geo.block_size;
  }

  void open(uint32_t home_slot = 0) {
    auto j = journal::Journal::open(*dev_, sb_, 0);
    ASSERT_TRUE(j.is_ok()) << j.status().to_string();
    journal_ = std::move(*j);
    tm_ = std::make_unique<journal::TransactionManager>(*dev_, *journal_, bs_);
    open_allocator(home_slot);
  }

  void open_allocator(uint32_t home_slot) {
    alloc_.reset();
    auto a = Allocator::open(*tm_, sb_, home_slot);
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    alloc_ = std::move(*a);
  }

  void SetUpDefault() {
    format();
    open();
  }

  const format::Geometry& geo() const { return sb_.geo; }
  uint64_t first_data(uint32_t ag) const { return geo().ag_first_data_block(ag); }
  uint64_t ag_end(uint32_t ag) const { return geo().ag_header_blkno(ag) + geo().ag_size(ag); }

  Result<BlockRange> try_alloc(uint64_t goal, uint32_t want, uint32_t min) {
    Handle h = tm_->begin();
    return alloc_->allocate(h, goal, want, min);
  }
  BlockRange alloc(uint64_t goal, uint32_t want, uint32_t min) {
    auto r = try_alloc(goal, want, min);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : BlockRange{};
  }
  // Frees and commits, so the blocks can be handed out again (see BusyUntilCommitted).
  Status release(BlockRange r, bool metadata = false) {
    {
      Handle h = tm_->begin();
      RETURN_IF_ERROR(alloc_->free(h, r, metadata));
    }
    return tm_->commit().status();
  }
  uint64_t inode(uint64_t goal) {
    Handle h = tm_->begin();
    auto r = alloc_->allocate_inode(h, goal);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : 0;
  }
  Status release_inode(uint64_t ino) {
    Handle h = tm_->begin();
    return alloc_->free_inode(h, ino);
  }

  // Reads block `blkno` through the transaction manager (the allocator's view) or, with
  // `from_device`, from the device.
  void read_block(uint64_t blkno, AlignedBuffer& buf, bool from_device) {
    if (from_device) {
      ASSERT_OK(dev_->read(blkno * bs_, buf.span()));
    } else {
      auto b = tm_->read(blkno);
      ASSERT_TRUE(b.is_ok()) << b.status().to_string();
      std::copy((*b)->data().begin(), (*b)->data().end(), buf.span().begin());
    }
  }

  format::AgHeader header(uint32_t ag, bool from_device = false) {
    AlignedBuffer buf(bs_);
    const uint64_t blk = geo().ag_header_blkno(ag);
    read_block(blk, buf, from_device);
    auto h = format::AgHeader::decode(buf.span(), {blk, sb_.fs_tag()});
    EXPECT_TRUE(h.is_ok()) << h.status().to_string();
    return h.is_ok() ? *h : format::AgHeader{};
  }

  // In-use bit of every device block per the AG bitmaps (true outside the AGs).
  std::vector<bool> bitmap(bool from_device = false) {
    const format::Geometry& g = geo();
    std::vector<bool> used(g.total_blocks, true);
    const uint64_t per = g.bits_per_bitmap_block();
    AlignedBuffer buf(bs_);
    for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
      const uint64_t head = g.ag_header_blkno(ag);
      for (uint32_t i = 0; i < g.bitmap_blocks(ag); ++i) {
        const uint64_t blk = g.bitmap_blkno(ag, i);
        read_block(blk, buf, from_device);
        auto bm = format::BitmapBlock::decode(buf.span(), {blk, sb_.fs_tag()});
        EXPECT_TRUE(bm.is_ok()) << bm.status().to_string();
        if (!bm) return used;
        for (uint64_t bit = i * per; bit < std::min(g.ag_size(ag), (i + 1) * per); ++bit) {
          used[head + bit] = bm->test(bit - i * per);
        }
      }
    }
    return used;
  }

  uint64_t free_in(const std::vector<bool>& used, uint32_t ag) const {
    uint64_t n = 0;
    for (uint64_t b = first_data(ag); b < ag_end(ag); ++b) n += used[b] ? 0 : 1;
    return n;
  }

  // Every AG header's counts equal its bitmap, and usage() equals the headers.
  void expect_consistent() {
    const auto used = bitmap();
    uint64_t free_total = 0, inodes = 0;
    for (uint32_t ag = 0; ag < geo().ag_count; ++ag) {
      const auto hdr = header(ag);
      EXPECT_EQ(hdr.free_blocks, free_in(used, ag)) << "AG " << ag;
      free_total += hdr.free_blocks;
      inodes += hdr.inode_count;
    }
    const Usage u = alloc_->usage();
    EXPECT_EQ(u.free_blocks, free_total);
    EXPECT_EQ(u.inodes, inodes);
  }

  void commit() {
    auto r = tm_->commit();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  }

  // Runs fsck -n on the allocation structures (the blocks and inodes allocated here belong to
  // no file, so the tree walk is left out); expects them clean. Returns the free blocks fsck
  // counted.
  uint64_t fsck() {
    auto rep = mkfs::check_filesystem(*dev_, {.walk_tree = false});
    EXPECT_TRUE(rep.is_ok()) << rep.status().to_string();
    if (!rep) return 0;
    for (const auto& p : rep->problems) {
      ADD_FAILURE() << "fsck: " << p.structure << " (block " << p.blkno << "): " << p.what;
    }
    EXPECT_EQ(rep->exit_code(), 0);
    return rep->free_blocks;
  }

  // Commits, closes the journal cleanly (checkpoint, mark clean) and runs fsck.
  uint64_t close_and_fsck() {
    commit();
    alloc_.reset();
    tm_.reset();
    EXPECT_OK(journal_->close());
    journal_.reset();
    return fsck();
  }

  // The node stops: nothing is checkpointed, the journal stays dirty.
  void crash() {
    alloc_.reset();
    tm_.reset();
    journal_.reset();
  }

  fs::path dir_;
  std::string image_;
  std::unique_ptr<device::BlockDevice> dev_;
  format::Superblock sb_;
  uint32_t bs_ = 0;
  std::unique_ptr<journal::Journal> journal_;
  std::unique_ptr<journal::TransactionManager> tm_;
  std::unique_ptr<Allocator> alloc_;
};

TEST_F(AllocatorTest, UsageAfterMkfsMatchesFsck) {
  SetUpDefault();
  ASSERT_EQ(geo().ag_count, 4u);
  ASSERT_EQ(geo().bitmap_blocks(0), 2u);
  const Usage u = alloc_->usage();
  uint64_t total = 0;
  for (uint32_t ag = 0; ag < geo().ag_count; ++ag) total += ag_end(ag) - first_data(ag);
  EXPECT_EQ(u.total_blocks, total);
  EXPECT_EQ(u.free_blocks, total - 1);  // the root inode
  EXPECT_EQ(u.inodes, 1u);
  expect_consistent();
  EXPECT_EQ(close_and_fsck(), u.free_blocks);
}

TEST_F(AllocatorTest, AllocateFreeRoundTrip) {
  SetUpDefault();
  const Usage before = alloc_->usage();
  const BlockRange r = alloc(0, 10, 1);
  // No goal: the node's home AG 0, just after the root inode.
  EXPECT_EQ(r.start, sb_.root_inode + 1);
  EXPECT_EQ(r.count, 10u);
  auto used = bitmap();
  for (uint64_t b = r.start; b < r.end(); ++b) EXPECT_TRUE(used[b]) << b;
  EXPECT_FALSE(used[r.end()]);
  EXPECT_EQ(alloc_->usage().free_blocks, before.free_blocks - 10);
  expect_consistent();

  ASSERT_OK(release(r));
  used = bitmap();
  for (uint64_t b = r.start; b < r.end(); ++b) EXPECT_FALSE(used[b]) << b;
  EXPECT_EQ(alloc_->usage().free_blocks, before.free_blocks);
  expect_consistent();
  // The changed blocks carry the sequence of the transaction that changed them (release()
  // committed it).
  EXPECT_EQ(header(0).seq, tm_->last_committed());
  EXPECT_EQ(close_and_fsck(), before.free_blocks);
}

TEST_F(AllocatorTest, GoalAndCursor) {
  SetUpDefault();
  const BlockRange a = alloc(0, 8, 1);
  const BlockRange b = alloc(a.end(), 8, 1);
  EXPECT_EQ(b.start, a.end());  // right at the goal
  const BlockRange c = alloc(a.start, 4, 1);
  EXPECT_EQ(c.start, b.end());  // first free block after the goal
  const BlockRange d = alloc(first_data(3) + 100, 5, 5);
  EXPECT_EQ(d.start, first_data(3) + 100);  // the goal's AG, even another node's
  const BlockRange e = alloc(0, 3, 1);      // no goal: the current AG from its cursor
  EXPECT_EQ(e.start, c.end());
  // A goal in the AG metadata or outside every AG is only a hint.
  const BlockRange f = alloc(geo().ag_header_blkno(1), 2, 1);
  EXPECT_EQ(f.start, first_data(1));
  const BlockRange g = alloc(geo().journal_header_blkno(1), 2, 1);
  EXPECT_EQ(g.start, e.end());
  // A goal near the AG's end wraps to the AG's start when the end is taken.
  const BlockRange tail = alloc(ag_end(2) - 4, 4, 4);
  EXPECT_EQ(tail.start, ag_end(2) - 4);
  const BlockRange wrapped = alloc(ag_end(2) - 2, 3, 3);
  EXPECT_EQ(wrapped.start, first_data(2));
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, FreedBlocksStayBusyUntilTheirTransactionCommits) {
  SetUpDefault();
  const BlockRange r = alloc(first_data(1), 30, 30);
  ASSERT_OK(tm_->commit());
  {
    Handle h = tm_->begin();
    ASSERT_OK(alloc_->free(h, {r.start + 10, 10}, /*metadata=*/false));
  }
  EXPECT_EQ(alloc_->busy_blocks(), 10u);
  // Not reused while the free is uncommitted: the allocation goes past them.
  const BlockRange p = alloc(r.start, 5, 1);
  EXPECT_EQ(p.start, r.end());
  ASSERT_OK(tm_->commit());
  EXPECT_EQ(alloc_->busy_blocks(), 0u);
  const BlockRange q = alloc(r.start, 10, 10);
  EXPECT_EQ(q, (BlockRange{r.start + 10, 10}));
  // A run that starts free and runs into a busy extent is clipped there.
  {
    Handle h = tm_->begin();
    ASSERT_OK(alloc_->free(h, {q.start + 5, 5}, /*metadata=*/false));
  }
  ASSERT_OK(tm_->commit());
  {
    Handle h = tm_->begin();
    ASSERT_OK(alloc_->free(h, {q.start, 5}, /*metadata=*/false));
  }
  ASSERT_OK(tm_->commit());
  {
    Handle h = tm_->begin();
    ASSERT_OK(alloc_->free(h, {p.start, 5}, /*metadata=*/false));  // busy, after q
  }
  const BlockRange c = alloc(q.start, 20, 2);
  EXPECT_EQ(c, (BlockRange{q.start, 10}));
  ASSERT_OK(tm_->commit());
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, WantAndMin) {
  SetUpDefault();
  const BlockRange r = alloc(first_data(1), 20, 20);
  ASSERT_EQ(r.start, first_data(1));
  ASSERT_OK(release({r.start + 5, 5}));  // a 5-block hole
  // A run of at least `min` from the goal, extended as far as it goes up to `want`.
  const BlockRange p = alloc(r.start, 10, 3);
  EXPECT_EQ(p, (BlockRange{r.start + 5, 5}));
  ASSERT_OK(release(p));
  const BlockRange q = alloc(r.start, 10, 6);  // the hole is too small
  EXPECT_EQ(q, (BlockRange{r.end(), 10}));
  // A large request is cut at the AG's end.
  const BlockRange big = alloc(first_data(2), 1u << 20, 1);
  EXPECT_EQ(big, (BlockRange{first_data(2), static_cast<uint32_t>(ag_end(2) - first_data(2))}));

  for (auto [want, min] : {std::pair{0u, 0u}, std::pair{4u, 0u}, std::pair{4u, 5u}}) {
    auto bad = try_alloc(0, want, min);
    ASSERT_FALSE(bad.is_ok());
    EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  }
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, HomeSlotAndAgOrder) {
  format();
  open(/*home_slot=*/1);
  EXPECT_EQ(geo().ag_of(alloc(0, 1, 1).start), 1u);
  open_allocator(/*home_slot=*/3);  // 3 % 2 slots: also AG 1 and 3
  EXPECT_EQ(geo().ag_of(alloc(0, 1, 1).start), 1u);

  // Slot 0 fills its home AGs (0, 2) in order, then moves on to 1 and 3.
  open_allocator(0);
  std::vector<uint32_t> ags;
  for (;;) {
    auto r = try_alloc(0, 1u << 20, 1);
    if (!r) {
      EXPECT_EQ(r.status().code(), Code::kNoSpace);
      break;
    }
    const uint32_t ag = *geo().ag_of(r->start);
    if (ags.empty() || ags.back() != ag) ags.push_back(ag);
  }
  EXPECT_EQ(ags, (std::vector<uint32_t>{0, 2, 1, 3}));
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, RunsCrossBitmapBlocks) {
  SetUpDefault();
  const uint64_t per = geo().bits_per_bitmap_block();
  ASSERT_EQ(per, 32256u);
  const uint64_t boundary = geo().ag_header_blkno(0) + per;  // bit 0 of bitmap block 1
  const Usage before = alloc_->usage();
  const BlockRange r = alloc(boundary - 5, 10, 10);
  EXPECT_EQ(r, (BlockRange{boundary - 5, 10}));
  auto used = bitmap();
  for (uint64_t b = r.start - 1; b <= r.end(); ++b) EXPECT_EQ(used[b], r.start <= b && b < r.end());
  expect_consistent();

  // A hole on each side of the boundary, joined.
  ASSERT_OK(release({boundary - 3, 6}));
  const BlockRange s = alloc(boundary - 5, 8, 6);
  EXPECT_EQ(s, (BlockRange{boundary - 3, 6}));
  ASSERT_OK(release(s));
  ASSERT_OK(release({boundary - 5, 2}));
  ASSERT_OK(release({boundary + 3, 2}));
  EXPECT_EQ(alloc_->usage().free_blocks, before.free_blocks);
  // The whole of an empty AG is one run across both bitmap blocks.
  const BlockRange all = alloc(first_data(2), 1u << 20, 1);
  EXPECT_EQ(all.count, ag_end(2) - first_data(2));
  ASSERT_OK(release(all));
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, NoSpaceWhenFullLosesNothing) {
  SetUpDefault();
  std::vector<BlockRange> held;
  uint64_t held_blocks = 0;
  for (;;) {
    auto r = try_alloc(0, 5000, 1);
    if (!r) {
      EXPECT_EQ(r.status().code(), Code::kNoSpace) << r.status().to_string();
      break;
    }
    held.push_back(*r);
    held_blocks += r->count;
  }
  EXPECT_EQ(alloc_->usage().free_blocks, 0u);
  EXPECT_EQ(held_blocks, alloc_->usage().total_blocks - 1);
  auto inode_r = [&] {
    Handle h = tm_->begin();
    return alloc_->allocate_inode(h, sb_.root_inode);
  }();
  ASSERT_FALSE(inode_r.is_ok());
  EXPECT_EQ(inode_r.status().code(), Code::kNoSpace);

  // One block back: too few for min 2, enough for min 1.
  const uint64_t x = held[held.size() / 2].start + 1;
  ASSERT_OK(release({x, 1}));
  auto two = try_alloc(0, 2, 2);
  ASSERT_FALSE(two.is_ok());
  EXPECT_EQ(two.status().code(), Code::kNoSpace);
  EXPECT_EQ(alloc(0, 5, 1), (BlockRange{x, 1}));

  const auto used = bitmap();
  for (const BlockRange& r : held) {
    for (uint64_t b = r.start; b < r.end(); ++b) ASSERT_TRUE(used[b]) << b;
  }
  expect_consistent();
  EXPECT_EQ(close_and_fsck(), 0u);
}

TEST_F(AllocatorTest, BadFreesAreCorruptionAndChangeNothing) {
  SetUpDefault();
  const BlockRange r = alloc(first_data(1), 10, 10);
  const Usage before = alloc_->usage();
  auto expect_corruption = [&](BlockRange bad, uint64_t named) {
    const Status st = release(bad);
    EXPECT_EQ(st.code(), Code::kCorruption) << bad.start << "+" << bad.count;
    EXPECT_NE(st.message().find(std::to_string(named)), std::string::npos) << st.message();
  };
  expect_corruption({r.start + 5, 10}, r.end());  // half of it is free
  expect_corruption({r.end(), 1}, r.end());       // free
  expect_corruption({geo().ag_header_blkno(1), 1}, geo().ag_header_blkno(1));
  expect_corruption({geo().bitmap_blkno(1, 1), 2}, geo().bitmap_blkno(1, 1));
  expect_corruption({r.start - 1, 3}, r.start - 1);  // starts in the bitmap
  expect_corruption({geo().journal_header_blkno(0), 1}, geo().journal_header_blkno(0));
  expect_corruption({0, 1}, 0);
  expect_corruption({geo().total_blocks - 1, 1}, geo().total_blocks - 1);
  expect_corruption({ag_end(0) - 1, 2}, ag_end(0) - 1);  // runs into the next AG
  expect_corruption({~uint64_t{0} - 1, 4}, ~uint64_t{0} - 1);
  EXPECT_EQ(release({r.start, 0}).code(), Code::kInvalidArgument);
  EXPECT_EQ(release_inode(r.end()).code(), Code::kCorruption);
  // Nothing changed by any of them.
  EXPECT_EQ(alloc_->usage().free_blocks, before.free_blocks);
  const auto used = bitmap();
  for (uint64_t b = r.start; b < r.end(); ++b) EXPECT_TRUE(used[b]);

  ASSERT_OK(release(r));
  expect_corruption(r, r.start);  // twice
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, InodesAndCounts) {
  SetUpDefault();
  const uint64_t root = sb_.root_inode;
  const uint64_t first = inode(root);
  EXPECT_EQ(first, root + 1);  // next to its parent
  std::vector<uint64_t> inos{first};
  for (int i = 0; i < 99; ++i) inos.push_back(inode(root));
  EXPECT_EQ(alloc_->usage().inodes, 101u);
  EXPECT_EQ(header(0).inode_count, 101u);
  const uint64_t far = inode(first_data(3) + 7);
  EXPECT_EQ(far, first_data(3) + 7);
  EXPECT_EQ(header(3).inode_count, 1u);
  std::sort(inos.begin(), inos.end());
  EXPECT_EQ(std::unique(inos.begin(), inos.end()), inos.end());
  for (uint64_t ino : inos) EXPECT_EQ(geo().ag_of(ino), 0u);
  expect_consistent();

  for (uint64_t ino : inos) ASSERT_OK(release_inode(ino));
  ASSERT_OK(release_inode(far));
  EXPECT_EQ(release_inode(far).code(), Code::kCorruption);
  EXPECT_EQ(alloc_->usage().inodes, 1u);
  EXPECT_EQ(header(0).inode_count, 1u);
  EXPECT_EQ(header(3).inode_count, 0u);
  // An AG that counts no inodes refuses to free one.
  const BlockRange plain = alloc(first_data(3), 1, 1);
  EXPECT_EQ(release_inode(plain.start).code(), Code::kCorruption);
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, ConcurrentAllocateAndFree) {
  SetUpDefault();
  const Usage before = alloc_->usage();
  constexpr int kThreads = 4;
  constexpr int kOps = 1500;
  std::vector<std::vector<BlockRange>> held(kThreads);
  std::vector<std::vector<uint64_t>> inodes(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      auto& mine = held[t];
      auto& my_inodes = inodes[t];
      for (int i = 0; i < kOps; ++i) {
        const uint64_t dice = rng() % 10;
        if (dice < 3 && !mine.empty()) {
          const size_t k = rng() % mine.size();
          EXPECT_OK(release(mine[k], /*metadata=*/rng() % 2 == 0));
          mine[k] = mine.back();
          mine.pop_back();
        } else if (dice == 3 && !my_inodes.empty()) {
          EXPECT_OK(release_inode(my_inodes.back()));
          my_inodes.pop_back();
        } else {
          // Goals anywhere on the device (AG metadata, journals included) or none.
          const uint64_t goal = rng() % 3 == 0 ? 0 : rng() % geo().total_blocks;
          Handle h = tm_->begin();
          if (dice == 4) {
            auto ino = alloc_->allocate_inode(h, goal);
            EXPECT_TRUE(ino.is_ok()) << ino.status().to_string();
            if (ino.is_ok()) my_inodes.push_back(*ino);
          } else {
            const auto want = static_cast<uint32_t>(1 + rng() % 32);
            const auto min = static_cast<uint32_t>(1 + rng() % want);
            auto r = alloc_->allocate(h, goal, want, min);
            EXPECT_TRUE(r.is_ok()) << r.status().to_string();
            if (r.is_ok()) {
              EXPECT_GE(r->count, min);
              EXPECT_LE(r->count, want);
              mine.push_back(*r);
            }
          }
        }
        if (i % 100 == 99) {
          EXPECT_TRUE(tm_->commit().is_ok());
        }
      }
    });
  }
  for (auto& t : threads) t.join();

  std::vector<BlockRange> all;
  uint64_t held_blocks = 0, held_inodes = 0;
  for (int t = 0; t < kThreads; ++t) {
    all.insert(all.end(), held[t].begin(), held[t].end());
    for (const BlockRange& r : held[t]) held_blocks += r.count;
    for (uint64_t ino : inodes[t]) all.push_back({ino, 1});
    held_inodes += inodes[t].size();
  }
  EXPECT_GT(held_inodes, 0u);
  std::sort(all.begin(), all.end(),
            [](const BlockRange& a, const BlockRange& b) { return a.start < b.start; });
  for (size_t i = 1; i < all.size(); ++i) {
    ASSERT_LE(all[i - 1].end(), all[i].start) << "handed out twice";
  }
  const auto used = bitmap();
  for (const BlockRange& r : all) {
    for (uint64_t b = r.start; b < r.end(); ++b) ASSERT_TRUE(used[b]) << b;
  }
  // Nothing else is allocated, nothing held is lost.
  const Usage after = alloc_->usage();
  EXPECT_EQ(after.free_blocks, before.free_blocks - held_blocks - held_inodes);
  EXPECT_EQ(after.inodes, before.inodes + held_inodes);
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, ReopenSeesTheSameCounts) {
  SetUpDefault();
  alloc(0, 300, 1);
  alloc(first_data(1), 40, 1);
  inode(sb_.root_inode);
  const Usage u = alloc_->usage();
  close_and_fsck();
  open();
  const Usage v = alloc_->usage();
  EXPECT_EQ(v.free_blocks, u.free_blocks);
  EXPECT_EQ(v.inodes, u.inodes);
  EXPECT_EQ(v.total_blocks, u.total_blocks);
  expect_consistent();
}

TEST_F(AllocatorTest, CommittedAllocationsSurviveACrash) {
  SetUpDefault();
  std::vector<BlockRange> kept;
  for (int i = 0; i < 20; ++i) kept.push_back(alloc(i % 2 ? first_data(1) : 0, 50 + i, 1));
  const uint64_t ino = inode(sb_.root_inode);
  // The inode's block is written as metadata in one transaction, freed (and revoked) in
  // the next: its image must never reach the device.
  const uint64_t dead = inode(sb_.root_inode);
  {
    Handle h = tm_->begin();
    journal::BufferRef b = tm_->create(dead);
    std::fill(b->data().begin(), b->data().end(), std::byte{0xAB});
    h.dirty(b);
  }
  commit();
  ASSERT_OK(release_inode(dead));
  ASSERT_OK(release(kept.back(), /*metadata=*/false));
  kept.pop_back();
  const Usage u = alloc_->usage();
  commit();
  const BlockRange lost = alloc(0, 64, 64);  // never committed
  crash();

  auto r = journal::replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_GE(r->transactions, 2u);
  fsck();
  const auto used = bitmap(/*from_device=*/true);
  for (const BlockRange& k : kept) {
    for (uint64_t b = k.start; b < k.end(); ++b) ASSERT_TRUE(used[b]) << b;
  }
  EXPECT_TRUE(used[ino]);
  EXPECT_FALSE(used[dead]);
  for (uint64_t b = lost.start; b < lost.end(); ++b) EXPECT_FALSE(used[b]) << b;
  AlignedBuffer buf(bs_);
  ASSERT_OK(dev_->read(dead * bs_, buf.span()));
  EXPECT_TRUE(std::all_of(buf.data(), buf.data() + bs_, [](std::byte c) {
    return c == std::byte{0};
  })) << "a revoked inode image was written home";

  open();
  const Usage v = alloc_->usage();
  EXPECT_EQ(v.free_blocks, u.free_blocks);
  EXPECT_EQ(v.inodes, u.inodes);
  expect_consistent();
  close_and_fsck();
}

TEST_F(AllocatorTest, CorruptBlocksAreReportedNotUsed) {
  format();
  // A bad bitmap block of AG 0 and a bad header of AG 3, on the device.
  AlignedBuffer buf(bs_);
  const uint64_t bm = geo().bitmap_blkno(0, 0);
  ASSERT_OK(dev_->read(bm * bs_, buf.span()));
  buf.data()[100] ^= std::byte{1};
  ASSERT_OK(dev_->write(bm * bs_, buf.span()));
  open();
  auto r = try_alloc(0, 1, 1);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kCorruption);
  EXPECT_NE(r.status().message().find(std::to_string(bm)), std::string::npos)
      << r.status().message();
  EXPECT_EQ(release({sb_.root_inode, 1}).code(), Code::kCorruption);
  alloc_.reset();
  tm_.reset();
  journal_.reset();

  const uint64_t head = geo().ag_header_blkno(3);
  ASSERT_OK(dev_->read(head * bs_, buf.span()));
  buf.data()[50] ^= std::byte{1};
  ASSERT_OK(dev_->write(head * bs_, buf.span()));
  auto j = journal::replay(*dev_, sb_, 0);
  ASSERT_TRUE(j.is_ok());
  auto jj = journal::Journal::open(*dev_, sb_, 0);
  ASSERT_TRUE(jj.is_ok()) << jj.status().to_string();
  journal_ = std::move(*jj);
  tm_ = std::make_unique<journal::TransactionManager>(*dev_, *journal_, bs_);
  auto a = Allocator::open(*tm_, sb_, 0);
  ASSERT_FALSE(a.is_ok());
  EXPECT_EQ(a.status().code(), Code::kCorruption);
  EXPECT_NE(a.status().message().find(std::to_string(head)), std::string::npos)
      << a.status().message();
}

// Writing a 1 GiB file sequentially in 1 MiB pieces, each with the previous end as goal,
// ends up in a few extents: one per AG it passes through, runs crossing bitmap blocks.
TEST_F(AllocatorTest, SequentialFileIsContiguous) {
  format(4096 * kMiB, {.slots = 2});
  open();
  ASSERT_GT(geo().ag_size(0), 2 * geo().bits_per_bitmap_block());  // three bitmap blocks
  const Usage before = alloc_->usage();
  constexpr uint64_t kFileBlocks = 262144;
  std::vector<BlockRange> extents;
  uint64_t done = 0, goal = 0;
  int pieces = 0;
  while (done < kFileBlocks) {
    const auto want = static_cast<uint32_t>(std::min<uint64_t>(256, kFileBlocks - done));
    const BlockRange r = alloc(goal, want, 1);
    ASSERT_GT(r.count, 0u);
    if (!extents.empty() && extents.back().end() == r.start) {
      extents.back().count += r.count;
    } else {
      extents.push_back(r);
    }
    done += r.count;
    goal = r.end();
    if (++pieces % 64 == 0) commit();
  }
  EXPECT_LT(extents.size(), 16u);
  RecordProperty("extents", static_cast<int>(extents.size()));
  for (const BlockRange& e : extents) {
    EXPECT_EQ(geo().ag_of(e.start), geo().ag_of(e.end() - 1)) << "an extent spans AGs";
  }
  EXPECT_EQ(alloc_->usage().free_blocks, before.free_blocks - kFileBlocks);
  expect_consistent();
  close_and_fsck();
}

// The counts an AG lock's value block carries come back as written, and only for the AG
// and file system they were written for.
TEST(AgValueBlock, CountsRoundTripForTheirOwnAgAndFileSystemOnly) {
  const AgCounts c{.free_blocks = 0x0123456789ABCDEFull, .inodes = 4242};
  const AgValueBlock b = encode_ag_counts(0xFEEDBEEF, 7, c);
  EXPECT_EQ(decode_ag_counts(0xFEEDBEEF, 7, b), c);
  EXPECT_EQ(decode_ag_counts(0xFEEDBEEF, 8, b), std::nullopt) << "another AG";
  EXPECT_EQ(decode_ag_counts(0xFEEDBEEE, 7, b), std::nullopt) << "another file system";
  EXPECT_EQ(decode_ag_counts(0xFEEDBEEF, 7, AgValueBlock{}), std::nullopt) << "never written";
  AgValueBlock tail = b;
  tail[31] = 1;
  EXPECT_EQ(decode_ag_counts(0xFEEDBEEF, 7, tail), std::nullopt) << "reserved bytes set";
}

}  // namespace
}  // namespace sharedfs::allocator
