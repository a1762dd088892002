// MembershipAgent on a simulated network and clock: joins, clean leaves, the coordinator
// leaving, a crash (timeout) and a restart. Every node must end with the same view.
#include "dlm/membership_agent.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <sstream>

namespace sharedfs::dlm {
namespace {

class Net {
 public:
  struct Node {
    std::unique_ptr<MembershipAgent> agent;
    std::vector<View> installed;
    bool up = false;
  };

  explicit Net(int n) {
    for (int i = 1; i <= n; ++i) ids_.push_back(NodeId(static_cast<uint32_t>(i)));
  }

  // Starts (or restarts, as a new incarnation) node `id`.
  void start(uint32_t id, uint64_t incarnation) {
    Node& node = nodes_[id];
    MembershipAgentOptions o;
    o.self = Member{NodeId(id), incarnation};
    o.configured = ids_;
    o.heartbeat_interval_ms = 100;
    o.dead_after_ms = 1000;
    o.join_wait_ms = 300;
    node.installed.clear();
    node.up = true;
    node.agent = std::make_unique<MembershipAgent>(
        o,
        [this](const Message& m) {
          if (!blocked_.contains({m.from.id.value, m.to.value})) wire_.push_back({now_ + 5, m});
        },
        [&node](const View& v) { node.installed.push_back(v); });
    node.agent->start(now_);
  }
  // Drops what `from` sends to `to` (a link that is not up yet in that direction).
  void block(uint32_t from, uint32_t to) { blocked_.insert({from, to}); }
  void unblock(uint32_t from, uint32_t to) { blocked_.erase({from, to}); }
  void crash(uint32_t id) {
    nodes_[id].up = false;
    nodes_[id].agent.reset();
  }

  void run_for(uint64_t ms) {
    const uint64_t end = now_ + ms;
    while (now_ < end) {
      ++now_;
      while (!wire_.empty() && wire_.front().at <= now_) {
        Message m = wire_.front().m;
        wire_.pop_front();
        auto it = nodes_.find(m.to.value);
        if (it != nodes_.end() && it->second.up) it->second.agent->on_heartbeat(m, now_);
      }
      for (auto& [id, n] : nodes_) {
        if (n.up) n.agent->tick(now_);
      }
    }
  }

  MembershipAgent& agent(uint32_t id) { return *nodes_.at(id).agent; }
  Node& node(uint32_t id) { return nodes_.at(id); }
  uint64_t now() const { return now_; }

  // Every running, joined, non-leaving node has this view.
  void expect_agreed_members(const std::vector<Member>& members) {
    const View* first = nullptr;
    for (auto& [id, n] : nodes_) {
      if (!n.up || n.agent->left()) continue;
      EXPECT_TRUE(n.agent->joined()) << "node " << id;
      EXPECT_EQ(n.agent->view().membership.members, members) << "node " << id;
      if (first == nullptr) first = &n.agent->view();
      EXPECT_EQ(n.agent->view(), *first) << "node " << id;
    }
  }

 private:
  std::set<std::pair<uint32_t, uint32_t>> blocked_;
  struct InFlight {
    uint64_t at;
    Message m;
  };
  std::vector<NodeId> ids_;
  std::map<uint32_t, Node> nodes_;
  std::deque<InFlight> wire_;
  uint64_t now_ = 1000;
};

Member M(uint32_t id, uint64_t inc) { return Member{NodeId(id), inc}; }

// What the agents log while it lives (every agent of a Net logs to the one default
// logger, so each event appears once per node that saw it).
class LogCapture {
 public:
  LogCapture() : saved_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink->set_pattern("%v");
    auto logger = std::make_shared<spdlog::logger>("capture", sink);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(saved_); }
  std::string text() const { return out_.str(); }
  // Occurrences of `needle` since the last take(); forgets them.
  int take(const std::string& needle) {
    const std::string t = out_.str();
    int n = 0;
    for (size_t at = t.find(needle, from_); at != std::string::npos; at = t.find(needle, at + 1)) ++n;
    return n;
  }
  void mark() { from_ = out_.str().size(); }

 private:
  std::ostringstream out_;
  size_t from_ = 0;
  std::shared_ptr<spdlog::logger> saved_;
};

bool has_clean(const View& v, Member m) {
  for (const Member& c : v.clean) {
    if (c.id == m.id && c.incarnation >= m.incarnation) return true;
  }
  return false;
}

TEST(MembershipAgent, NodesStartingTogetherAgreeOnOneView) {
  Net net(3);
  for (uint32_t i = 1; i <= 3; ++i) net.start(i, 10);
  net.run_for(250);  // everyone heard everyone: no need to wait out join_wait
  net.expect_agreed_members({M(1, 10), M(2, 10), M(3, 10)});
  EXPECT_TRUE(net.agent(1).coordinator(net.now()));
  EXPECT_FALSE(net.agent(2).coordinator(net.now()));
  // Quiet afterwards: no epoch churn.
  const uint64_t epoch = net.agent(1).view().membership.epoch;
  net.run_for(2000);
  EXPECT_EQ(net.agent(3).view().membership.epoch, epoch);
}

TEST(MembershipAgent, ALoneNodeWaitsBeforeFormingItsOwnCluster) {
  Net net(3);
  net.start(2, 7);
  net.run_for(200);
  EXPECT_FALSE(net.agent(2).joined());  // still listening for a running cluster
  net.run_for(200);
  ASSERT_TRUE(net.agent(2).joined());
  EXPECT_EQ(net.agent(2).view().membership.members, std::vector<Member>{M(2, 7)});
  // A lower id arriving later takes over as coordinator and admits both.
  net.start(1, 8);
  net.run_for(500);
  net.expect_agreed_members({M(1, 8), M(2, 7)});
  EXPECT_GT(net.agent(1).view().membership.epoch, 1u);
}

TEST(MembershipAgent, ACleanLeaveIsDroppedAtOnceAndMarkedClean) {
  Net net(3);
  for (uint32_t i = 1; i <= 3; ++i) net.start(i, 5);
  net.run_for(300);
  net.agent(3).leave(net.now());
  net.run_for(100);  // far less than the dead-node timeout
  EXPECT_TRUE(net.agent(3).left());
  net.expect_agreed_members({M(1, 5), M(2, 5)});
  EXPECT_TRUE(has_clean(net.agent(2).view(), M(3, 5)));
}

TEST(MembershipAgent, TheCoordinatorLeavingHandsOver) {
  Net net(3);
  for (uint32_t i = 1; i <= 3; ++i) net.start(i, 5);
  net.run_for(300);
  net.agent(1).leave(net.now());
  net.run_for(100);
  EXPECT_TRUE(net.agent(1).left());
  EXPECT_TRUE(net.agent(2).coordinator(net.now()));
  net.crash(1);
  net.run_for(50);
  net.expect_agreed_members({M(2, 5), M(3, 5)});
  EXPECT_TRUE(has_clean(net.agent(3).view(), M(1, 5)));
}

TEST(MembershipAgent, ACrashedNodeIsDroppedAfterTheTimeoutAndNotClean) {
  Net net(3);
  for (uint32_t i = 1; i <= 3; ++i) net.start(i, 5);
  net.run_for(300);
  net.crash(2);
  net.run_for(800);
  EXPECT_EQ(net.agent(1).view().membership.members.size(), 3u);  // not dead yet
  net.run_for(400);
  net.expect_agreed_members({M(1, 5), M(3, 5)});
  EXPECT_FALSE(has_clean(net.agent(1).view(), M(2, 5)));
  // It restarts (its mount replays its journal first): the old incarnation becomes clean.
  net.start(2, 9);
  net.run_for(300);
  net.expect_agreed_members({M(1, 5), M(2, 9), M(3, 5)});
  EXPECT_TRUE(has_clean(net.agent(3).view(), M(2, 5)));
  EXPECT_FALSE(has_clean(net.agent(3).view(), M(2, 9)));
}

TEST(MembershipAgent, ARestartWithinTheTimeoutReplacesTheOldIncarnation) {
  Net net(2);
  net.start(1, 5);
  net.start(2, 5);
  net.run_for(300);
  net.crash(1);
  net.start(1, 6);
  net.run_for(300);
  net.expect_agreed_members({M(1, 6), M(2, 5)});
  EXPECT_TRUE(has_clean(net.agent(2).view(), M(1, 5)));
  // Views only ever grow their epoch at each node.
  for (uint32_t id : {1u, 2u}) {
    const auto& v = net.node(id).installed;
    for (size_t i = 1; i < v.size(); ++i) {
      EXPECT_GT(v[i].membership.epoch, v[i - 1].membership.epoch) << "node " << id;
    }
  }
}

TEST(MembershipAgent, LeavingAloneIsImmediate) {
  Net net(2);
  net.start(1, 5);
  net.run_for(400);
  ASSERT_TRUE(net.agent(1).joined());
  net.agent(1).leave(net.now());
  EXPECT_TRUE(net.agent(1).left());
}

// Three nodes start at once, and node 2 does not hear node 1 for a while (its link comes
// up late). Node 1 forms {1,2,3}; node 2 joins through it via node 3 and must not form a
// view without node 1 meanwhile: node 3 would then hold node 1's locks back for a journal
// replay that never comes, once node 1 is back with the same incarnation.
TEST(MembershipAgent, ANodeInOurViewIsPresumedAliveUntilTheTimeout) {
  Net net(3);
  net.block(1, 2);
  for (uint32_t id : {1u, 2u, 3u}) net.start(id, 1);
  net.run_for(700);  // less than the dead-node timeout (1000 ms)
  for (uint32_t id : {1u, 2u, 3u}) {
    for (const View& v : net.node(id).installed) {
      const auto& ms = v.membership.members;
      EXPECT_TRUE(std::any_of(ms.begin(), ms.end(), [](const Member& m) { return m.id == NodeId(1); }))
          << "node " << id << " installed epoch " << v.membership.epoch << " without node 1";
    }
  }
  net.unblock(1, 2);
  net.run_for(500);
  net.expect_agreed_members({Member{NodeId(1), 1}, Member{NodeId(2), 1}, Member{NodeId(3), 1}});
}

// A member of our view that we never hear is dropped after the timeout all the same.
TEST(MembershipAgent, AMemberNeverHeardIsDroppedAfterTheTimeout) {
  Net net(3);
  net.block(1, 2);
  for (uint32_t id : {1u, 2u, 3u}) net.start(id, 1);
  net.run_for(300);
  EXPECT_TRUE(net.agent(2).joined());
  net.crash(1);
  net.run_for(3000);
  net.expect_agreed_members({Member{NodeId(2), 1}, Member{NodeId(3), 1}});
}

// Seen in CI: node 3 restarts (a new incarnation) and node 1 takes it into a view, then
// leaves at once, before node 2 has heard node 3's new incarnation (node 2 still knows the
// old, dead one). Node 2, coordinating next, must presume node 3 alive as a member of the
// view it installed, not drop it (node 3 would take that for its expulsion and withdraw).
TEST(MembershipAgent, ARestartedMemberNotYetHeardIsPresumedAliveByTheNextCoordinator) {
  Net net(3);
  for (uint32_t i = 1; i <= 3; ++i) net.start(i, 1);
  net.run_for(300);
  net.expect_agreed_members({M(1, 1), M(2, 1), M(3, 1)});
  net.crash(3);
  net.run_for(1500);
  net.expect_agreed_members({M(1, 1), M(2, 1)});
  net.block(3, 2);  // node 2 does not hear the new incarnation yet
  net.start(3, 2);
  net.run_for(300);
  ASSERT_TRUE(net.agent(3).joined());
  net.agent(1).leave(net.now());
  net.run_for(300);
  EXPECT_FALSE(net.agent(3).expelled()) << "node 2 dropped node 3's new incarnation";
  net.unblock(3, 2);
  net.run_for(500);
  EXPECT_FALSE(net.agent(3).expelled());
  net.expect_agreed_members({M(2, 1), M(3, 2)});
}

// docs/logging.md: one line per event and node, whatever the number of ticks in between.
TEST(MembershipAgent, EachStateChangeIsLoggedOncePerNode) {
  LogCapture log;
  Net net(3);
  for (uint32_t i = 1; i <= 3; ++i) net.start(i, 10);
  net.run_for(300);
  net.expect_agreed_members({M(1, 10), M(2, 10), M(3, 10)});
  for (uint32_t i = 1; i <= 3; ++i) {
    EXPECT_EQ(log.take("node " + std::to_string(i) + " joined the cluster (epoch "), 1) << log.text();
  }
  // Node 3 goes quiet for 600 ms (suspect after a third of the 1000 ms timeout), then is
  // heard again: one episode each for nodes 1 and 2, hundreds of ticks notwithstanding.
  log.mark();
  net.block(3, 1);
  net.block(3, 2);
  net.run_for(600);
  EXPECT_EQ(log.take("node 3 is suspect: no heartbeat from it for "), 2) << log.text();
  net.unblock(3, 1);
  net.unblock(3, 2);
  net.run_for(300);
  EXPECT_EQ(log.take("node 3 is suspect"), 2) << log.text();
  EXPECT_EQ(log.take("node 3 is heard again after "), 2) << log.text();
  EXPECT_EQ(log.take("declared dead:"), 0) << log.text();
  // The coordinator dies: suspect, declared dead, a new coordinator, once per survivor.
  log.mark();
  net.crash(1);
  net.run_for(1500);
  net.expect_agreed_members({M(2, 10), M(3, 10)});
  EXPECT_EQ(log.take("node 1 is suspect"), 2) << log.text();
  EXPECT_EQ(log.take("node 1 declared dead: dropped from the cluster (epoch "), 2) << log.text();
  EXPECT_EQ(log.take("node 2 is now the coordinator of the cluster (epoch "), 2) << log.text();
  EXPECT_EQ(log.take("node 1's journal is replayed"), 0) << log.text();
  // A survivor replayed its journal (the failure manager's mark).
  net.agent(2).mark_clean(M(1, 10), net.now());
  net.run_for(300);
  EXPECT_EQ(log.take("node 1's journal is replayed: the cluster releases what it held"), 2)
      << log.text();
  // It restarts: it joined, on every node; the coordinator is node 1 again.
  log.mark();
  net.start(1, 20);
  net.run_for(1500);
  net.expect_agreed_members({M(1, 20), M(2, 10), M(3, 10)});
  EXPECT_EQ(log.take("node 1 joined the cluster (epoch "), 3) << log.text();
  EXPECT_EQ(log.take("node 1 is now the coordinator"), 2) << log.text();
  EXPECT_EQ(log.take("suspect"), 0) << log.text();
  EXPECT_EQ(log.take("journal is replayed"), 0) << log.text();
  // Node 3 leaves cleanly: it says so, the others say it left.
  log.mark();
  net.agent(3).leave(net.now());
  net.run_for(300);
  EXPECT_EQ(log.take("node 3 leaves the cluster"), 1) << log.text();
  EXPECT_EQ(log.take("node 3 left the cluster (epoch "), 2) << log.text();
  EXPECT_EQ(log.take("declared dead:"), 0) << log.text();
  EXPECT_EQ(log.take("journal is replayed"), 0) << log.text();
}

TEST(MembershipAgent, LogLinesNameTheCluster) {
  LogCapture log;
  MembershipAgentOptions o;
  o.self = M(1, 1);
  o.configured = {NodeId(1)};
  o.cluster_name = "prod";
  MembershipAgent agent(o, [](const Message&) {}, [](const View&) {});
  agent.start(1000);
  agent.tick(1000 + o.join_wait_ms);
  ASSERT_TRUE(agent.joined());
  EXPECT_EQ(log.take("node 1 joined cluster \"prod\" (epoch 1, members 1)"), 1) << log.text();
}

}  // namespace
}  // namespace sharedfs::dlm
