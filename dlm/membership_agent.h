// dlm/membership_agent.h — who is in the cluster, agreed over network heartbeats: the
// membership the DLM's set_membership() needs (docs/cluster.md, "Membership").
//
// Every node sends a Heartbeat (dlm/message.h) to every configured peer each interval. It
// carries the sender's installed view — epoch, members, and the newest incarnation of each
// node whose journal is known clean — and a `leaving` flag. A node counts a peer alive
// while it has heard from it within `dead_after_ms` and the peer is not leaving.
//
// The coordinator is the lowest alive node id. When the alive set (with incarnations)
// differs from its view, or a peer reports another view, it installs a new view with an
// epoch above every epoch it has heard of and sends it at once; the others install any view
// with a higher epoch that includes them. So joins, clean leaves and timeouts all become one
// new epoch, the same on every node.
//
// Clean departures need no journal replay: a node leaves only after unmounting (journal
// clean), and a node that restarts replays its own journal at mount before it joins, so
// its older incarnations are clean once the new one is a member. The view's `clean` list
// says so, and every node tells its DLM journal_replayed() for them; resources they held
// are not held back. A node that stops without leaving is only dropped after the timeout,
// and what it held in EX stays held back until its journal is replayed (issue 6).
//
// A starting node does not form a cluster of its own until it has listened for
// `join_wait_ms` (or heard every configured node): otherwise two nodes starting side by side
// could each master every lock.
//
// Logging: one line per change of the cluster as this node sees it — a node joined, left,
// is suspect (heartbeats missed, once per episode), heard again, declared dead, its
// journal replayed, a new coordinator (docs/logging.md has the list).
//
// Not thread-safe: the DlmNode driver thread calls everything. Time is in milliseconds of
// any monotonic clock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/types.h"
#include "dlm/membership.h"
#include "dlm/message.h"

namespace sharedfs::dlm {

struct MembershipAgentOptions {
  Member self;
  std::vector<NodeId> configured;  // every node of the cluster config, self included
  uint64_t heartbeat_interval_ms = 500;
  uint64_t dead_after_ms = 5000;
  uint64_t join_wait_ms = 1500;
  // A member of our view not heard for this long is "suspect" (logged once per episode);
  // 0: a third of dead_after_ms, at least two heartbeat intervals.
  uint64_t suspect_after_ms = 0;
  // For the log lines only (docs/logging.md): `cluster "NAME"`; empty: "the cluster".
  std::string cluster_name;
};

// One installed view.
struct View {
  Membership membership;
  // Per node id, the newest incarnation whose journal is clean (left, or replayed by a
  // restart). Never lists a current member's incarnation.
  std::vector<Member> clean;
  bool operator==(const View&) const = default;
};

// What the agent knows of one configured peer (status output).
struct PeerState {
  NodeId id;
  std::optional<Member> member;          // as last heard; nullopt: never heard
  std::optional<uint64_t> heard_ago_ms;  // nullopt: never heard
  bool alive = false;
  bool leaving = false;
  uint64_t view_epoch = 0;  // the epoch the peer reported
};

class MembershipAgent {
 public:
  using Send = std::function<void(const Message& heartbeat)>;
  using Install = std::function<void(const View& view)>;

  MembershipAgent(MembershipAgentOptions options, Send send, Install install);

  // Starts heartbeating at `now`.
  void start(uint64_t now);
  // A Heartbeat addressed to us (authenticated by the codec).
  void on_heartbeat(const Message& m, uint64_t now);
  // Time passes: heartbeats, timeouts and the coordinator's decisions.
  void tick(uint64_t now);
  // The journal is clean: announce that this node leaves. left() once a view without us is
  // seen or nobody else is alive.
  void leave(uint64_t now);

  // A survivor replayed `departed`'s journal (docs/failure.md): the next view says so, and
  // every node's DLM then lets go of what `departed` held. Takes effect through the
  // coordinator's next view; a non-coordinator's mark reaches nobody (the coordinator
  // recovers, and a new coordinator redoes a recovery cut short).
  void mark_clean(const Member& departed, uint64_t now);
  // This node withdrew: no more heartbeats, no more views. The others time us out.
  void stop();

  bool joined() const { return joined_; }
  bool left() const { return left_; }
  // A view with a higher epoch that does not include us arrived while we were not leaving.
  bool expelled() const { return expelled_; }
  const View& view() const { return view_; }
  std::vector<PeerState> peers(uint64_t now) const;
  bool coordinator(uint64_t now) const;

 private:
  struct Peer {
    Member member;
    uint64_t last_heard = 0;
    bool leaving = false;
    // Not heard for suspect_after_ms while a member of our view; logged once per episode.
    bool suspect = false;
    View view;
  };

  bool is_alive(const Peer& p, uint64_t now) const;
  // Members of our view we have not heard from ourselves (that incarnation), for the
  // dead-node timeout after we installed it: presumed alive (another node heard them; our link may be slow to
  // come up). Without this, a node that joined through a view formed by a lower node it
  // cannot hear yet would at once form a view without that node.
  std::vector<Member> presumed_alive(uint64_t now) const;
  bool configured(NodeId id) const;
  void heartbeat_all();
  void maybe_coordinate(uint64_t now);
  void install(const View& v, uint64_t now);
  // One log line per change `v` makes to our view (docs/logging.md).
  void log_view_change(const View& v) const;
  // Suspect episodes of the members of our view: begin after suspect_after_ms of silence.
  void watch_suspects(uint64_t now);
  uint64_t suspect_after_ms() const;
  std::string cluster() const;

  MembershipAgentOptions opts_;
  Send send_;
  Install install_;
  uint64_t started_ = 0;
  uint64_t last_sent_ = 0;
  uint64_t view_since_ = 0;  // when view_ was installed
  bool running_ = false;
  bool leaving_ = false;
  bool joined_ = false;
  bool left_ = false;
  bool expelled_ = false;
  View view_;
  std::map<NodeId, Peer> peers_;
  // Per node id, the newest incarnation known clean (ours included, from views).
  std::map<NodeId, uint64_t> clean_;
  // Per node id, the newest incarnation dropped from a view without leaving: declared dead
  // and fenced. It is never counted alive again (a fenced node that is still running, its
  // network healed, must not rejoin as if nothing happened; it restarts as a new
  // incarnation).
  std::map<NodeId, uint64_t> dead_;
};

}  // namespace sharedfs::dlm
