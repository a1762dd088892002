// dlm/lock_manager.h — one node's distributed lock manager: the transport-independent state
// machine of docs/dlm.md.
//
// Each node runs one LockManager. It is at once the client of every lock its callers take
// and the master of the resources that rendezvous hashing assigns to it over the live
// members. Requests for resources mastered here are served without any message.
//
// Requests are asynchronous: lock(), convert() and unlock() return at once and call their
// completion later (possibly from inside the same call when the master is local), exactly
// once, also when the request was in flight across a membership change:
//   - ok: granted (lock, up-convert) or done (down-convert, unlock);
//   - kBusy: a try request that could not be granted at once, or an up-convert cancelled to
//     break a conversion deadlock (two holders both converting up). A failed lock() forgets
//     the lock id; a failed convert leaves the lock in its old mode.
// Down-converts and unlocks take effect locally at the call: the caller must stop using
// the higher mode before it calls.
//
// Blocking callbacks: when another request waits on a mode incompatible with one of this
// node's locks, that lock's BlockingCallback runs with the waiting mode. Lock caching
// (LockCache) builds on it.
//
// Range locks (POSIX record locks, dlm/range_table.h) live beside the locks: one table per
// resource at its master, which decides every node's requests by byte range. A node
// reports its owners' ranges to the new masters at each membership change, so a departed
// node's ranges go with it. Range locks are never held back for a replay: they guard no
// disk contents.
//
// Membership comes from outside: set_membership() on every change; journal_replayed() when
// a departed member's journal has been replayed (call both on every node). Between the two,
// resources the departed member may have held in EX are not granted to anyone.
//
// Thread-safety: not thread-safe. The owner serializes all calls (the ZeroMQ driver does
// so on its one thread). Callbacks run on the caller's thread, after the LockManager's own
// state is consistent, and may call the LockManager again.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/types.h"
#include "dlm/lock_service.h"
#include "dlm/membership.h"
#include "dlm/message.h"
#include "dlm/range_table.h"
#include "dlm/resource_name.h"
#include "dlm/transport.h"

namespace sharedfs::dlm {

using LockId = StrongId<struct LockIdTag, uint64_t>;
// Gets the lock's id too: a request mastered locally may complete before lock() returns.
using Completion = std::function<void(LockId id, const Status& status)>;
using BlockingCallback = std::function<void(LockMode waiting)>;

// A range lock request's outcome: ok (granted; for a test, `conflict` is the lock in the
// way or nullopt), or kBusy with errno EAGAIN (a try in the way of `conflict`) or EINTR
// (a wait cancelled).
using RangeCompletion = std::function<void(const Status& status, std::optional<RecordLock> conflict)>;

struct LockFlags {
  // Fail with kBusy instead of waiting when the request cannot be granted at once.
  bool try_lock = false;
};

struct LockManagerOptions {
  Member self;
  std::string cluster_secret;
  Transport* transport = nullptr;  // not owned; outlives the LockManager
  // Unacknowledged messages are sent again when this much time (tick() units) has passed.
  uint64_t retransmit_after = 40;
  // Log dropped malformed or unauthenticated messages (the 1st, 2nd, 4th, 8th, ...), so an
  // operator sees a stray sender or a wrong secret without a flood filling the log.
  bool log_rejected = true;
  // Heartbeats (any epoch, any configured sender) go here instead of the link layer; null:
  // dropped. Runs on the caller's thread inside receive().
  std::function<void(const Message&)> on_heartbeat;
  // Queries and their answers (operator tools, tools/control_socket.h), from any epoch;
  // null: dropped. Runs on the caller's thread inside receive().
  std::function<void(const Message&)> on_query;
};

// What `sharedfs locks` shows of one node's DLM (LockManager::snapshot). Times are in
// tick() units (milliseconds under DlmNode).
struct LockTableSnapshot {
  struct Holder {
    Member owner;
    LockMode mode = LockMode::kNL;
  };
  struct Waiter {
    Member owner;
    LockMode mode = LockMode::kNL;
    bool converting = false;  // holds the lock already and wants a stronger mode
    uint64_t waited = 0;
  };
  // A resource this node masters: who holds it, who waits, who it is held back for.
  struct Mastered {
    ResourceName name;
    std::vector<Holder> granted;
    std::vector<Waiter> waiting;  // converting first, in the order they are served
    std::vector<Member> held_back_for;  // departed members whose journals are not replayed
    size_t ranges_held = 0;             // range tables (posix record locks)
    size_t ranges_waiting = 0;
  };
  // A request of this node in progress.
  struct Pending {
    ResourceName name;
    std::optional<LockMode> granted;
    Op op = Op::kNone;
    LockMode wanted = LockMode::kNL;
    uint64_t waited = 0;
  };
  std::vector<Mastered> mastered;
  std::vector<Pending> pending;
  size_t mastered_total = 0;  // resources and range tables mastered, before filtering
  size_t locks_total = 0;     // this node's locks
  bool truncated = false;     // `limit` left some out
};

struct LockManagerStats {
  uint64_t sent = 0;               // messages handed to the transport, retransmissions included
  uint64_t retransmitted = 0;      // of which retransmissions
  uint64_t local = 0;              // messages to ourselves, never encoded
  uint64_t received = 0;           // messages accepted in order
  uint64_t dropped_malformed = 0;  // failed decoding or authentication
  uint64_t dropped_other_epoch = 0;
  uint64_t dropped_not_member = 0;    // unknown sender or not addressed to us
  uint64_t dropped_out_of_order = 0;  // duplicates and gaps, the link retransmits
  uint64_t dropped_stale = 0;  // replies or blocking callbacks for requests no longer pending
  uint64_t heartbeats = 0;     // handed to LockManagerOptions::on_heartbeat
  uint64_t requests = 0;       // lock, convert and unlock requests this node made as a client
  uint64_t range_requests = 0;  // range lock, test and unlock requests made as a client
};

class LockManager {
 public:
  explicit LockManager(LockManagerOptions options);
  ~LockManager();
  LockManager(const LockManager&) = delete;
  LockManager& operator=(const LockManager&) = delete;

  // --- Client side ---
  // Asks for a new lock on `name` in `mode`. `blocking` (may be empty) runs while this lock
  // blocks another request. Returns the id that names the lock from now on.
  LockId lock(const ResourceName& name, LockMode mode, LockFlags flags, BlockingCallback blocking,
              Completion done);
  // Changes a granted lock's mode. kBusy when a request on this lock is still in progress,
  // kNotFound for an unknown id.
  Status convert(LockId id, LockMode mode, LockFlags flags, Completion done);
  // Gives the lock up. Same errors as convert().
  Status unlock(LockId id, Completion done);

  // The mode this node holds the lock in; nullopt while none is granted yet.
  std::optional<LockMode> granted_mode(LockId id) const;
  // This node's copy of the value block: read at the last grant, or as set by an EX holder.
  Result<LockValueBlock> value_block(LockId id) const;
  // EX holders only: sets the copy that is written back at down-convert or unlock.
  Status set_value_block(LockId id, std::span<const uint8_t> bytes);

  // --- Range locks ---
  // Asks for `lock` (its `node` is set to this node) on the range table `name`. Without
  // `wait`, a conflict fails at once. Returns the request's id, for range_cancel().
  uint64_t range_lock(const ResourceName& name, RecordLock lock, bool wait, RangeCompletion done);
  // A waiting range_lock() gives up: it completes with EINTR, or ok if it was granted first.
  void range_cancel(uint64_t req_id);
  // F_GETLK: completes ok with the lock that would keep `lock` from being granted, if any.
  void range_test(const ResourceName& name, RecordLock lock, RangeCompletion done);
  // Takes [start, end] out of `owner`'s ranges: at once here; `done` (may be empty) runs
  // when the master has done so too, after which another node's request sees it gone.
  void range_unlock(const ResourceName& name, uint64_t owner, uint64_t start, uint64_t end,
                    RangeCompletion done = {});

  // --- Cluster ---
  // A new epoch. `membership.epoch` must grow and the list must contain this node.
  Status set_membership(const Membership& membership);
  // The departed member's journal is replayed; resources held back for it may be granted.
  // kInvalidArgument for a current member: marking it replayed in advance would let its
  // later departure go without hold-back.
  Status journal_replayed(const Member& departed);

  // --- Driver ---
  // A message from the transport. Anything malformed or unauthenticated is counted and
  // dropped.
  void receive(std::span<const std::byte> bytes);
  // Time passes (any monotonic unit; LockManagerOptions::retransmit_after uses the same):
  // sends acknowledgements and retransmits what was not acknowledged.
  void tick(uint64_t now);

  // --- Introspection (tests, `sharedfs locks`) ---
  const Member& self() const { return opts_.self; }
  uint64_t epoch() const { return epoch_; }
  // The members of the current epoch.
  const std::vector<Member>& members() const { return members_; }
  // Waiting for other members' recovery reports of the current epoch.
  bool recovering() const { return recovering_; }
  // Locks with a request in progress.
  size_t pending_requests() const;
  // Messages sent but not acknowledged yet.
  size_t unacknowledged() const;
  size_t lock_count() const { return locks_.size(); }
  // Range requests (locks, tests, unlocks) waiting for their answer.
  size_t pending_range_requests() const { return range_requests_.size(); }
  // This node's owners' ranges on `name`.
  std::vector<RecordLock> ranges_held(const ResourceName& name) const;
  size_t mastered_resources() const { return resources_.size(); }
  // Departed members whose journals are not replayed yet, as this node knows them.
  const std::set<Member>& awaiting_replay() const { return pending_replay_; }
  const LockManagerStats& stats() const { return stats_; }
  // The mastered resources and this node's requests in progress; with `busy_only`, only
  // resources that someone waits for (or that are held back for a replay). At most `limit`
  // resources, the longest waits first.
  LockTableSnapshot snapshot(bool busy_only, size_t limit) const;

 private:
  struct ClientLock;
  struct MasterLock;
  struct Queued;
  struct Resource;
  struct Link;
  struct RangeRequest;
  class Scope;

  // Client.
  void send_request(ClientLock& cl);
  void on_reply(const Message& m);
  void on_blocking(const Message& m);
  // Master.
  void on_request(const Message& m);
  Resource& resource(const ResourceName& name);
  static MasterLock* find_lock(std::vector<MasterLock>& granted, const Member& owner,
                               uint64_t lock_id);
  void try_grant(Resource& res);
  bool grantable(const Resource& res, const Member& owner, uint64_t lock_id, LockMode mode) const;
  void reply(const Member& owner, uint64_t lock_id, uint64_t req_id, ReplyResult result,
             LockMode mode, const LockValueBlock& lvb);
  static void write_back(Resource& res, const LockValueBlock& lvb);
  // Range locks.
  // Stamps the request with this node, sends it (once there is a membership) and keeps it
  // until its answer; returns its id.
  uint64_t start_range_request(RangeRequest rr);
  void send_range_request(uint64_t req_id, const RangeRequest& rr);
  // Runs `done` (if any) with the outcome once the outermost call returns.
  void complete_range(RangeCompletion done, Status status, std::optional<RecordLock> conflict);
  void on_range_request(const Message& m);
  void on_range_reply(const Message& m);
  void range_reply(NodeId to, uint64_t req_id, ReplyResult result, std::optional<RecordLock> lock);
  // Recovery.
  void on_record(const Message& m);
  void on_reports_done(const Message& m);
  void finish_recovery();
  void rebuild(Resource& res, bool had_record, std::vector<Message>& reports);
  bool is_member(const Member& m) const;
  bool replayed(const Member& m) const;
  void drop_replayed(std::set<Member>& members) const;
  // Links.
  void send(NodeId to, Message m);
  void transmit(Link& link, NodeId to, const Message& m);
  void dispatch(const Message& m);
  void defer(Completion done, LockId id, Status status);
  void drain();

  LockManagerOptions opts_;
  MessageCodec codec_;
  uint64_t now_ = 0;

  uint64_t epoch_ = 0;
  std::vector<Member> members_;
  // Departed members whose journals are not known to be replayed.
  std::set<Member> pending_replay_;
  // Newest replayed incarnation per node id.
  std::map<NodeId, uint64_t> replayed_;

  // Client state. Ordered maps keep reports and retransmissions deterministic.
  uint64_t next_lock_id_ = 1;
  uint64_t next_req_id_ = 1;
  std::map<uint64_t, std::unique_ptr<ClientLock>> locks_;

  // Master state.
  std::map<ResourceName, std::unique_ptr<Resource>> resources_;
  bool recovering_ = false;
  std::set<NodeId> reports_done_from_;
  std::map<ResourceName, std::vector<Message>> reports_;
  // Requests that reached us while recovering; served in arrival order afterwards.
  std::vector<Message> held_requests_;

  // Range locks. Client: our owners' ranges (reported at each membership change) and the
  // requests waiting for an answer. Master: the tables of the names mastered here, rebuilt
  // from the reports at each change.
  std::map<ResourceName, RangeTable> ranges_held_;
  std::map<uint64_t, std::unique_ptr<RangeRequest>> range_requests_;
  std::map<ResourceName, RangeTable> range_tables_;

  std::map<NodeId, std::unique_ptr<Link>> links_;
  // Messages to ourselves and completions waiting to run: both run at the end of the
  // outermost public call, so no callback sees the LockManager half-updated.
  std::deque<Message> local_;
  std::deque<std::function<void()>> callbacks_;
  int depth_ = 0;

  LockManagerStats stats_;
};

}  // namespace sharedfs::dlm
