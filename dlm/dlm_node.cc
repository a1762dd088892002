#include "dlm/dlm_node.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

namespace sharedfs::dlm {

namespace {
uint64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

Result<std::unique_ptr<DlmNode>> DlmNode::start(DlmNodeOptions options, LockCache::FlushHook flush,
                                                LockCache::BlockedHook blocked) {
  ASSIGN_OR_RETURN(auto transport, ZmqTransport::open(options.self.id, options.peers));
  const int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return errno_status(errno, "eventfd");
  return std::unique_ptr<DlmNode>(new DlmNode(std::move(options), std::move(transport),
                                              std::move(flush), std::move(blocked), fd));
}

DlmNode::DlmNode(DlmNodeOptions options, std::unique_ptr<ZmqTransport> transport,
                 LockCache::FlushHook flush, LockCache::BlockedHook blocked, int wake_fd)
    : opts_(std::move(options)),
      transport_(std::move(transport)),
      manager_(LockManagerOptions{opts_.self, opts_.cluster_secret, transport_.get(),
                                  opts_.retransmit_ms, /*log_rejected=*/true,
                                  [this](const Message& m) { heartbeats_in_.push_back(m); }}),
      cache_(manager_, std::move(flush), std::move(blocked)),
      wake_fd_(wake_fd),
      codec_(opts_.cluster_secret),
      thread_([this] { run(); }) {}

DlmNode::~DlmNode() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  thread_.join();
  close(wake_fd_);
}

void DlmNode::post(Task task) {
  {
    std::lock_guard lock(mu_);
    tasks_.push_back(std::move(task));
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

void DlmNode::call(const Task& task) {
  std::promise<void> done;
  post([&](LockManager& lm, LockCache& cache) {
    task(lm, cache);
    done.set_value();
  });
  done.get_future().wait();
}

Status DlmNode::set_membership(const Membership& membership) {
  Status status;
  call([&](LockManager& lm, LockCache&) { status = lm.set_membership(membership); });
  return status;
}

Status DlmNode::journal_replayed(const Member& departed) {
  Status status;
  call([&](LockManager& lm, LockCache&) { status = lm.journal_replayed(departed); });
  return status;
}

Status DlmNode::join(const MembershipAgentOptions& options, std::chrono::milliseconds timeout) {
  post([this, options](LockManager& lm, LockCache&) {
    SHAREDFS_CHECK(!agent_, "DlmNode::join called twice");
    auto send = [this](const Message& m) { transport_->send(m.to, codec_.encode(m)); };
    auto install = [this, &lm](const View& v) {
      Status st = lm.set_membership(v.membership);
      if (!st) {
        spdlog::error("dlm node {}: epoch {}: {}", opts_.self.to_string(), v.membership.epoch,
                      st.to_string());
        return;
      }
      for (const Member& c : v.clean) {
        if (std::find(v.membership.members.begin(), v.membership.members.end(), c) ==
            v.membership.members.end()) {
          (void)lm.journal_replayed(c);
        }
      }
    };
    agent_ = std::make_unique<MembershipAgent>(options, send, install);
    agent_->start(now_ms());
    drive_membership(now_ms());
  });
  std::unique_lock lock(mu_);
  if (!membership_cv_.wait_for(lock, timeout, [&] { return joined_; })) {
    return make_status(Code::kBusy,
                       "node {} was not admitted to the cluster within {} ms (are the other "
                       "nodes' addresses and the cluster secret right?)",
                       opts_.self.id.value, timeout.count());
  }
  return Status::ok();
}

Status DlmNode::leave(std::chrono::milliseconds timeout) {
  post([this](LockManager&, LockCache&) {
    if (!agent_) return;
    agent_->leave(now_ms());
    drive_membership(now_ms());
  });
  std::unique_lock lock(mu_);
  if (!membership_cv_.wait_for(lock, timeout, [&] { return left_ || !joined_; })) {
    return make_status(Code::kBusy, "node {}: no other node confirmed its departure in {} ms",
                       opts_.self.id.value, timeout.count());
  }
  return Status::ok();
}

void DlmNode::mark_replayed(const Member& departed) {
  post([this, departed](LockManager&, LockCache&) {
    if (agent_) agent_->mark_clean(departed, now_ms());
  });
}

void DlmNode::withdraw() {
  post([this](LockManager&, LockCache&) {
    if (agent_) agent_->stop();
  });
}

DlmNode::MembershipStatus DlmNode::membership_status() {
  MembershipStatus out;
  call([&](LockManager& lm, LockCache&) {
    out.awaiting_replay = lm.awaiting_replay();
    if (!agent_) return;
    const uint64_t now = now_ms();
    out.joined = agent_->joined();
    out.expelled = agent_->expelled();
    out.coordinator = agent_->coordinator(now);
    out.view = agent_->view();
    out.peers = agent_->peers(now);
  });
  return out;
}

// Driver thread: hands queued heartbeats to the agent and publishes joined/left.
void DlmNode::drive_membership(uint64_t now) {
  if (!agent_) {
    heartbeats_in_.clear();
    return;
  }
  for (const Message& m : heartbeats_in_) agent_->on_heartbeat(m, now);
  heartbeats_in_.clear();
  agent_->tick(now);
  std::lock_guard lock(mu_);
  if (joined_ != agent_->joined() || left_ != agent_->left()) {
    joined_ = agent_->joined();
    left_ = agent_->left();
    membership_cv_.notify_all();
  }
}

void DlmNode::run() {
  uint64_t last_tick = now_ms();
  std::deque<Task> batch;
  for (;;) {
    const uint64_t now = now_ms();
    const uint64_t next = last_tick + opts_.tick_ms;
    const int timeout = now >= next ? 0 : static_cast<int>(next - now);
    const Status st = transport_->poll(
        timeout, wake_fd_, [this](std::span<const std::byte> bytes) { manager_.receive(bytes); });
    SHAREDFS_CHECK(st.is_ok(), "dlm transport failed");
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = read(wake_fd_, &count, sizeof(count));
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
      batch.swap(tasks_);
    }
    for (auto& task : batch) task(manager_, cache_);
    batch.clear();
    if (!heartbeats_in_.empty() || now_ms() >= last_tick + opts_.tick_ms) {
      drive_membership(now_ms());
    }
    if (now_ms() >= last_tick + opts_.tick_ms) {
      last_tick = now_ms();
      manager_.tick(last_tick);
    }
    transport_->flush();  // everything this iteration produced, one message per peer
  }
}

}  // namespace sharedfs::dlm
