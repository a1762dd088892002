// Advisory locks: one node (fcntl ranges split and merged, flock modes) with local gates,
// then two nodes over the DLM on 127.0.0.1, where record locks conflict across nodes by
// byte range and flocks per file.
#include "dlm/advisory_locks.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <future>
#include <thread>

#include "dlm/cluster_test_util.h"

namespace sharedfs::dlm {
namespace {

using namespace std::chrono_literals;

RecordLock rec(uint64_t owner, bool write, uint64_t start, uint64_t end) {
  return RecordLock{.write = write, .start = start, .end = end, .owner = owner, .pid = static_cast<uint32_t>(owner)};
}

int err(const Status& st) { return st.is_ok() ? 0 : st.to_errno(); }

TEST(AdvisoryLocks, RecordLocksOfOneNodeConflictByRange) {
  auto gate = make_local_lock_gate();
  auto ranges = make_local_range_gate();
  AdvisoryLocks locks(*gate, *ranges);
  ASSERT_OK(locks.set(1, rec(10, true, 0, 99), false, {}));
  EXPECT_EQ(err(locks.set(1, rec(20, false, 50, 60), false, {})), EAGAIN);
  EXPECT_OK(locks.set(1, rec(20, false, 100, 200), false, {}));
  EXPECT_EQ(err(locks.set(1, rec(20, true, 0, 10), false, {})), EAGAIN);
  // Another inode is another file.
  EXPECT_OK(locks.set(2, rec(20, true, 0, 10), false, {}));
  // Unlocking the middle of a lock splits it.
  locks.unlock(1, 10, 40, 59);
  EXPECT_OK(locks.set(1, rec(30, true, 40, 59), false, {}));
  EXPECT_EQ(err(locks.set(1, rec(30, true, 30, 45), false, {})), EAGAIN);
  auto c = locks.test(1, rec(30, false, 60, 70));
  ASSERT_OK(c);
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->owner, 10u);
  EXPECT_EQ((*c)->start, 60u);
  EXPECT_EQ((*c)->end, 99u);
  // Touching read locks of one owner merge; the test sees one lock.
  ASSERT_OK(locks.set(3, rec(40, false, 0, 9), false, {}));
  ASSERT_OK(locks.set(3, rec(40, false, 10, 19), false, {}));
  c = locks.test(3, rec(41, true, 15, 15));
  ASSERT_OK(c);
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->start, 0u);
  EXPECT_EQ((*c)->end, 19u);
  // An owner's own locks never conflict: a write over its read replaces it.
  EXPECT_OK(locks.set(3, rec(40, true, 5, 7), false, {}));
  c = locks.test(3, rec(41, false, 0, 4));
  ASSERT_OK(c);
  EXPECT_FALSE(c->has_value());
  c = locks.test(3, rec(41, false, 6, 6));
  ASSERT_OK(c);
  ASSERT_TRUE(c->has_value());
  EXPECT_TRUE((*c)->write);
}

TEST(AdvisoryLocks, AWaitingRecordLockIsGrantedWhenTheHolderLetsGoOrInterrupted) {
  auto gate = make_local_lock_gate();
  auto ranges = make_local_range_gate();
  AdvisoryLocks locks(*gate, *ranges);
  ASSERT_OK(locks.set(1, rec(1, true, 0, UINT64_MAX), false, {}));
  auto waiter = std::async(std::launch::async, [&] { return locks.set(1, rec(2, false, 0, 0), true, {}); });
  EXPECT_EQ(waiter.wait_for(200ms), std::future_status::timeout);
  locks.unlock(1, 1, 0, UINT64_MAX);
  EXPECT_OK(waiter.get());
  std::atomic<bool> stop{false};
  auto interrupted = std::async(std::launch::async, [&] {
    return locks.set(1, rec(3, true, 0, 0), true, [&] { return stop.load(); });
  });
  EXPECT_EQ(interrupted.wait_for(200ms), std::future_status::timeout);
  stop = true;
  EXPECT_EQ(err(interrupted.get()), EINTR);
}

TEST(AdvisoryLocks, FlockModesOnOneNode) {
  auto gate = make_local_lock_gate();
  auto ranges = make_local_range_gate();
  AdvisoryLocks locks(*gate, *ranges);
  ASSERT_OK(locks.flock(1, 100, false, false, {}));
  ASSERT_OK(locks.flock(1, 101, false, false, {}));
  EXPECT_EQ(err(locks.flock(1, 102, true, false, {})), EAGAIN);
  locks.flock_unlock(1, 100);
  locks.flock_unlock(1, 101);
  EXPECT_OK(locks.flock(1, 102, true, false, {}));
  EXPECT_EQ(err(locks.flock(1, 100, false, false, {})), EAGAIN);
  // flock and fcntl locks do not see each other (as on Linux).
  EXPECT_OK(locks.set(1, rec(7, true, 0, UINT64_MAX), false, {}));
}

struct TwoNodes {
  std::array<std::unique_ptr<ClusterLockService>, 2> svc = testing::start_two_lock_services(
      [](int) -> ClusterLockService::FlushHook {
        return [](const LockName&, LockMode) -> std::optional<ValueBlockBytes> { return std::nullopt; };
      });
  std::unique_ptr<NodeLockGate> gate[2];
  std::unique_ptr<RangeLockGate> ranges[2];
  std::unique_ptr<AdvisoryLocks> locks[2];

  TwoNodes() {
    for (int i = 0; i < 2; ++i) {
      gate[i] = make_dlm_lock_gate(svc[i]->node());
      ranges[i] = make_dlm_range_gate(svc[i]->node());
      locks[i] = std::make_unique<AdvisoryLocks>(*gate[i], *ranges[i]);
    }
  }
  ~TwoNodes() {
    for (auto& l : locks) l.reset();
    for (auto& r : ranges) r.reset();
    for (auto& g : gate) g.reset();
  }
};

TEST(AdvisoryLocks, RecordLocksConflictAcrossNodesByRange) {
  TwoNodes c;
  ASSERT_OK(c.locks[0]->set(5, rec(1, true, 0, 10), false, {}));
  // Node 2 locks other bytes of the file at once, and sees node 1's lock (pid 0: another
  // host's pid means nothing here) where it is in the way.
  EXPECT_OK(c.locks[1]->set(5, rec(2, true, 11, 20), false, {}));
  auto seen = c.locks[1]->test(5, rec(2, false, 5, 200));
  ASSERT_OK(seen);
  ASSERT_TRUE(seen->has_value());
  EXPECT_EQ((*seen)->start, 0u);
  EXPECT_EQ((*seen)->end, 10u);
  EXPECT_EQ((*seen)->pid, 0u);
  auto free_bytes = c.locks[1]->test(5, rec(3, false, 21, 200));
  ASSERT_OK(free_bytes);
  EXPECT_FALSE(free_bytes->has_value());
  EXPECT_EQ(err(c.locks[1]->set(5, rec(2, false, 10, 10), false, {})), EAGAIN);
  // Node 1's other owners lock other ranges at once.
  EXPECT_OK(c.locks[0]->set(5, rec(3, true, 30, 40), false, {}));
  // A waiter on node 2 gets its lock once node 1's owners in its way are done.
  auto waiter = std::async(std::launch::async, [&] { return c.locks[1]->set(5, rec(2, true, 0, 35), true, {}); });
  EXPECT_EQ(waiter.wait_for(300ms), std::future_status::timeout);
  c.locks[0]->unlock(5, 1, 0, UINT64_MAX);
  EXPECT_EQ(waiter.wait_for(300ms), std::future_status::timeout) << "owner 3 still holds 30..40";
  c.locks[0]->unlock(5, 3, 0, UINT64_MAX);
  ASSERT_OK(waiter.get());
  EXPECT_EQ(err(c.locks[0]->set(5, rec(1, false, 0, 0), false, {})), EAGAIN);
  EXPECT_OK(c.locks[0]->set(5, rec(1, true, 36, 36), false, {}));
  // An interrupted wait returns EINTR and takes nothing.
  std::atomic<bool> stop{false};
  auto interrupted = std::async(std::launch::async, [&] {
    return c.locks[0]->set(5, rec(4, true, 0, 0), true, [&] { return stop.load(); });
  });
  EXPECT_EQ(interrupted.wait_for(200ms), std::future_status::timeout);
  stop = true;
  EXPECT_EQ(err(interrupted.get()), EINTR);
  // Read locks are shared across nodes.
  c.locks[1]->unlock(5, 2, 0, UINT64_MAX);
  auto none = c.locks[1]->test(5, rec(9, true, 0, 0));
  ASSERT_OK(none);
  EXPECT_FALSE(none->has_value()) << "the interrupted request must not hold byte 0";
  EXPECT_OK(c.locks[0]->set(5, rec(1, false, 0, 0), false, {}));
  EXPECT_OK(c.locks[1]->set(5, rec(2, false, 0, 0), false, {}));
}

TEST(AdvisoryLocks, FlockConflictsAcrossNodesAndAWaitCanBeInterrupted) {
  TwoNodes c;
  ASSERT_OK(c.locks[0]->flock(9, 1, true, false, {}));
  EXPECT_EQ(err(c.locks[1]->flock(9, 2, false, false, {})), EAGAIN);
  std::atomic<bool> stop{false};
  auto interrupted = std::async(std::launch::async, [&] {
    return c.locks[1]->flock(9, 2, true, true, [&] { return stop.load(); });
  });
  EXPECT_EQ(interrupted.wait_for(200ms), std::future_status::timeout);
  stop = true;
  EXPECT_EQ(err(interrupted.get()), EINTR);
  auto waiter = std::async(std::launch::async, [&] { return c.locks[1]->flock(9, 2, false, true, {}); });
  EXPECT_EQ(waiter.wait_for(200ms), std::future_status::timeout);
  c.locks[0]->flock_unlock(9, 1);
  ASSERT_OK(waiter.get());
  // The interrupted request was lowered again: node 1 may share now.
  EXPECT_OK(c.locks[0]->flock(9, 1, false, true, {}));
  EXPECT_EQ(err(c.locks[0]->flock(9, 3, true, false, {})), EAGAIN);
}

// Many rounds of lock, check nobody else is inside, unlock, on both nodes at once.
TEST(AdvisoryLocks, WriteLocksExcludeAcrossNodesUnderContention) {
  TwoNodes c;
  std::atomic<int> inside{0}, overlaps{0}, failures{0};
  auto work = [&](int node, uint64_t owner) {
    for (int i = 0; i < 200; ++i) {
      if (!c.locks[node]->set(11, rec(owner, true, 0, UINT64_MAX), true, {})) {
        ++failures;
        continue;
      }
      if (inside.fetch_add(1) != 0) ++overlaps;
      std::this_thread::yield();
      inside.fetch_sub(1);
      c.locks[node]->unlock(11, owner, 0, UINT64_MAX);
    }
  };
  std::thread t[] = {std::thread(work, 0, 1), std::thread(work, 0, 2), std::thread(work, 1, 3),
                     std::thread(work, 1, 4)};
  for (auto& th : t) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(overlaps.load(), 0);
}

}  // namespace
}  // namespace sharedfs::dlm
