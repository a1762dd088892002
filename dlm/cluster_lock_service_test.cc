// ClusterLockService over ZeroMQ tcp on 127.0.0.1: the fast path for cached locks, and a
// lock another node needs is given up after the flush hook once our threads are done.
#include "dlm/cluster_lock_service.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "dlm/cluster_test_util.h"

namespace sharedfs::dlm {
namespace {

struct TwoNodes {
  std::atomic<int> flushes[2] = {0, 0};
  std::array<std::unique_ptr<ClusterLockService>, 2> svc =
      testing::start_two_lock_services([this](int i) -> ClusterLockService::FlushHook {
        return [this, i](const LockName&, LockMode) { ++flushes[i]; };
      });
};

TEST(ClusterLockService, CachedLocksTakeTheFastPath) {
  TwoNodes c;
  const LockName name{LockSpace::kInode, 7};
  {
    auto l = c.svc[0]->lock(name, LockMode::kEX);
    ASSERT_OK(l);
  }
  const uint64_t before = c.svc[0]->fast_path_hits();
  for (int i = 0; i < 1000; ++i) {
    auto l = c.svc[0]->lock(name, i % 2 ? LockMode::kEX : LockMode::kPR);
    ASSERT_OK(l);
  }
  EXPECT_EQ(c.svc[0]->fast_path_hits() - before, 1000u);
  EXPECT_EQ(c.flushes[0].load(), 0);
}

TEST(ClusterLockService, AnotherNodeGetsTheLockAfterOurUsersAndTheFlush) {
  TwoNodes c;
  const LockName name{LockSpace::kInode, 9};
  auto held = c.svc[0]->lock(name, LockMode::kEX);
  ASSERT_OK(held);
  std::atomic<bool> got{false};
  std::thread other([&] {
    auto l = c.svc[1]->lock(name, LockMode::kPR);
    EXPECT_OK(l);
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(got.load());  // our thread still uses it
  // New takers on our node now wait behind the other node (no fast path while revoking).
  std::atomic<bool> ours{false};
  std::thread again([&] {
    auto l = c.svc[0]->lock(name, LockMode::kEX);
    EXPECT_OK(l);
    ours = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(ours.load());
  held->reset();
  other.join();
  EXPECT_TRUE(got.load());
  EXPECT_GE(c.flushes[0].load(), 1);
  again.join();
  EXPECT_TRUE(ours.load());
}

TEST(ClusterLockService, ThreadsOfOneNodeExcludeEachOther) {
  TwoNodes c;
  const LockName name{LockSpace::kInode, 11};
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        const bool ex = (i + t) % 3 == 0;
        auto l = c.svc[t % 2]->lock(name, ex ? LockMode::kEX : LockMode::kPR);
        ASSERT_OK(l);
        // Both nodes count into `inside`: exclusion holds across the cluster too.
        if (ex) {
          if (inside.fetch_add(100) != 0) overlap = true;
          inside.fetch_sub(100);
        } else {
          if (inside.fetch_add(1) >= 100) overlap = true;
          inside.fetch_sub(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(overlap.load());
}

}  // namespace
}  // namespace sharedfs::dlm
