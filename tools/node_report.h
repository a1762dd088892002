// tools/node_report.h — what a daemon tells the operator's commands about its node, and
// how it answers them: the handler of its control socket (tools/control_socket.h) and the
// responder to the same questions from other nodes over the DLM (DlmNode::query_all).
//
// A question is a JSON object: {"query": "ping" | "status" | "locks" | "stats", ...}.
//   status: node, cluster, version, device, mount point, state, membership, journal use;
//   locks:  the resources this node masters (holders, waiters and their wait times) and
//           this node's own locks (cached, in use, requests in progress); "busy": true for
//           only those someone waits for, "limit": N resources at most (default 1000);
//   stats:  counters since the mount (requests by kind with latency sums, lock traffic,
//           cache hits, device I/O); `sharedfs top` takes differences.
// With "cluster": true the daemon asks every node and answers
//   {"cluster": NAME, "members": [ids], "nodes": [answers...], "unanswered": [ids]}.
// docs/operations.md has examples of each answer.
//
// Thread-safety: answer() runs on the DLM driver thread (with its LockManager and
// LockCache) or, without a DLM, on any thread; handle() on the control socket's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "device/counting_device.h"
#include "dlm/cluster_lock_service.h"
#include "fs/fs.h"
#include "fs/fuse/request_metrics.h"

namespace sharedfs::tools {

// What the daemon's reports read; pointers are not owned and outlive the reporter.
struct DaemonState {
  uint32_t node = 0;
  std::string cluster;  // empty: mounted without a cluster
  uint64_t cluster_id = 0;
  std::string device;
  std::string mountpoint;
  std::chrono::system_clock::time_point started = std::chrono::system_clock::now();
  const std::atomic<fs::FileSystem*>* fs = nullptr;  // null while not mounted
  dlm::ClusterLockService* locks = nullptr;          // null: no cluster
  const device::CountingDevice* io = nullptr;
  const fs::fuse::RequestMetrics* requests = nullptr;
  // Why this node withdrew; empty while it has not.
  std::function<std::string()> withdrawn_reason;
  // Nodes this node fenced and recovered (cluster::FailureManager::recoveries); may be empty.
  std::function<uint64_t()> recoveries;
};

class NodeReporter {
 public:
  explicit NodeReporter(DaemonState state) : state_(std::move(state)) {}

  // Answers a question about this node. `lm` and `cache` are the DLM's (null without one);
  // with a DLM this must run on its driver thread.
  std::string answer(const std::string& question, dlm::LockManager* lm,
                     dlm::LockCache* cache) const;
  // The control socket's handler: about this node or, with "cluster": true, every node.
  std::string handle(const std::string& request) const;

  const DaemonState& state() const { return state_; }

 private:
  DaemonState state_;
};

}  // namespace sharedfs::tools
