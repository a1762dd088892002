// The running transaction and the metadata block cache; see journal.h.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "journal/journal.h"

namespace sharedfs::journal {

// ---------------------------------------------------------------------------------------
// Handle

Handle::Handle(Handle&& other) noexcept : tm_(other.tm_), seq_(other.seq_) { other.tm_ = nullptr; }

Handle::~Handle() {
  if (tm_ != nullptr) tm_->end_handle(seq_);
}

void Handle::dirty(const BufferRef& b) {
  SHAREDFS_CHECK(tm_ != nullptr, "dirty() on an ended handle");
  tm_->mark(seq_, b->blkno(), b, TransactionManager::Action::kWrite);
}

void Handle::revoke(uint64_t blkno) {
  SHAREDFS_CHECK(tm_ != nullptr, "revoke() on an ended handle");
  tm_->mark(seq_, blkno, nullptr, TransactionManager::Action::kRevoke);
}

// ---------------------------------------------------------------------------------------
// TransactionManager

TransactionManager::TransactionManager(device::BlockDevice& dev, Journal& journal,
                                       uint32_t block_size, TransactionManagerOptions opts)
    : dev_(dev),
      journal_(journal),
      bs_(block_size),
      opts_(opts),
      running_seq_(journal.next_sequence()),
      last_committed_(journal.next_sequence() - 1) {}

TransactionManager::~TransactionManager() {
  std::lock_guard lock(mu_);
  SHAREDFS_CHECK(open_handles_ == 0, "transaction manager destroyed with open handles");
}

Result<BufferRef> TransactionManager::read(uint64_t blkno) {
  {
    std::lock_guard lock(mu_);
    auto it = cache_.find(blkno);
    if (it != cache_.end()) {
      lru_[blkno] = ++tick_;
      return it->second;
    }
  }
  // Read outside the mutex; if another thread raced us, the first insert wins.
  auto b = std::make_shared<Buffer>(blkno, bs_);
  if (!journal_.read_committed(blkno, b->data())) {
    RETURN_IF_ERROR(dev_.read(blkno * bs_, b->data())
                        .with_context(fmt::format("reading metadata block {}", blkno)));
  }
  std::lock_guard lock(mu_);
  auto [it, inserted] = cache_.emplace(blkno, b);
  lru_[blkno] = ++tick_;
  if (inserted) trim_locked();
  return it->second;
}

BufferRef TransactionManager::create(uint64_t blkno) {
  auto b = std::make_shared<Buffer>(blkno, bs_);
  std::lock_guard lock(mu_);
  cache_[blkno] = b;
  lru_[blkno] = ++tick_;
  trim_locked();
  return b;
}

void TransactionManager::forget(std::span<const uint64_t> blocks) {
  std::lock_guard lock(mu_);
  for (uint64_t b : blocks) {
    if (pinned_locked(b)) continue;  // still to be committed: keep the changed copy
    cache_.erase(b);
    lru_.erase(b);
  }
}

size_t TransactionManager::drop_unused() {
  std::lock_guard lock(mu_);
  size_t dropped = 0;
  for (auto it = cache_.begin(); it != cache_.end();) {
    if (it->second.use_count() == 1 && !pinned_locked(it->first)) {
      lru_.erase(it->first);
      it = cache_.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  return dropped;
}

// A changed buffer whose contents are neither in the journal nor on the device yet: changed
// in the running transaction, or in the one being written to the log right now.
bool TransactionManager::pinned_locked(uint64_t blkno) const {
  return changes_.contains(blkno) || committing_.contains(blkno);
}

// Drops the least recently read buffers beyond the limit, never a pinned one.
void TransactionManager::trim_locked() {
  if (cache_.size() <= opts_.max_clean_buffers) return;
  std::vector<std::pair<uint64_t, uint64_t>> by_age;  // (tick, blkno)
  by_age.reserve(lru_.size());
  for (const auto& [blkno, t] : lru_) by_age.emplace_back(t, blkno);
  std::sort(by_age.begin(), by_age.end());
  const size_t target = opts_.max_clean_buffers * 3 / 4;  // trim in batches, not per read
  for (const auto& [t, blkno] : by_age) {
    if (cache_.size() <= target) break;
    if (pinned_locked(blkno)) continue;
    cache_.erase(blkno);
    lru_.erase(blkno);
  }
}

Handle TransactionManager::begin() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !closing_; });
  ++open_handles_;
  return Handle(this, running_seq_);
}

void TransactionManager::end_handle(uint64_t seq) {
  std::lock_guard lock(mu_);
  SHAREDFS_CHECK(seq == running_seq_ && open_handles_ > 0, "handle outlived its transaction");
  if (--open_handles_ == 0) cv_.notify_all();
}

void TransactionManager::mark(uint64_t seq, uint64_t blkno, const BufferRef& b, Action action) {
  std::lock_guard lock(mu_);
  SHAREDFS_CHECK(seq == running_seq_, "change through a handle of a closed transaction");
  changes_[blkno] = {action, b};
  if (action == Action::kWrite) {
    // The buffer may have been trimmed between the caller's read() and now; the changed
    // copy must be the one later readers get.
    cache_[blkno] = b;
    lru_[blkno] = ++tick_;
  } else {
    cache_.erase(blkno);
    lru_.erase(blkno);
  }
}

Result<uint64_t> TransactionManager::commit() {
  std::lock_guard commit_lock(commit_mu_);
  Transaction txn;
  uint64_t seq = 0;
  {
    std::unique_lock lock(mu_);
    if (changes_.empty()) return last_committed_;
    // Close the running transaction: no new handle joins it, and every open one finishes
    // its changes before the snapshot.
    closing_ = true;
    cv_.wait(lock, [&] { return open_handles_ == 0; });
    for (const auto& [blkno, change] : changes_) {
      if (change.first == Action::kWrite) {
        txn.write(blkno, change.second->data());
        committing_.insert(blkno);
      } else {
        txn.revoke(blkno);
      }
    }
    changes_.clear();
    seq = running_seq_++;
    closing_ = false;
    cv_.notify_all();
  }
  // The journal I/O runs while the next transaction already takes new handles.
  auto committed = journal_.commit(std::move(txn));
  std::lock_guard lock(mu_);
  committing_.clear();  // the journal has the images now (or the node must withdraw)
  if (!committed) return committed.status();
  SHAREDFS_CHECK(*committed == seq, "journal and transaction manager disagree on sequence");
  last_committed_ = seq;
  return seq;
}

Status TransactionManager::commit_until(uint64_t seq) {
  {
    std::lock_guard lock(mu_);
    // Durable already, or a transaction that changed nothing: nothing to wait for.
    if (seq <= last_committed_ || (seq == running_seq_ && changes_.empty())) {
      return Status::ok();
    }
  }
  return commit().status();
}

uint64_t TransactionManager::last_committed() const {
  std::lock_guard lock(mu_);
  return last_committed_;
}

size_t TransactionManager::running_changes() const {
  std::lock_guard lock(mu_);
  return changes_.size();
}

size_t TransactionManager::cached_buffers() const {
  std::lock_guard lock(mu_);
  return cache_.size();
}

}  // namespace sharedfs::journal
