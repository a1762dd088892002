#include "dlm/membership_agent.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace sharedfs::dlm {

namespace {
// "1,2,3": the node ids of a view, as every membership log line writes them.
std::string list(const std::vector<Member>& ms) {
  std::string s;
  for (const Member& m : ms) s += (s.empty() ? "" : ",") + std::to_string(m.id.value);
  return s;
}
const Member* find_id(const std::vector<Member>& ms, NodeId id) {
  auto it = std::find_if(ms.begin(), ms.end(), [&](const Member& m) { return m.id == id; });
  return it == ms.end() ? nullptr : &*it;
}
// Whether `v` says incarnation `inc` of node `id` (or a newer one) is clean.
bool clean_in(const View& v, NodeId id, uint64_t inc) {
  return std::any_of(v.clean.begin(), v.clean.end(),
                     [&](const Member& c) { return c.id == id && c.incarnation >= inc; });
}
}  // namespace

std::string MembershipAgent::cluster() const {
  return opts_.cluster_name.empty() ? "the cluster" : "cluster \"" + opts_.cluster_name + "\"";
}

uint64_t MembershipAgent::suspect_after_ms() const {
  if (opts_.suspect_after_ms > 0) return opts_.suspect_after_ms;
  return std::max(2 * opts_.heartbeat_interval_ms, opts_.dead_after_ms / 3);
}

MembershipAgent::MembershipAgent(MembershipAgentOptions options, Send send, Install install)
    : opts_(std::move(options)), send_(std::move(send)), install_(std::move(install)) {
  SHAREDFS_CHECK(configured(opts_.self.id), "membership: this node is not in the configuration");
  SHAREDFS_CHECK(opts_.heartbeat_interval_ms > 0 && opts_.dead_after_ms > opts_.heartbeat_interval_ms,
                 "membership: the dead-node timeout must exceed the heartbeat interval");
}

bool MembershipAgent::configured(NodeId id) const {
  return std::find(opts_.configured.begin(), opts_.configured.end(), id) != opts_.configured.end();
}

bool MembershipAgent::is_alive(const Peer& p, uint64_t now) const {
  if (auto d = dead_.find(p.member.id); d != dead_.end() && p.member.incarnation <= d->second) {
    return false;
  }
  return !p.leaving && now - p.last_heard < opts_.dead_after_ms;
}

std::vector<Member> MembershipAgent::presumed_alive(uint64_t now) const {
  std::vector<Member> out;
  if (!joined_ || now - view_since_ >= opts_.dead_after_ms) return out;
  for (const Member& m : view_.membership.members) {
    if (m.id == opts_.self.id) continue;
    // Not heard at all, or only an older incarnation of it (a node restarted and taken into
    // the view by another member before its heartbeats reached us).
    auto p = peers_.find(m.id);
    if (p == peers_.end() || p->second.member.incarnation < m.incarnation) out.push_back(m);
  }
  return out;
}

void MembershipAgent::start(uint64_t now) {
  started_ = now;
  running_ = true;
  // Our mount replayed our own journal before starting us: older incarnations are clean.
  if (opts_.self.incarnation > 0) clean_[opts_.self.id] = opts_.self.incarnation - 1;
  heartbeat_all();
  last_sent_ = now;
  maybe_coordinate(now);
}

void MembershipAgent::heartbeat_all() {
  Message m;
  m.type = MessageType::kHeartbeat;
  m.epoch = view_.membership.epoch;
  m.from = opts_.self;
  m.flags = leaving_ ? kFlagLeaving : 0;
  m.members = view_.membership.members;
  m.replayed = view_.clean;
  for (NodeId id : opts_.configured) {
    if (id == opts_.self.id) continue;
    m.to = id;
    send_(m);
  }
}

void MembershipAgent::on_heartbeat(const Message& m, uint64_t now) {
  if (!running_ || m.to != opts_.self.id || m.from.id == opts_.self.id || !configured(m.from.id)) {
    return;
  }
  if (auto d = dead_.find(m.from.id); d != dead_.end() && m.from.incarnation <= d->second) {
    return;  // declared dead and fenced: only a restart (a new incarnation) comes back
  }
  auto [it, fresh] = peers_.try_emplace(m.from.id);
  Peer& p = it->second;
  if (!fresh && p.member.incarnation > m.from.incarnation) return;  // an older incarnation
  if (!fresh && p.member.incarnation < m.from.incarnation) {
    // Restarted: its mount replayed its own journal before its first heartbeat, so every
    // older incarnation is clean.
    // Not a state change yet: the view that takes the new incarnation in logs "joined".
    spdlog::debug("membership: node {}: heard a new incarnation of node {} (restarted)",
                  opts_.self.id.value, m.from.id.value);
    auto& c = clean_[m.from.id];
    c = std::max(c, m.from.incarnation - 1);
  }
  if (fresh) {
    spdlog::debug("membership: node {}: heard node {}", opts_.self.id.value, m.from.id.value);
    if (m.from.incarnation > 0) {
      auto& c = clean_[m.from.id];
      c = std::max(c, m.from.incarnation - 1);
    }
  }
  const bool was_leaving = p.leaving;
  if (p.suspect && p.member == m.from) {
    spdlog::info("node {} is heard again after {} ms: no longer suspect", m.from.id.value,
                 now - p.last_heard);
  }
  p.suspect = false;
  p.member = m.from;
  p.last_heard = now;
  p.leaving = (m.flags & kFlagLeaving) != 0;
  if (p.leaving && !was_leaving) {
    // The view without it says "left" (one line per event).
    spdlog::debug("membership: node {} announced that it leaves", m.from.id.value);
    auto& c = clean_[m.from.id];
    c = std::max(c, m.from.incarnation);
  }
  p.view.membership.epoch = m.epoch;
  p.view.membership.members = m.members;
  p.view.clean = m.replayed;
  for (const Member& c : m.replayed) {
    auto& mine = clean_[c.id];
    mine = std::max(mine, c.incarnation);
  }

  const auto& members = p.view.membership.members;
  const bool includes_me = std::find(members.begin(), members.end(), opts_.self) != members.end();
  if (m.epoch > view_.membership.epoch && m.epoch > 0) {
    if (includes_me) {
      install(p.view, now);
    } else if (joined_ && !leaving_ && m.from.id < opts_.self.id &&
               std::any_of(members.begin(), members.end(),
                           [&](const Member& x) { return x.id == m.from.id; })) {
      // A newer view without us from a lower node inside it (a rightful coordinator): we
      // were declared dead. From a higher node it only means that node has not heard us
      // yet (links come up one direction at a time); our next view will include it.
      if (!expelled_) {
        spdlog::error("node {} was dropped from {} by node {} (epoch {}, members {}): the "
                      "others declared it dead",
                      opts_.self.id.value, cluster(), m.from.id.value, m.epoch, list(members));
      }
      expelled_ = true;
    } else if (leaving_ && joined_) {
      left_ = true;
    }
  } else if (joined_ && m.epoch < view_.membership.epoch &&
             std::find(view_.membership.members.begin(), view_.membership.members.end(),
                       m.from) != view_.membership.members.end()) {
    // A member lags behind: tell it at once rather than at the next interval.
    heartbeat_all();
    last_sent_ = now;
  }
  maybe_coordinate(now);
}

void MembershipAgent::tick(uint64_t now) {
  if (!running_) return;
  if (now - last_sent_ >= opts_.heartbeat_interval_ms) {
    heartbeat_all();
    last_sent_ = now;
  }
  if (leaving_ && !left_) {
    // Alone, or everyone else gone quiet: nobody is left to agree with.
    const bool anyone = std::any_of(peers_.begin(), peers_.end(),
                                    [&](const auto& kv) { return is_alive(kv.second, now); });
    if (!anyone) left_ = true;
  }
  watch_suspects(now);
  maybe_coordinate(now);
}

void MembershipAgent::watch_suspects(uint64_t now) {
  if (!joined_ || leaving_ || expelled_) return;
  for (auto& [id, p] : peers_) {
    if (p.suspect || p.leaving || now - p.last_heard < suspect_after_ms()) continue;
    // Only the incarnation our view holds: a node we merely hear is no member to lose. One
    // silent past the dead-node timeout is still suspect until a view drops it (a driver
    // thread that ran late sees both at once: suspect first, then declared dead).
    const Member* m = find_id(view_.membership.members, id);
    if (m == nullptr || *m != p.member) continue;
    p.suspect = true;
    spdlog::warn("node {} is suspect: no heartbeat from it for {} ms (declared dead after {} ms)",
                 id.value, now - p.last_heard, opts_.dead_after_ms);
  }
}

void MembershipAgent::leave(uint64_t now) {
  if (!running_) {
    left_ = true;  // stopped (withdrawn): the others have already timed us out
    return;
  }
  if (leaving_) return;
  leaving_ = true;
  spdlog::info("node {} leaves {} (epoch {})", opts_.self.id.value, cluster(),
               view_.membership.epoch);
  heartbeat_all();
  last_sent_ = now;
  if (!joined_) left_ = true;
  tick(now);
}

bool MembershipAgent::coordinator(uint64_t now) const {
  if (!running_ || leaving_) return false;
  for (const auto& [id, p] : peers_) {
    if (id < opts_.self.id && is_alive(p, now)) return false;
  }
  for (const Member& m : presumed_alive(now)) {
    if (m.id < opts_.self.id) return false;
  }
  return true;
}

void MembershipAgent::maybe_coordinate(uint64_t now) {
  if (!coordinator(now) || expelled_) return;
  std::vector<Member> alive{opts_.self};
  size_t heard_alive = 0;
  for (const auto& [id, p] : peers_) {
    if (is_alive(p, now)) {
      alive.push_back(p.member);
      ++heard_alive;
    }
  }
  for (const Member& m : presumed_alive(now)) {
    // A newer incarnation in our view replaces an older one we still hear from.
    std::erase_if(alive, [&](const Member& a) { return a.id == m.id && a.incarnation < m.incarnation; });
    alive.push_back(m);
  }
  std::sort(alive.begin(), alive.end());
  if (!joined_ && heard_alive + 1 < opts_.configured.size() &&
      now - started_ < opts_.join_wait_ms) {
    return;  // still listening for a running cluster
  }
  uint64_t max_epoch = view_.membership.epoch;
  bool disagree = false;
  for (const auto& [id, p] : peers_) {
    max_epoch = std::max(max_epoch, p.view.membership.epoch);
    if (is_alive(p, now) && p.view.membership.epoch >= view_.membership.epoch &&
        p.view.membership != view_.membership) {
      disagree = true;
    }
  }
  std::vector<Member> clean;
  for (const auto& [id, inc] : clean_) {
    // A current member's own incarnation is never clean; older ones are.
    const auto cur = std::find_if(alive.begin(), alive.end(), [&](const Member& a) { return a.id == id; });
    if (cur != alive.end() && cur->incarnation <= inc) {
      if (cur->incarnation == 0) continue;
      clean.push_back(Member{id, cur->incarnation - 1});
    } else {
      clean.push_back(Member{id, inc});
    }
  }
  if (joined_ && !disagree && alive == view_.membership.members && clean == view_.clean) return;
  View next;
  next.membership.epoch = max_epoch + 1;
  next.membership.members = std::move(alive);
  next.clean = std::move(clean);
  // install() logs what the view changes; this only says who formed it.
  spdlog::debug("membership: node {} coordinates epoch {}: members {}", opts_.self.id.value,
                next.membership.epoch, list(next.membership.members));
  install(next, now);
  heartbeat_all();
  last_sent_ = now;
}

void MembershipAgent::mark_clean(const Member& departed, uint64_t now) {
  auto& c = clean_[departed.id];
  c = std::max(c, departed.incarnation);
  maybe_coordinate(now);
}

void MembershipAgent::stop() { running_ = false; }

void MembershipAgent::log_view_change(const View& v) const {
  const auto& before = view_.membership.members;
  const auto& after = v.membership.members;
  const uint64_t epoch = v.membership.epoch;
  if (!joined_) {
    spdlog::info("node {} joined {} (epoch {}, members {})", opts_.self.id.value, cluster(), epoch,
                 list(after));
    return;
  }
  for (const Member& m : after) {
    const Member* old = find_id(before, m.id);
    if (old != nullptr && *old == m) continue;
    spdlog::info("node {} joined {} (epoch {}, members {}){}", m.id.value, cluster(), epoch,
                 list(after), old != nullptr ? "; it restarted" : "");
  }
  for (const Member& m : before) {
    if (find_id(after, m.id) != nullptr) continue;  // still there, or restarted (above)
    if (clean_in(v, m.id, m.incarnation)) {
      spdlog::info("node {} left {} (epoch {}, members {})", m.id.value, cluster(), epoch,
                   list(after));
    } else {
      spdlog::warn("node {} declared dead: dropped from {} (epoch {}, members {}); what it held "
                   "stays locked until its journal is replayed",
                   m.id.value, cluster(), epoch, list(after));
    }
  }
  // A dead node's journal replayed by a survivor: the DLM lets its locks go now.
  for (const auto& [id, inc] : dead_) {
    if (clean_in(v, id, inc) && !clean_in(view_, id, inc)) {
      spdlog::info("node {}'s journal is replayed: {} releases what it held (epoch {})", id.value,
                   cluster(), epoch);
    }
  }
  if (!before.empty() && !after.empty() && before.front().id != after.front().id) {
    spdlog::info("node {} is now the coordinator of {} (epoch {})", after.front().id.value,
                 cluster(), epoch);
  }
}

void MembershipAgent::install(const View& v, uint64_t now) {
  log_view_change(v);
  // Members that left this view without a clean departure were declared dead.
  for (const Member& m : view_.membership.members) {
    if (std::find(v.membership.members.begin(), v.membership.members.end(), m) !=
        v.membership.members.end()) {
      continue;
    }
    if (!clean_in(v, m.id, m.incarnation) && m.id != opts_.self.id) {
      auto& d = dead_[m.id];
      d = std::max(d, m.incarnation);
    }
  }
  view_ = v;
  view_since_ = now;
  joined_ = true;
  for (const Member& c : v.clean) {
    auto& mine = clean_[c.id];
    mine = std::max(mine, c.incarnation);
  }
  install_(v);
}

std::vector<PeerState> MembershipAgent::peers(uint64_t now) const {
  std::vector<PeerState> out;
  for (NodeId id : opts_.configured) {
    PeerState s;
    s.id = id;
    if (id == opts_.self.id) {
      s.member = opts_.self;
      s.heard_ago_ms = 0;
      s.alive = running_ && !leaving_;
      s.leaving = leaving_;
      s.view_epoch = view_.membership.epoch;
    } else if (auto it = peers_.find(id); it != peers_.end()) {
      s.member = it->second.member;
      s.heard_ago_ms = now - it->second.last_heard;
      s.alive = is_alive(it->second, now);
      s.leaving = it->second.leaving;
      s.view_epoch = it->second.view.membership.epoch;
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace sharedfs::dlm
