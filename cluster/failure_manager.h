// cluster/failure_manager.h — what a cluster node does when another node fails, and what it
// does when it finds itself fenced (DESIGN.md §2, §6; docs/failure.md).
//
// Each node watches every slot's disk heartbeat (one read of the heartbeat region per
// interval). The membership agent (dlm/membership_agent.h) decides who is alive from the
// network heartbeats; a member that drops out of the view without leaving is "departed" and
// the DLM holds back what it held in EX until its journal is replayed. The coordinator of
// the view (its lowest node id) then recovers each departed member D:
//
//   1. fence: preempt-and-abort of D's reservation key (taking the Write Exclusive –
//      Registrants Only reservation first if nobody holds it), unless D's key is already
//      gone. After this no write of D lands on the device.
//   2. mark D's heartbeat block "fenced by us";
//   3. replay D's journal (idempotent: a recovery cut short is redone by the next
//      coordinator);
//   4. tell the membership the journal is clean: the next view lets every node's DLM grant
//      D's locks again;
//   5. take D's orphans over and give its slot back (FileSystem::recover_slot), under the
//      ordinary locks, and mark D's heartbeat block "recovered by us".
//
// Partitions: both sides' coordinators race to fence the other side and the device
// serialises them. The side with more members of the last common view, or on a tie the side
// holding the lowest node id, fences at once. The other side fences only nodes whose disk
// heartbeats have stopped (a node that still writes its heartbeat is alive on the other
// side, and will fence us): so a minority fences a truly dead majority, but never races a
// live one.
//
// Withdraw: when this node's writes are refused (FenceGuard), its own key is missing from
// the device's report when it is about to fence another, or a newer view dropped it, the node withdraws (the `withdraw` hook):
// the mount stops every write and lock and answers EIO, and this manager stops.
//
// Thread-safety: start()/stop() from the owner; the rest runs on the manager's thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "device/device.h"
#include "dlm/dlm_node.h"
#include "format/format.h"

namespace sharedfs::cluster {

// Registers this host with `key` (the node's device::node_reservation_key; fence_sharedfs
// passes an operator's key too) and makes sure the device holds the cluster's reservation
// (Write Exclusive – Registrants Only), taking it when nobody does. Run at mount before the
// node writes anything, and by fence_sharedfs to unfence.
Status register_node(device::Reservations& resv, device::ReservationKey key);
// Removes the node's key at a clean unmount (its journal is clean: nothing to fence).
Status unregister_node(device::Reservations& resv, device::ReservationKey key);

// The disk heartbeats of every slot as one node sees them over time.
class DiskHeartbeats {
 public:
  struct Slot {
    format::Heartbeat beat;  // as last read (default: unreadable)
    bool readable = false;
    // When the counter was last seen to change, or first read.
    std::chrono::steady_clock::time_point changed{};
  };
  // Reads the heartbeat blocks of every slot in one I/O and notes which counters moved.
  Status sample(device::BlockDevice& dev, const format::Superblock& sb,
                std::chrono::steady_clock::time_point now);
  // How long slot `slot`'s counter has been still (0 when it moved at the last sample).
  std::chrono::milliseconds still_for(uint32_t slot, std::chrono::steady_clock::time_point now) const;
  const std::vector<Slot>& slots() const { return slots_; }

  // One more sample, long enough after the last one that a live node with heartbeat
  // `interval` beat in between (two beats and some slack); then moved() tells.
  Status sample_after_beats(device::BlockDevice& dev, const format::Superblock& sb,
                            std::chrono::milliseconds interval);
  // Whether the slot's counter changed at the last sample (after at least two).
  bool moved(uint32_t slot) const;

 private:
  std::vector<Slot> slots_;
  std::chrono::steady_clock::time_point last_{};
};

// Whether the coordinator of view `members` may fence the departed nodes `departed` now:
// yes when its side has more nodes, or as many and the lowest id; otherwise only once each
// departed node's disk heartbeat has been still for `still_needed` (`still_for` of each).
bool may_fence_now(const std::vector<NodeId>& members, const std::vector<NodeId>& departed,
                   const std::map<NodeId, std::chrono::milliseconds>& still_for,
                   std::chrono::milliseconds still_needed);

struct FailureManagerOptions {
  uint32_t node_id = 0;
  // Reservation keys derive from the cluster's name (device::node_reservation_key).
  std::string cluster_name;
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds dead_after{5000};
  // Tests: added before every write of a departed node's journal replay, so that a test can
  // kill the recovering node in the middle of it (SHAREDFS_TEST_REPLAY_WRITE_DELAY_MS).
  std::chrono::milliseconds replay_write_delay{0};
};

struct FailureHooks {
  // Replays slot `slot`'s journal on `dev` (journal::replay); returns transactions replayed.
  std::function<Result<uint64_t>(device::BlockDevice& dev, uint32_t slot)> replay_journal;
  // After the DLM let the dead node's locks go: orphans and the slot (FileSystem::recover_slot).
  std::function<Status(uint32_t slot, uint32_t dead_node)> recover_slot;
  // This node must withdraw; `reason` is one line for the operator. Called at most once.
  std::function<void(const std::string& reason)> withdraw;
};

class FailureManager {
 public:
  // `dev` is the node's guarded device (device/fence_guard.h): once we are fenced, our own
  // recovery writes are refused too.
  FailureManager(FailureManagerOptions options, const format::Superblock& sb,
                 device::BlockDevice& dev, device::Reservations& resv, dlm::DlmNode& node,
                 FailureHooks hooks);
  ~FailureManager();  // stop()
  FailureManager(const FailureManager&) = delete;
  FailureManager& operator=(const FailureManager&) = delete;

  void start();
  // Stops the thread (a recovery in progress finishes its current step first).
  void stop();
  // Recoveries this node completed (tests, statistics).
  uint64_t recoveries() const;

 private:
  void run();
  void step();
  // Steps 1-4 for one departed member. kBusy: try again next interval.
  Status fence_and_replay(const dlm::Member& departed);
  Status mark_heartbeat(uint32_t slot, uint32_t node, format::HeartbeatState state);
  void withdraw(const std::string& reason);

  const FailureManagerOptions opts_;
  const format::Superblock sb_;
  device::BlockDevice& dev_;
  device::Reservations& resv_;
  dlm::DlmNode& node_;
  const FailureHooks hooks_;
  DiskHeartbeats beats_;
  // Departed members this node already recovered (their view may take a moment to come).
  std::set<dlm::Member> recovered_;
  // Departed members we are waiting to fence, logged once each.
  std::set<dlm::Member> waiting_logged_;
  // Departed members found already fenced, and whose replay began: logged once each.
  std::set<dlm::Member> fenced_logged_;
  std::set<dlm::Member> replay_logged_;
  // The last failure logged per departed member whose recovery is retried.
  std::map<dlm::Member, std::string> failure_logged_;
  // When this node began to recover each departed member (the "recovered" line's time).
  std::map<dlm::Member, std::chrono::steady_clock::time_point> recovery_began_;
  bool heartbeat_read_failing_ = false;
  bool withdrawn_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;        // GUARDED_BY(mu_)
  uint64_t recoveries_ = 0;  // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace sharedfs::cluster
