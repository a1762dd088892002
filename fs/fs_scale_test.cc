// Scale (ctest label "scale", not in the default suite): one directory of 1,000,000
// entries. Create, lookup and unlink must not slow down as the directory grows, and readdir
// must return every entry exactly once.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <unordered_set>

#include "fs/fs_test_fixture.h"

namespace sharedfs::fs {
namespace {

class ScaleTest : public testing::FsTest {
 protected:
  uint64_t image_bytes() const override { return uint64_t{16} << 30; }
  uint64_t journal_bytes() const override { return 64 * kMiB; }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST_F(ScaleTest, MillionEntryDirectory) {
  const int kEntries = 1'000'000, kBatch = 100'000, kProbes = 20'000;
  const Ino dir = mkdir(fs_->root(), "million");
  std::mt19937_64 rng(1);
  std::vector<double> create_rate, lookup_rate;
  for (int b = 0; b < kEntries / kBatch; ++b) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = b * kBatch; i < (b + 1) * kBatch; ++i) {
      auto a = fs_->mknod(dir, "entry-" + std::to_string(i), S_IFREG | 0644, 0, caller_);
      ASSERT_TRUE(a.is_ok()) << a.status().to_string();
      fs_->forget(a->ino, 1);
    }
    create_rate.push_back(kBatch / seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    for (int p = 0; p < kProbes; ++p) {
      const int i = static_cast<int>(rng() % ((b + 1) * kBatch));
      auto a = fs_->lookup(dir, "entry-" + std::to_string(i));
      ASSERT_TRUE(a.is_ok());
      fs_->forget(a->ino, 1);
    }
    lookup_rate.push_back(kProbes / seconds_since(t0));
    fmt::print("{:>8} entries: create {:>8.0f}/s  lookup {:>8.0f}/s\n", (b + 1) * kBatch,
               create_rate.back(), lookup_rate.back());
  }
  // Every entry exactly once.
  std::unordered_set<std::string> seen;
  uint64_t cookie = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    auto page = fs_->readdir(dir, cookie, 4096);
    ASSERT_TRUE(page.is_ok());
    if (page->empty()) break;
    for (const auto& e : *page) {
      cookie = e.cookie;
      if (e.name == "." || e.name == "..") continue;
      ASSERT_TRUE(seen.insert(e.name).second) << e.name << " listed twice";
    }
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kEntries));
  fmt::print("readdir of {} entries: {:.1f} s\n", kEntries, seconds_since(t0));
  std::vector<double> unlink_rate;
  for (int b = kEntries / kBatch - 1; b >= 0; --b) {
    t0 = std::chrono::steady_clock::now();
    for (int i = b * kBatch; i < (b + 1) * kBatch; ++i) {
      ASSERT_OK(fs_->unlink(dir, "entry-" + std::to_string(i)));
    }
    unlink_rate.push_back(kBatch / seconds_since(t0));
  }
  fmt::print("unlink per 100k, from full to empty:");
  for (double r : unlink_rate) fmt::print(" {:.0f}/s", r);
  fmt::print("\n");
  // No slowdown with size: the last batch at least a third as fast as the first (the
  // machine is noisy; a linear directory would be 10x slower here).
  EXPECT_GT(create_rate.back(), create_rate.front() / 3);
  EXPECT_GT(lookup_rate.back(), lookup_rate.front() / 3);
  EXPECT_GT(unlink_rate.front(), unlink_rate.back() / 3);
  ASSERT_OK(fs_->rmdir(fs_->root(), "million"));
}

}  // namespace
}  // namespace sharedfs::fs
