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
        return [this, i](const LockName&, LockMode) -> std::optional<ValueBlockBytes> {
          ++flushes[i];
          return std::nullopt;
        };
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

// The value block the flush hook returns goes back with the EX lock and reaches the next
// holder's grant; a lock nobody wrote a value for has none; a PR holder giving up writes
// nothing back.
TEST(ClusterLockService, TheFlushHooksValueBlockReachesTheNextHolder) {
  ValueBlockBytes written{};
  for (size_t i = 0; i < written.size(); ++i) written[i] = static_cast<uint8_t>(i * 7 + 1);
  std::atomic<int> asked{0};
  auto svc = testing::start_two_lock_services([&](int) -> ClusterLockService::FlushHook {
    return [&](const LockName&, LockMode) -> std::optional<ValueBlockBytes> {
      ++asked;
      return written;
    };
  });
  ASSERT_NE(svc[1], nullptr);
  const LockName name{LockSpace::kAllocGroup, 3};
  {
    auto l = svc[0]->lock(name, LockMode::kEX);
    ASSERT_OK(l);
    EXPECT_EQ(svc[0]->value_block(*l), std::nullopt) << "nobody wrote one yet";
  }
  {
    auto l = svc[1]->lock(name, LockMode::kEX);  // node 0 gives it up, writing the value
    ASSERT_OK(l);
    EXPECT_EQ(svc[1]->value_block(*l), written);
    EXPECT_GE(asked.load(), 1);
  }
  written[0] = 0xEE;  // node 1 gives up EX to a PR reader: the new bytes go with it
  auto r0 = svc[0]->lock(name, LockMode::kPR);
  ASSERT_OK(r0);
  EXPECT_EQ(svc[0]->value_block(*r0), written);
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

namespace sharedfs::dlm {
namespace {

// `sharedfs locks|status|top` ask every node through one: each answers on its driver
// thread; a node without a responder is reported missing once the wait is over.
TEST(ClusterLockService, QueriesReachEveryMemberAndTheirAnswersComeBack) {
  TwoNodes c;
  for (int i = 0; i < 2; ++i) {
    c.svc[i]->node().set_query_responder(
        [i](const std::string& q, LockManager& lm, LockCache&) {
          return fmt::format("node {} epoch {} heard {}", i + 1, lm.epoch(), q);
        });
  }
  auto got = c.svc[0]->node().query_all("who", std::chrono::seconds(5));
  auto& answers = got.answers;
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[1], "node 1 epoch 1 heard who");
  EXPECT_EQ(answers[2], "node 2 epoch 1 heard who");
  EXPECT_EQ(got.members, (std::vector<uint32_t>{1, 2}));

  c.svc[1]->node().set_query_responder({});  // node 2 stops answering
  const auto start = std::chrono::steady_clock::now();
  answers = c.svc[0]->node().query_all("again", std::chrono::milliseconds(300)).answers;
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(300));
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_TRUE(answers.contains(1));
}

// The lock table an operator sees: the master lists the holder and the waiter with its
// wait, the holder's cache shows that another node wants the lock; --busy leaves idle
// resources out.
TEST(ClusterLockService, SnapshotsShowHoldersWaitersAndWaitTimes) {
  TwoNodes c;
  const LockName busy{LockSpace::kInode, 11}, idle{LockSpace::kInode, 12};
  auto held = c.svc[0]->lock(busy, LockMode::kEX);
  ASSERT_OK(held);
  { ASSERT_OK(c.svc[0]->lock(idle, LockMode::kPR)); }
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto l = c.svc[1]->lock(busy, LockMode::kPR);
    EXPECT_OK(l);
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_FALSE(got.load());
  LockTableSnapshot all[2], busy_only[2];
  std::vector<LockCache::CachedLock> cached;
  for (int i = 0; i < 2; ++i) {
    c.svc[i]->node().call([&](LockManager& lm, LockCache& cache) {
      all[i] = lm.snapshot(false, 100);
      busy_only[i] = lm.snapshot(true, 100);
      if (i == 0) cached = cache.snapshot(true, 100, nullptr);
    });
  }
  const ResourceName r = ResourceName::from(busy);
  const LockTableSnapshot::Mastered* m = nullptr;
  for (auto& s : busy_only) {
    for (auto& x : s.mastered) {
      EXPECT_EQ(x.name, r) << "an idle resource in the busy view";
      m = &x;
    }
  }
  ASSERT_NE(m, nullptr) << "the waited-for resource is in nobody's busy view";
  ASSERT_EQ(m->granted.size(), 1u);
  EXPECT_EQ(m->granted[0].owner.id, NodeId(1));
  EXPECT_EQ(m->granted[0].mode, LockMode::kEX);
  ASSERT_EQ(m->waiting.size(), 1u);
  EXPECT_EQ(m->waiting[0].owner.id, NodeId(2));
  EXPECT_EQ(m->waiting[0].mode, LockMode::kPR);
  EXPECT_GE(m->waiting[0].waited, 200u);
  EXPECT_EQ(all[0].mastered.size() + all[1].mastered.size(), 2u);
  // Node 2's own request is in progress, node 1 knows node 2 waits.
  ASSERT_EQ(busy_only[1].pending.size(), 1u);
  EXPECT_EQ(busy_only[1].pending[0].wanted, LockMode::kPR);
  ASSERT_EQ(cached.size(), 1u);
  EXPECT_EQ(cached[0].name, r);
  EXPECT_EQ(cached[0].wanted_elsewhere, LockMode::kPR);
  EXPECT_EQ(cached[0].users, 1);
  held->reset();
  waiter.join();
  EXPECT_TRUE(got.load());
}

}  // namespace
}  // namespace sharedfs::dlm
