#include "dlm/dlm_node.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <set>

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
                                  [this](const Message& m) { heartbeats_in_.push_back(m); },
                                  [this](const Message& m) { on_query(m); }}),
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
  call([&](LockManager&, LockCache&) { out = membership_status_on_driver(); });
  return out;
}

DlmNode::MembershipStatus DlmNode::membership_status_on_driver() {
  MembershipStatus out;
  out.awaiting_replay = manager_.awaiting_replay();
  if (!agent_) return out;
  const uint64_t now = now_ms();
  out.joined = agent_->joined();
  out.expelled = agent_->expelled();
  out.coordinator = agent_->coordinator(now);
  out.view = agent_->view();
  out.peers = agent_->peers(now);
  return out;
}

void DlmNode::set_query_responder(QueryResponder responder) {
  call([&](LockManager&, LockCache&) { responder_ = std::move(responder); });
}

// Driver thread: a question from another node (answered at once), or an answer to ours.
void DlmNode::on_query(const Message& m) {
  if (m.type == MessageType::kQuery) {
    if (!responder_) return;
    Message reply;
    reply.type = MessageType::kQueryReply;
    reply.from = opts_.self;
    reply.to = m.from.id;
    reply.req_id = m.req_id;
    reply.text = responder_(m.text, manager_, cache_);
    if (reply.text.size() > kMaxQueryText) {
      reply.text = R"({"error": "answer too large"})";
    }
    transport_->send(reply.to, codec_.encode(reply));
    return;
  }
  std::lock_guard lock(mu_);
  auto it = answers_.find(m.req_id);
  if (it == answers_.end()) return;  // asked before, given up on since
  it->second[m.from.id.value] = m.text;
  answers_cv_.notify_all();
}

DlmNode::QueryAnswers DlmNode::query_all(const std::string& question,
                                         std::chrono::milliseconds timeout) {
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    id = next_query_++;
    answers_[id];
  }
  // Sends the question to every configured node that has not answered yet. Queries travel
  // outside the link layer (no retransmission) and ZeroMQ drops what it cannot queue yet,
  // so the question is asked again until the answers are in.
  auto ask = [this, id, question](LockManager&, LockCache&) {
    std::set<uint32_t> answered;
    {
      std::lock_guard lock(mu_);
      auto it = answers_.find(id);
      if (it == answers_.end()) return;  // the asker gave up meanwhile
      for (const auto& [node, text] : it->second) answered.insert(node);
    }
    // Every configured node is asked: one outside the view (withdrawn, or not heard) may
    // still answer, and says why it is out. Only the members are waited for.
    for (const Peer& p : opts_.peers) {
      if (p.id == opts_.self.id || answered.contains(p.id.value)) continue;
      Message q;
      q.type = MessageType::kQuery;
      q.from = opts_.self;
      q.to = p.id;
      q.req_id = id;
      q.text = question;
      transport_->send(p.id, codec_.encode(q));
    }
  };
  std::vector<uint32_t> members;
  call([&](LockManager& lm, LockCache& cache) {
    for (const Member& m : lm.members()) members.push_back(m.id.value);
    std::string own = responder_ ? responder_(question, lm, cache) : std::string();
    {
      std::lock_guard lock(mu_);
      answers_[id][opts_.self.id.value] = std::move(own);
    }
    ask(lm, cache);
  });
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  constexpr auto kAskAgain = std::chrono::milliseconds(200);
  std::unique_lock lock(mu_);
  auto all_in = [&] {
    const auto& got = answers_[id];
    return std::all_of(members.begin(), members.end(),
                       [&](uint32_t m) { return got.contains(m); });
  };
  while (!all_in()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    if (answers_cv_.wait_until(lock, std::min(deadline, now + kAskAgain), all_in)) break;
    lock.unlock();
    post(ask);
    lock.lock();
  }
  QueryAnswers out{std::move(members), std::move(answers_[id])};
  answers_.erase(id);
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
