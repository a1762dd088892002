// Unit tests of the DLM state machine over an in-memory network that delivers everything
// in order: modes, queue order, conversions, value blocks, try-lock, blocking callbacks,
// recovery hold-back, mastering, the codec and the lock cache.
#include "dlm/lock_manager.h"

#include <gtest/gtest.h>

#include <deque>
#include <set>

#include "common/test_util.h"
#include "dlm/lock_cache.h"
#include "dlm/message.h"

namespace sharedfs::dlm {
namespace {

constexpr LockMode NL = LockMode::kNL;
constexpr LockMode PR = LockMode::kPR;
constexpr LockMode EX = LockMode::kEX;

// N LockManagers that deliver each other's messages in order when run() is called.
class TestCluster {
 public:
  explicit TestCluster(size_t n) {
    Membership ms{1, {}};
    for (size_t i = 0; i < n; ++i) {
      auto ep = std::make_unique<Endpoint>(this);
      const Member m{NodeId(static_cast<uint32_t>(i + 1)), 1};
      nodes_.push_back(
          std::make_unique<LockManager>(LockManagerOptions{m, "secret", ep.get(), 40}));
      endpoints_.push_back(std::move(ep));
      ms.members.push_back(m);
    }
    members_ = ms;
    for (auto& lm : nodes_) EXPECT_OK(lm->set_membership(ms));
    run();
  }

  LockManager& operator[](size_t i) { return *nodes_[i]; }
  size_t size() const { return nodes_.size(); }

  // Delivers until nothing is in flight; ticks so acknowledgements go out.
  void run() {
    for (int round = 0; round < 100; ++round) {
      while (!queue_.empty()) {
        auto [to, bytes] = std::move(queue_.front());
        queue_.pop_front();
        if (alive(to)) nodes_[to.value - 1]->receive(bytes);
      }
      now_ += 50;
      for (size_t i = 0; i < nodes_.size(); ++i) {
        if (alive(NodeId(static_cast<uint32_t>(i + 1)))) nodes_[i]->tick(now_);
      }
      if (queue_.empty()) return;
    }
    ADD_FAILURE() << "messages still in flight after 100 rounds";
  }

  // Node i (0-based) stops; the survivors get a new epoch without it.
  void crash(size_t i) {
    dead_.insert(NodeId(static_cast<uint32_t>(i + 1)));
    std::erase_if(members_.members, [&](const Member& m) { return m.id.value == i + 1; });
    ++members_.epoch;
    for (size_t k = 0; k < nodes_.size(); ++k) {
      if (alive(NodeId(static_cast<uint32_t>(k + 1))))
        EXPECT_OK(nodes_[k]->set_membership(members_));
    }
    run();
  }

  std::vector<Member> members() const { return members_.members; }

 private:
  struct Endpoint final : Transport {
    explicit Endpoint(TestCluster* c) : cluster(c) {}
    void send(NodeId to, std::vector<std::byte> bytes) override {
      cluster->queue_.emplace_back(to, std::move(bytes));
    }
    TestCluster* cluster;
  };
  bool alive(NodeId id) const { return !dead_.contains(id); }

  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  std::vector<std::unique_ptr<LockManager>> nodes_;
  std::deque<std::pair<NodeId, std::vector<std::byte>>> queue_;
  std::set<NodeId> dead_;
  Membership members_;
  uint64_t now_ = 0;
};

// Records completions: how many, and the last status.
struct Outcome {
  int calls = 0;
  Status status;
  LockId id;
  Completion fn() {
    return [this](LockId i, const Status& s) {
      ++calls;
      status = s;
      id = i;
    };
  }
  bool granted() const { return calls == 1 && status.is_ok(); }
};

ResourceName res(uint64_t id) { return ResourceName::make(1, id, "t"); }

// A resource mastered by node `master` (0-based) of `c`.
ResourceName mastered_by(TestCluster& c, size_t master, uint64_t start = 0) {
  for (uint64_t id = start;; ++id) {
    if (master_of(res(id), c.members()).value == master + 1) return res(id);
  }
}

TEST(LockModes, CompatibilityMatrix) {
  const bool expect[3][3] = {{true, true, true}, {true, true, false}, {true, false, false}};
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) {
      EXPECT_EQ(compatible(static_cast<LockMode>(a), static_cast<LockMode>(b)), expect[a][b])
          << a << "," << b;
    }
  }
}

TEST(LockManager, LocallyMasteredLocksSendNothing) {
  TestCluster c(3);
  const ResourceName r = mastered_by(c, 0);
  const uint64_t sent = c[0].stats().sent;
  Outcome a, b;
  const LockId ida = c[0].lock(r, EX, {}, {}, a.fn());
  EXPECT_TRUE(a.granted());  // completes inside the call: the master is local
  c[0].lock(r, EX, {}, {}, b.fn());
  EXPECT_EQ(b.calls, 0);
  Outcome u;
  ASSERT_OK(c[0].unlock(ida, u.fn()));
  EXPECT_TRUE(u.granted());
  EXPECT_TRUE(b.granted());
  EXPECT_EQ(c[0].stats().sent, sent);
}

TEST(LockManager, ExclusiveWaitsForSharedAndSharedShares) {
  TestCluster c(3);
  const ResourceName r = mastered_by(c, 2);
  Outcome p0, p1, x;
  const LockId a = c[0].lock(r, PR, {}, {}, p0.fn());
  const LockId b = c[1].lock(r, PR, {}, {}, p1.fn());
  c.run();
  EXPECT_TRUE(p0.granted());
  EXPECT_TRUE(p1.granted());
  c[2].lock(r, EX, {}, {}, x.fn());
  c.run();
  EXPECT_EQ(x.calls, 0);
  Outcome u;
  ASSERT_OK(c[0].unlock(a, u.fn()));
  c.run();
  EXPECT_EQ(x.calls, 0);
  ASSERT_OK(c[1].unlock(b, u.fn()));
  c.run();
  EXPECT_TRUE(x.granted());
}

TEST(LockManager, WaitingExclusiveIsNotStarvedByLaterShared) {
  TestCluster c(2);
  const ResourceName r = mastered_by(c, 1);
  Outcome p0, x, p1;
  const LockId a = c[0].lock(r, PR, {}, {}, p0.fn());
  c.run();
  const LockId w = c[1].lock(r, EX, {}, {}, x.fn());
  c.run();
  // A PR request after the waiting EX queues behind it although it is compatible with
  // the PR granted now.
  c[0].lock(r, PR, {}, {}, p1.fn());
  c.run();
  EXPECT_EQ(x.calls, 0);
  EXPECT_EQ(p1.calls, 0);
  Outcome u;
  ASSERT_OK(c[0].unlock(a, u.fn()));
  c.run();
  EXPECT_TRUE(x.granted());
  EXPECT_EQ(p1.calls, 0);
  ASSERT_OK(c[1].unlock(w, u.fn()));
  c.run();
  EXPECT_TRUE(p1.granted());
}

TEST(LockManager, ConversionsUpAndDown) {
  TestCluster c(2);
  const ResourceName r = mastered_by(c, 1);
  Outcome g, other;
  const LockId id = c[0].lock(r, NL, {}, {}, g.fn());
  c.run();
  ASSERT_TRUE(g.granted());
  Outcome up1;
  ASSERT_OK(c[0].convert(id, PR, {}, up1.fn()));
  c.run();
  EXPECT_TRUE(up1.granted());
  EXPECT_EQ(c[0].granted_mode(id), PR);
  Outcome up2;
  ASSERT_OK(c[0].convert(id, EX, {}, up2.fn()));
  EXPECT_EQ(c[0].convert(id, NL, {}, {}).code(), Code::kBusy);  // one request at a time
  c.run();
  EXPECT_TRUE(up2.granted());
  c[1].lock(r, PR, {}, {}, other.fn());
  c.run();
  EXPECT_EQ(other.calls, 0);
  Outcome down;
  ASSERT_OK(c[0].convert(id, PR, {}, down.fn()));
  EXPECT_EQ(c[0].granted_mode(id), PR);  // effective at the call
  c.run();
  EXPECT_TRUE(down.granted());
  EXPECT_TRUE(other.granted());
}

TEST(LockManager, ConversionDeadlockCancelsTheLaterConvert) {
  TestCluster c(3);
  const ResourceName r = mastered_by(c, 2);
  Outcome g0, g1;
  const LockId a = c[0].lock(r, PR, {}, {}, g0.fn());
  const LockId b = c[1].lock(r, PR, {}, {}, g1.fn());
  c.run();
  Outcome up0, up1;
  ASSERT_OK(c[0].convert(a, EX, {}, up0.fn()));
  c.run();
  ASSERT_OK(c[1].convert(b, EX, {}, up1.fn()));
  c.run();
  EXPECT_EQ(up0.calls, 0);
  ASSERT_EQ(up1.calls, 1);
  EXPECT_EQ(up1.status.code(), Code::kBusy);
  EXPECT_EQ(c[1].granted_mode(b), PR);  // keeps what it had
  Outcome u;
  ASSERT_OK(c[1].unlock(b, u.fn()));
  c.run();
  EXPECT_TRUE(up0.granted());
}

TEST(LockManager, ValueBlockTravelsWithExclusiveReleases) {
  TestCluster c(3);
  const ResourceName r = mastered_by(c, 2);
  Outcome g;
  const LockId a = c[0].lock(r, EX, {}, {}, g.fn());
  c.run();
  ASSERT_TRUE(g.granted());
  EXPECT_FALSE(c[0].value_block(a)->valid);  // never written
  const uint8_t v1[] = {1, 2, 3};
  ASSERT_OK(c[0].set_value_block(a, v1));
  Outcome down;
  ASSERT_OK(c[0].convert(a, NL, {}, down.fn()));
  c.run();
  Outcome p;
  const LockId b = c[1].lock(r, PR, {}, {}, p.fn());
  c.run();
  ASSERT_TRUE(p.granted());
  auto lvb = c[1].value_block(b);
  ASSERT_OK(lvb);
  EXPECT_TRUE(lvb->valid);
  EXPECT_EQ(lvb->bytes[0], 1);
  EXPECT_EQ(lvb->bytes[2], 3);
  EXPECT_EQ(c[1].set_value_block(b, v1).code(), Code::kInvalidArgument);  // PR cannot write
  // A PR holder never writes back: its unlock leaves the value as it was.
  Outcome u;
  ASSERT_OK(c[1].unlock(b, u.fn()));
  c.run();
  Outcome again;
  ASSERT_OK(c[0].convert(a, PR, {}, again.fn()));
  c.run();
  EXPECT_EQ(c[0].value_block(a)->bytes[0], 1);
}

TEST(LockManager, TryLockFailsAtOnceInsteadOfQueueing) {
  TestCluster c(2);
  const ResourceName r = mastered_by(c, 1);
  Outcome g, t, tc;
  const LockId a = c[0].lock(r, EX, {}, {}, g.fn());
  c.run();
  c[1].lock(r, PR, LockFlags{.try_lock = true}, {}, t.fn());
  c.run();
  ASSERT_EQ(t.calls, 1);
  EXPECT_EQ(t.status.code(), Code::kBusy);
  EXPECT_FALSE(c[1].granted_mode(t.id).has_value());
  EXPECT_EQ(c[1].lock_count(), 0u);  // a failed lock is forgotten
  Outcome n;
  const LockId b = c[1].lock(r, NL, {}, {}, n.fn());
  c.run();
  ASSERT_TRUE(n.granted());
  ASSERT_OK(c[1].convert(b, PR, LockFlags{.try_lock = true}, tc.fn()));
  c.run();
  EXPECT_EQ(tc.status.code(), Code::kBusy);
  EXPECT_EQ(c[1].granted_mode(b), NL);
  Outcome u, t2;
  ASSERT_OK(c[0].unlock(a, u.fn()));
  c.run();
  c[1].lock(r, EX, LockFlags{.try_lock = true}, {}, t2.fn());
  c.run();
  EXPECT_TRUE(t2.granted());
}

TEST(LockManager, BlockingCallbackTellsTheHolderOnce) {
  TestCluster c(3);
  const ResourceName r = mastered_by(c, 2);
  std::vector<LockMode> basts;
  Outcome g, w1, w2;
  const LockId a = c[0].lock(
      r, PR, {}, [&](LockMode m) { basts.push_back(m); }, g.fn());
  c.run();
  EXPECT_TRUE(basts.empty());
  Outcome p;
  c[1].lock(r, PR, {}, {}, p.fn());  // compatible: no callback
  c.run();
  EXPECT_TRUE(basts.empty());
  c[1].lock(r, EX, {}, {}, w1.fn());
  c[2].lock(r, EX, {}, {}, w2.fn());
  c.run();
  ASSERT_EQ(basts.size(), 1u);
  EXPECT_EQ(basts[0], EX);
  Outcome u;
  ASSERT_OK(c[0].unlock(a, u.fn()));
  c.run();
  EXPECT_EQ(w1.calls, 0);  // still blocked by node 1's own PR lock
}

TEST(LockManager, DepartedExclusiveHolderHoldsBackUntilReplayed) {
  // Mastered by a survivor (record kept) and by the departed node (record lost).
  for (size_t master : {0u, 2u}) {
    SCOPED_TRACE(master);
    TestCluster k(3);
    const ResourceName r = mastered_by(k, master);
    Outcome g;
    const LockId x = k[2].lock(r, EX, {}, {}, g.fn());
    k.run();
    ASSERT_TRUE(g.granted());
    const uint8_t v[] = {9};
    ASSERT_OK(k[2].set_value_block(x, v));
    Outcome p;
    const LockId pid = k[0].lock(r, PR, {}, {}, p.fn());
    k.run();
    const Member dead{NodeId(3), 1};
    k.crash(2);
    EXPECT_EQ(p.calls, 0);
    EXPECT_TRUE(k[0].awaiting_replay().contains(dead));
    // Other resources keep working.
    Outcome other;
    k[1].lock(res(999999), EX, {}, {}, other.fn());
    k.run();
    EXPECT_EQ(k[0].journal_replayed(Member{NodeId(1), 1}).code(), Code::kInvalidArgument);
    for (size_t i = 0; i < 2; ++i) EXPECT_OK(k[i].journal_replayed(dead));
    k.run();
    ASSERT_TRUE(p.granted());
    EXPECT_FALSE(k[0].value_block(pid)->valid);  // the dead holder never wrote it back
  }
}

TEST(LockManager, SurvivorsLocksAndValueBlocksOutliveTheMastersDeath) {
  TestCluster c(3);
  const ResourceName r = mastered_by(c, 2);
  Outcome g;
  const LockId a = c[0].lock(r, EX, {}, {}, g.fn());
  c.run();
  const uint8_t v[] = {7};
  ASSERT_OK(c[0].set_value_block(a, v));
  Outcome d;
  ASSERT_OK(c[0].convert(a, PR, {}, d.fn()));
  c.run();
  Outcome w;
  c[1].lock(r, EX, {}, {}, w.fn());
  c.run();
  c.crash(2);  // the master dies; node 1 still holds PR, node 2 still waits
  EXPECT_EQ(w.calls, 0);
  EXPECT_TRUE(c[0].value_block(a)->valid);
  Outcome u;
  ASSERT_OK(c[0].unlock(a, u.fn()));
  c.run();
  ASSERT_TRUE(w.granted());  // no hold-back: a surviving PR holder proves nobody held EX
  EXPECT_TRUE(c[1].value_block(w.id)->valid);
  EXPECT_EQ(c[1].value_block(w.id)->bytes[0], 7);
}

TEST(Mastering, RemovingAMemberMovesOnlyItsResources) {
  std::vector<Member> five, four;
  for (uint32_t i = 1; i <= 5; ++i) {
    five.push_back(Member{NodeId(i), 1});
    if (i != 3) four.push_back(Member{NodeId(i), 1});
  }
  int moved = 0;
  std::vector<int> per_node(6);
  for (uint64_t id = 0; id < 5000; ++id) {
    const NodeId before = master_of(res(id), five);
    const NodeId after = master_of(res(id), four);
    ++per_node[before.value];
    if (before != after) {
      EXPECT_EQ(before.value, 3u);
      ++moved;
    }
  }
  EXPECT_EQ(moved, per_node[3]);
  for (uint32_t i = 1; i <= 5; ++i) EXPECT_GT(per_node[i], 800) << i;  // roughly balanced
}

Message sample(MessageType type) {
  Message m;
  m.type = type;
  m.epoch = 7;
  m.from = Member{NodeId(2), 5};
  m.to = NodeId(3);
  m.seq = 11;
  m.ack = 10;
  m.lock_id = 123;
  m.req_id = 456;
  m.name = ResourceName::make(3, 0xABCDEF, "open");
  m.op = Op::kConvert;
  m.flags = kFlagTry;
  m.mode = EX;
  m.granted = PR;
  m.has_lvb = true;
  m.lvb.bytes[5] = 0x55;
  m.lvb.valid = true;
  m.lvb.seq = 99;
  m.result = ReplyResult::kDeadlock;
  m.ex_holder = Member{NodeId(4), 8};
  m.members = {Member{NodeId(1), 1}, Member{NodeId(6), 2}};
  m.replayed = {Member{NodeId(9), 3}};
  return m;
}

TEST(MessageCodec, RoundTripsEveryType) {
  MessageCodec codec("secret");
  for (uint8_t t = 1; t <= 7; ++t) {
    const Message m = sample(static_cast<MessageType>(t));
    auto d = codec.decode(codec.encode(m));
    ASSERT_OK(d);
    EXPECT_EQ(d->type, m.type);
    EXPECT_EQ(d->epoch, 7u);
    EXPECT_EQ(d->from, m.from);
    EXPECT_EQ(d->seq, 11u);
    EXPECT_EQ(d->ack, 10u);
    if (m.type == MessageType::kReport) {
      EXPECT_EQ(d->name, m.name);
      EXPECT_EQ(d->granted, PR);
      EXPECT_EQ(d->lvb, m.lvb);
      EXPECT_EQ(d->op, Op::kConvert);
    }
    if (m.type == MessageType::kRecord) {
      EXPECT_EQ(d->ex_holder, m.ex_holder);
      EXPECT_EQ(d->members, m.members);
    }
    if (m.type == MessageType::kReportsDone) {
      EXPECT_EQ(d->replayed, m.replayed);
    }
  }
}

TEST(MessageCodec, RejectsGarbageTruncationForeignSecretsAndBadFields) {
  MessageCodec codec("secret");
  MessageCodec other("another cluster");
  const auto good = codec.encode(sample(MessageType::kRequest));
  ASSERT_OK(codec.decode(good));
  EXPECT_FALSE(other.decode(good).is_ok());  // foreign cluster
  for (size_t len = 0; len < good.size(); ++len) {
    EXPECT_FALSE(codec.decode(std::span(good).first(len)).is_ok()) << len;
  }
  for (size_t i = 0; i < good.size(); ++i) {
    auto bad = good;
    bad[i] ^= std::byte{1};
    EXPECT_FALSE(codec.decode(bad).is_ok()) << i;
  }
  // Fields that are checked even under a valid MAC (a peer with a bug, or another version).
  Message m = sample(MessageType::kRequest);
  auto enc = codec.encode(m);
  EXPECT_EQ(codec.decode(enc)->mode, EX);
  {  // random bytes
    uint64_t s = 1;
    for (int i = 0; i < 20000; ++i) {
      std::vector<std::byte> junk(s % 200);
      for (auto& b : junk) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        b = static_cast<std::byte>(s >> 56);
      }
      EXPECT_FALSE(codec.decode(junk).is_ok());
    }
  }
  LockManager lm(LockManagerOptions{Member{NodeId(1), 1}, "secret", nullptr, 40});
  ASSERT_OK(lm.set_membership(Membership{1, {Member{NodeId(1), 1}, Member{NodeId(2), 1}}}));
  lm.receive(other.encode(sample(MessageType::kRequest)));
  lm.receive(std::span(good).first(10));
  EXPECT_EQ(lm.stats().dropped_malformed, 2u);
}

TEST(LockCache, CachedRelockSendsNothingAndBlockingCallbackFlushesFirst) {
  TestCluster c(2);
  const ResourceName r = mastered_by(c, 1);
  std::vector<std::pair<LockMode, std::function<void()>>> flushes;
  LockCache cache0(c[0], [&](const ResourceName&, LockMode m, std::function<void()> done) {
    flushes.emplace_back(m, std::move(done));
  });
  LockCache cache1(c[1], [](const ResourceName&, LockMode, std::function<void()> done) { done(); });
  int got = 0;
  cache0.acquire(r, EX, [&](const Status& s) { got += s.is_ok(); });
  c.run();
  ASSERT_EQ(got, 1);
  cache0.release(r);
  const uint64_t sent = c[0].stats().sent;
  for (int i = 0; i < 100; ++i) {
    cache0.acquire(r, PR, [&](const Status& s) { got += s.is_ok(); });
    cache0.release(r);
  }
  c.run();
  EXPECT_EQ(got, 101);
  EXPECT_EQ(c[0].stats().sent, sent);  // not even an acknowledgement was due
  EXPECT_EQ(cache0.cached_mode(r), EX);

  cache0.acquire(r, EX, [&](const Status& s) { got += s.is_ok(); });  // in use when asked
  int other = 0;
  cache1.acquire(r, PR, [&](const Status& s) { other += s.is_ok(); });
  c.run();
  EXPECT_TRUE(flushes.empty());  // in use: the flush waits for the user
  cache0.release(r);
  c.run();
  ASSERT_EQ(flushes.size(), 1u);
  EXPECT_EQ(flushes[0].first, PR);  // a reader waits: keep reading ourselves
  EXPECT_EQ(other, 0);              // not before the flush is done
  flushes[0].second();
  c.run();
  EXPECT_EQ(other, 1);
  EXPECT_EQ(cache0.cached_mode(r), PR);
}

// Records range lock completions.
struct RangeOutcome {
  int calls = 0;
  Status status;
  std::optional<RecordLock> conflict;
  RangeCompletion fn() {
    return [this](const Status& s, std::optional<RecordLock> c) {
      ++calls;
      status = s;
      conflict = c;
    };
  }
  bool granted() const { return calls == 1 && status.is_ok(); }
  int err() const { return status.is_ok() ? 0 : status.to_errno(); }
};

RecordLock range(uint64_t owner, bool write, uint64_t start, uint64_t end) {
  return RecordLock{.write = write, .start = start, .end = end, .owner = owner, .pid = 100 + static_cast<uint32_t>(owner)};
}

TEST(RangeLocks, ConflictByRangeAcrossNodesAndWaitersAreGrantedInTurn) {
  TestCluster c(3);
  for (size_t master = 0; master < 3; ++master) {
    SCOPED_TRACE(::testing::Message() << "master " << master);
    const ResourceName r = mastered_by(c, master, 1000 * (master + 1));
    RangeOutcome a, b, t, w;
    c[0].range_lock(r, range(1, true, 0, 99), false, a.fn());
    // Disjoint ranges of one file: both granted, whichever nodes.
    c[1].range_lock(r, range(1, true, 100, 199), false, b.fn());
    c.run();
    EXPECT_TRUE(a.granted());
    EXPECT_TRUE(b.granted());
    // A test names the lock in the way, with its node and pid.
    c[2].range_test(r, range(7, false, 150, 150), t.fn());
    c.run();
    ASSERT_TRUE(t.granted());
    ASSERT_TRUE(t.conflict.has_value());
    EXPECT_EQ(t.conflict->node, 2u);
    EXPECT_EQ(t.conflict->pid, 101u);
    EXPECT_EQ(t.conflict->start, 100u);
    // A try across both: refused with the first lock in the way.
    RangeOutcome no;
    c[2].range_lock(r, range(7, false, 50, 150), false, no.fn());
    c.run();
    EXPECT_EQ(no.err(), EAGAIN);
    ASSERT_TRUE(no.conflict.has_value());
    // A waiter is granted once both holders let go, not before.
    c[2].range_lock(r, range(7, false, 50, 150), true, w.fn());
    c.run();
    EXPECT_EQ(w.calls, 0);
    RangeOutcome unlocked;
    c[0].range_unlock(r, 1, 0, 99, unlocked.fn());
    c.run();
    EXPECT_TRUE(unlocked.granted()) << "an unlock completes when the master has done it";
    EXPECT_EQ(w.calls, 0);
    // Unlocking part of a lock splits it: 100..149 still holds the waiter back.
    c[1].range_unlock(r, 1, 150, 199);
    c.run();
    EXPECT_EQ(w.calls, 0);
    c[1].range_unlock(r, 1, 0, UINT64_MAX);
    c.run();
    EXPECT_TRUE(w.granted());
    EXPECT_EQ(c[2].ranges_held(r).size(), 1u);
    // Read locks share.
    RangeOutcome shared;
    c[0].range_lock(r, range(2, false, 0, UINT64_MAX), false, shared.fn());
    c.run();
    EXPECT_TRUE(shared.granted());
    c[0].range_unlock(r, 2, 0, UINT64_MAX);
    c[2].range_unlock(r, 7, 0, UINT64_MAX);
    c.run();
  }
}

TEST(RangeLocks, ACancelledWaitEndsWithEintrAndTakesNothing) {
  TestCluster c(2);
  const ResourceName r = mastered_by(c, 1);
  RangeOutcome a, w, after;
  c[1].range_lock(r, range(1, true, 0, 0), false, a.fn());
  c.run();
  ASSERT_TRUE(a.granted());
  const uint64_t id = c[0].range_lock(r, range(2, true, 0, 0), true, w.fn());
  c.run();
  c[0].range_cancel(id);
  c.run();
  EXPECT_EQ(w.err(), EINTR);
  c[1].range_unlock(r, 1, 0, 0);
  c.run();
  EXPECT_TRUE(c[0].ranges_held(r).empty());
  c[1].range_lock(r, range(1, true, 0, 0), false, after.fn());
  c.run();
  EXPECT_TRUE(after.granted()) << "the cancelled waiter must not have been granted";
}

TEST(RangeLocks, ADepartedNodesRangesGoAndTheSurvivorsAreRebuiltAtTheNewMaster) {
  // For each master, the dying node included: node 3 (index 2) holds a lock and dies; node
  // 1 holds another, node 2 waits behind node 3's. After the change node 2 is granted and
  // node 1's lock still holds.
  for (size_t master = 0; master < 3; ++master) {
    SCOPED_TRACE(::testing::Message() << "master " << master);
    TestCluster cl(3);
    const ResourceName r = mastered_by(cl, master);
    RangeOutcome held1, held3, waiting2, blocked;
    cl[0].range_lock(r, range(1, true, 0, 9), false, held1.fn());
    cl[2].range_lock(r, range(3, true, 10, 19), false, held3.fn());
    cl.run();
    ASSERT_TRUE(held1.granted());
    ASSERT_TRUE(held3.granted());
    cl[1].range_lock(r, range(2, true, 15, 15), true, waiting2.fn());
    cl.run();
    EXPECT_EQ(waiting2.calls, 0);
    cl.crash(2);
    EXPECT_TRUE(waiting2.granted());
    cl[1].range_lock(r, range(2, false, 5, 5), false, blocked.fn());
    cl.run();
    EXPECT_EQ(blocked.err(), EAGAIN) << "node 1's range must survive the rebuild";
    ASSERT_TRUE(blocked.conflict.has_value());
    EXPECT_EQ(blocked.conflict->node, 1u);
  }
}

TEST(RangeLocks, TheCodecCarriesRangeMessagesAndRejectsBadOnes) {
  MessageCodec codec("secret");
  Message m;
  m.type = MessageType::kRangeRequest;
  m.epoch = 3;
  m.from = Member{NodeId(1), 1};
  m.to = NodeId(2);
  m.seq = 1;
  m.req_id = 42;
  m.name = res(7);
  m.op = Op::kLock;
  m.flags = kFlagTry;
  m.range = range(9, true, 10, UINT64_MAX);
  auto back = codec.decode(codec.encode(m));
  ASSERT_OK(back);
  EXPECT_EQ(back->op, Op::kLock);
  ASSERT_TRUE(back->range.has_value());
  EXPECT_EQ(back->range->end, UINT64_MAX);
  EXPECT_EQ(back->range->owner, 9u);
  EXPECT_TRUE(back->range->write);
  // A range that ends before it starts, and a lock without a range, are malformed.
  Message bad = m;
  bad.range->end = 5;
  EXPECT_FALSE(codec.decode(codec.encode(bad)).is_ok());
  bad = m;
  bad.range.reset();
  EXPECT_FALSE(codec.decode(codec.encode(bad)).is_ok());
  bad = m;
  bad.op = Op::kConvert;
  EXPECT_FALSE(codec.decode(codec.encode(bad)).is_ok());
  Message reply;
  reply.type = MessageType::kRangeReply;
  reply.req_id = 42;
  reply.result = ReplyResult::kNotGranted;
  reply.range = range(3, false, 0, 0);
  auto r2 = codec.decode(codec.encode(reply));
  ASSERT_OK(r2);
  EXPECT_EQ(r2->result, ReplyResult::kNotGranted);
  ASSERT_TRUE(r2->range.has_value());
  EXPECT_EQ(r2->range->pid, 103u);
}

TEST(MessageCodec, CarriesQueriesAndTheirAnswers) {
  MessageCodec codec("secret");
  Message m;
  m.type = MessageType::kQueryReply;
  m.from = Member{NodeId(2), 5};
  m.to = NodeId(1);
  m.req_id = 77;
  m.text = std::string(100000, 'x') + R"({"node": 2})";
  auto back = codec.decode(codec.encode(m));
  ASSERT_OK(back);
  EXPECT_EQ(back->type, MessageType::kQueryReply);
  EXPECT_EQ(back->req_id, 77u);
  EXPECT_EQ(back->text, m.text);
  // A length that runs past the body is malformed, not a crash.
  auto bytes = codec.encode(m);
  std::vector<std::byte> body(bytes.begin(), bytes.end() - kMacSize);
  body[kHeaderSize + 8] = std::byte{0xff};  // the text length's low byte
  EXPECT_FALSE(codec.decode(codec.seal(body)).is_ok());
}

}  // namespace
}  // namespace sharedfs::dlm
