#include "dlm/lock_manager.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <bit>
#include <utility>

namespace sharedfs::dlm {

// A lock as its owner sees it. At most one request is in progress per lock.
struct LockManager::ClientLock {
  uint64_t id = 0;
  ResourceName name;
  std::optional<LockMode> granted;  // lowered at the call for down-converts and unlocks
  Op op = Op::kNone;                // the request in progress
  uint64_t req_id = 0;
  LockMode target = LockMode::kNL;
  uint8_t flags = 0;
  bool writes_back = false;  // the request carries `lvb` back (leaving EX)
  Completion done;
  LockValueBlock lvb;
  BlockingCallback blocking;
  uint64_t since = 0;  // tick() time the request in progress started
};

// A granted lock as the master sees it.
struct LockManager::MasterLock {
  Member owner;
  uint64_t lock_id = 0;
  LockMode mode = LockMode::kNL;
  // The strongest waiting mode this holder has been told about since its mode last changed:
  // one blocking callback per reason, not one per grant attempt.
  std::optional<LockMode> blocking_sent;
};

struct LockManager::Queued {
  Member owner;
  uint64_t lock_id = 0;
  uint64_t req_id = 0;
  LockMode mode = LockMode::kNL;
  uint8_t flags = 0;
  uint64_t since = 0;  // tick() time it was queued here (after recovery: requeued)
};

// A resource this node masters. While recovering, `raw` entries are records handed over by
// the previous master: value block, holds and the EX holder when it stopped serving; their
// queues are rebuilt from the clients' reports when every member's reports are in.
struct LockManager::Resource {
  ResourceName name;
  LockValueBlock lvb;
  // Departed members that may have changed what this resource covers: nothing is granted
  // until each one's journal is replayed.
  std::set<Member> hold;
  bool raw = false;
  std::optional<Member> frozen_ex;
  std::vector<MasterLock> granted;
  std::deque<Queued> converting;  // up-converts, served before `waiting`
  std::deque<Queued> waiting;     // new locks, first come first served
};

// A range lock, test or unlock request waiting for its answer.
struct LockManager::RangeRequest {
  ResourceName name;
  Op op = Op::kLock;  // kLock, kTest or kUnlock
  RecordLock lock;
  uint8_t flags = 0;
  bool cancelled = false;
  RangeCompletion done;
};

// Reliable, ordered delivery to one peer within one epoch: sequence numbers, cumulative
// acknowledgements, go-back-N retransmission. A new epoch starts fresh links: whatever was
// in flight is replaced by the recovery reports.
struct LockManager::Link {
  struct Out {
    Message m;
    uint64_t sent_at = 0;
  };
  uint64_t next_seq = 1;
  uint64_t recv_next = 1;
  bool ack_due = false;
  std::deque<Out> unacked;
};

// Marks a public entry point: messages to ourselves and callbacks run when the outermost
// one returns, so handlers never nest.
class LockManager::Scope {
 public:
  explicit Scope(LockManager* lm) : lm_(lm) { ++lm_->depth_; }
  ~Scope() {
    if (--lm_->depth_ == 0) lm_->drain();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  LockManager* lm_;
};

LockManager::LockManager(LockManagerOptions options)
    : opts_(std::move(options)), codec_(opts_.cluster_secret) {}

LockManager::~LockManager() = default;

// ---------------------------------------------------------------------------------------
// Client side.

LockId LockManager::lock(const ResourceName& name, LockMode mode, LockFlags flags,
                         BlockingCallback blocking, Completion done) {
  Scope scope(this);
  auto cl = std::make_unique<ClientLock>();
  cl->id = next_lock_id_++;
  cl->name = name;
  cl->op = Op::kLock;
  cl->since = now_;
  cl->req_id = next_req_id_++;
  cl->target = mode;
  cl->flags = flags.try_lock ? kFlagTry : 0;
  cl->done = std::move(done);
  cl->blocking = std::move(blocking);
  ClientLock& ref = *cl;
  locks_.emplace(cl->id, std::move(cl));
  send_request(ref);
  return LockId(ref.id);
}

Status LockManager::convert(LockId id, LockMode mode, LockFlags flags, Completion done) {
  Scope scope(this);
  auto it = locks_.find(id.value);
  if (it == locks_.end()) return make_status(Code::kNotFound, "no dlm lock {}", id.value);
  ClientLock& cl = *it->second;
  if (cl.op != Op::kNone || !cl.granted) {
    return make_status(Code::kBusy, "dlm lock {} has a request in progress", id.value);
  }
  if (mode == *cl.granted) {
    defer(std::move(done), id, Status::ok());
    return Status::ok();
  }
  cl.op = Op::kConvert;
  cl.since = now_;
  cl.req_id = next_req_id_++;
  cl.target = mode;
  cl.flags = flags.try_lock ? kFlagTry : 0;
  cl.done = std::move(done);
  cl.writes_back = false;
  if (mode < *cl.granted) {
    // Down: effective now. Leaving EX writes our copy back as the next version.
    cl.writes_back = *cl.granted == LockMode::kEX;
    if (cl.writes_back) ++cl.lvb.seq;
    cl.granted = mode;
  }
  send_request(cl);
  return Status::ok();
}

Status LockManager::unlock(LockId id, Completion done) {
  Scope scope(this);
  auto it = locks_.find(id.value);
  if (it == locks_.end()) return make_status(Code::kNotFound, "no dlm lock {}", id.value);
  ClientLock& cl = *it->second;
  if (cl.op != Op::kNone || !cl.granted) {
    return make_status(Code::kBusy, "dlm lock {} has a request in progress", id.value);
  }
  cl.op = Op::kUnlock;
  cl.since = now_;
  cl.req_id = next_req_id_++;
  cl.flags = 0;
  cl.done = std::move(done);
  cl.writes_back = *cl.granted == LockMode::kEX;
  if (cl.writes_back) ++cl.lvb.seq;
  cl.target = LockMode::kNL;
  cl.granted.reset();
  send_request(cl);
  return Status::ok();
}

std::optional<LockMode> LockManager::granted_mode(LockId id) const {
  auto it = locks_.find(id.value);
  if (it == locks_.end()) return std::nullopt;
  return it->second->granted;
}

Result<LockValueBlock> LockManager::value_block(LockId id) const {
  auto it = locks_.find(id.value);
  if (it == locks_.end()) return make_status(Code::kNotFound, "no dlm lock {}", id.value);
  return it->second->lvb;
}

Status LockManager::set_value_block(LockId id, std::span<const uint8_t> bytes) {
  auto it = locks_.find(id.value);
  if (it == locks_.end()) return make_status(Code::kNotFound, "no dlm lock {}", id.value);
  ClientLock& cl = *it->second;
  if (cl.granted != LockMode::kEX || cl.op != Op::kNone) {
    return make_status(Code::kInvalidArgument, "value block of dlm lock {} set without EX",
                       id.value);
  }
  if (bytes.size() > kLvbSize) {
    return make_status(Code::kInvalidArgument, "value block of {} bytes (max {})", bytes.size(),
                       kLvbSize);
  }
  cl.lvb.bytes.fill(0);
  std::copy(bytes.begin(), bytes.end(), cl.lvb.bytes.begin());
  cl.lvb.valid = true;
  return Status::ok();
}

void LockManager::send_request(ClientLock& cl) {
  // Without a membership yet the request waits: the first epoch's report carries it.
  if (members_.empty()) return;
  ++stats_.requests;
  Message m;
  m.type = MessageType::kRequest;
  m.lock_id = cl.id;
  m.req_id = cl.req_id;
  m.name = cl.name;
  m.op = cl.op;
  m.flags = cl.flags;
  m.mode = cl.target;
  m.has_lvb = cl.writes_back;
  if (cl.writes_back) m.lvb = cl.lvb;
  send(master_of(cl.name, members_), std::move(m));
}

void LockManager::on_reply(const Message& m) {
  auto it = locks_.find(m.lock_id);
  if (it == locks_.end() || it->second->op == Op::kNone || it->second->req_id != m.req_id) {
    ++stats_.dropped_stale;  // cannot happen within one epoch; kept as a guard
    return;
  }
  ClientLock& cl = *it->second;
  Completion done = std::move(cl.done);
  const LockId id(cl.id);
  const Op op = cl.op;
  cl.op = Op::kNone;
  cl.writes_back = false;
  Status status;
  switch (op) {
    case Op::kLock:
      if (m.result == ReplyResult::kOk) {
        SHAREDFS_CHECK(m.mode == cl.target, "dlm granted another mode than asked");
        cl.granted = m.mode;
        cl.lvb = m.lvb;
      } else {
        // The errno is what a try (F_SETLK-like) caller hands on.
        status = Status(Code::kBusy,
                        fmt::format("dlm lock on {} not granted at once", cl.name.to_string()),
                        EAGAIN);
        locks_.erase(it);
      }
      break;
    case Op::kConvert:
      if (m.result != ReplyResult::kOk) {
        status = m.result == ReplyResult::kDeadlock
                     ? Status(Code::kBusy,
                              fmt::format("dlm convert on {} cancelled: conversion deadlock",
                                          cl.name.to_string()),
                              EDEADLK)
                     : Status(Code::kBusy,
                              fmt::format("dlm convert on {} not granted at once",
                                          cl.name.to_string()),
                              EAGAIN);
      } else if (cl.target > *cl.granted) {
        SHAREDFS_CHECK(m.mode == cl.target, "dlm granted another mode than asked");
        cl.granted = cl.target;
        cl.lvb = m.lvb;
      }
      break;
    case Op::kUnlock:
      locks_.erase(it);
      break;
    case Op::kNone:
    case Op::kTest:
    case Op::kCancel:  // never a lock's request
      break;
  }
  defer(std::move(done), id, std::move(status));
}

void LockManager::on_blocking(const Message& m) {
  auto it = locks_.find(m.lock_id);
  if (it == locks_.end() || !it->second->granted || compatible(*it->second->granted, m.mode) ||
      !it->second->blocking) {
    ++stats_.dropped_stale;  // already given up (the master had not seen it yet)
    return;
  }
  callbacks_.push_back([cb = it->second->blocking, mode = m.mode] { cb(mode); });
}

// ---------------------------------------------------------------------------------------
// Master side.

LockManager::MasterLock* LockManager::find_lock(std::vector<MasterLock>& granted,
                                                const Member& owner, uint64_t lock_id) {
  for (auto& g : granted) {
    if (g.owner == owner && g.lock_id == lock_id) return &g;
  }
  return nullptr;
}

LockManager::Resource& LockManager::resource(const ResourceName& name) {
  auto& slot = resources_[name];
  if (!slot) {
    slot = std::make_unique<Resource>();
    slot->name = name;
    // A resource we have no record of may have been mastered by a member that departed
    // since: it stays held back until every departed member's journal is replayed.
    slot->hold = pending_replay_;
  }
  return *slot;
}

void LockManager::write_back(Resource& res, const LockValueBlock& lvb) {
  // Versions make the write idempotent: a report can carry a write the old master applied.
  if (lvb.seq > res.lvb.seq) res.lvb = lvb;
}

void LockManager::on_request(const Message& m) {
  Resource& res = resource(m.name);
  switch (m.op) {
    case Op::kLock:
      res.waiting.push_back({m.from, m.lock_id, m.req_id, m.mode, m.flags, now_});
      break;
    case Op::kConvert: {
      MasterLock* g = find_lock(res.granted, m.from, m.lock_id);
      if (g == nullptr) {
        ++stats_.dropped_stale;
        return;
      }
      if (m.mode > g->mode) {
        res.converting.push_back({m.from, m.lock_id, m.req_id, m.mode, m.flags, now_});
        break;
      }
      if (m.has_lvb && g->mode == LockMode::kEX) write_back(res, m.lvb);
      if (m.mode != g->mode) g->blocking_sent.reset();
      g->mode = m.mode;
      reply(m.from, m.lock_id, m.req_id, ReplyResult::kOk, m.mode, res.lvb);
      break;
    }
    case Op::kUnlock: {
      MasterLock* g = find_lock(res.granted, m.from, m.lock_id);
      if (g == nullptr) {
        ++stats_.dropped_stale;
        return;
      }
      if (m.has_lvb && g->mode == LockMode::kEX) write_back(res, m.lvb);
      res.granted.erase(res.granted.begin() + (g - res.granted.data()));
      reply(m.from, m.lock_id, m.req_id, ReplyResult::kOk, LockMode::kNL, res.lvb);
      break;
    }
    case Op::kNone:
    case Op::kTest:
    case Op::kCancel:  // range requests only; the codec lets none through here
      ++stats_.dropped_stale;
      return;
  }
  try_grant(res);
}

bool LockManager::grantable(const Resource& res, const Member& owner, uint64_t lock_id,
                            LockMode mode) const {
  for (const auto& g : res.granted) {
    if (g.owner == owner && g.lock_id == lock_id) continue;
    if (!compatible(g.mode, mode)) return false;
  }
  return true;
}

void LockManager::try_grant(Resource& res) {
  const bool held = !res.hold.empty();
  bool changed = !held;
  while (changed) {
    changed = false;
    if (!res.converting.empty()) {
      const Queued q = res.converting.front();
      if (grantable(res, q.owner, q.lock_id, q.mode)) {
        res.converting.pop_front();
        MasterLock* g = find_lock(res.granted, q.owner, q.lock_id);
        SHAREDFS_CHECK(g != nullptr, "dlm convert queued for a lock not granted");
        g->mode = q.mode;
        g->blocking_sent.reset();
        reply(q.owner, q.lock_id, q.req_id, ReplyResult::kOk, q.mode, res.lvb);
        changed = true;
        continue;
      }
      // A try at the head is refused now, so that what queues behind it is looked at: after
      // a rebuild the queues are in report order, not arrival order.
      if (q.flags & kFlagTry) {
        res.converting.pop_front();
        MasterLock* g = find_lock(res.granted, q.owner, q.lock_id);
        reply(q.owner, q.lock_id, q.req_id, ReplyResult::kNotGranted, g ? g->mode : LockMode::kNL,
              res.lvb);
        changed = true;
        continue;
      }
      // Conversion deadlock: a holder in the head's way that itself waits to convert up
      // never lets go. Cancel those converts; their locks keep their modes.
      for (auto it = res.converting.begin() + 1; it != res.converting.end();) {
        MasterLock* g = find_lock(res.granted, it->owner, it->lock_id);
        SHAREDFS_CHECK(g != nullptr, "dlm convert queued for a lock not granted");
        if (!compatible(g->mode, q.mode)) {
          reply(it->owner, it->lock_id, it->req_id, ReplyResult::kDeadlock, g->mode, res.lvb);
          it = res.converting.erase(it);
          changed = true;
        } else {
          ++it;
        }
      }
    } else if (!res.waiting.empty()) {
      // Strict FIFO: a new lock is granted only when nothing older waits, so a stream of PR
      // requests cannot starve a waiting EX.
      const Queued q = res.waiting.front();
      if (grantable(res, q.owner, q.lock_id, q.mode)) {
        res.waiting.pop_front();
        res.granted.push_back({q.owner, q.lock_id, q.mode, std::nullopt});
        reply(q.owner, q.lock_id, q.req_id, ReplyResult::kOk, q.mode, res.lvb);
        changed = true;
      } else if (q.flags & kFlagTry) {
        res.waiting.pop_front();
        reply(q.owner, q.lock_id, q.req_id, ReplyResult::kNotGranted, q.mode, res.lvb);
        changed = true;
      }
    }
  }
  // Try requests still queued could not be granted at once.
  for (auto it = res.converting.begin(); it != res.converting.end();) {
    if (it->flags & kFlagTry) {
      MasterLock* g = find_lock(res.granted, it->owner, it->lock_id);
      reply(it->owner, it->lock_id, it->req_id, ReplyResult::kNotGranted,
            g ? g->mode : LockMode::kNL, res.lvb);
      it = res.converting.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = res.waiting.begin(); it != res.waiting.end();) {
    if (it->flags & kFlagTry) {
      reply(it->owner, it->lock_id, it->req_id, ReplyResult::kNotGranted, it->mode, res.lvb);
      it = res.waiting.erase(it);
    } else {
      ++it;
    }
  }
  if (held) return;  // nobody who could let go holds it: no blocking callbacks
  auto notify = [&](const Queued& q) {
    for (auto& g : res.granted) {
      if (g.owner == q.owner && g.lock_id == q.lock_id) continue;
      if (compatible(g.mode, q.mode)) continue;
      if (g.blocking_sent && *g.blocking_sent >= q.mode) continue;
      g.blocking_sent = q.mode;
      if (!is_member(g.owner)) continue;
      Message b;
      b.type = MessageType::kBlocking;
      b.lock_id = g.lock_id;
      b.mode = q.mode;
      send(g.owner.id, std::move(b));
    }
  };
  for (const auto& q : res.converting) notify(q);
  for (const auto& q : res.waiting) notify(q);
}

void LockManager::reply(const Member& owner, uint64_t lock_id, uint64_t req_id, ReplyResult result,
                        LockMode mode, const LockValueBlock& lvb) {
  // A departed owner's locks are dropped at the next epoch; its restarted incarnation
  // reuses lock ids and must not take a reply meant for the old one.
  if (!is_member(owner)) return;
  Message m;
  m.type = MessageType::kReply;
  m.lock_id = lock_id;
  m.req_id = req_id;
  m.result = result;
  m.mode = mode;
  m.lvb = lvb;
  send(owner.id, std::move(m));
}

// ---------------------------------------------------------------------------------------
// Range locks (docs/dlm.md, "Range locks").

uint64_t LockManager::range_lock(const ResourceName& name, RecordLock lock, bool wait,
                                 RangeCompletion done) {
  Scope scope(this);
  return start_range_request(RangeRequest{.name = name, .op = Op::kLock, .lock = lock,
                                          .flags = static_cast<uint8_t>(wait ? 0 : kFlagTry),
                                          .done = std::move(done)});
}

void LockManager::range_cancel(uint64_t req_id) {
  Scope scope(this);
  auto it = range_requests_.find(req_id);
  if (it == range_requests_.end() || it->second->op != Op::kLock || it->second->cancelled) return;
  it->second->cancelled = true;
  if (members_.empty()) return;
  Message m;
  m.type = MessageType::kRangeRequest;
  m.req_id = req_id;
  m.name = it->second->name;
  m.op = Op::kCancel;
  send(master_of(m.name, members_), std::move(m));
}

void LockManager::range_test(const ResourceName& name, RecordLock lock, RangeCompletion done) {
  Scope scope(this);
  start_range_request(RangeRequest{.name = name, .op = Op::kTest, .lock = lock, .done = std::move(done)});
}

void LockManager::range_unlock(const ResourceName& name, uint64_t owner, uint64_t start,
                               uint64_t end, RangeCompletion done) {
  Scope scope(this);
  auto it = ranges_held_.find(name);
  if (it == ranges_held_.end()) {
    // Nothing held, so the master has nothing of ours either (a grant in flight is put
    // here when it arrives).
    complete_range(std::move(done), Status::ok(), std::nullopt);
    return;
  }
  it->second.cut(opts_.self.id.value, owner, start, end);
  if (it->second.empty()) ranges_held_.erase(it);
  start_range_request(RangeRequest{.name = name, .op = Op::kUnlock,
                                   .lock = RecordLock{.start = start, .end = end, .owner = owner},
                                   .done = std::move(done)});
}

uint64_t LockManager::start_range_request(RangeRequest rr) {
  rr.lock.node = opts_.self.id.value;
  const uint64_t req_id = next_req_id_++;
  send_range_request(req_id, rr);
  range_requests_.emplace(req_id, std::make_unique<RangeRequest>(std::move(rr)));
  return req_id;
}

void LockManager::complete_range(RangeCompletion done, Status status, std::optional<RecordLock> conflict) {
  if (!done) return;
  callbacks_.push_back([done = std::move(done), status = std::move(status), conflict] { done(status, conflict); });
}

std::vector<RecordLock> LockManager::ranges_held(const ResourceName& name) const {
  auto it = ranges_held_.find(name);
  return it == ranges_held_.end() ? std::vector<RecordLock>{} : it->second.held();
}

void LockManager::send_range_request(uint64_t req_id, const RangeRequest& rr) {
  // Without a membership yet the request waits: set_membership() sends it.
  if (members_.empty()) return;
  ++stats_.range_requests;
  Message m;
  m.type = MessageType::kRangeRequest;
  m.req_id = req_id;
  m.name = rr.name;
  m.op = rr.op;
  m.flags = rr.flags;
  m.range = rr.lock;
  send(master_of(rr.name, members_), std::move(m));
}

void LockManager::range_reply(NodeId to, uint64_t req_id, ReplyResult result,
                              std::optional<RecordLock> lock) {
  Message m;
  m.type = MessageType::kRangeReply;
  m.req_id = req_id;
  m.result = result;
  m.range = lock;
  send(to, std::move(m));
}

void LockManager::on_range_request(const Message& m) {
  const uint32_t from = m.from.id.value;
  RangeTable& table = range_tables_[m.name];
  std::optional<RecordLock> lock = m.range;
  if (lock) lock->node = from;  // the link says who sent it, whatever the body claims
  switch (m.op) {
    case Op::kLock:
      if (auto c = table.conflict(*lock)) {
        if (m.flags & kFlagTry) {
          range_reply(m.from.id, m.req_id, ReplyResult::kNotGranted, c);
        } else {
          table.enqueue({*lock, m.req_id});
        }
      } else {
        table.put(*lock);
        range_reply(m.from.id, m.req_id, ReplyResult::kOk, std::nullopt);
      }
      break;
    case Op::kTest:
      range_reply(m.from.id, m.req_id, ReplyResult::kOk, table.conflict(*lock));
      break;
    case Op::kCancel:
      // Too late when it was granted already: that reply is on its way.
      if (table.cancel(from, m.req_id)) {
        range_reply(m.from.id, m.req_id, ReplyResult::kNotGranted, std::nullopt);
      }
      break;
    case Op::kUnlock:
      table.cut(from, lock->owner, lock->start, lock->end);
      range_reply(m.from.id, m.req_id, ReplyResult::kOk, std::nullopt);
      for (const auto& w : table.grant_waiters()) {
        range_reply(NodeId(w.lock.node), w.tag, ReplyResult::kOk, std::nullopt);
      }
      break;
    default:
      ++stats_.dropped_stale;  // the codec lets no other op through
      break;
  }
  if (table.empty()) range_tables_.erase(m.name);
}

void LockManager::on_range_reply(const Message& m) {
  auto it = range_requests_.find(m.req_id);
  if (it == range_requests_.end()) {
    ++stats_.dropped_stale;
    return;
  }
  std::unique_ptr<RangeRequest> rr = std::move(it->second);
  range_requests_.erase(it);
  Status status;
  if (rr->op == Op::kLock && m.result != ReplyResult::kOk) {
    status = rr->cancelled && !m.range ? range_wait_interrupted(rr->name)
                                       : range_lock_refused(rr->name, m.range);
  } else if (rr->op == Op::kLock) {
    ranges_held_[rr->name].put(rr->lock);
  }
  complete_range(std::move(rr->done), std::move(status), m.range);
}

// ---------------------------------------------------------------------------------------
// Membership and recovery (docs/dlm.md, "Recovery").

bool LockManager::is_member(const Member& m) const {
  return std::find(members_.begin(), members_.end(), m) != members_.end();
}

bool LockManager::replayed(const Member& m) const {
  auto it = replayed_.find(m.id);
  return it != replayed_.end() && it->second >= m.incarnation;
}

void LockManager::drop_replayed(std::set<Member>& members) const {
  std::erase_if(members, [&](const Member& m) { return replayed(m); });
}

Status LockManager::set_membership(const Membership& membership) {
  Scope scope(this);
  if (membership.epoch <= epoch_) {
    return make_status(Code::kInvalidArgument, "dlm epoch {} after epoch {}", membership.epoch,
                       epoch_);
  }
  if (std::find(membership.members.begin(), membership.members.end(), opts_.self) ==
      membership.members.end()) {
    return make_status(Code::kInvalidArgument, "dlm node {} is not a member of epoch {}",
                       opts_.self.to_string(), membership.epoch);
  }
  std::vector<Member> next = membership.members;
  std::sort(next.begin(), next.end());
  for (const Member& m : members_) {
    if (!std::binary_search(next.begin(), next.end(), m) && !replayed(m)) {
      pending_replay_.insert(m);
    }
  }
  epoch_ = membership.epoch;
  members_ = std::move(next);
  recovering_ = true;
  reports_done_from_.clear();
  reports_.clear();
  held_requests_.clear();
  local_.clear();
  links_.clear();
  for (const Member& m : members_) {
    if (m.id != opts_.self.id) links_.emplace(m.id, std::make_unique<Link>());
  }

  // 1. Hand every resource record to its master of the new epoch (often ourselves). The
  //    record moves: exactly one node has it, or it is lost in flight and rebuilt.
  auto old = std::move(resources_);
  resources_.clear();
  for (auto& [name, res] : old) {
    Message r;
    r.type = MessageType::kRecord;
    r.name = name;
    r.lvb = res->lvb;
    if (res->raw) {
      r.ex_holder = res->frozen_ex;
    } else {
      for (const auto& g : res->granted) {
        if (g.mode == LockMode::kEX) r.ex_holder = g.owner;
      }
    }
    r.members.assign(res->hold.begin(), res->hold.end());
    send(master_of(name, members_), std::move(r));
  }
  // 2. Report every lock and the request in progress on it.
  for (auto& [id, cl] : locks_) {
    Message r;
    r.type = MessageType::kReport;
    r.lock_id = id;
    r.req_id = cl->req_id;
    r.name = cl->name;
    r.op = cl->op;
    r.flags = cl->flags;
    r.mode = cl->target;
    r.granted = cl->granted;
    r.has_lvb = cl->writes_back;
    r.lvb = cl->lvb;
    send(master_of(cl->name, members_), std::move(r));
  }
  // 3. Range locks: every master's tables are rebuilt from the holders' reports, so the
  //    ranges of departed nodes are gone; requests in flight are asked again.
  range_tables_.clear();
  for (const auto& [name, table] : ranges_held_) {
    for (const RecordLock& held : table.held()) {
      Message r;
      r.type = MessageType::kRangeReport;
      r.name = name;
      r.range = held;
      send(master_of(name, members_), std::move(r));
    }
  }
  for (auto it = range_requests_.begin(); it != range_requests_.end();) {
    RangeRequest& rr = *it->second;
    if (rr.op == Op::kUnlock || rr.cancelled) {
      // An unlock is done: the new master's table is built from our reports, which no
      // longer have it. A cancelled wait died with the old tables: nothing left to cancel.
      complete_range(std::move(rr.done),
                     rr.op == Op::kUnlock ? Status::ok() : range_wait_interrupted(rr.name),
                     std::nullopt);
      it = range_requests_.erase(it);
      continue;
    }
    send_range_request(it->first, rr);
    ++it;
  }
  // 4. Tell everybody we are done; links are ordered, so this arrives after the above.
  Message done;
  done.type = MessageType::kReportsDone;
  done.members.assign(pending_replay_.begin(), pending_replay_.end());
  for (const auto& [id, inc] : replayed_) done.replayed.push_back(Member{id, inc});
  for (const Member& m : members_) send(m.id, done);
  return Status::ok();
}

void LockManager::on_record(const Message& m) {
  if (!recovering_) {
    ++stats_.dropped_stale;
    return;
  }
  auto& slot = resources_[m.name];
  if (!slot) {
    slot = std::make_unique<Resource>();
    slot->name = m.name;
    slot->lvb = m.lvb;
    slot->raw = true;
    slot->frozen_ex = m.ex_holder;
    slot->hold.insert(m.members.begin(), m.members.end());
    return;
  }
  // Records move, so a second one cannot happen; merge the safe way if it does.
  if (m.lvb.seq > slot->lvb.seq) slot->lvb = m.lvb;
  slot->hold.insert(m.members.begin(), m.members.end());
  if (!slot->frozen_ex) slot->frozen_ex = m.ex_holder;
}

void LockManager::on_reports_done(const Message& m) {
  if (!recovering_) {
    ++stats_.dropped_stale;
    return;
  }
  for (const Member& r : m.replayed) {
    auto& inc = replayed_[r.id];
    inc = std::max(inc, r.incarnation);
  }
  for (const Member& p : m.members) {
    if (!is_member(p)) pending_replay_.insert(p);
  }
  drop_replayed(pending_replay_);
  reports_done_from_.insert(m.from.id);
  for (const Member& member : members_) {
    if (!reports_done_from_.contains(member.id)) return;
  }
  finish_recovery();
}

void LockManager::finish_recovery() {
  recovering_ = false;
  std::vector<ResourceName> names;
  for (const auto& [name, res] : resources_) names.push_back(name);
  for (const auto& [name, reports] : reports_) {
    if (!resources_.contains(name)) names.push_back(name);
  }
  for (const ResourceName& name : names) {
    auto& slot = resources_[name];
    const bool had_record = slot != nullptr;
    if (!had_record) {
      slot = std::make_unique<Resource>();
      slot->name = name;
    }
    rebuild(*slot, had_record, reports_[name]);
  }
  reports_.clear();
  std::vector<Message> held = std::move(held_requests_);
  held_requests_.clear();
  for (const Message& m : held) dispatch(m);
}

void LockManager::rebuild(Resource& res, bool had_record, std::vector<Message>& reports) {
  std::sort(reports.begin(), reports.end(), [](const Message& a, const Message& b) {
    return std::tie(a.from, a.lock_id) < std::tie(b.from, b.lock_id);
  });
  if (had_record) {
    // The record is current as of its old master's last act. An EX holder that departed
    // may have changed what the resource covers without writing the value block back.
    if (res.frozen_ex && !is_member(*res.frozen_ex)) {
      res.lvb.valid = false;
      ++res.lvb.seq;
      if (!replayed(*res.frozen_ex)) res.hold.insert(*res.frozen_ex);
    }
  } else {
    // The record died with its master (or in flight). A surviving PR or EX holder proves
    // nobody else held EX, and its copy is the last value written. Without one, any
    // departed member may have held EX: invalid value block, held back until replayed.
    bool proof = false;
    bool have_copy = false;
    uint64_t max_seq = 0;
    LockValueBlock best;
    for (const Message& r : reports) {
      max_seq = std::max(max_seq, r.lvb.seq);
      const bool holder = r.granted && *r.granted >= LockMode::kPR;
      proof = proof || holder;
      if ((holder || r.has_lvb) && (!have_copy || r.lvb.seq > best.seq)) {
        best = r.lvb;
        have_copy = true;
      }
    }
    if (proof) {
      res.lvb = best;
      res.hold.clear();
    } else {
      res.lvb = LockValueBlock{};
      res.lvb.seq = max_seq + 1;
      res.hold = pending_replay_;
    }
  }
  drop_replayed(res.hold);
  res.raw = false;
  res.frozen_ex.reset();
  res.granted.clear();
  res.converting.clear();
  res.waiting.clear();
  for (const Message& r : reports) {
    if (r.granted) res.granted.push_back({r.from, r.lock_id, *r.granted, std::nullopt});
  }
  for (const Message& r : reports) {
    switch (r.op) {
      case Op::kNone:
        break;
      case Op::kLock:
        res.waiting.push_back({r.from, r.lock_id, r.req_id, r.mode, r.flags, now_});
        break;
      case Op::kConvert:
        if (r.granted && r.mode > *r.granted) {
          res.converting.push_back({r.from, r.lock_id, r.req_id, r.mode, r.flags, now_});
          break;
        }
        // A down-convert: the client already holds the lower mode.
        if (r.has_lvb) write_back(res, r.lvb);
        reply(r.from, r.lock_id, r.req_id, ReplyResult::kOk, r.mode, res.lvb);
        break;
      case Op::kUnlock:
        if (r.has_lvb) write_back(res, r.lvb);
        reply(r.from, r.lock_id, r.req_id, ReplyResult::kOk, LockMode::kNL, res.lvb);
        break;
      case Op::kTest:
      case Op::kCancel:  // range requests only
        break;
    }
  }
  try_grant(res);
}

Status LockManager::journal_replayed(const Member& departed) {
  Scope scope(this);
  if (is_member(departed)) {
    return make_status(Code::kInvalidArgument, "dlm: {} is a member of epoch {}, not departed",
                       departed.to_string(), epoch_);
  }
  auto& inc = replayed_[departed.id];
  inc = std::max(inc, departed.incarnation);
  drop_replayed(pending_replay_);
  for (auto& [name, res] : resources_) {
    if (res->hold.empty()) continue;
    drop_replayed(res->hold);
    if (res->hold.empty() && !recovering_) try_grant(*res);
  }
  return Status::ok();
}

// ---------------------------------------------------------------------------------------
// Links and dispatch.

void LockManager::send(NodeId to, Message m) {
  m.epoch = epoch_;
  m.from = opts_.self;
  m.to = to;
  if (to == opts_.self.id) {
    ++stats_.local;
    local_.push_back(std::move(m));
    return;
  }
  auto it = links_.find(to);
  if (it == links_.end()) return;  // not a member of this epoch
  Link& link = *it->second;
  m.seq = link.next_seq++;
  link.unacked.push_back({std::move(m), now_});
  transmit(link, to, link.unacked.back().m);
}

void LockManager::transmit(Link& link, NodeId to, const Message& m) {
  Message out = m;
  out.ack = link.recv_next - 1;
  link.ack_due = false;
  ++stats_.sent;
  if (opts_.transport != nullptr) opts_.transport->send(to, codec_.encode(out));
}

void LockManager::receive(std::span<const std::byte> bytes) {
  Scope scope(this);
  auto decoded = codec_.decode(bytes);
  if (!decoded.is_ok()) {
    ++stats_.dropped_malformed;
    if (opts_.log_rejected && std::has_single_bit(stats_.dropped_malformed)) {
      spdlog::warn("dlm node {}: dropped a message ({} so far): {}", opts_.self.to_string(),
                   stats_.dropped_malformed, decoded.status().to_string());
    }
    return;
  }
  const Message& m = *decoded;
  if (m.type == MessageType::kQuery || m.type == MessageType::kQueryReply) {
    if (opts_.on_query) opts_.on_query(m);  // operator tools: no epoch, no link
    return;
  }
  if (m.type == MessageType::kHeartbeat) {
    // Membership travels outside the epochs it decides.
    if (opts_.on_heartbeat) {
      ++stats_.heartbeats;
      opts_.on_heartbeat(m);
    }
    return;
  }
  if (m.epoch != epoch_) {
    // Older: replaced by recovery reports. Newer: we have not been told yet; the sender
    // retransmits until we have.
    ++stats_.dropped_other_epoch;
    return;
  }
  if (m.to != opts_.self.id || m.from.id == opts_.self.id || !is_member(m.from)) {
    ++stats_.dropped_not_member;
    return;
  }
  Link& link = *links_.at(m.from.id);
  while (!link.unacked.empty() && link.unacked.front().m.seq <= m.ack) link.unacked.pop_front();
  if (m.type == MessageType::kAck) return;
  link.ack_due = true;
  if (m.seq != link.recv_next) {
    ++stats_.dropped_out_of_order;
    return;
  }
  ++link.recv_next;
  ++stats_.received;
  dispatch(m);
}

void LockManager::tick(uint64_t now) {
  Scope scope(this);
  now_ = now;
  for (auto& [to, link] : links_) {
    if (!link->unacked.empty() && now - link->unacked.front().sent_at >= opts_.retransmit_after) {
      for (auto& out : link->unacked) {
        out.sent_at = now;
        ++stats_.retransmitted;
        transmit(*link, to, out.m);
      }
    }
    if (link->ack_due) {
      Message ack;
      ack.type = MessageType::kAck;
      ack.epoch = epoch_;
      ack.from = opts_.self;
      ack.to = to;
      transmit(*link, to, ack);
    }
  }
}

void LockManager::dispatch(const Message& m) {
  switch (m.type) {
    case MessageType::kAck:
      break;
    case MessageType::kRequest:
    case MessageType::kRangeRequest:
      // Served once the tables are rebuilt (a range request needs the reports in too).
      if (recovering_) {
        held_requests_.push_back(m);
      } else if (m.type == MessageType::kRequest) {
        on_request(m);
      } else {
        on_range_request(m);
      }
      break;
    case MessageType::kRangeReply:
      on_range_reply(m);
      break;
    case MessageType::kRangeReport:
      if (!recovering_) {
        ++stats_.dropped_stale;
        break;
      }
      if (m.range) {
        RecordLock held = *m.range;
        held.node = m.from.id.value;
        range_tables_[m.name].put(held);
      }
      break;
    case MessageType::kReply:
      on_reply(m);
      break;
    case MessageType::kBlocking:
      on_blocking(m);
      break;
    case MessageType::kReport:
      if (!recovering_) {
        ++stats_.dropped_stale;
        break;
      }
      reports_[m.name].push_back(m);
      break;
    case MessageType::kRecord:
      on_record(m);
      break;
    case MessageType::kReportsDone:
      on_reports_done(m);
      break;
    case MessageType::kHeartbeat:
    case MessageType::kQuery:
    case MessageType::kQueryReply:
      break;  // handled in receive()
  }
}

void LockManager::defer(Completion done, LockId id, Status status) {
  if (!done) return;
  callbacks_.push_back(
      [done = std::move(done), id, status = std::move(status)] { done(id, status); });
}

void LockManager::drain() {
  ++depth_;
  while (!local_.empty() || !callbacks_.empty()) {
    if (!local_.empty()) {
      Message m = std::move(local_.front());
      local_.pop_front();
      if (m.epoch == epoch_) {
        ++stats_.received;
        dispatch(m);
      }
      continue;
    }
    auto cb = std::move(callbacks_.front());
    callbacks_.pop_front();
    cb();
  }
  --depth_;
}

size_t LockManager::pending_requests() const {
  size_t n = 0;
  for (const auto& [id, cl] : locks_) n += cl->op != Op::kNone ? 1 : 0;
  return n;
}

LockTableSnapshot LockManager::snapshot(bool busy_only, size_t limit) const {
  LockTableSnapshot out;
  out.locks_total = locks_.size();
  out.mastered_total = resources_.size() + range_tables_.size();
  auto waited = [this](uint64_t since) { return now_ > since ? now_ - since : 0; };
  std::vector<std::pair<uint64_t, LockTableSnapshot::Mastered>> found;
  for (const auto& [name, res] : resources_) {
    const bool busy = !res->converting.empty() || !res->waiting.empty() || !res->hold.empty();
    if (busy_only && !busy) continue;
    LockTableSnapshot::Mastered m;
    m.name = name;
    for (const MasterLock& g : res->granted) m.granted.push_back({g.owner, g.mode});
    uint64_t longest = 0;
    for (const auto* queue : {&res->converting, &res->waiting}) {
      for (const Queued& q : *queue) {
        m.waiting.push_back({q.owner, q.mode, queue == &res->converting, waited(q.since)});
        longest = std::max(longest, waited(q.since));
      }
    }
    m.held_back_for.assign(res->hold.begin(), res->hold.end());
    found.emplace_back(longest, std::move(m));
  }
  for (const auto& [name, table] : range_tables_) {
    if (busy_only && table.waiting() == 0) continue;
    LockTableSnapshot::Mastered m;
    m.name = name;
    m.ranges_held = table.held().size();
    m.ranges_waiting = table.waiting();
    found.emplace_back(0, std::move(m));
  }
  // The longest waits first: what an operator looks for.
  std::stable_sort(found.begin(), found.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  if (found.size() > limit) {
    found.resize(limit);
    out.truncated = true;
  }
  for (auto& [longest, m] : found) out.mastered.push_back(std::move(m));
  for (const auto& [id, cl] : locks_) {
    if (cl->op == Op::kNone) continue;
    if (out.pending.size() >= limit) {
      out.truncated = true;
      break;
    }
    out.pending.push_back({cl->name, cl->granted, cl->op, cl->target, waited(cl->since)});
  }
  return out;
}

size_t LockManager::unacknowledged() const {
  size_t n = 0;
  for (const auto& [id, link] : links_) n += link->unacked.size();
  return n;
}

}  // namespace sharedfs::dlm
