#include "journal/journal.h"

#include <map>
#include <random>

#include "journal/journal_test_fixture.h"

namespace sharedfs::journal {
namespace {

namespace fs = std::filesystem;

TEST_F(JournalTest, CommitIsDurableAndReplayWritesItHome) {
  auto j = open_journal(*dev_);
  Transaction t;
  for (uint64_t i = 0; i < 5; ++i) t.write(first_target_ + i, image(first_target_ + i, 1));
  auto seq = j->commit(std::move(t));
  ASSERT_TRUE(seq.is_ok()) << seq.status().to_string();
  EXPECT_EQ(*seq, 1u);
  // Not home yet: the journal is the only writer in place.
  EXPECT_EQ(version_on(*dev_, first_target_), 0u);
  AlignedBuffer buf(bs_);
  EXPECT_TRUE(j->read_committed(first_target_, buf.span()));
  j.reset();  // "crash": no checkpoint

  EXPECT_EQ(Journal::open(*dev_, sb_, 0).status().code(), Code::kBusy);
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->transactions, 1u);
  EXPECT_EQ(r->blocks_written, 5u);
  for (uint64_t i = 0; i < 5; ++i) EXPECT_EQ(version_on(*dev_, first_target_ + i), 1u);
  // Replay left the journal empty and clean: again is a no-op, and it opens.
  auto again = replay(*dev_, sb_, 0);
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->transactions, 0u);
  EXPECT_EQ(again->next_sequence, 2u);
  auto reopened = open_journal(*dev_);
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->next_sequence(), 2u);
}

TEST_F(JournalTest, ReplayIsIdempotentWhenInterrupted) {
  auto j = open_journal(*dev_);
  for (uint64_t v = 1; v <= 3; ++v) {
    Transaction t;
    t.write(first_target_, image(first_target_, v));
    t.write(first_target_ + v, image(first_target_ + v, v));
    ASSERT_TRUE(j->commit(std::move(t)).is_ok());
  }
  j.reset();
  // An interrupted replay: the device is written home but the header never updated.
  {
    device::FaultyDevice faulty(open_base(), {.crash_after_write = 2});
    EXPECT_FALSE(replay(faulty, sb_, 0).is_ok());
  }
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->transactions, 3u);
  EXPECT_EQ(version_on(*dev_, first_target_), 3u);
  for (uint64_t v = 1; v <= 3; ++v) EXPECT_EQ(version_on(*dev_, first_target_ + v), v);
}

TEST_F(JournalTest, CheckpointWritesHomeAndEmptiesTheLog) {
  auto j = open_journal(*dev_);
  Transaction t;
  t.write(first_target_, image(first_target_, 7));
  ASSERT_TRUE(j->commit(std::move(t)).is_ok());
  EXPECT_GT(j->log_used(), 0u);
  ASSERT_OK(j->checkpoint());
  EXPECT_EQ(j->log_used(), 0u);
  EXPECT_EQ(version_on(*dev_, first_target_), 7u);
  ASSERT_OK(j->close());
  j.reset();
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->transactions, 0u);
}

TEST_F(JournalTest, WrapsAroundManyTimesAndReplaysTheLatestState) {
  auto j = open_journal(*dev_);
  std::mt19937_64 rng(7);
  std::map<uint64_t, uint64_t> expected;
  for (uint64_t v = 1; v <= 400; ++v) {
    Transaction t;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int k = 0; k < n; ++k) {
      const uint64_t b = first_target_ + rng() % 64;
      t.write(b, image(b, v));
      expected[b] = v;
    }
    ASSERT_TRUE(j->commit(std::move(t)).is_ok());
  }
  EXPECT_GT(j->stats().checkpoints, 5u);  // 400 transactions cannot fit 256 blocks
  j.reset();
  ASSERT_TRUE(replay(*dev_, sb_, 0).is_ok());
  for (const auto& [b, v] : expected) EXPECT_EQ(version_on(*dev_, b), v) << "block " << b;
}

TEST_F(JournalTest, LargeTransactionsSpanSeveralDescriptors) {
  auto sb = mkfs::make_filesystem(*dev_, {.slots = 2, .journal_bytes = 4 * kMiB});
  ASSERT_TRUE(sb.is_ok());
  sb_ = *sb;
  auto j = open_journal(*dev_);
  const uint64_t n = format::JournalDescriptor::capacity(bs_) + 10;
  Transaction t;
  for (uint64_t i = 0; i < n; ++i) t.write(first_target_ + i, image(first_target_ + i, 3));
  ASSERT_TRUE(j->commit(std::move(t)).is_ok());
  j.reset();
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->blocks_written, n);
  for (uint64_t i = 0; i < n; i += 37) EXPECT_EQ(version_on(*dev_, first_target_ + i), 3u);
}

TEST_F(JournalTest, TooLargeTransactionIsRefused) {
  auto j = open_journal(*dev_);
  Transaction t;
  for (uint64_t i = 0; i < j->log_capacity(); ++i) {
    t.write(first_target_ + i, image(first_target_ + i, 1));
  }
  EXPECT_EQ(j->commit(std::move(t)).status().code(), Code::kNoSpace);
}

// DESIGN.md §4 "stale replay": node A commits B, writes it in place and releases the
// lock; node C changes B; A dies. Replaying A's journal must not put A's image back.
TEST_F(JournalTest, RevokedBlocksAreNotReplayedOverAnotherNodesChange) {
  const uint64_t b = first_target_;
  auto a = open_journal(*dev_, 0);
  Transaction t;
  t.write(b, image(b, 1));
  t.write(b + 1, image(b + 1, 1));
  ASSERT_TRUE(a->commit(std::move(t)).is_ok());
  const uint64_t release[] = {b};
  ASSERT_OK(a->checkpoint_blocks(release));  // before A releases the lock on b
  EXPECT_EQ(version_on(*dev_, b), 1u);
  // Node C (slot 1) changes b and checkpoints it.
  auto c = open_journal(*dev_, 1);
  Transaction tc;
  tc.write(b, image(b, 2));
  ASSERT_TRUE(c->commit(std::move(tc)).is_ok());
  ASSERT_OK(c->checkpoint());
  EXPECT_EQ(version_on(*dev_, b), 2u);
  // A dies; a survivor replays A's journal.
  a.reset();
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->images_revoked, 1u);
  EXPECT_EQ(version_on(*dev_, b), 2u);      // C's change survives
  EXPECT_EQ(version_on(*dev_, b + 1), 1u);  // A's other block is replayed
}

TEST_F(JournalTest, WritingAfterRevokeIsReplayed) {
  const uint64_t b = first_target_;
  auto j = open_journal(*dev_);
  Transaction t1;
  t1.write(b, image(b, 1));
  ASSERT_TRUE(j->commit(std::move(t1)).is_ok());
  Transaction t2;
  t2.revoke(b);  // e.g. the block was freed
  ASSERT_TRUE(j->commit(std::move(t2)).is_ok());
  Transaction t3;
  t3.write(b, image(b, 3));  // and reused as metadata
  ASSERT_TRUE(j->commit(std::move(t3)).is_ok());
  j.reset();
  auto r = replay(*dev_, sb_, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->images_revoked, 1u);
  EXPECT_EQ(version_on(*dev_, b), 3u);
}

TEST_F(JournalTest, RevokedFreedBlockIsNotCheckpointedOverNewData) {
  const uint64_t b = first_target_;
  auto j = open_journal(*dev_);
  Transaction t1;
  t1.write(b, image(b, 1));
  ASSERT_TRUE(j->commit(std::move(t1)).is_ok());
  Transaction t2;
  t2.revoke(b);
  ASSERT_TRUE(j->commit(std::move(t2)).is_ok());
  // The freed block now holds file data written directly.
  AlignedBuffer data(bs_);
  std::memcpy(data.data(), image(b, 99).data(), bs_);
  ASSERT_OK(dev_->write(b * bs_, data.span()));
  ASSERT_OK(j->checkpoint());
  EXPECT_EQ(version_on(*dev_, b), 99u);
}

// Crash at every write of a run of commits (with and without a torn last write): replay
// must leave every block at the version of one prefix of the committed transactions, at
// least every transaction whose commit() returned, and never a torn or mixed state.
TEST_F(JournalTest, CrashAtEveryWriteLeavesACommittedPrefix) {
  constexpr int kTransactions = 40;
  std::mt19937_64 rng(11);
  // Each transaction rewrites a random set of blocks; remember every version's blocks.
  std::vector<std::vector<uint64_t>> txn_blocks(kTransactions + 1);
  for (int v = 1; v <= kTransactions; ++v) {
    const int n = 1 + static_cast<int>(rng() % 20);
    for (int k = 0; k < n; ++k) txn_blocks[v].push_back(first_target_ + rng() % 48);
  }
  // The version of each of the 48 blocks after transactions 1..v (0: never written).
  auto expected_after = [&](int v) {
    std::vector<uint64_t> m(48, 0);
    for (int x = 1; x <= std::min(v, kTransactions); ++x) {
      for (uint64_t b : txn_blocks[x]) m[b - first_target_] = static_cast<uint64_t>(x);
    }
    return m;
  };
  // Count the writes of a full run.
  uint64_t total_writes = 0;
  {
    device::FaultyDevice probe(open_base(), {});
    auto j = Journal::open(probe, sb_, 0);
    ASSERT_TRUE(j.is_ok());
    for (int v = 1; v <= kTransactions; ++v) {
      Transaction t;
      for (uint64_t b : txn_blocks[v]) t.write(b, image(b, static_cast<uint64_t>(v)));
      ASSERT_TRUE((*j)->commit(std::move(t)).is_ok());
    }
    total_writes = probe.counters().writes;
    probe.crash();  // do not let the destructor write anything back
  }
  ASSERT_GT(total_writes, 50u);

  const auto pristine = [&] {
    // Restore the freshly formatted image for the next crash point.
    auto sb = mkfs::make_filesystem(*dev_, {.slots = 2, .journal_bytes = kMiB});
    ASSERT_TRUE(sb.is_ok());
    sb_ = *sb;
    AlignedBuffer zero(bs_ * 64);
    ASSERT_OK(dev_->write(first_target_ * bs_, zero.span()));
  };

  int points = 0;
  for (uint64_t k = 1; k <= total_writes; k += 1) {
    for (uint32_t tear : {0u, 3u}) {
      pristine();
      int returned = 0;
      {
        device::FaultyDevice faulty(open_base(), {.crash_after_write = k, .tear_sectors = tear});
        auto j = Journal::open(faulty, sb_, 0);
        if (j.is_ok()) {
          for (int v = 1; v <= kTransactions; ++v) {
            Transaction t;
            for (uint64_t b : txn_blocks[v]) t.write(b, image(b, static_cast<uint64_t>(v)));
            if (!(*j)->commit(std::move(t)).is_ok()) break;
            returned = v;
          }
        }
        faulty.crash();
      }
      auto r = replay(*dev_, sb_, 0);
      ASSERT_TRUE(r.is_ok()) << "crash after write " << k << ": " << r.status().to_string();
      std::vector<uint64_t> state(48);
      for (uint64_t i = 0; i < 48; ++i) state[i] = version_on(*dev_, first_target_ + i);
      // Every commit that returned is there; the one in flight may or may not be.
      const bool ok = state == expected_after(returned) || state == expected_after(returned + 1);
      ASSERT_TRUE(ok) << "crash after write " << k << " tear " << tear << ": " << returned
                      << " commits returned, replay found " << r->transactions;
      ++points;
    }
  }
  std::printf("crash points checked: %d\n", points);
}

}  // namespace
}  // namespace sharedfs::journal
