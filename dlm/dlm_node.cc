#include "dlm/dlm_node.h"

#include <sys/eventfd.h>
#include <unistd.h>

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
                                  opts_.retransmit_ms}),
      cache_(manager_, std::move(flush), std::move(blocked)),
      wake_fd_(wake_fd),
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
    if (now_ms() >= last_tick + opts_.tick_ms) {
      last_tick = now_ms();
      manager_.tick(last_tick);
    }
    transport_->flush();  // everything this iteration produced, one message per peer
  }
}

}  // namespace sharedfs::dlm
