// dlm_bench: DLM figures over tcp on 127.0.0.1 between two processes (this one and a
// forked child), printed side by side with a plain ZeroMQ REQ/REP round trip measured in
// the same run (issue 4's targets: handoff p50 <= 3x the round trip; cached re-lock
// <= 200 ns; >= 100,000 remote PR acquires/s with pipelining).
//
//   dlm_bench [ROUND_TRIPS] [HANDOFFS] [REMOTE_LOCKS]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "dlm/cluster_lock_service.h"
#include "dlm/dlm_node.h"

using namespace sharedfs;
using namespace sharedfs::dlm;
using Clock = std::chrono::steady_clock;

namespace {

double us_since(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

const Member kA{NodeId(1), 1};
const Member kB{NodeId(2), 1};
const ResourceName kPingPong = ResourceName::make(1, 1, "pingpong");

void wait_granted(DlmNode& node, const ResourceName& r, LockMode mode) {
  std::promise<void> p;
  node.post([&](LockManager&, LockCache& cache) {
    cache.acquire(r, mode, [&](const Status& s) {
      SHAREDFS_CHECK(s.is_ok(), "bench acquire failed");
      p.set_value();
    });
  });
  p.get_future().wait();
}

void release(DlmNode& node, const ResourceName& r) {
  node.post([r](LockManager&, LockCache& cache) { cache.release(r); });
}

// The child: REP server for the round trips and for control, node B of the DLM.
int child(const std::string& rep_endpoint, const std::vector<Peer>& peers) {
  auto node =
      DlmNode::start(DlmNodeOptions{kB, peers, "bench", 50, 10},
                     [](const ResourceName&, LockMode, std::function<void()> done) { done(); });
  if (!node.is_ok()) return 1;
  if (!(*node)->set_membership(Membership{1, {kA, kB}}).is_ok()) return 1;
  zmq::context_t ctx(1);
  zmq::socket_t rep(ctx, zmq::socket_type::rep);
  rep.bind(rep_endpoint);
  std::atomic<bool> ping_pong{false};
  std::thread taker;
  for (;;) {
    zmq::message_t msg;
    if (!rep.recv(msg)) continue;
    const std::string cmd = msg.to_string();
    if (cmd == "pingpong") {
      // Take the lock back each time node A has it: every acquire of A is a handoff.
      ping_pong = true;
      taker = std::thread([&] {
        while (ping_pong) {
          wait_granted(**node, kPingPong, LockMode::kEX);
          release(**node, kPingPong);
        }
      });
    } else if (cmd == "stop") {
      ping_pong = false;
      taker.join();
    } else if (cmd == "exit") {
      rep.send(zmq::str_buffer("ok"), zmq::send_flags::none);
      return 0;
    }
    rep.send(zmq::buffer(cmd), zmq::send_flags::none);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int round_trips = argc > 1 ? std::atoi(argv[1]) : 20000;
  const int handoffs = argc > 2 ? std::atoi(argv[2]) : 2000;
  const int remote_locks = argc > 3 ? std::atoi(argv[3]) : 200000;
  const int base = 30000 + getpid() % 20000;
  const std::string rep_endpoint = fmt::format("tcp://127.0.0.1:{}", base);
  const std::vector<Peer> peers = {{kA.id, fmt::format("tcp://127.0.0.1:{}", base + 1)},
                                   {kB.id, fmt::format("tcp://127.0.0.1:{}", base + 2)}};
  const pid_t pid = fork();
  if (pid == 0) _exit(child(rep_endpoint, peers));

  // 1. The floor: a plain ZeroMQ round trip.
  zmq::context_t ctx(1);
  zmq::socket_t req(ctx, zmq::socket_type::req);
  req.connect(rep_endpoint);
  auto request = [&](const std::string& cmd) {
    req.send(zmq::buffer(cmd), zmq::send_flags::none);
    zmq::message_t reply;
    (void)req.recv(reply);
  };
  std::vector<double> rtt;
  for (int i = 0; i < round_trips + 1000; ++i) {
    const auto t = Clock::now();
    request("x");
    if (i >= 1000) rtt.push_back(us_since(t));
  }

  auto node =
      DlmNode::start(DlmNodeOptions{kA, peers, "bench", 50, 10},
                     [](const ResourceName&, LockMode, std::function<void()> done) { done(); });
  SHAREDFS_CHECK(node.is_ok(), "bench node start");
  SHAREDFS_CHECK((*node)->set_membership(Membership{1, {kA, kB}}).is_ok(), "membership");

  // 2. EX handoff: node B takes the lock back after each of our acquires.
  request("pingpong");
  std::vector<double> handoff;
  for (int i = 0; i < handoffs + 100; ++i) {
    // Wait until B has it (our cached mode fell to NL), then time taking it over.
    for (;;) {
      std::optional<LockMode> mode;
      (*node)->call([&](LockManager&, LockCache& cache) { mode = cache.cached_mode(kPingPong); });
      if (mode != LockMode::kEX) break;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    const auto t = Clock::now();
    wait_granted(**node, kPingPong, LockMode::kEX);
    if (i >= 100) handoff.push_back(us_since(t));
    release(**node, kPingPong);
  }
  request("stop");

  // 3. Cached re-lock: a LockCache hit on the driver thread, and the same through the
  //    thread hop every caller of DlmNode pays.
  constexpr int kRelocks = 1000000;
  const ResourceName mine = ResourceName::make(1, 42, "cached");
  wait_granted(**node, mine, LockMode::kEX);
  release(**node, mine);
  double relock_ns = 0;
  (*node)->call([&](LockManager&, LockCache& cache) {
    int granted = 0;
    const auto t = Clock::now();
    for (int i = 0; i < kRelocks; ++i) {
      cache.acquire(mine, LockMode::kPR, [&](const Status&) { ++granted; });
      cache.release(mine);
    }
    relock_ns = us_since(t) * 1000 / kRelocks;
    SHAREDFS_CHECK(granted == kRelocks, "cached re-lock did not complete at once");
  });
  constexpr int kHops = 20000;
  auto t_hop = Clock::now();
  for (int i = 0; i < kHops; ++i) {
    wait_granted(**node, mine, LockMode::kPR);
    release(**node, mine);
  }
  const double hop_ns = us_since(t_hop) * 1000 / kHops;
  // The same hit through ClusterLockService, as fs/ threads take it (a one-node cluster).
  double service_ns = 0;
  {
    auto svc = ClusterLockService::start(
        DlmNodeOptions{kA, {{kA.id, fmt::format("tcp://127.0.0.1:{}", base + 3)}}, "bench", 50, 10},
        {});
    SHAREDFS_CHECK(svc.is_ok(), "service start");
    SHAREDFS_CHECK((*svc)->node().set_membership(Membership{1, {kA}}).is_ok(), "membership");
    const LockName name{LockSpace::kInode, 1};
    { auto l = (*svc)->lock(name, LockMode::kEX); }
    const auto t = Clock::now();
    for (int i = 0; i < kRelocks; ++i) {
      auto l = (*svc)->lock(name, LockMode::kPR);
    }
    service_ns = us_since(t) * 1000 / kRelocks;
  }

  // 4. New PR locks mastered by B, pipelined: up to `window` requests outstanding.
  std::vector<ResourceName> remote;
  for (uint64_t id = 1000; remote.size() < static_cast<size_t>(remote_locks); ++id) {
    const ResourceName r = ResourceName::make(2, id, "remote");
    if (master_of(r, std::vector<Member>{kA, kB}) == kB.id) remote.push_back(r);
  }
  constexpr int kWindow = 1000;
  std::promise<void> all;
  std::atomic<int> done{0};
  const auto t_remote = Clock::now();
  (*node)->post([&](LockManager& lm, LockCache&) {
    auto next = std::make_shared<size_t>(0);
    auto issue = std::make_shared<std::function<void()>>();
    *issue = [&, next, issue] {
      const size_t i = (*next)++;
      if (i >= remote.size()) return;
      lm.lock(remote[i], LockMode::kPR, {}, {}, [&, issue](LockId, const Status& s) {
        SHAREDFS_CHECK(s.is_ok(), "remote PR lock failed");
        if (++done == remote_locks) all.set_value();
        (*issue)();
      });
    };
    for (int w = 0; w < kWindow; ++w) (*issue)();
  });
  all.get_future().wait();
  const double remote_s = us_since(t_remote) / 1e6;
  (*node)->call([&](LockManager& lm, LockCache&) {
    fmt::print(stderr, "node A: {} sent, {} retransmitted, {} received, {} out of order\n",
               lm.stats().sent, lm.stats().retransmitted, lm.stats().received,
               lm.stats().dropped_out_of_order);
  });

  request("exit");
  waitpid(pid, nullptr, 0);
  const double rtt50 = percentile(rtt, 0.5);
  const double hand50 = percentile(handoff, 0.5);
  fmt::print("dlm_bench: two processes over tcp on 127.0.0.1\n");
  fmt::print("  {:<44} {:>10} {:>10}\n", "", "p50", "p99");
  fmt::print("  {:<44} {:>7.1f} us {:>7.1f} us\n", "ZeroMQ REQ/REP round trip (the floor)", rtt50,
             percentile(rtt, 0.99));
  fmt::print("  {:<44} {:>7.1f} us {:>7.1f} us   = {:.1f}x the round trip (target <= 3x)\n",
             "EX handoff between the nodes", hand50, percentile(handoff, 0.99), hand50 / rtt50);
  fmt::print("  {:<44} {:>7.0f} ns/op (target <= 200)\n", "cached re-lock, LockCache on its thread",
             relock_ns);
  fmt::print("  {:<44} {:>7.0f} ns/op\n", "cached re-lock through DlmNode::post", hop_ns);
  fmt::print("  {:<44} {:>7.0f} ns/op (lock + unlock, fast path)\n",
             "cached re-lock, ClusterLockService::lock", service_ns);
  fmt::print("  {:<44} {:>7.0f} locks/s ({} locks, {} outstanding; target >= 100,000)\n",
             "new PR locks mastered remotely", remote_locks / remote_s, remote_locks, kWindow);
  return 0;
}
