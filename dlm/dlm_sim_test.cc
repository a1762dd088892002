// Deterministic simulation of the DLM (DESIGN.md §6): 3–7 LockManagers in one process over
// a seeded network that delays, reorders, duplicates and drops messages, with nodes that
// crash and join. Random users lock, convert, cache and unlock random resources; the
// invariants of docs/dlm.md are checked after every event:
//   - no resource has incompatible modes granted at once;
//   - a value block read by a PR/EX grant is the last one an EX holder wrote back, or is
//     flagged invalid (and it must be invalid after an EX holder died with it);
//   - nothing is granted on a resource a dead node held in EX before journal_replayed;
//   - every request completes exactly once, and all of them once the system is quiet.
// Range users (POSIX record locks, docs/dlm.md "Range locks") lock, test, cancel and unlock
// random byte ranges of a couple of files beside them:
//   - a granted range conflicts with no range an owner of another (node, owner) holds, on a
//     live node or on a crashed one still in the granting epoch (its master's table had
//     those ranges: the crash takes them away only with the next membership);
//   - a try fails only with EAGAIN and a lock in the way; a cancelled wait ends with EINTR
//     or ok; an uncancelled wait only with ok;
//   - a node's ranges_held() is what its owners were granted minus what they unlocked,
//     and, once quiet, no range request is pending and the masters' tables hold exactly the
//     live nodes' ranges (probed with range_test).
// A failure prints its seed; SHAREDFS_DLM_SIM_SEED=<seed> replays that one seed in every
// shard (SHAREDFS_DLM_SIM_TRACE=1 prints every event; filter one shard for one trace).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <vector>

#include "dlm/lock_cache.h"
#include "dlm/lock_manager.h"
#include "dlm/range_table.h"

namespace sharedfs::dlm {
namespace {

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }

 private:
  uint64_t s_;
};

enum class UserState { kIdle, kWaiting, kHolding, kCached, kReleasing };

struct User {
  UserState state = UserState::kIdle;
  LockId id{};
  size_t res = 0;
  LockMode mode = LockMode::kNL;  // what the user holds (its last grant, lowered at release)
  bool blocked_someone = false;   // a blocking callback arrived: give up after this use
  uint64_t token = 0;             // the request in progress
};

// What the schedules exercised, summed over a shard: a test that passes because nothing
// happened proves nothing.
struct Coverage {
  uint64_t grants = 0, valid_lvb_reads = 0, invalid_lvb_reads = 0, crashes = 0, joins = 0,
           epochs = 0, blocking_callbacks = 0, busy = 0, cached_reuses = 0, retransmits = 0,
           rejected_messages = 0, flushes = 0;
  // Range locks.
  uint64_t range_grants = 0, range_eagain = 0, range_eintr = 0, range_cancel_too_late = 0,
           range_tests = 0, range_test_conflicts = 0, range_unlocks = 0,
           range_grants_past_departed = 0, range_grants_past_downgrade = 0, range_probes = 0;
};

class Sim;

class SimTransport final : public Transport {
 public:
  SimTransport(Sim* sim, NodeId from) : sim_(sim), from_(from) {}
  void send(NodeId to, std::vector<std::byte> bytes) override;

 private:
  Sim* sim_;
  NodeId from_;
};

// A user of the node's LockCache: what the file system will be.
struct CacheUser {
  enum class State { kIdle, kWaiting, kHolding } state = State::kIdle;
  size_t res = 0;
  LockMode mode = LockMode::kNL;
  uint64_t token = 0;
};

// An owner of POSIX record locks on the node (a process, for the kernel): one request at a
// time, like a process blocked in fcntl(2).
struct RangeUser {
  enum class State { kIdle, kWaiting, kTesting, kDone } state = State::kIdle;
  uint64_t token = 0;   // the request in progress
  uint64_t req_id = 0;  // its id at the LockManager (lock requests, for range_cancel)
  bool wait = false;
  bool cancelled = false;
  size_t file = 0;
  RecordLock want;
};

struct Node {
  Member member;
  bool alive = false;
  std::unique_ptr<SimTransport> transport;
  std::unique_ptr<LockManager> lm;
  std::unique_ptr<LockCache> cache;  // destroyed before lm
  std::vector<User> users;
  std::vector<RangeUser> range_users;
  CacheUser cache_user;
  std::set<size_t> dirty;      // resources whose cached EX copy was changed, not written back
  int flushes = 0;             // flush hooks not finished yet
  uint64_t last_admin_at = 0;  // membership and replay calls reach a node in order
};

struct Holder {
  Member owner;
  uint64_t lock = 0;
  LockMode mode = LockMode::kNL;
};

// What really happened to one resource, from the users' side.
struct Truth {
  std::vector<Holder> holders;
  std::array<uint8_t, kLvbSize> written{};
  bool written_valid = false;
  bool must_be_invalid = false;      // an EX holder died without writing back
  std::set<Member> awaiting_replay;  // dead EX holders: no grant until replayed
};

struct Request {
  Member node;
  int completions = 0;
};

class Sim {
 public:
  Sim(uint64_t seed, bool trace, Coverage& cov)
      : seed_(seed), rng_(seed), trace_(trace), cov_(cov) {}

  std::optional<std::string> run() {
    const size_t nodes = 3 + rng_.below(5);
    resources_ = 1 + rng_.below(6);
    users_per_node_ = 1 + rng_.below(3);
    range_files_ = 1 + rng_.below(2);
    range_users_per_node_ = 1 + rng_.below(2);
    range_ops_left_ = 5 + static_cast<int>(rng_.below(20));
    ops_left_ = 40 + static_cast<int>(rng_.below(60));
    const double drops[] = {0.0, 0.02, 0.1};
    p_drop_ = drops[rng_.below(3)];
    p_dup_ = rng_.chance(0.5) ? 0.05 : 0.0;
    max_delay_ = 1 + rng_.below(20);
    truth_.resize(resources_);

    Membership first{1, {}};
    for (size_t i = 0; i < nodes; ++i) first.members.push_back(start_node(NodeId(i + 1)));
    epoch_ = 1;
    memberships_[1] = std::set<Member>(first.members.begin(), first.members.end());
    for (auto& n : nodes_)
      admin(n.member, [this, first](Node& node) {
        expect_ok(node.lm->set_membership(first), "set_membership");
      });
    for (auto& n : nodes_) {
      for (size_t u = 0; u < n.users.size(); ++u) schedule_user(n.member, u, rng_.below(10));
      for (size_t u = 0; u < n.range_users.size(); ++u) {
        schedule_range_user(n.member, u, rng_.below(10));
      }
    }
    const uint64_t faults = rng_.below(4);
    for (uint64_t f = 0; f < faults; ++f) {
      at(rng_.below(400), [this] { fault(); });
    }

    while (!failure_ && !queue_.empty()) {
      auto ev = queue_.top();
      queue_.pop();
      now_ = ev.time;
      ev.fn();
      if (!quiet_ && (ops_left_ <= 0 || now_ > 3000)) begin_quiet();
      if (quiet_ && !failure_) {
        if (is_quiet()) {
          // The checks, then the masters' tables are probed: done once the probes are
          // answered (at once where the master is live: it probes itself).
          if (!probed_) {
            final_checks();
            probed_ = true;
            if (!failure_) start_probes();
          }
          if (failure_ || probes_pending_ == 0) {
            check_requests();
            break;
          }
          continue;
        }
        if (now_ > quiet_since_ + 20000) {
          std::string why;
          quiet(&why);
          fail("the system never became quiet: " + why);
        }
      }
    }
    if (!failure_ && !quiet_) fail("event queue ran dry");
    return failure_;
  }

  void on_send(NodeId from, NodeId to, std::vector<std::byte> bytes) {
    if (rng_.chance(p_drop_)) {
      trace("drop {}->{}", from.value, to.value);
      return;
    }
    const int copies = rng_.chance(p_dup_) ? 2 : 1;
    for (int c = 0; c < copies; ++c) {
      // Occasionally flip a byte: the HMAC must reject it.
      std::vector<std::byte> b = bytes;
      if (!quiet_ && rng_.chance(0.002)) b[rng_.below(b.size())] ^= std::byte{0x40};
      ++in_flight_;
      at(now_ + 1 + rng_.below(max_delay_), [this, to, b = std::move(b)] {
        --in_flight_;
        Node* n = node_by_id(to);
        if (n != nullptr && n->alive) n->lm->receive(b);
      });
    }
  }

 private:
  struct Event {
    uint64_t time;
    uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Event& o) const { return std::tie(time, seq) > std::tie(o.time, o.seq); }
  };

  template <typename... Args>
  void trace(fmt::format_string<Args...> f, Args&&... args) {
    if (trace_) fmt::print("[{:6}] {}\n", now_, fmt::format(f, std::forward<Args>(args)...));
  }

  void fail(std::string why) {
    if (!failure_) failure_ = fmt::format("seed {} at t={}: {}", seed_, now_, why);
  }
  void expect_ok(const Status& s, const char* what) {
    if (!s.is_ok()) fail(fmt::format("{}: {}", what, s.to_string()));
  }

  void at(uint64_t time, std::function<void()> fn) {
    queue_.push(Event{std::max(time, now_), next_seq_++, std::move(fn)});
  }

  Node* node_by_id(NodeId id) {
    return id.value >= 1 && id.value <= nodes_.size() ? &nodes_[id.value - 1] : nullptr;
  }
  Node* live(const Member& m) {
    Node* n = node_by_id(m.id);
    return n != nullptr && n->alive && n->member == m ? n : nullptr;
  }

  Member start_node(NodeId id) {
    if (nodes_.size() < id.value) nodes_.resize(id.value);
    Node& n = nodes_[id.value - 1];
    n.member = Member{id, ++incarnations_};
    n.alive = true;
    n.transport = std::make_unique<SimTransport>(this, id);
    n.lm = std::make_unique<LockManager>(
        LockManagerOptions{n.member, "sim-secret", n.transport.get(), 40, false});
    n.users.assign(users_per_node_, User{});
    n.range_users.assign(range_users_per_node_, RangeUser{});
    range_truth_[n.member].assign(range_files_, RangeTable{});
    n.cache_user = CacheUser{};
    n.dirty.clear();
    n.flushes = 0;
    n.last_admin_at = now_;
    const Member m = n.member;
    n.cache = std::make_unique<LockCache>(
        *n.lm, [this, m](const ResourceName& name, LockMode to, std::function<void()> done) {
          on_flush(m, name, to, std::move(done));
        });
    schedule_cache_user(m, rng_.below(10));
    trace("node {} starts", m.to_string());
    tick_loop(m);
    return m;
  }

  void tick_loop(Member m) {
    at(now_ + 10, [this, m] {
      if (Node* n = live(m)) {
        n->lm->tick(now_);
        tick_loop(m);
      }
    });
  }

  // Membership and replay calls: to one node, after the calls already sent to it.
  void admin(Member m, std::function<void(Node&)> fn) {
    Node* n = live(m);
    if (n == nullptr) return;
    n->last_admin_at = std::max(now_, n->last_admin_at) + 1 + rng_.below(15);
    ++admin_in_flight_;
    at(n->last_admin_at, [this, m, fn = std::move(fn)] {
      --admin_in_flight_;
      if (Node* node = live(m)) fn(*node);
    });
  }

  void change_membership() {
    Membership ms{++epoch_, {}};
    for (auto& n : nodes_) {
      if (n.alive) ms.members.push_back(n.member);
    }
    memberships_[ms.epoch] = std::set<Member>(ms.members.begin(), ms.members.end());
    trace("epoch {} with {} members", ms.epoch, ms.members.size());
    ++cov_.epochs;
    for (const Member& m : ms.members) {
      admin(m, [this, ms](Node& node) { expect_ok(node.lm->set_membership(ms), "membership"); });
    }
  }

  void fault() {
    if (quiet_) return;
    size_t alive = 0;
    for (auto& n : nodes_) alive += n.alive ? 1 : 0;
    const bool crash = alive > 2 && (alive >= 7 || rng_.chance(0.6));
    if (crash) {
      std::vector<size_t> cand;
      for (size_t i = 0; i < nodes_.size(); ++i) {
        if (nodes_[i].alive) cand.push_back(i);
      }
      crash_node(nodes_[cand[rng_.below(cand.size())]]);
      return;
    }
    // Join: a fresh id, or the id of a dead node whose journal was replayed.
    NodeId id(static_cast<uint32_t>(nodes_.size() + 1));
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (!nodes_[i].alive && replayed_ids_.contains(nodes_[i].member)) {
        id = NodeId(static_cast<uint32_t>(i + 1));
        break;
      }
    }
    if (id.value > 7) return;
    const Member m = start_node(id);
    ++cov_.joins;
    Node& n = *live(m);
    for (size_t u = 0; u < n.users.size(); ++u) schedule_user(m, u, 5 + rng_.below(20));
    for (size_t u = 0; u < n.range_users.size(); ++u) schedule_range_user(m, u, 5 + rng_.below(20));
    at(now_ + 1 + rng_.below(20), [this] { change_membership(); });
  }

  void crash_node(Node& n) {
    const Member dead = n.member;
    trace("node {} crashes", dead.to_string());
    n.alive = false;
    // A lock cached in EX (in use or not) is an EX hold that dies with the node.
    for (size_t r = 0; r < resources_; ++r) {
      const auto id = n.cache->lock_id(name_of(r));
      if (id && n.lm->granted_mode(*id) == LockMode::kEX) {
        truth_[r].must_be_invalid = true;
        truth_[r].awaiting_replay.insert(dead);
      }
    }
    n.cache.reset();
    cov_.retransmits += n.lm->stats().retransmitted;
    cov_.rejected_messages += n.lm->stats().dropped_malformed;
    ++cov_.crashes;
    n.lm.reset();
    for (auto& t : truth_) {
      for (const Holder& h : t.holders) {
        if (h.owner == dead && h.mode == LockMode::kEX) {
          t.must_be_invalid = true;
          t.awaiting_replay.insert(dead);
        }
      }
      std::erase_if(t.holders, [&](const Holder& h) { return h.owner == dead; });
    }
    // The dead node's ranges stay in range_truth_ under its Member: a master of an epoch
    // that still has it as a member keeps them (see range_granted).
    at(now_ + 1 + rng_.below(30), [this] { change_membership(); });
    // The cluster fences the node and replays its journal, then tells every node.
    at(now_ + 40 + rng_.below(300), [this, dead] { replay(dead); });
  }

  void replay(Member dead) {
    // The go-ahead: from now on the cluster reports the replay to every node.
    trace("journal of {} replayed", dead.to_string());
    for (auto& t : truth_) t.awaiting_replay.erase(dead);
    replayed_ids_.insert(dead);
    for (auto& n : nodes_) {
      if (!n.alive) continue;
      admin(n.member, [this, dead](Node& node) {
        expect_ok(node.lm->journal_replayed(dead), "journal_replayed");
      });
    }
  }

  // --- users ---

  void schedule_user(Member m, size_t u, uint64_t delay) {
    at(now_ + delay, [this, m, u] {
      if (Node* n = live(m)) user_step(*n, u);
    });
  }

  ResourceName name_of(size_t r) const { return ResourceName::make(1, r, "sim"); }

  LockMode random_mode() {
    const uint64_t x = rng_.below(10);
    return x == 0 ? LockMode::kNL : x < 6 ? LockMode::kPR : LockMode::kEX;
  }

  Completion completion(Member m, size_t u, uint64_t token,
                        std::function<void(Node&, User&, const Status&)> then) {
    requests_[token] = Request{m, 0};
    return [this, m, u, token, then = std::move(then)](LockId id, const Status& s) {
      if (++requests_[token].completions > 1)
        fail(fmt::format("request {} completed twice", token));
      Node* n = live(m);
      if (n == nullptr) return;
      if (n->users[u].token != token) return fail("completion for another request");
      n->users[u].id = id;
      then(*n, n->users[u], s);
    };
  }

  void user_step(Node& n, size_t u) {
    User& user = n.users[u];
    const Member m = n.member;
    switch (user.state) {
      case UserState::kIdle: {
        if (quiet_ || ops_left_ <= 0) return;
        --ops_left_;
        user.res = rng_.below(resources_);
        const LockMode mode = random_mode();
        const bool try_lock = rng_.chance(0.1);
        user.token = ++tokens_;
        user.state = UserState::kWaiting;
        user.blocked_someone = false;
        const uint64_t lock_id =
            n.lm->lock(
                    name_of(user.res), mode, LockFlags{try_lock},
                    [this, m, u](LockMode w) { on_blocking(m, u, w); },
                    completion(m, u, user.token,
                               [this, mode](Node& node, User& us, const Status& s) {
                                 if (s.is_ok()) {
                                   granted(node, us, mode);
                                 } else {
                                   ++cov_.busy;
                                   us.state = UserState::kIdle;
                                   schedule_user(node.member, &us - node.users.data(),
                                                 1 + rng_.below(10));
                                 }
                               }))
                .value;
        user.id = LockId(lock_id);
        trace("{} u{} lock {} r{} {}{}", m.to_string(), u, lock_id, user.res, lock_mode_name(mode),
              try_lock ? " try" : "");
        return;
      }
      case UserState::kHolding: {
        // End of use.
        if (quiet_ || user.blocked_someone) {
          release(n, u, rng_.chance(0.5));
          return;
        }
        const uint64_t x = rng_.below(100);
        if (x < 30) {
          release(n, u, true);
        } else if (x < 60) {
          user.state = UserState::kCached;
          schedule_user(m, u, 1 + rng_.below(30));
        } else if (x < 75 && user.mode < LockMode::kEX) {
          convert_up(n, u, user.mode == LockMode::kNL ? random_mode() : LockMode::kEX);
        } else if (user.mode > LockMode::kNL) {
          down_convert(
              n, u, user.mode == LockMode::kEX && rng_.chance(0.5) ? LockMode::kPR : LockMode::kNL);
        } else {
          release(n, u, true);
        }
        return;
      }
      case UserState::kCached: {
        if (user.blocked_someone) {
          release(n, u, rng_.chance(0.5));
          return;
        }
        if (quiet_ || ops_left_ <= 0) return;
        --ops_left_;
        const LockMode want = random_mode();
        if (rng_.chance(0.2)) {
          release(n, u, true);
        } else if (want <= user.mode) {
          trace("{} u{} reuses cached lock {}", m.to_string(), u, user.id.value);
          ++cov_.cached_reuses;
          user.state = UserState::kHolding;
          schedule_user(m, u, 1 + rng_.below(30));
        } else {
          convert_up(n, u, want);
        }
        return;
      }
      case UserState::kWaiting:
      case UserState::kReleasing:
        return;
    }
  }

  void on_blocking(Member m, size_t u, LockMode waiting) {
    Node* n = live(m);
    if (n == nullptr) return;
    User& user = n->users[u];
    trace("bast {} u{} lock {} (waiting {})", m.to_string(), u, user.id.value,
          lock_mode_name(waiting));
    if (user.state == UserState::kIdle || user.state == UserState::kReleasing) return;
    user.blocked_someone = true;
    ++cov_.blocking_callbacks;
    if (user.state == UserState::kCached) schedule_user(m, u, rng_.below(3));
  }

  void granted(Node& n, User& user, LockMode mode) {
    const Member m = n.member;
    const size_t u = &user - n.users.data();
    Truth& t = truth_[user.res];
    trace("{} u{} granted lock {} r{} {}", m.to_string(), u, user.id.value, user.res,
          lock_mode_name(mode));
    if (n.lm->granted_mode(user.id) != mode) fail("lock manager disagrees on the granted mode");
    for (const Holder& h : t.holders) {
      if (!(h.owner == m && h.lock == user.id.value) && !compatible(h.mode, mode)) {
        fail(fmt::format("r{} granted {} to {} lock {} while {} holds {} (lock {})", user.res,
                         lock_mode_name(mode), m.to_string(), user.id.value, h.owner.to_string(),
                         lock_mode_name(h.mode), h.lock));
      }
    }
    // NL gives no access; a master that has not seen the death yet may grant it.
    if (mode >= LockMode::kPR && !t.awaiting_replay.empty()) {
      fail(fmt::format("r{} granted before the journal of {} was replayed", user.res,
                       t.awaiting_replay.begin()->to_string()));
    }
    if (mode >= LockMode::kPR) {
      auto lvb = n.lm->value_block(user.id);
      if (!lvb.is_ok()) {
        fail("value_block failed");
      } else if (!lvb->valid) {
        ++cov_.invalid_lvb_reads;
      } else {
        ++cov_.valid_lvb_reads;
        if (t.must_be_invalid) fail(fmt::format("r{}: valid value block after EX death", user.res));
        if (!t.written_valid || lvb->bytes != t.written) {
          fail(fmt::format("r{}: value block read is not the last one written", user.res));
        }
      }
    }
    std::erase_if(t.holders,
                  [&](const Holder& h) { return h.owner == m && h.lock == user.id.value; });
    t.holders.push_back(Holder{m, user.id.value, mode});
    user.mode = mode;
    user.state = UserState::kHolding;
    ++cov_.grants;
    if (mode == LockMode::kEX && rng_.chance(0.7)) {
      std::array<uint8_t, kLvbSize> v{};
      const uint64_t stamp = ++lvb_stamps_;
      std::memcpy(v.data(), &stamp, sizeof(stamp));
      expect_ok(n.lm->set_value_block(user.id, v), "set_value_block");
    }
    schedule_user(m, u, 1 + rng_.below(30));
  }

  // Leaving EX writes the holder's copy back: that is now the last value written.
  void note_write_back(Node& n, User& user) {
    if (user.mode != LockMode::kEX) return;
    auto lvb = n.lm->value_block(user.id);
    if (!lvb.is_ok()) return fail("value_block failed");
    Truth& t = truth_[user.res];
    t.written = lvb->bytes;
    t.written_valid = lvb->valid;
    if (lvb->valid) t.must_be_invalid = false;
  }

  void set_holder_mode(Node& n, User& user, std::optional<LockMode> mode) {
    Truth& t = truth_[user.res];
    std::erase_if(t.holders,
                  [&](const Holder& h) { return h.owner == n.member && h.lock == user.id.value; });
    if (mode) t.holders.push_back(Holder{n.member, user.id.value, *mode});
  }

  void release(Node& n, size_t u, bool unlock) {
    User& user = n.users[u];
    if (!unlock && user.mode == LockMode::kNL) {
      user.state = UserState::kCached;
      user.blocked_someone = false;
      return;
    }
    if (!unlock) return down_convert(n, u, LockMode::kNL);
    const Member m = n.member;
    note_write_back(n, user);
    set_holder_mode(n, user, std::nullopt);
    user.state = UserState::kReleasing;
    user.token = ++tokens_;
    trace("{} u{} unlock {}", m.to_string(), u, user.id.value);
    expect_ok(n.lm->unlock(user.id, completion(m, u, user.token,
                                               [this](Node& node, User& us, const Status& s) {
                                                 expect_ok(s, "unlock");
                                                 us.state = UserState::kIdle;
                                                 us.id = LockId{};
                                                 schedule_user(node.member, &us - node.users.data(),
                                                               1 + rng_.below(10));
                                               })),
              "unlock call");
  }

  void down_convert(Node& n, size_t u, LockMode mode) {
    User& user = n.users[u];
    const Member m = n.member;
    note_write_back(n, user);
    set_holder_mode(n, user, mode);
    user.mode = mode;
    user.state = UserState::kReleasing;
    user.token = ++tokens_;
    trace("{} u{} down-convert {} to {}", m.to_string(), u, user.id.value, lock_mode_name(mode));
    expect_ok(n.lm->convert(user.id, mode, {},
                            completion(m, u, user.token,
                                       [this](Node& node, User& us, const Status& s) {
                                         expect_ok(s, "down-convert");
                                         us.state = UserState::kCached;
                                         us.blocked_someone = false;
                                         schedule_user(node.member, &us - node.users.data(),
                                                       1 + rng_.below(10));
                                       })),
              "convert call");
  }

  void convert_up(Node& n, size_t u, LockMode mode) {
    User& user = n.users[u];
    const Member m = n.member;
    if (mode <= user.mode) {
      user.state = UserState::kHolding;
      schedule_user(m, u, 1 + rng_.below(30));
      return;
    }
    const bool try_lock = rng_.chance(0.1);
    user.state = UserState::kWaiting;
    user.token = ++tokens_;
    trace("{} u{} convert {} {} -> {}{}", m.to_string(), u, user.id.value,
          lock_mode_name(user.mode), lock_mode_name(mode), try_lock ? " try" : "");
    expect_ok(n.lm->convert(user.id, mode, LockFlags{try_lock},
                            completion(m, u, user.token,
                                       [this, mode](Node& node, User& us, const Status& s) {
                                         if (s.is_ok()) return granted(node, us, mode);
                                         trace("convert failed: {}", s.to_string());
                                         ++cov_.busy;
                                         us.state = UserState::kHolding;
                                         schedule_user(node.member, &us - node.users.data(),
                                                       1 + rng_.below(10));
                                       })),
              "convert call");
  }

  // --- the LockCache user ---

  static uint64_t cache_holder_id(const Member& m) { return (1ull << 63) | m.id.value; }

  void schedule_cache_user(Member m, uint64_t delay) {
    at(now_ + delay, [this, m] {
      if (Node* n = live(m)) cache_user_step(*n);
    });
  }

  void cache_user_step(Node& n) {
    CacheUser& cu = n.cache_user;
    const Member m = n.member;
    if (cu.state == CacheUser::State::kHolding) {  // end of use
      std::erase_if(truth_[cu.res].holders,
                    [&](const Holder& h) { return h.owner == m && h.lock == cache_holder_id(m); });
      cu.state = CacheUser::State::kIdle;
      trace("{} cache release r{}", m.to_string(), cu.res);
      n.cache->release(name_of(cu.res));
      schedule_cache_user(m, 1 + rng_.below(10));
      return;
    }
    if (cu.state != CacheUser::State::kIdle || quiet_ || ops_left_ <= 0) return;
    --ops_left_;
    cu.res = rng_.below(resources_);
    cu.mode = random_mode();
    cu.token = ++tokens_;
    cu.state = CacheUser::State::kWaiting;
    requests_[cu.token] = Request{m, 0};
    trace("{} cache acquire r{} {}", m.to_string(), cu.res, lock_mode_name(cu.mode));
    n.cache->acquire(name_of(cu.res), cu.mode, [this, m, token = cu.token](const Status& s) {
      if (++requests_[token].completions > 1) fail("cache acquire completed twice");
      Node* node = live(m);
      if (node == nullptr) return;
      expect_ok(s, "cache acquire");
      cache_granted(*node);
    });
  }

  void cache_granted(Node& n) {
    CacheUser& cu = n.cache_user;
    const Member m = n.member;
    Truth& t = truth_[cu.res];
    const auto id = n.cache->lock_id(name_of(cu.res));
    const auto node_mode = id ? n.lm->granted_mode(*id) : std::nullopt;
    trace("{} cache granted r{} {}", m.to_string(), cu.res, lock_mode_name(cu.mode));
    if (!node_mode || *node_mode < cu.mode) fail("cache granted more than the node holds");
    for (const Holder& h : t.holders) {
      if (!compatible(h.mode, cu.mode)) {
        fail(fmt::format("r{}: cache of {} granted {} while {} holds {}", cu.res, m.to_string(),
                         lock_mode_name(cu.mode), h.owner.to_string(), lock_mode_name(h.mode)));
      }
    }
    if (cu.mode >= LockMode::kPR && !t.awaiting_replay.empty()) {
      fail(fmt::format("r{}: cache granted before a replay", cu.res));
    }
    if (cu.mode >= LockMode::kPR && id && !n.dirty.contains(cu.res)) {
      auto lvb = n.lm->value_block(*id);
      if (lvb.is_ok() && lvb->valid &&
          (t.must_be_invalid || !t.written_valid || lvb->bytes != t.written)) {
        fail(fmt::format("r{}: cached value block is not the last one written", cu.res));
      }
    }
    t.holders.push_back(Holder{m, cache_holder_id(m), cu.mode});
    cu.state = CacheUser::State::kHolding;
    ++cov_.grants;
    if (cu.mode == LockMode::kEX && rng_.chance(0.7)) {
      std::array<uint8_t, kLvbSize> v{};
      const uint64_t stamp = ++lvb_stamps_;
      std::memcpy(v.data(), &stamp, sizeof(stamp));
      expect_ok(n.lm->set_value_block(*id, v), "set_value_block (cache)");
      n.dirty.insert(cu.res);
    }
    schedule_cache_user(m, 1 + rng_.below(30));
  }

  // The file system's flush: finishes later; nobody on this node may use the lock now.
  void on_flush(Member m, const ResourceName& name, LockMode to, std::function<void()> done) {
    Node* n = live(m);
    if (n == nullptr) return;
    const size_t r = name.id;
    const CacheUser& cu = n->cache_user;
    if (cu.state == CacheUser::State::kHolding && cu.res == r) {
      fail(fmt::format("r{}: flush of {} while its cache user holds it", r, m.to_string()));
    }
    ++cov_.flushes;
    ++n->flushes;
    trace("{} flush r{} to {}", m.to_string(), r, lock_mode_name(to));
    at(now_ + rng_.below(20), [this, m, r, done = std::move(done)] {
      Node* node = live(m);
      if (node == nullptr) return;
      --node->flushes;
      // Leaving EX writes the copy back: record it as the last value written.
      const auto id = node->cache->lock_id(name_of(r));
      if (id && node->lm->granted_mode(*id) == LockMode::kEX) {
        auto lvb = node->lm->value_block(*id);
        Truth& t = truth_[r];
        t.written = lvb->bytes;
        t.written_valid = lvb->valid;
        if (lvb->valid) t.must_be_invalid = false;
        node->dirty.erase(r);
      }
      done();
    });
  }

  // --- range users (POSIX record locks) ---

  ResourceName range_name(size_t f) const { return ResourceName::make(1, f, "posix"); }
  static uint64_t range_owner(size_t u) { return u + 1; }
  static constexpr uint64_t kProbeOwner = 1000;

  static bool overlap(const RecordLock& a, const RecordLock& b) {
    return a.start <= b.end && b.start <= a.end;
  }
  static bool conflicts(const RecordLock& a, const RecordLock& b) {
    return !same_owner(a, b) && (a.write || b.write) && overlap(a, b);
  }
  static bool same_lock(const RecordLock& a, const RecordLock& b) {
    return a.write == b.write && a.start == b.start && a.end == b.end && a.owner == b.owner &&
           a.pid == b.pid && a.node == b.node;
  }
  static std::string show(const RecordLock& l) {
    return fmt::format("{}[{}..{}] node {} owner {} pid {}", l.write ? "W" : "R", l.start,
                       l.end == UINT64_MAX ? std::string("EOF") : std::to_string(l.end), l.node,
                       l.owner, l.pid);
  }
  static std::string show(const std::vector<RecordLock>& v) {
    std::string out;
    for (const auto& l : v) out += (out.empty() ? "" : ", ") + show(l);
    return "{" + out + "}";
  }
  static std::vector<RecordLock> of_owner(std::vector<RecordLock> v, uint64_t owner) {
    std::erase_if(v, [&](const RecordLock& l) { return l.owner != owner; });
    return v;
  }
  static bool same_locks(const std::vector<RecordLock>& a, const std::vector<RecordLock>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(), same_lock);
  }

  // A small range of a small file; now and then to the end of the file.
  std::pair<uint64_t, uint64_t> random_range() {
    const uint64_t start = rng_.below(64);
    if (rng_.chance(0.1)) return {start, UINT64_MAX};
    return {start, std::min<uint64_t>(63, start + rng_.below(16))};
  }

  void schedule_range_user(Member m, size_t u, uint64_t delay) {
    at(now_ + delay, [this, m, u] {
      if (Node* n = live(m)) range_user_step(*n, u);
    });
  }

  // The node's ranges of `owner` on file `f` must be what the owner was granted and kept.
  void check_owner_ranges(Node& n, size_t f, uint64_t owner, const char* when) {
    const auto held = of_owner(n.lm->ranges_held(range_name(f)), owner);
    const auto truth = of_owner(range_truth_[n.member][f].held(), owner);
    if (!same_locks(held, truth)) {
      fail(fmt::format("{} owner {} f{} after {}: ranges_held {} but granted and kept {}",
                       n.member.to_string(), owner, f, when, show(held), show(truth)));
    }
  }

  bool owner_holds(const Member& m, uint64_t owner, size_t f) {
    for (const auto& l : range_truth_[m][f].held()) {
      if (l.owner == owner) return true;
    }
    return false;
  }

  void range_user_step(Node& n, size_t u) {
    RangeUser& ru = n.range_users[u];
    const Member m = n.member;
    if (ru.state != RangeUser::State::kIdle) return;
    if (quiet_) {
      // The end: keep what is held or give it all up, and do nothing more.
      if (rng_.chance(0.5)) {
        for (size_t f = 0; f < range_files_; ++f) {
          if (owner_holds(m, range_owner(u), f)) range_unlock(n, u, f, 0, UINT64_MAX);
        }
      }
      ru.state = RangeUser::State::kDone;
      return;
    }
    if (range_ops_left_ <= 0) return;  // begin_quiet wakes us up
    --range_ops_left_;
    const uint64_t x = rng_.below(100);
    std::vector<size_t> held;
    for (size_t f = 0; f < range_files_; ++f) {
      if (owner_holds(m, range_owner(u), f)) held.push_back(f);
    }
    if (x < 35 && (!held.empty() || x < 3)) {
      // Unlock, often only part of what is held (splits); rarely where nothing is held.
      const size_t f = held.empty() ? rng_.below(range_files_) : held[rng_.below(held.size())];
      auto [start, end] =
          rng_.chance(0.4) ? std::pair<uint64_t, uint64_t>{0, UINT64_MAX} : random_range();
      range_unlock(n, u, f, start, end);
      schedule_range_user(m, u, 1 + rng_.below(20));
      return;
    }
    const size_t f = rng_.below(range_files_);
    auto [start, end] = random_range();
    const RecordLock want{.write = rng_.chance(0.5),
                          .start = start,
                          .end = end,
                          .owner = range_owner(u),
                          .pid = static_cast<uint32_t>(100 + u),
                          .node = m.id.value};
    ru.token = ++tokens_;
    ru.file = f;
    ru.want = want;
    ru.cancelled = false;
    ru.req_id = 0;
    requests_[ru.token] = Request{m, 0};
    if (x < 45) {
      ru.state = RangeUser::State::kTesting;
      ru.wait = false;
      if (trace_) trace("{} o{} range test f{} {}", m.to_string(), range_owner(u), f, show(want));
      n.lm->range_test(range_name(f), want, range_completion(m, u, ru.token));
      return;
    }
    ru.state = RangeUser::State::kWaiting;
    ru.wait = rng_.chance(0.7);
    range_asking_[m][range_owner(u)] = {f, want};
    const uint64_t token = ru.token;
    if (trace_) {
      trace("{} o{} range lock f{} {}{}", m.to_string(), range_owner(u), f, show(want),
            ru.wait ? " wait" : " try");
    }
    // May complete inside the call (a local master): `ru` is looked up again after it.
    const uint64_t req_id =
        n.lm->range_lock(range_name(f), want, ru.wait, range_completion(m, u, token));
    RangeUser& after = n.range_users[u];
    if (after.state != RangeUser::State::kWaiting || after.token != token) return;
    after.req_id = req_id;
    if (after.wait && rng_.chance(0.3)) schedule_range_cancel(m, u, token, 1 + rng_.below(60));
  }

  void schedule_range_cancel(Member m, size_t u, uint64_t token, uint64_t delay) {
    at(now_ + delay, [this, m, u, token] {
      Node* n = live(m);
      if (n == nullptr) return;
      RangeUser& ru = n->range_users[u];
      if (ru.state != RangeUser::State::kWaiting || ru.token != token || ru.cancelled) return;
      if (trace_) {
        trace("{} o{} range cancel (request {})", m.to_string(), range_owner(u), ru.req_id);
      }
      ru.cancelled = true;
      n->lm->range_cancel(ru.req_id);
    });
  }

  // The client takes the range out at the call: so does the truth.
  void range_unlock(Node& n, size_t u, size_t f, uint64_t start, uint64_t end) {
    const Member m = n.member;
    const uint64_t owner = range_owner(u);
    range_truth_[m][f].cut(m.id.value, owner, start, end);
    ++cov_.range_unlocks;
    if (trace_) {
      trace("{} o{} range unlock f{} [{}..{}]", m.to_string(), owner, f, start,
            end == UINT64_MAX ? std::string("EOF") : std::to_string(end));
    }
    RangeCompletion done;
    if (rng_.chance(0.5)) {
      const uint64_t token = ++tokens_;
      requests_[token] = Request{m, 0};
      done = [this, token](const Status& s, std::optional<RecordLock> c) {
        if (++requests_[token].completions > 1) fail("range unlock completed twice");
        expect_ok(s, "range unlock");
        if (c) fail("range unlock answered with a lock");
      };
    }
    n.lm->range_unlock(range_name(f), owner, start, end, std::move(done));
    check_owner_ranges(n, f, owner, "unlock");
  }

  RangeCompletion range_completion(Member m, size_t u, uint64_t token) {
    return [this, m, u, token](const Status& s, std::optional<RecordLock> conflict) {
      if (++requests_[token].completions > 1) {
        fail(fmt::format("range request {} completed twice", token));
      }
      Node* n = live(m);
      if (n == nullptr) return;
      RangeUser& ru = n->range_users[u];
      if (ru.token != token ||
          (ru.state != RangeUser::State::kWaiting && ru.state != RangeUser::State::kTesting)) {
        return fail("range completion for another request");
      }
      const bool testing = ru.state == RangeUser::State::kTesting;
      ru.state = RangeUser::State::kIdle;
      if (!testing) range_asking_[m].erase(range_owner(u));
      uint64_t next = 1 + rng_.below(10);
      const auto bad = [&](std::string why) {
        const char* kind = testing ? "test" : ru.wait ? "lock (wait)" : "lock (try)";
        fail(fmt::format("{} o{} range {} f{} {}: {}", m.to_string(), range_owner(u), kind, ru.file,
                         show(ru.want), why));
      };
      if (conflict && !conflicts(*conflict, ru.want)) {
        bad(fmt::format("answered with {}, which is not in the way", show(*conflict)));
      }
      if (testing) {
        if (!s.is_ok()) bad("failed: " + s.to_string());
        ++cov_.range_tests;
        if (conflict) ++cov_.range_test_conflicts;
        if (trace_) {
          trace("{} o{} range test: {}", m.to_string(), range_owner(u),
                conflict ? show(*conflict) : std::string("free"));
        }
      } else if (s.is_ok()) {
        if (conflict) bad("granted with a lock in the way");
        if (ru.cancelled) ++cov_.range_cancel_too_late;
        range_granted(*n, u);
        next = 1 + rng_.below(40);  // hold a while
      } else if (s.code() != Code::kBusy) {
        bad("failed: " + s.to_string());
      } else if (s.sys_errno() == EAGAIN) {
        ++cov_.range_eagain;
        if (trace_) {
          trace("{} o{} range lock refused: {}", m.to_string(), range_owner(u),
                conflict ? show(*conflict) : std::string("?"));
        }
        if (ru.wait) bad("a wait failed with EAGAIN");
        if (!conflict) bad("EAGAIN without the lock in the way");
      } else if (s.sys_errno() == EINTR) {
        ++cov_.range_eintr;
        if (trace_) trace("{} o{} range lock interrupted", m.to_string(), range_owner(u));
        if (!ru.cancelled) bad("EINTR without a cancel");
        if (conflict) bad("EINTR with a lock in the way");
      } else {
        bad("failed: " + s.to_string());
      }
      check_owner_ranges(*n, ru.file, range_owner(u), "a range request");
      schedule_range_user(m, u, next);
    };
  }

  // A grant in the node's epoch E (replies reach a node only in the epoch they were sent
  // in). E's master built its table from the reports of every member of E and put each of
  // its grants in it; a client's unlock is taken out of the truth before it reaches the
  // master. So the table holds at least the truth's ranges of every member of E, the dead
  // ones too (until E ends for the master, which then grants nothing more in E). A live
  // node that is not a member of E holds nothing yet: it joined later, and the masters of
  // a later epoch grant nothing before the node granted here has reported in that epoch.
  // One exception: an owner's own request replaces its ranges at the master before the
  // grant reaches the owner (fcntl(2) turning a write lock into a read lock). While an owner
  // asks for a read range, the part of its write ranges inside it may be a read range
  // already.
  void range_granted(Node& n, size_t u) {
    const Member m = n.member;
    RangeUser& ru = n.range_users[u];
    const RecordLock& want = ru.want;
    const uint64_t epoch = n.lm->epoch();
    const auto& members = memberships_[epoch];
    if (trace_) {
      trace("{} o{} range granted f{} {} (epoch {})", m.to_string(), ru.want.owner, ru.file,
            show(want), epoch);
    }
    for (const auto& [holder, files] : range_truth_) {
      const bool in_epoch = members.contains(holder);
      if (!in_epoch && live(holder) == nullptr) {
        for (const auto& l : files[ru.file].held()) {
          if (conflicts(l, want)) ++cov_.range_grants_past_departed;
        }
        continue;
      }
      for (const auto& l : files[ru.file].held()) {
        if (holder == m && l.owner == want.owner) continue;
        if (!overlap(l, want) || !(l.write || want.write)) continue;
        if (!want.write) {
          const auto asking = range_asking_[holder].find(l.owner);
          if (asking != range_asking_[holder].end() && asking->second.first == ru.file &&
              !asking->second.second.write) {
            const RecordLock& r = asking->second.second;
            // The bytes both hold: free unless some lie outside the read range asked for.
            if (std::max(l.start, want.start) >= r.start && std::min(l.end, want.end) <= r.end) {
              ++cov_.range_grants_past_downgrade;
              continue;
            }
          }
        }
        fail(fmt::format("f{}: {} owner {} granted {} in epoch {} while {}{} holds {}", ru.file,
                         m.to_string(), want.owner, show(want), epoch, holder.to_string(),
                         live(holder) != nullptr ? "" : " (dead, still a member)", show(l)));
      }
    }
    range_truth_[m][ru.file].put(want);
    ++cov_.range_grants;
  }

  // Once quiet: the masters' tables must hold exactly the live nodes' ranges. range_test
  // from an owner that holds nothing names a lock in the way iff one is held, and it must
  // be one that is held. The master probes its own table: no message, no time passes.
  void start_probes() {
    std::vector<Member> alive;
    for (const auto& n : nodes_) {
      if (n.alive) alive.push_back(n.member);
    }
    if (alive.empty()) return;
    const std::vector<Member> members(memberships_[epoch_].begin(), memberships_[epoch_].end());
    for (size_t f = 0; f < range_files_; ++f) {
      Node* master = node_by_id(master_of(range_name(f), members));
      if (master == nullptr || !master->alive) master = live(alive[rng_.below(alive.size())]);
      std::vector<RecordLock> held;
      for (const Member& a : alive) {
        for (const auto& l : range_truth_[a][f].held()) held.push_back(l);
      }
      std::vector<std::pair<uint64_t, uint64_t>> ranges{{0, UINT64_MAX}};
      for (const auto& l : held) ranges.emplace_back(l.start, l.end);
      ranges.push_back(random_range());
      for (const auto& [start, end] : ranges) {
        Node& n = *master;
        const RecordLock probe{.write = rng_.chance(0.7),
                               .start = start,
                               .end = end,
                               .owner = kProbeOwner,
                               .node = n.member.id.value};
        bool expect = false;
        for (const auto& l : held) expect = expect || conflicts(l, probe);
        const uint64_t token = ++tokens_;
        requests_[token] = Request{n.member, 0};
        ++probes_pending_;
        ++cov_.range_probes;
        if (trace_) trace("{} probe f{} {}", n.member.to_string(), f, show(probe));
        n.lm->range_test(
            range_name(f), probe,
            [this, token, f, probe, expect, held](const Status& s, std::optional<RecordLock> c) {
              if (++requests_[token].completions > 1) fail("range probe completed twice");
              --probes_pending_;
              const auto what = [&] { return fmt::format("probe f{} {}", f, show(probe)); };
              if (!s.is_ok()) return fail(what() + " failed: " + s.to_string());
              if (!c) {
                if (expect) {
                  fail(fmt::format("{}: free, but the live nodes hold {}", what(), show(held)));
                }
                return;
              }
              bool found = false;
              for (const auto& l : held) found = found || same_lock(l, *c);
              if (!found || !conflicts(*c, probe)) {
                fail(fmt::format("{}: in the way {}, but the live nodes hold {}", what(), show(*c),
                                 show(held)));
              }
            });
      }
    }
  }

  // --- quiet phase ---

  void begin_quiet() {
    quiet_ = true;
    quiet_since_ = now_;
    p_drop_ = 0;
    p_dup_ = 0;
    trace("quiet from now on");
    // Range users finish: idle ones decide what they keep; waits are given up a while later
    // (owners waiting for each other would wait for ever: no deadlock detection).
    for (auto& n : nodes_) {
      if (!n.alive) continue;
      for (size_t u = 0; u < n.range_users.size(); ++u) {
        const RangeUser& ru = n.range_users[u];
        if (ru.state == RangeUser::State::kIdle) {
          schedule_range_user(n.member, u, 1 + rng_.below(5));
        }
        if (ru.state == RangeUser::State::kWaiting && ru.wait) {
          schedule_range_cancel(n.member, u, ru.token, 5 + rng_.below(30));
        }
      }
    }
  }

  bool is_quiet() const { return quiet(nullptr); }

  // Whether the system is quiet; if not and `why` is set, what keeps it busy.
  bool quiet(std::string* why) const {
    // `explain` formats the reason only when asked for it: this runs after every event.
    const auto busy = [&](const auto& explain) {
      if (why != nullptr) *why = explain();
      return false;
    };
    if (in_flight_ > 0 || admin_in_flight_ > 0) {
      return busy([] { return std::string("messages or admin calls in flight"); });
    }
    for (const auto& n : nodes_) {
      if (!n.alive) continue;
      if (n.lm->recovering() || n.lm->pending_requests() > 0 || n.lm->unacknowledged() > 0 ||
          n.lm->epoch() != epoch_) {
        return busy([&] {
          return fmt::format("{}: recovering {}, {} pending requests, {} unacknowledged, epoch {}",
                             n.member.to_string(), n.lm->recovering(), n.lm->pending_requests(),
                             n.lm->unacknowledged(), n.lm->epoch());
        });
      }
      for (const User& u : n.users) {
        if (u.state == UserState::kWaiting || u.state == UserState::kReleasing) {
          return busy([&] { return fmt::format("{}: a user waits", n.member.to_string()); });
        }
      }
      if (n.cache_user.state == CacheUser::State::kWaiting || n.flushes > 0) {
        return busy([&] {
          return fmt::format("{}: the cache user waits or a flush runs", n.member.to_string());
        });
      }
      for (size_t u = 0; u < n.range_users.size(); ++u) {
        const RangeUser& ru = n.range_users[u];
        if (ru.state != RangeUser::State::kDone) {
          return busy([&] {
            return fmt::format("{}: range owner {} in state {}{} ({} range requests pending)",
                               n.member.to_string(), range_owner(u), static_cast<int>(ru.state),
                               ru.cancelled ? " (cancelled)" : "", n.lm->pending_range_requests());
          });
        }
      }
    }
    if (probes_pending_ > 0) {
      return busy([&] { return fmt::format("{} probes pending", probes_pending_); });
    }
    return true;
  }

  void final_checks() {
    for (auto& n : nodes_) {
      if (!n.alive) continue;
      cov_.retransmits += n.lm->stats().retransmitted;
      cov_.rejected_messages += n.lm->stats().dropped_malformed;
    }
    check_requests();
    for (auto& n : nodes_) {
      if (!n.alive) continue;
      for (const User& u : n.users) {
        if (u.state == UserState::kIdle) continue;
        if (n.lm->granted_mode(u.id) != u.mode) fail("lock manager and user disagree at the end");
      }
      // Range requests: the users wait for none, so none may be left (an unlock's answer
      // included: nothing is in flight).
      if (n.lm->pending_range_requests() != 0) {
        fail(fmt::format("{}: {} range requests still pending when quiet", n.member.to_string(),
                         n.lm->pending_range_requests()));
      }
      for (size_t f = 0; f < range_files_; ++f) {
        const auto held = n.lm->ranges_held(range_name(f));
        const auto& truth = range_truth_[n.member][f].held();
        if (!same_locks(held, truth)) {
          fail(fmt::format("{} f{} at the end: ranges_held {} but granted and kept {}",
                           n.member.to_string(), f, show(held), show(truth)));
        }
      }
    }
  }

  void check_requests() {
    for (const auto& [token, r] : requests_) {
      const Node* n = node_by_id(r.node.id);
      if (n->alive && n->member == r.node && r.completions != 1) {
        fail(fmt::format("request {} of {} completed {} times", token, r.node.to_string(),
                         r.completions));
      }
    }
  }

  uint64_t seed_;
  Rng rng_;
  bool trace_;
  Coverage& cov_;
  std::optional<std::string> failure_;
  uint64_t now_ = 0;
  uint64_t next_seq_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> queue_;
  std::vector<Node> nodes_;
  uint64_t incarnations_ = 0;
  uint64_t epoch_ = 0;
  size_t resources_ = 1;
  size_t users_per_node_ = 1;
  size_t range_files_ = 1;
  size_t range_users_per_node_ = 1;
  int range_ops_left_ = 0;
  // Every incarnation's ranges, kept after it crashed; the members of every epoch.
  std::map<Member, std::vector<RangeTable>> range_truth_;
  // The lock request each owner has in progress (file, lock), kept after a crash too.
  std::map<Member, std::map<uint64_t, std::pair<size_t, RecordLock>>> range_asking_;
  std::map<uint64_t, std::set<Member>> memberships_;
  int probes_pending_ = 0;
  bool probed_ = false;
  int ops_left_ = 0;
  double p_drop_ = 0;
  double p_dup_ = 0;
  uint64_t max_delay_ = 1;
  std::vector<Truth> truth_;
  std::map<uint64_t, Request> requests_;
  uint64_t tokens_ = 0;
  uint64_t lvb_stamps_ = 0;
  std::set<Member> replayed_ids_;
  int in_flight_ = 0;
  int admin_in_flight_ = 0;
  bool quiet_ = false;
  uint64_t quiet_since_ = 0;
};

void SimTransport::send(NodeId to, std::vector<std::byte> bytes) {
  sim_->on_send(from_, to, std::move(bytes));
}

constexpr uint64_t kShards = 10;
constexpr uint64_t kSeedsPerShard = 1000;

class DlmSim : public ::testing::TestWithParam<uint64_t> {};

TEST_P(DlmSim, RandomSchedulesKeepTheInvariants) {
  const char* one = std::getenv("SHAREDFS_DLM_SIM_SEED");
  const bool trace = std::getenv("SHAREDFS_DLM_SIM_TRACE") != nullptr;
  uint64_t first = GetParam() * kSeedsPerShard;
  uint64_t count = kSeedsPerShard;
  if (one != nullptr) {
    // Every shard replays the seed (a few milliseconds); the failure message's filter
    // names one shard so that a trace is printed once.
    first = std::strtoull(one, nullptr, 10);
    count = 1;
  }
  int failures = 0;
  Coverage cov;
  for (uint64_t seed = first; seed < first + count && failures < 3; ++seed) {
    auto failure = Sim(seed, trace, cov).run();
    if (failure) {
      ++failures;
      ADD_FAILURE() << *failure << "\n  replay: SHAREDFS_DLM_SIM_SEED=" << seed
                    << " [SHAREDFS_DLM_SIM_TRACE=1] dlm_sim_test"
                    << " --gtest_filter='Shards/DlmSim.*/0'";
    }
  }
  fmt::print(
      "seeds {}..{}: {} grants ({} valid / {} invalid value blocks), {} crashes, {} joins, "
      "{} epochs, {} blocking callbacks, {} busy, {} cached re-locks, {} retransmissions, "
      "{} rejected messages, {} cache flushes\n",
      first, first + count - 1, cov.grants, cov.valid_lvb_reads, cov.invalid_lvb_reads, cov.crashes,
      cov.joins, cov.epochs, cov.blocking_callbacks, cov.busy, cov.cached_reuses, cov.retransmits,
      cov.rejected_messages, cov.flushes);
  fmt::print(
      "  ranges: {} grants ({} past a departed node's range, {} past a downgrade in flight, {} "
      "after a cancel), {} EAGAIN, {} EINTR, {} tests ({} in the way), {} unlocks, {} probes\n",
      cov.range_grants, cov.range_grants_past_departed, cov.range_grants_past_downgrade,
      cov.range_cancel_too_late, cov.range_eagain, cov.range_eintr, cov.range_tests,
      cov.range_test_conflicts, cov.range_unlocks, cov.range_probes);
  if (count > 1) {
    EXPECT_GT(cov.crashes, 0u);
    EXPECT_GT(cov.joins, 0u);
    EXPECT_GT(cov.invalid_lvb_reads, 0u);
    EXPECT_GT(cov.blocking_callbacks, 0u);
    EXPECT_GT(cov.retransmits, 0u);
    EXPECT_GT(cov.rejected_messages, 0u);
    EXPECT_GT(cov.flushes, 0u);
    EXPECT_GT(cov.range_grants, 0u);
    EXPECT_GT(cov.range_grants_past_departed, 0u);
    EXPECT_GT(cov.range_eagain, 0u);
    EXPECT_GT(cov.range_eintr, 0u);
    EXPECT_GT(cov.range_test_conflicts, 0u);
    EXPECT_GT(cov.range_probes, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Shards, DlmSim, ::testing::Range<uint64_t>(0, kShards));

}  // namespace
}  // namespace sharedfs::dlm
