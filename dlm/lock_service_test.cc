#include "dlm/lock_service.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "common/test_util.h"

namespace sharedfs::dlm {
namespace {

TEST(LockModes, Compatibility) {
  EXPECT_TRUE(compatible(LockMode::kPR, LockMode::kPR));
  EXPECT_FALSE(compatible(LockMode::kPR, LockMode::kEX));
  EXPECT_FALSE(compatible(LockMode::kEX, LockMode::kEX));
  EXPECT_TRUE(compatible(LockMode::kNL, LockMode::kEX));
}

TEST(LocalLockService, ExclusiveExcludesEveryoneAndSharedShares) {
  auto svc = make_local_lock_service();
  const LockName name{LockSpace::kInode, 42};
  std::atomic<int> inside{0};
  std::atomic<int> max_readers{0};
  std::atomic<bool> overlap{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const bool ex = (i + t) % 4 == 0;
        auto l = svc->lock(name, ex ? LockMode::kEX : LockMode::kPR);
        ASSERT_OK(l);
        if (ex) {
          if (inside.fetch_add(100) != 0) overlap = true;
          inside.fetch_sub(100);
        } else {
          int now = inside.fetch_add(1) + 1;
          if (now >= 100) overlap = true;
          int m = max_readers.load();
          while (now > m && !max_readers.compare_exchange_weak(m, now)) {
          }
          inside.fetch_sub(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(overlap);
  EXPECT_GE(max_readers.load(), 1);
}

TEST(LocalLockService, DifferentNamesDoNotBlockAndReleaseOnMove) {
  auto svc = make_local_lock_service();
  auto a = svc->lock({LockSpace::kInode, 1}, LockMode::kEX);
  ASSERT_OK(a);
  auto b = svc->lock({LockSpace::kAllocGroup, 1}, LockMode::kEX);  // same id, other space
  ASSERT_OK(b);
  Lock moved = std::move(*a);
  EXPECT_TRUE(moved.held());
  EXPECT_FALSE(a->held());
  moved.reset();
  auto again = svc->lock({LockSpace::kInode, 1}, LockMode::kEX);  // would hang if still held
  ASSERT_OK(again);
  EXPECT_EQ(again->mode(), LockMode::kEX);
  EXPECT_EQ(again->name().to_string(), "inode:1");
}

TEST(LocalLockService, WaitingWriterIsNotStarvedByReaders) {
  auto svc = make_local_lock_service();
  const LockName name{LockSpace::kInode, 7};
  auto r1 = svc->lock(name, LockMode::kPR);
  ASSERT_OK(r1);
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    auto w = svc->lock(name, LockMode::kEX);
    writer_done = true;
  });
  // Give the writer time to queue, then a new reader must wait behind it.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::atomic<bool> reader_done{false};
  std::thread reader([&] {
    auto r2 = svc->lock(name, LockMode::kPR);
    EXPECT_TRUE(writer_done.load());
    reader_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(writer_done.load());
  EXPECT_FALSE(reader_done.load());
  r1->reset();
  writer.join();
  reader.join();
  EXPECT_TRUE(reader_done.load());
}

}  // namespace
}  // namespace sharedfs::dlm
