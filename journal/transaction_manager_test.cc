#include <atomic>
#include <chrono>
#include <thread>

#include "journal/journal_test_fixture.h"

namespace sharedfs::journal {
namespace {

using std::chrono::milliseconds;

class TransactionManagerTest : public JournalTest {
 protected:
  void SetUp() override {
    JournalTest::SetUp();
    journal_ = open_journal(*dev_);
    ASSERT_NE(journal_, nullptr);
    tm_ = std::make_unique<TransactionManager>(*dev_, *journal_, bs_);
  }
  void TearDown() override {
    tm_.reset();
    journal_.reset();
    JournalTest::TearDown();
  }

  // Changes block `blkno` to `version` through one handle.
  void change(uint64_t blkno, uint64_t version) {
    auto b = tm_->read(blkno);
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    Handle h = tm_->begin();
    std::memcpy((*b)->data().data(), image(blkno, version).data(), bs_);
    h.dirty(*b);
  }

  std::unique_ptr<Journal> journal_;
  std::unique_ptr<TransactionManager> tm_;
};

TEST_F(TransactionManagerTest, CommittedChangesSurviveACrash) {
  change(first_target_, 1);
  change(first_target_ + 1, 1);
  change(first_target_, 2);  // twice in one transaction: logged once, latest wins
  auto seq = tm_->commit();
  ASSERT_TRUE(seq.is_ok()) << seq.status().to_string();
  EXPECT_EQ(*seq, 1u);
  EXPECT_EQ(journal_->stats().commits, 1u);
  change(first_target_ + 2, 3);  // never committed
  tm_.reset();
  journal_.reset();
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->blocks_written, 2u);
  EXPECT_EQ(version_on(*dev_, first_target_), 2u);
  EXPECT_EQ(version_on(*dev_, first_target_ + 1), 1u);
  EXPECT_EQ(version_on(*dev_, first_target_ + 2), 0u);
}

TEST_F(TransactionManagerTest, ReadSeesCommittedImageBeforeCheckpoint) {
  change(first_target_, 5);
  ASSERT_TRUE(tm_->commit().is_ok());
  const uint64_t blocks[] = {first_target_};
  tm_->forget(blocks);
  EXPECT_EQ(version_on(*dev_, first_target_), 0u);  // not home yet
  auto b = tm_->read(first_target_);
  ASSERT_TRUE(b.is_ok());
  uint64_t v = 0;
  std::memcpy(&v, (*b)->data().data() + 8, 8);
  EXPECT_EQ(v, 5u);
}

TEST_F(TransactionManagerTest, ForgetKeepsUncommittedChanges) {
  change(first_target_, 9);
  const uint64_t blocks[] = {first_target_};
  tm_->forget(blocks);
  auto b = tm_->read(first_target_);
  ASSERT_TRUE(b.is_ok());
  uint64_t v = 0;
  std::memcpy(&v, (*b)->data().data() + 8, 8);
  EXPECT_EQ(v, 9u);
}

TEST_F(TransactionManagerTest, DropUnusedKeepsReferencedAndUncommittedBuffers) {
  change(first_target_, 4);  // pinned by the running transaction
  ASSERT_OK(tm_->read(first_target_ + 1));      // cached, unused
  auto held = tm_->read(first_target_ + 2);    // cached and still referenced
  ASSERT_OK(held);
  EXPECT_EQ(tm_->cached_buffers(), 3u);
  EXPECT_EQ(tm_->drop_unused(), 1u);
  EXPECT_EQ(tm_->cached_buffers(), 2u);
  ASSERT_OK(tm_->commit());
  held = tm_->read(first_target_ + 1);  // re-read (a fresh buffer), and let go of +2
  EXPECT_EQ(tm_->drop_unused(), 2u);    // +2, and the committed block, unpinned now
  auto b = tm_->read(first_target_);    // from the journal's committed image
  ASSERT_OK(b);
  uint64_t v = 0;
  std::memcpy(&v, (*b)->data().data() + 8, 8);
  EXPECT_EQ(v, 4u);
}

TEST_F(TransactionManagerTest, ManyOperationsShareOneCommit) {
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { change(first_target_ + t, 10 + t); });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(tm_->commit().is_ok());
  EXPECT_EQ(journal_->stats().commits, 1u);
  ASSERT_OK(journal_->checkpoint());
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(version_on(*dev_, first_target_ + t), uint64_t(10 + t));
  }
}

TEST_F(TransactionManagerTest, CommitWaitsForOpenHandlesAndNewHandlesWaitForCommit) {
  auto a = tm_->read(first_target_);
  auto b = tm_->read(first_target_ + 1);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  std::atomic<bool> committed{false};
  // An operation half-way through: it changed block a and is still changing block b.
  auto h = std::make_unique<Handle>(tm_->begin());
  std::memcpy((*a)->data().data(), image(first_target_, 4).data(), bs_);
  h->dirty(*a);
  std::thread committer([&] {
    ASSERT_TRUE(tm_->commit().is_ok());
    committed = true;
  });
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(committed.load());  // waits for the open handle
  // A new operation must wait for the next transaction rather than join the closing one.
  std::atomic<bool> joined{false};
  std::thread late([&] {
    Handle l = tm_->begin();
    joined = true;
  });
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_FALSE(joined.load());
  std::memcpy((*b)->data().data(), image(first_target_ + 1, 4).data(), bs_);
  h->dirty(*b);
  const uint64_t seq = h->transaction();
  h.reset();  // the operation ends: the commit snapshots both blocks
  committer.join();
  late.join();
  EXPECT_TRUE(committed.load());
  EXPECT_TRUE(joined.load());
  EXPECT_EQ(tm_->last_committed(), seq);
  tm_.reset();
  journal_.reset();
  ASSERT_TRUE(replay(*dev_, sb_, 0).is_ok());
  EXPECT_EQ(version_on(*dev_, first_target_), 4u);
  EXPECT_EQ(version_on(*dev_, first_target_ + 1), 4u);
}

TEST_F(TransactionManagerTest, CommitUntilIsANoOpForDurableOrEmptyTransactions) {
  Handle h = tm_->begin();
  const uint64_t seq = h.transaction();
  { Handle gone = std::move(h); }
  ASSERT_OK(tm_->commit_until(seq));
  EXPECT_EQ(journal_->stats().commits, 0u);
  change(first_target_, 1);
  ASSERT_OK(tm_->commit_until(seq));
  EXPECT_EQ(journal_->stats().commits, 1u);
  ASSERT_OK(tm_->commit_until(seq));
  EXPECT_EQ(journal_->stats().commits, 1u);
}

TEST_F(TransactionManagerTest, RevokedBlockIsDroppedAndNotWrittenHome) {
  change(first_target_, 1);
  ASSERT_TRUE(tm_->commit().is_ok());
  {
    Handle h = tm_->begin();
    h.revoke(first_target_);  // freed
  }
  ASSERT_TRUE(tm_->commit().is_ok());
  EXPECT_EQ(tm_->cached_buffers(), 0u);
  ASSERT_OK(journal_->checkpoint());
  EXPECT_EQ(version_on(*dev_, first_target_), 0u);
}

TEST_F(TransactionManagerTest, CacheStaysBoundedButKeepsChangedBuffers) {
  tm_.reset();
  tm_ = std::make_unique<TransactionManager>(*dev_, *journal_, bs_,
                                             TransactionManagerOptions{.max_clean_buffers = 16});
  change(first_target_, 7);  // changed, uncommitted: must survive trimming
  for (uint64_t i = 1; i < 64; ++i) ASSERT_TRUE(tm_->read(first_target_ + i).is_ok());
  EXPECT_LE(tm_->cached_buffers(), 17u);
  auto b = tm_->read(first_target_);
  ASSERT_TRUE(b.is_ok());
  uint64_t v = 0;
  std::memcpy(&v, (*b)->data().data() + 8, 8);
  EXPECT_EQ(v, 7u);
}

}  // namespace
}  // namespace sharedfs::journal
