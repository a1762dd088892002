// dlm/dlm_node.h — one node's DLM as a running service: the LockManager and its LockCache
// driven by one thread over the ZeroMQ transport.
//
// The driver thread owns the LockManager, the LockCache and the sockets: it receives
// messages, ticks the retransmission timer and runs the functions other threads post().
// Completions and blocking callbacks therefore run on the driver thread and must not block
// it (ClusterLockService hands flushes to its own thread).
//
// Thread-safety: post(), call(), set_membership() and journal_replayed() may be called
// from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include "common/status.h"
#include "dlm/lock_cache.h"
#include "dlm/lock_manager.h"
#include "dlm/zmq_transport.h"

namespace sharedfs::dlm {

struct DlmNodeOptions {
  Member self;
  std::vector<Peer> peers;  // every configured node, this one included
  std::string cluster_secret;
  uint64_t retransmit_ms = 50;
  uint64_t tick_ms = 10;
};

class DlmNode {
 public:
  // The flush hook of the node's LockCache: runs on the driver thread; it must call `done`
  // later (from any thread, through post()) rather than block.
  static Result<std::unique_ptr<DlmNode>> start(DlmNodeOptions options, LockCache::FlushHook flush,
                                                LockCache::BlockedHook blocked = {});
  ~DlmNode();  // stops the driver thread; pending completions never run
  DlmNode(const DlmNode&) = delete;
  DlmNode& operator=(const DlmNode&) = delete;

  using Task = std::function<void(LockManager&, LockCache&)>;
  // Runs `task` on the driver thread soon; returns at once.
  void post(Task task);
  // Runs `task` on the driver thread and waits for it to return.
  void call(const Task& task);

  Status set_membership(const Membership& membership);
  Status journal_replayed(const Member& departed);
  const Member& self() const { return opts_.self; }

 private:
  DlmNode(DlmNodeOptions options, std::unique_ptr<ZmqTransport> transport,
          LockCache::FlushHook flush, LockCache::BlockedHook blocked, int wake_fd);
  void run();

  DlmNodeOptions opts_;
  std::unique_ptr<ZmqTransport> transport_;
  LockManager manager_;
  LockCache cache_;
  int wake_fd_;
  std::mutex mu_;
  std::deque<Task> tasks_;  // GUARDED_BY(mu_)
  bool stop_ = false;       // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace sharedfs::dlm
