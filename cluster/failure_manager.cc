#include "cluster/failure_manager.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace sharedfs::cluster {

namespace {

constexpr auto kWero = device::ReservationType::kWriteExclusiveRegistrantsOnly;

// Test-only: every write waits first, so that a recovery takes long enough to be killed in
// the middle (FailureManagerOptions::replay_write_delay).
class SlowWrites final : public device::BlockDevice {
 public:
  SlowWrites(device::BlockDevice& base, std::chrono::milliseconds delay) : base_(base), delay_(delay) {}
  uint32_t sector_size() const override { return base_.sector_size(); }
  uint64_t size_bytes() const override { return base_.size_bytes(); }
  std::string describe() const override { return base_.describe(); }
  Status read(uint64_t offset, std::span<std::byte> buf, const device::ReadOptions& o) override {
    return base_.read(offset, buf, o);
  }
  Status write(uint64_t offset, std::span<const std::byte> buf,
               const device::WriteOptions& o) override {
    std::this_thread::sleep_for(delay_);
    return base_.write(offset, buf, o);
  }
  Status flush(const device::FlushOptions& o) override { return base_.flush(o); }

 private:
  device::BlockDevice& base_;
  std::chrono::milliseconds delay_;
};

}  // namespace

Status register_node(device::Reservations& resv, device::ReservationKey key) {
  Status st = resv.register_key(key);
  if (st.code() == Code::kReservationConflict) {
    // This host is registered with another key (an older configuration): take ours.
    st = resv.register_key(key, {.ignore_existing_key = true});
  }
  RETURN_IF_ERROR(st.with_context("registering the node's reservation key"));
  for (int attempt = 0; attempt < 3; ++attempt) {
    ASSIGN_OR_RETURN(auto rep, resv.report());
    if (rep.type == kWero) return Status::ok();
    if (rep.type != device::ReservationType::kNone) {
      return make_status(Code::kBusy,
                         "the device holds a reservation of type {} that sharedfs did not take "
                         "(sharedfs uses Write Exclusive - Registrants Only)",
                         device::reservation_type_name(rep.type));
    }
    // Nobody holds it: take it. Another node doing the same at once wins the race; both
    // then see the type we want.
    (void)resv.acquire(key, kWero);
  }
  return make_status(Code::kBusy, "could not take the cluster's reservation on the device");
}

Status unregister_node(device::Reservations& resv, device::ReservationKey key) {
  return resv.unregister_key(key).with_context("removing the node's reservation key");
}

Status DiskHeartbeats::sample(device::BlockDevice& dev, const format::Superblock& sb,
                              std::chrono::steady_clock::time_point now) {
  const uint32_t bs = sb.geo.block_size;
  const uint32_t n = sb.geo.slots;
  device::AlignedBuffer buf(size_t{bs} * n);
  RETURN_IF_ERROR(dev.read(sb.geo.heartbeat_start * bs, buf.span()));
  if (slots_.size() != n) slots_.assign(n, Slot{});
  for (uint32_t s = 0; s < n; ++s) {
    auto beat = format::Heartbeat::decode(buf.span().subspan(size_t{s} * bs, bs),
                                          {sb.geo.heartbeat_blkno(s), sb.fs_tag()});
    Slot& slot = slots_[s];
    if (!beat) {
      slot.readable = false;  // caught mid-write, or damaged: judge by the next one
      continue;
    }
    if (!slot.readable || slot.changed == std::chrono::steady_clock::time_point{} ||
        beat->counter != slot.beat.counter || beat->node_id != slot.beat.node_id) {
      slot.changed = now;
    }
    slot.beat = *beat;
    slot.readable = true;
  }
  last_ = now;
  return Status::ok();
}

Status DiskHeartbeats::sample_after_beats(device::BlockDevice& dev, const format::Superblock& sb,
                                          std::chrono::milliseconds interval) {
  std::this_thread::sleep_for(2 * interval + std::chrono::milliseconds(200));
  return sample(dev, sb, std::chrono::steady_clock::now());
}

bool DiskHeartbeats::moved(uint32_t slot) const {
  return slot < slots_.size() && slots_[slot].readable && slots_[slot].changed == last_;
}

std::chrono::milliseconds DiskHeartbeats::still_for(uint32_t slot,
                                                    std::chrono::steady_clock::time_point now) const {
  if (slot >= slots_.size() || slots_[slot].changed == std::chrono::steady_clock::time_point{}) {
    return std::chrono::milliseconds(0);
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(now - slots_[slot].changed);
}

bool may_fence_now(const std::vector<NodeId>& members, const std::vector<NodeId>& departed,
                   const std::map<NodeId, std::chrono::milliseconds>& still_for,
                   std::chrono::milliseconds still_needed) {
  if (departed.empty()) return true;
  if (members.size() > departed.size()) return true;
  if (!members.empty() && members.size() == departed.size() &&
      *std::min_element(members.begin(), members.end()) <
          *std::min_element(departed.begin(), departed.end())) {
    return true;
  }
  // The smaller side: only nodes that stopped writing their heartbeats are dead; a live
  // one is on the larger side and fences us.
  return std::all_of(departed.begin(), departed.end(), [&](NodeId d) {
    auto it = still_for.find(d);
    return it != still_for.end() && it->second >= still_needed;
  });
}

FailureManager::FailureManager(FailureManagerOptions options, const format::Superblock& sb,
                               device::BlockDevice& dev, device::Reservations& resv,
                               dlm::DlmNode& node, FailureHooks hooks)
    : opts_(std::move(options)), sb_(sb), dev_(dev), resv_(resv), node_(node), hooks_(std::move(hooks)) {}

FailureManager::~FailureManager() { stop(); }

void FailureManager::start() {
  SHAREDFS_CHECK(!thread_.joinable(), "FailureManager started twice");
  thread_ = std::thread([this] { run(); });
}

void FailureManager::stop() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t FailureManager::recoveries() const {
  std::lock_guard l(mu_);
  return recoveries_;
}

void FailureManager::run() {
  std::unique_lock l(mu_);
  while (!stop_) {
    l.unlock();
    step();
    l.lock();
    cv_.wait_for(l, opts_.heartbeat_interval, [&] { return stop_; });
  }
}

void FailureManager::withdraw(const std::string& reason) {
  if (withdrawn_) return;
  withdrawn_ = true;
  if (hooks_.withdraw) hooks_.withdraw(reason);
}

void FailureManager::step() {
  if (withdrawn_) return;
  const auto now = std::chrono::steady_clock::now();
  if (auto st = beats_.sample(dev_, sb_, now); !st) {
    // Every interval until it reads again: one line when it starts failing, one when it ends.
    if (!heartbeat_read_failing_) {
      spdlog::warn("node {}: cannot read the disk heartbeats: {}", opts_.node_id, st.to_string());
    }
    heartbeat_read_failing_ = true;
  } else if (heartbeat_read_failing_) {
    heartbeat_read_failing_ = false;
    spdlog::info("node {}: reads the disk heartbeats again", opts_.node_id);
  }
  const auto ms = node_.membership_status();
  if (!ms.joined) return;
  if (ms.expelled) {
    return withdraw("a newer view of the cluster dropped this node: the other nodes declared it "
                    "dead and fence it");
  }
  // That another node fenced us is found by our next write (the disk heartbeat, every
  // interval: FenceGuard), or by fence_and_replay's report.
  if (!ms.coordinator) return;

  std::vector<dlm::Member> unrecovered;
  for (const dlm::Member& d : ms.awaiting_replay) {
    if (recovered_.contains(d)) continue;
    // A newer incarnation is back: its own mount replayed the journal before it joined, and
    // the next view marks this one clean. Fencing now would fence the new one.
    const bool restarted = std::any_of(ms.peers.begin(), ms.peers.end(), [&](const auto& p) {
      return p.id == d.id && p.member && p.member->incarnation > d.incarnation;
    });
    if (!restarted) unrecovered.push_back(d);
  }
  if (unrecovered.empty()) return;
  std::vector<NodeId> members, departed;
  std::map<NodeId, std::chrono::milliseconds> still;
  for (const auto& m : ms.view.membership.members) members.push_back(m.id);
  for (const auto& d : unrecovered) {
    departed.push_back(d.id);
    still[d.id] = beats_.still_for(d.id.value - 1, now);
  }
  if (!may_fence_now(members, departed, still, opts_.dead_after)) {
    for (const auto& d : unrecovered) {
      if (waiting_logged_.insert(d).second) {
        spdlog::warn("node {}: node {} is gone from the view but this side of the cluster is "
                     "the smaller one: fencing it only once its disk heartbeat stops",
                     opts_.node_id, d.id.value);
      }
    }
    return;
  }
  // Every journal first: taking a slot over needs ordinary locks, which the DLM holds back
  // while any departed node's journal is still to be replayed.
  std::vector<dlm::Member> replayed;
  for (const auto& d : unrecovered) {
    if (withdrawn_) return;
    Status st = fence_and_replay(d);
    if (!st) {
      // Tried again every interval: the same failure is logged once.
      if (auto [it, fresh] = failure_logged_.try_emplace(d, st.to_string());
          fresh || it->second != st.to_string()) {
        it->second = st.to_string();
        spdlog::error("node {}: recovering node {}: {} (trying again every {} ms)", opts_.node_id,
                      d.id.value, st.to_string(), opts_.heartbeat_interval.count());
      }
      continue;
    }
    failure_logged_.erase(d);
    recovered_.insert(d);
    replayed.push_back(d);
  }
  for (const auto& d : replayed) {
    if (withdrawn_) return;
    const uint32_t dead = d.id.value;
    Status st = hooks_.recover_slot ? hooks_.recover_slot(dead - 1, dead) : Status::ok();
    if (st) st = mark_heartbeat(dead - 1, dead, format::HeartbeatState::kRecovered);
    if (!st) {
      spdlog::error("node {}: taking over node {}'s slot: {}", opts_.node_id, dead, st.to_string());
      continue;
    }
    spdlog::warn("node {}: node {} recovered (journal replayed, orphans and slot {} taken over) "
                 "{} ms after its recovery began",
                 opts_.node_id, dead, dead - 1,
                 std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - recovery_began_[d])
                     .count());
    recovery_began_.erase(d);
    std::lock_guard l(mu_);
    ++recoveries_;
  }
}

Status FailureManager::mark_heartbeat(uint32_t slot, uint32_t node, format::HeartbeatState state) {
  const uint32_t bs = sb_.geo.block_size;
  const format::BlockContext ctx{sb_.geo.heartbeat_blkno(slot), sb_.fs_tag()};
  device::AlignedBuffer b(bs);
  RETURN_IF_ERROR(dev_.read(ctx.blkno * bs, b.span()));
  format::Heartbeat hb;
  if (auto old = format::Heartbeat::decode(b.span(), ctx)) hb = *old;
  hb.slot = slot;
  hb.node_id = node;
  hb.state = state;
  hb.by_node = opts_.node_id;
  hb.timestamp_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
  ++hb.seq;
  hb.encode(b.span(), ctx);
  return dev_.write(ctx.blkno * bs, b.span(), {.fua = true});
}

Status FailureManager::fence_and_replay(const dlm::Member& d) {
  const uint32_t dead = d.id.value;
  const uint32_t slot = dead - 1;
  const auto mine = device::node_reservation_key(opts_.cluster_name, opts_.node_id);
  const auto theirs = device::node_reservation_key(opts_.cluster_name, dead);
  const auto started = std::chrono::steady_clock::now();
  recovery_began_.try_emplace(d, started);

  // 1. Fence.
  ASSIGN_OR_RETURN(auto rep, resv_.report());
  if (rep.find_key(mine) == nullptr) {
    withdraw("this node's reservation key is no longer registered on the device: another "
             "node fenced it first");
    return make_status(Code::kBusy, "fenced ourselves");
  }
  if (rep.find_key(theirs) != nullptr) {
    spdlog::warn("node {}: fencing node {} (preempt-and-abort of reservation key {:#018x})",
                 opts_.node_id, dead, theirs);
    if (rep.type == device::ReservationType::kNone) (void)resv_.acquire(mine, kWero);
    Status st = resv_.preempt_and_abort(mine, theirs, kWero);
    if (!st) {
      ASSIGN_OR_RETURN(auto again, resv_.report());
      if (again.find_key(mine) == nullptr) {
        withdraw("this node's reservation key was removed while it fenced node " +
                 std::to_string(dead) + ": the other side of a partition fenced it first");
        return make_status(Code::kBusy, "fenced ourselves");
      }
      if (again.find_key(theirs) != nullptr) return st.with_context("fencing");
    }
    spdlog::warn("node {}: fenced node {}: reservation key {:#018x} removed, none of its writes "
                 "lands any more ({} ms)",
                 opts_.node_id, dead, theirs,
                 std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - started)
                     .count());
  } else if (fenced_logged_.insert(d).second) {
    // A recovery cut short (a coordinator died), or the fence of a partition's other side.
    spdlog::info("node {}: node {} is already fenced (reservation key {:#018x} not registered)",
                 opts_.node_id, dead, theirs);
  }
  // 2.-3. Mark and replay. A replay cut short is done again by whoever recovers next.
  RETURN_IF_ERROR(mark_heartbeat(slot, dead, format::HeartbeatState::kFenced));
  std::optional<SlowWrites> slow;
  if (opts_.replay_write_delay.count() > 0) slow.emplace(dev_, opts_.replay_write_delay);
  device::BlockDevice& replay_dev = slow ? static_cast<device::BlockDevice&>(*slow) : dev_;
  if (replay_logged_.insert(d).second) {  // once, though a failed replay is tried again
    spdlog::warn("node {}: replaying node {}'s journal (slot {})", opts_.node_id, dead, slot);
  }
  const auto replay_started = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const uint64_t txns, hooks_.replay_journal(replay_dev, slot));
  spdlog::warn("node {}: replayed node {}'s journal (slot {}, {} transactions) in {} ms",
               opts_.node_id, dead, slot, txns,
               std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - replay_started)
                   .count());
  // 4. The DLM lets the dead node's locks go with the next view.
  node_.mark_replayed(d);
  return Status::ok();
}

}  // namespace sharedfs::cluster
