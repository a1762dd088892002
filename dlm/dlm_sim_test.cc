// Deterministic simulation of the DLM (DESIGN.md §6): 3–7 LockManagers in one process over
// a seeded network that delays, reorders, duplicates and drops messages, with nodes that
// crash and join. Random users lock, convert, cache and unlock random resources; the
// invariants of docs/dlm.md are checked after every event:
//   - no resource has incompatible modes granted at once;
//   - a value block read by a PR/EX grant is the last one an EX holder wrote back, or is
//     flagged invalid (and it must be invalid after an EX holder died with it);
//   - nothing is granted on a resource a dead node held in EX before journal_replayed;
//   - every request completes exactly once, and all of them once the system is quiet.
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

struct Node {
  Member member;
  bool alive = false;
  std::unique_ptr<SimTransport> transport;
  std::unique_ptr<LockManager> lm;
  std::unique_ptr<LockCache> cache;  // destroyed before lm
  std::vector<User> users;
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
    ops_left_ = 40 + static_cast<int>(rng_.below(60));
    const double drops[] = {0.0, 0.02, 0.1};
    p_drop_ = drops[rng_.below(3)];
    p_dup_ = rng_.chance(0.5) ? 0.05 : 0.0;
    max_delay_ = 1 + rng_.below(20);
    truth_.resize(resources_);

    Membership first{1, {}};
    for (size_t i = 0; i < nodes; ++i) first.members.push_back(start_node(NodeId(i + 1)));
    epoch_ = 1;
    for (auto& n : nodes_)
      admin(n.member, [this, first](Node& node) {
        expect_ok(node.lm->set_membership(first), "set_membership");
      });
    for (auto& n : nodes_) {
      for (size_t u = 0; u < n.users.size(); ++u) schedule_user(n.member, u, rng_.below(10));
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
          final_checks();
          break;
        }
        if (now_ > quiet_since_ + 20000) fail("the system never became quiet");
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

  // --- quiet phase ---

  void begin_quiet() {
    quiet_ = true;
    quiet_since_ = now_;
    p_drop_ = 0;
    p_dup_ = 0;
    trace("quiet from now on");
  }

  bool is_quiet() const {
    if (in_flight_ > 0 || admin_in_flight_ > 0) return false;
    for (const auto& n : nodes_) {
      if (!n.alive) continue;
      if (n.lm->recovering() || n.lm->pending_requests() > 0 || n.lm->unacknowledged() > 0 ||
          n.lm->epoch() != epoch_) {
        return false;
      }
      for (const User& u : n.users) {
        if (u.state == UserState::kWaiting || u.state == UserState::kReleasing) return false;
      }
      if (n.cache_user.state == CacheUser::State::kWaiting || n.flushes > 0) return false;
    }
    return true;
  }

  void final_checks() {
    for (auto& n : nodes_) {
      if (!n.alive) continue;
      cov_.retransmits += n.lm->stats().retransmitted;
      cov_.rejected_messages += n.lm->stats().dropped_malformed;
    }
    for (const auto& [token, r] : requests_) {
      const Node* n = node_by_id(r.node.id);
      if (n->alive && n->member == r.node && r.completions != 1) {
        fail(fmt::format("request {} of {} completed {} times", token, r.node.to_string(),
                         r.completions));
      }
    }
    for (auto& n : nodes_) {
      if (!n.alive) continue;
      for (const User& u : n.users) {
        if (u.state == UserState::kIdle) continue;
        if (n.lm->granted_mode(u.id) != u.mode) fail("lock manager and user disagree at the end");
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
  if (count > 1) {
    EXPECT_GT(cov.crashes, 0u);
    EXPECT_GT(cov.joins, 0u);
    EXPECT_GT(cov.invalid_lvb_reads, 0u);
    EXPECT_GT(cov.blocking_callbacks, 0u);
    EXPECT_GT(cov.retransmits, 0u);
    EXPECT_GT(cov.rejected_messages, 0u);
    EXPECT_GT(cov.flushes, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Shards, DlmSim, ::testing::Range<uint64_t>(0, kShards));

}  // namespace
}  // namespace sharedfs::dlm
