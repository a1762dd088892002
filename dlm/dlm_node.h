// dlm/dlm_node.h — one node's DLM as a running service: the LockManager and its LockCache
// driven by one thread over the ZeroMQ transport.
//
// The driver thread owns the LockManager, the LockCache and the sockets: it receives
// messages, ticks the retransmission timer and runs the functions other threads post().
// Completions and blocking callbacks therefore run on the driver thread and must not block
// it (ClusterLockService hands flushes to its own thread).
//
// Membership comes either from outside (set_membership(), journal_replayed(): tests, the
// simulator) or from the node's MembershipAgent, which join() starts on the driver thread:
// heartbeats then travel on the same sockets as lock traffic.
//
// Thread-safety: post(), call(), set_membership(), journal_replayed(), join(), leave() and
// membership_status() may be called from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "common/status.h"
#include "dlm/lock_cache.h"
#include "dlm/lock_manager.h"
#include "dlm/membership_agent.h"
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

  // Starts heartbeating and waits until a view that includes this node is installed.
  // kBusy when none comes within `timeout`.
  Status join(const MembershipAgentOptions& options, std::chrono::milliseconds timeout);
  // After the journal is clean: announces the departure and waits until the others have a
  // view without this node (or nobody else is alive). kBusy otherwise; the others then
  // treat the node as failed once its heartbeats stop.
  Status leave(std::chrono::milliseconds timeout);

  // A survivor replayed `departed`'s journal: through the next view every node's DLM
  // lets its locks go (MembershipAgent::mark_clean; effective on the coordinator).
  void mark_replayed(const Member& departed);
  // This node was fenced: it stops heartbeating and installs no more views.
  void withdraw();

  struct MembershipStatus {
    bool joined = false;
    bool expelled = false;
    bool coordinator = false;
    View view;
    std::vector<PeerState> peers;
    // Departed members whose journals are not replayed yet (LockManager::awaiting_replay).
    std::set<Member> awaiting_replay;
  };
  MembershipStatus membership_status();
  // The same, for code already on the driver thread (a query responder).
  MembershipStatus membership_status_on_driver();

  // Operator queries (`sharedfs status|locks|top`, tools/control_socket.h) travel between
  // the nodes on the DLM's sockets. The responder answers a question on the driver thread
  // and must not block; until one is set, questions go unanswered.
  using QueryResponder =
      std::function<std::string(const std::string& question, LockManager&, LockCache&)>;
  void set_query_responder(QueryResponder responder);
  struct QueryAnswers {
    std::vector<uint32_t> members;            // the current epoch's, when asked
    std::map<uint32_t, std::string> answers;  // node id -> answer
  };
  // Asks every configured node (this one too) and waits up to `timeout` for the answers
  // of the current epoch's members. Nodes outside the view are in `answers` only if they
  // answered meanwhile; a member that did not answer in time is missing.
  QueryAnswers query_all(const std::string& question, std::chrono::milliseconds timeout);

 private:
  DlmNode(DlmNodeOptions options, std::unique_ptr<ZmqTransport> transport,
          LockCache::FlushHook flush, LockCache::BlockedHook blocked, int wake_fd);
  void run();
  void drive_membership(uint64_t now);

  DlmNodeOptions opts_;
  std::unique_ptr<ZmqTransport> transport_;
  LockManager manager_;
  LockCache cache_;
  int wake_fd_;
  // Driver thread only.
  std::unique_ptr<MembershipAgent> agent_;
  std::vector<Message> heartbeats_in_;
  QueryResponder responder_;
  void on_query(const Message& m);
  MessageCodec codec_;  // heartbeats out
  std::mutex mu_;
  std::condition_variable membership_cv_;  // joined/left changed
  std::deque<Task> tasks_;                 // GUARDED_BY(mu_)
  bool stop_ = false;                      // GUARDED_BY(mu_)
  bool joined_ = false;                    // GUARDED_BY(mu_)
  bool left_ = false;                      // GUARDED_BY(mu_)
  // Queries this node asked, by id: the answers so far.
  uint64_t next_query_ = 1;                                      // GUARDED_BY(mu_)
  std::map<uint64_t, std::map<uint32_t, std::string>> answers_;  // GUARDED_BY(mu_)
  std::condition_variable answers_cv_;
  std::thread thread_;
};

}  // namespace sharedfs::dlm
