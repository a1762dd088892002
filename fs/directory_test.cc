#include "fs/directory.h"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <unordered_map>

#include "fs/fs_test_fixture.h"

namespace sharedfs::fs {
namespace {

using format::DirEntry;
using format::FileType;


class DirectoryTest : public testing::InodeTest {
 protected:
  uint64_t image_bytes() const override { return 1024 * kMiB; }
  uint64_t journal_bytes() const override { return 32 * kMiB; }
  void SetUp() override {
    InodeTest::SetUp();
    inode_.mode = 040755;
    inode_.nlink = 2;
    inode_.flags = format::Inode::kInlineData;
  }

  Directory dir() { return Directory(*tm_, *alloc_, sb_, ino_, inode_); }

  Status add(const std::string& name, uint64_t ino) {
    journal::Handle h = tm_->begin();
    return dir().add(h, DirEntry{ino, 0, FileType::kRegular, name});
  }

  Result<DirEntry> remove(const std::string& name) {
    journal::Handle h = tm_->begin();
    return dir().remove(h, name);
  }

  // Everything readdir returns, in batches of `batch`, calling `between` after each batch.
  std::vector<ListedEntry> list_all(size_t batch, const std::function<void()>& between = {}) {
    std::vector<ListedEntry> all;
    uint64_t cookie = 0;
    for (;;) {
      auto part = dir().list(cookie, batch);
      EXPECT_TRUE(part.is_ok()) << part.status().to_string();
      if (!part.is_ok() || part->empty()) break;
      cookie = part->back().cookie;
      for (auto& e : *part) all.push_back(std::move(e));
      if (between) between();
    }
    return all;
  }

  // Commits, and makes the journal write everything home, so the cache bound is tested
  // against real re-reads.
  void commit() { ASSERT_TRUE(tm_->commit().is_ok()); }

};

TEST_F(DirectoryTest, SmallDirectoryStaysInline) {
  for (int i = 0; i < 20; ++i) ASSERT_OK(add("f" + std::to_string(i), 100 + i));
  EXPECT_TRUE(inode_.flags & format::Inode::kInlineData);
  EXPECT_EQ(inode_.dir_entries, 20u);
  auto e = dir().lookup("f7");
  ASSERT_TRUE(e.is_ok() && e->has_value());
  EXPECT_EQ((*e)->ino, 107u);
  EXPECT_EQ(add("f7", 1).code(), Code::kAlreadyExists);
  auto missing = dir().lookup("nope");
  ASSERT_TRUE(missing.is_ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(remove("f7").is_ok());
  EXPECT_EQ(remove("f7").status().code(), Code::kNotFound);
  EXPECT_EQ(list_all(100).size(), 19u);
}

TEST_F(DirectoryTest, NamesAreValidated) {
  EXPECT_EQ(add("", 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(add("a/b", 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(add(".", 1).code(), Code::kInvalidArgument);
  EXPECT_OK(add(std::string(255, 'n'), 1));
  Status too_long = add(std::string(256, 'n'), 1);
  EXPECT_EQ(too_long.to_errno(), ENAMETOOLONG);
}

TEST_F(DirectoryTest, GrowsIntoAHashedDirectoryAndFindsEveryEntry) {
  constexpr int kEntries = 20000;
  for (int i = 0; i < kEntries; ++i) {
    ASSERT_OK(add("file-with-a-longish-name-" + std::to_string(i), 1000 + i));
    if (i % 2000 == 0) commit();
  }
  commit();
  EXPECT_TRUE(inode_.flags & format::Inode::kHashedDir);
  EXPECT_GT(inode_.dir_depth, 4u);
  EXPECT_EQ(inode_.dir_entries, uint64_t(kEntries));
  for (int i = 0; i < kEntries; i += 17) {
    auto e = dir().lookup("file-with-a-longish-name-" + std::to_string(i));
    ASSERT_TRUE(e.is_ok() && e->has_value()) << i;
    EXPECT_EQ((*e)->ino, uint64_t(1000 + i));
  }
  auto all = list_all(500);
  ASSERT_EQ(all.size(), size_t(kEntries));
  std::set<std::string> names;
  for (size_t i = 0; i < all.size(); ++i) {
    names.insert(all[i].entry.name);
    if (i > 0) {
      EXPECT_LT(all[i - 1].cookie, all[i].cookie);
    }
  }
  EXPECT_EQ(names.size(), size_t(kEntries));
}

TEST_F(DirectoryTest, RemoveEverythingThenReleaseReturnsAllBlocks) {
  for (int i = 0; i < 3000; ++i) ASSERT_OK(add("x" + std::to_string(i), 10 + i));
  EXPECT_TRUE(inode_.flags & format::Inode::kHashedDir);
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(remove("x" + std::to_string(i)).is_ok()) << i;
  EXPECT_EQ(inode_.dir_entries, 0u);
  EXPECT_TRUE(list_all(100).empty());
  {
    journal::Handle h = tm_->begin();
    ASSERT_OK(dir().release_blocks(h));
  }
  EXPECT_EQ(inode_.blocks, 0u);
  EXPECT_EQ(alloc_->usage().free_blocks, baseline_free_);
}

// readdir while entries are added and removed between batches: every entry present for
// the whole listing is returned exactly once; nothing is returned twice.
TEST_F(DirectoryTest, ReaddirReturnsStableEntriesExactlyOnceUnderChanges) {
  std::mt19937_64 rng(99);
  constexpr int kStable = 5000;
  for (int i = 0; i < kStable; ++i) ASSERT_OK(add("stable-" + std::to_string(i), i + 1));
  int churn = 0;
  std::vector<std::string> live_churn;
  auto all = list_all(64, [&] {
    // Between batches: add a few (forcing splits and table doubling), remove a few.
    for (int k = 0; k < 40; ++k) {
      std::string name = "churn-" + std::to_string(churn++);
      ASSERT_OK(add(name, 900000 + churn));
      live_churn.push_back(name);
    }
    for (int k = 0; k < 10 && !live_churn.empty(); ++k) {
      const size_t pick = rng() % live_churn.size();
      ASSERT_TRUE(remove(live_churn[pick]).is_ok());
      live_churn.erase(live_churn.begin() + static_cast<std::ptrdiff_t>(pick));
    }
  });
  std::unordered_map<std::string, int> seen;
  for (const auto& e : all) ++seen[e.entry.name];
  for (const auto& [name, n] : seen) EXPECT_EQ(n, 1) << name << " returned " << n << " times";
  for (int i = 0; i < kStable; ++i) {
    EXPECT_EQ(seen.count("stable-" + std::to_string(i)), 1u) << "stable-" << i << " missing";
  }
  EXPECT_GT(churn, 1000);
}

TEST_F(DirectoryTest, LookupCostDoesNotGrowWithSize) {
  // Lookups read the inode's table block and one leaf: count device reads through a cold
  // cache at two sizes.
  auto reads_for_lookups = [&](int n) {
    commit();
    ASSERT_OK(journal_->checkpoint());
    tm_ = std::make_unique<journal::TransactionManager>(*dev_, *journal_, sb_.geo.block_size);
    auto a = allocator::Allocator::open(*tm_, sb_, 0);
    ASSERT_TRUE(a.is_ok());
    alloc_ = std::move(*a);
    const size_t before = tm_->cached_buffers();
    for (int i = 0; i < 50; ++i) {
      auto e = dir().lookup("n" + std::to_string((i * 7919) % n));
      ASSERT_TRUE(e.is_ok() && e->has_value());
    }
    // Each cold lookup adds at most: table block, extent node, leaf.
    EXPECT_LE(tm_->cached_buffers() - before, 50u * 3) << n << " entries";
  };
  for (int i = 0; i < 2000; ++i) ASSERT_OK(add("n" + std::to_string(i), i + 1));
  reads_for_lookups(2000);
  for (int i = 2000; i < 40000; ++i) ASSERT_OK(add("n" + std::to_string(i), i + 1));
  reads_for_lookups(40000);
}

}  // namespace
}  // namespace sharedfs::fs
