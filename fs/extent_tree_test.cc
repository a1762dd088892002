#include "fs/extent_tree.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "fs/fs_test_fixture.h"

namespace sharedfs::fs {
namespace {

using format::Extent;

// Data "device blocks" in these tests are made-up numbers far from real metadata: the
// tree only records them. Tree node blocks come from the real allocator.
constexpr uint64_t kFakeData = uint64_t{1} << 40;

class ExtentTreeTest : public testing::InodeTest {
 protected:
  uint64_t image_bytes() const override { return 256 * kMiB; }
  uint64_t journal_bytes() const override { return 8 * kMiB; }
  void SetUp() override {
    InodeTest::SetUp();
    inode_.mode = 0100644;
    inode_.nlink = 1;
  }

  ExtentTree tree() { return ExtentTree(*tm_, *alloc_, sb_, ino_, inode_); }

  void insert(uint64_t logical, uint32_t length) {
    journal::Handle h = tm_->begin();
    ASSERT_OK(tree().insert(h, Extent{logical, kFakeData + logical, length, 0}));
  }

  std::vector<allocator::BlockRange> remove(uint64_t start, uint64_t end) {
    journal::Handle h = tm_->begin();
    auto r = tree().remove(h, start, end);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : std::vector<allocator::BlockRange>{};
  }

};

TEST_F(ExtentTreeTest, ContiguousInsertsMergeIntoOneExtent) {
  for (uint64_t i = 0; i < 100; ++i) insert(i * 8, 8);
  EXPECT_EQ(inode_.extent_depth, 0);
  ASSERT_EQ(inode_.extent_root.size(), 1u);
  EXPECT_EQ(inode_.extent_root[0].length, 800u);
  auto m = tree().lookup(500);
  ASSERT_TRUE(m.is_ok());
  EXPECT_EQ(m->physical, kFakeData + 500);
  EXPECT_EQ(m->length, 300u);
  auto hole = tree().lookup(800);
  ASSERT_TRUE(hole.is_ok());
  EXPECT_TRUE(hole->is_hole());
}

TEST_F(ExtentTreeTest, GrowsDeepAndLooksUpEveryExtentAndHole) {
  constexpr uint64_t kExtents = 3000;                        // > root capacity: index levels needed
  for (uint64_t i = 0; i < kExtents; ++i) insert(i * 4, 2);  // 2 mapped, 2 hole
  EXPECT_GE(inode_.extent_depth, 1);
  EXPECT_GT(inode_.blocks, 0u);
  for (uint64_t i = 0; i < kExtents; i += 7) {
    auto m = tree().lookup(i * 4 + 1);
    ASSERT_TRUE(m.is_ok());
    EXPECT_EQ(m->physical, kFakeData + i * 4 + 1);
    EXPECT_EQ(m->length, 1u);
    auto h = tree().lookup(i * 4 + 2);
    ASSERT_TRUE(h.is_ok());
    EXPECT_TRUE(h->is_hole());
    EXPECT_EQ(h->length,
              i + 1 < kExtents ? 2u : std::numeric_limits<uint64_t>::max() - (i * 4 + 2));
  }
  auto all = tree().extents(0, kExtents * 4);
  ASSERT_TRUE(all.is_ok());
  EXPECT_EQ(all->size(), kExtents);
  auto some = tree().extents(401, 409);  // overlaps [400,402), [404,406), [408,410)
  ASSERT_TRUE(some.is_ok());
  ASSERT_EQ(some->size(), 3u);
  EXPECT_EQ((*some)[0].logical, 400u);
  EXPECT_EQ((*some)[2].logical, 408u);
}

TEST_F(ExtentTreeTest, ReverseInsertsKeepRouting) {
  for (uint64_t i = 2000; i-- > 0;) insert(i * 3, 1);
  for (uint64_t i = 0; i < 2000; i += 13) {
    auto m = tree().lookup(i * 3);
    ASSERT_TRUE(m.is_ok());
    EXPECT_EQ(m->physical, kFakeData + i * 3) << i;
  }
}

TEST_F(ExtentTreeTest, OverlappingInsertIsRefused) {
  insert(10, 10);
  journal::Handle h = tm_->begin();
  EXPECT_FALSE(tree().insert(h, Extent{15, kFakeData + 999, 2, 0}).is_ok());
  EXPECT_FALSE(tree().insert(h, Extent{5, kFakeData + 999, 6, 0}).is_ok());
}

TEST_F(ExtentTreeTest, PunchInTheMiddleSplitsAndReturnsTheBlocks) {
  insert(0, 100);
  auto freed = remove(40, 60);
  ASSERT_EQ(freed.size(), 1u);
  EXPECT_EQ(freed[0].start, kFakeData + 40);
  EXPECT_EQ(freed[0].count, 20u);
  ASSERT_EQ(inode_.extent_root.size(), 2u);
  EXPECT_EQ(inode_.extent_root[1].logical, 60u);
  EXPECT_EQ(inode_.extent_root[1].physical, kFakeData + 60);
  auto next = tree().next_extent(45);
  ASSERT_TRUE(next.is_ok() && next->has_value());
  EXPECT_EQ((*next)->logical, 60u);
}

TEST_F(ExtentTreeTest, RemovingEverythingFreesTreeBlocksAndShrinks) {
  for (uint64_t i = 0; i < 5000; ++i) insert(i * 2, 1);
  EXPECT_GE(inode_.extent_depth, 1);
  EXPECT_LT(alloc_->usage().free_blocks, baseline_free_);
  auto freed = remove(0, 100000);
  uint64_t blocks = 0;
  for (const auto& r : freed) blocks += r.count;
  EXPECT_EQ(blocks, 5000u);
  EXPECT_EQ(inode_.extent_depth, 0);
  EXPECT_TRUE(inode_.extent_root.empty());
  EXPECT_EQ(inode_.blocks, 0u);
  EXPECT_EQ(alloc_->usage().free_blocks, baseline_free_);
}

// A hole punched across the boundary between two subtrees, then filled by one extent:
// the part past the next index key must still be found (routing sends those blocks to
// the right-hand subtree).
TEST_F(ExtentTreeTest, RefillingAHoleAcrossASubtreeBoundaryKeepsEveryBlockFindable) {
  for (uint64_t i = 0; i < 3000; ++i) insert(i * 2, 1);
  ASSERT_GE(inode_.extent_depth, 1);
  ASSERT_GE(inode_.extent_root.size(), 2u);
  const uint64_t key = inode_.extent_root[1].logical;  // first block of the second subtree
  ASSERT_GE(key, 40u);
  remove(key - 40, key + 40);
  journal::Handle h = tm_->begin();
  ASSERT_OK(tree().insert(h, Extent{key - 40, kFakeData + 1'000'000, 80, 0}));
  for (uint64_t b = key - 40; b < key + 40; ++b) {
    auto m = tree().lookup(b);
    ASSERT_OK(m);
    EXPECT_EQ(m->physical, kFakeData + 1'000'000 + (b - (key - 40))) << "block " << b;
  }
  // Blocks on either side are as before.
  EXPECT_EQ(tree().lookup(key - 42)->physical, kFakeData + key - 42);
  EXPECT_EQ(tree().lookup(key + 40)->physical, kFakeData + key + 40);
  auto all = tree().extents(0, 6000);
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), 3000u - 40u + 1u);
}

// Random inserts and punches against a model, checked block by block.
TEST_F(ExtentTreeTest, MatchesAModelUnderRandomInsertsAndPunches) {
  std::mt19937_64 rng(1234);
  constexpr uint64_t kSpace = 20000;
  std::vector<bool> mapped(kSpace, false);
  for (int step = 0; step < 3000; ++step) {
    const uint64_t start = rng() % kSpace;
    const uint64_t len = 1 + rng() % 40;
    const uint64_t end = std::min(kSpace, start + len);
    if (rng() % 3 != 0) {
      // Insert the unmapped runs inside [start, end).
      uint64_t b = start;
      while (b < end) {
        if (mapped[b]) {
          ++b;
          continue;
        }
        uint64_t e = b;
        while (e < end && !mapped[e]) mapped[e++] = true;
        insert(b, static_cast<uint32_t>(e - b));
        b = e;
      }
    } else {
      auto freed = remove(start, end);
      uint64_t expected = 0;
      for (uint64_t b = start; b < end; ++b) expected += mapped[b] ? 1 : 0;
      uint64_t got = 0;
      for (const auto& r : freed) got += r.count;
      ASSERT_EQ(got, expected) << "step " << step;
      for (uint64_t b = start; b < end; ++b) mapped[b] = false;
    }
  }
  for (uint64_t b = 0; b < kSpace; ++b) {
    auto m = tree().lookup(b);
    ASSERT_TRUE(m.is_ok());
    ASSERT_EQ(!m->is_hole(), static_cast<bool>(mapped[b])) << "block " << b;
    if (!m->is_hole()) {
      ASSERT_EQ(m->physical, kFakeData + b);
    }
  }
}

TEST_F(ExtentTreeTest, SurvivesCommitAndReload) {
  for (uint64_t i = 0; i < 1000; ++i) insert(i * 2, 1);
  ASSERT_TRUE(tm_->commit().is_ok());
  const uint64_t blocks[] = {inode_.extent_root[0].physical};
  tm_->forget(blocks);  // force a re-read of a node block
  auto m = tree().lookup(998);
  ASSERT_TRUE(m.is_ok());
  EXPECT_EQ(m->physical, kFakeData + 998);
}

}  // namespace
}  // namespace sharedfs::fs
