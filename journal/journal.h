// journal/ — the per-node write-ahead metadata journal (DESIGN.md §5).
//
// Physical journaling, as JBD2 and GFS2 do it: a transaction is the full new images of the
// metadata blocks it changes (plus revocations). commit() writes them to the slot's
// circular log — descriptor blocks listing targets and image checksums, the images,
// revoke blocks — flushes, then writes a commit block with FUA. The caller writes the
// file data a transaction points at before committing it (ordered data): the flush before
// the commit block makes that data durable first.
//
// The journal is the only writer of metadata in place: checkpoint() writes the latest
// committed image of every block to its home, flushes and frees the log. The log wraps;
// when a transaction does not fit, commit() checkpoints first.
//
// Stale replay (DESIGN.md §4): before a node releases the lock covering some blocks it
// calls checkpoint_blocks(), which writes their latest images in place and commits a
// revoke record for them, so a later replay of this journal (after this node dies) never
// puts an image older than another node's change back. See docs/journal.md.
//
// replay() is idempotent: it writes only whole block images, each the last unrevoked one
// of a complete transaction (commit block valid and every image matching the checksum its
// descriptor recorded); a torn transaction at the end of the log is ignored.
//
// Thread-safety: Journal methods may be called from any thread; they serialize on one
// mutex (commits are ordered). Ownership: the Journal keeps a reference to the device,
// which must outlive it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/latency_histogram.h"
#include "common/status.h"
#include "device/device.h"
#include "format/format.h"

namespace sharedfs::journal {

// A transaction under construction. Not thread-safe; owned by its builder until commit.
class Transaction {
 public:
  // Records the full new image of `blkno` (exactly one block); a later write of the same
  // block in this transaction replaces the earlier image.
  void write(uint64_t blkno, std::span<const std::byte> image);
  // Cancels replay of every logged image of `blkno` up to and including this transaction.
  void revoke(uint64_t blkno);

  bool empty() const { return images_.empty() && revokes_.empty(); }
  size_t image_count() const { return images_.size(); }
  size_t revoke_count() const { return revokes_.size(); }

 private:
  friend class Journal;
  std::map<uint64_t, std::vector<std::byte>> images_;  // by target block
  std::set<uint64_t> revokes_;
};

struct JournalStats {
  uint64_t commits = 0;
  uint64_t checkpoints = 0;
  uint64_t log_blocks_written = 0;
  uint64_t blocks_checkpointed = 0;
};

class Journal {
 public:
  // Opens `slot`'s journal for this node's use and marks it dirty on the device. Refuses
  // (kBusy) a journal whose log still holds transactions: replay() it first.
  static Result<std::unique_ptr<Journal>> open(device::BlockDevice& dev,
                                               const format::Superblock& sb, uint32_t slot);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Makes `txn` durable and returns its sequence number. Fails with kNoSpace if the
  // transaction cannot fit the log even when empty.
  Result<uint64_t> commit(Transaction txn);

  // Writes every committed image to its home, flushes and empties the log.
  Status checkpoint();

  // Writes the committed images of `blocks` in place, flushes, and commits a revoke of
  // them. Afterwards replay cannot restore an older image of any of them.
  Status checkpoint_blocks(std::span<const uint64_t> blocks);

  // Checkpoints and marks the journal clean: what a clean unmount does last.
  Status close();

  // Copies the last committed image of `blkno` into `out` if it has not reached its home
  // yet (the device then holds an older version). Returns false otherwise.
  bool read_committed(uint64_t blkno, std::span<std::byte> out) const;

  uint64_t next_sequence() const;
  uint64_t log_capacity() const;  // usable log blocks
  uint64_t log_used() const;
  JournalStats stats() const;
  // How long commits of non-empty transactions took, waiting for the journal included.
  const LatencyHistogram& commit_latency() const { return commit_latency_; }

 private:
  struct Committed {
    uint64_t seq;
    uint64_t start;   // log position of its first block
    uint64_t blocks;  // log blocks, commit included
    std::vector<uint64_t> targets;
  };
  struct Image {
    uint64_t seq;
    std::shared_ptr<std::vector<std::byte>> data;
  };

  Journal(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot,
          format::JournalHeader header);

  Status write_log(uint64_t pos, std::span<const std::byte> blocks);
  Status write_header();
  Status checkpoint_locked();
  // Drops fully checkpointed transactions from the front of the log and records the new
  // tail in the header.
  Status advance_tail_locked();
  Result<uint64_t> commit_locked(const Transaction& txn);
  uint64_t used_locked() const;
  uint64_t wrap(uint64_t pos) const;

  device::BlockDevice& dev_;
  const format::Superblock sb_;
  const uint32_t slot_;
  const uint32_t bs_;
  const uint64_t log_start_;  // first log block (after the header)
  const uint64_t log_end_;    // one past the last log block

  mutable std::mutex mu_;
  format::JournalHeader header_;           // GUARDED_BY(mu_): tail as on the device
  uint64_t head_;                          // GUARDED_BY(mu_): next log position
  uint64_t next_seq_;                      // GUARDED_BY(mu_)
  std::vector<Committed> live_;            // GUARDED_BY(mu_): in log order
  std::map<uint64_t, Image> pending_;      // GUARDED_BY(mu_): not yet at home
  std::map<uint64_t, uint64_t> home_seq_;  // GUARDED_BY(mu_): seq at home, for live targets
  JournalStats stats_;                     // GUARDED_BY(mu_)
  LatencyHistogram commit_latency_;
};

struct ReplayResult {
  uint64_t transactions = 0;    // complete transactions found
  uint64_t blocks_written = 0;  // images written home
  uint64_t images_revoked = 0;  // images skipped because of a revoke
  uint64_t next_sequence = 0;
};

// A complete transaction found in the log, as replay sees it: every block decoded with the
// expected sequence and log position, every image matching its descriptor's checksum, the
// commit block's counts matching.
struct ScannedTransaction {
  uint64_t seq = 0;
  uint64_t start = 0;   // log position of its first block
  uint64_t blocks = 0;  // log blocks, commit included
  uint64_t commit_ns = 0;
  std::vector<std::pair<uint64_t, uint64_t>> images;  // (target block, log position)
  std::vector<uint64_t> revokes;
};

// What replay would read from a slot's journal, found without writing anything (replay
// itself and `sharedfs debug journal` use it).
struct JournalScan {
  format::JournalHeader header;
  uint64_t log_start = 0;  // first log block (after the header)
  uint64_t log_end = 0;    // one past the last log block
  // The chain of complete transactions from the header's tail, in order.
  std::vector<ScannedTransaction> transactions;
  uint64_t end = 0;            // log position after the last one: where the chain stopped
  uint64_t next_sequence = 0;  // the sequence expected at `end`
  std::string stop_reason;     // why no further transaction counts (torn, stale, ...)
};

Result<JournalScan> scan(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot);

// Replays `slot`'s journal and leaves it empty and clean. Safe to repeat, and safe to
// interrupt: a replay cut short is simply done again.
Result<ReplayResult> replay(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot);

// ---------------------------------------------------------------------------------------
// The running transaction and the metadata block cache (JBD2's handle model).
//
// File-system operations change metadata in cached Buffers and join the one running
// transaction through a Handle. commit() closes the running transaction (new handles
// wait for the next one, open handles are waited for), snapshots every buffer marked
// dirty, and hands the images to the Journal. Many operations share one commit (group
// commit), and a buffer changed by several operations is logged once.
//
// Locking: a Buffer's bytes are guarded by the caller's lock on the resource that covers
// the block (inode lock, AG lock, ...), held while a Handle changes them; the manager's
// own mutex guards only its maps and the transaction state. Lock order: caller's locks,
// then the manager (never the other way round: no callback runs under the manager's
// mutex).

class Buffer {
 public:
  explicit Buffer(uint64_t blkno, uint32_t block_size) : blkno_(blkno), data_(block_size) {}
  uint64_t blkno() const { return blkno_; }
  std::span<std::byte> data() { return data_.span(); }
  std::span<const std::byte> data() const { return data_.span(); }

 private:
  const uint64_t blkno_;
  device::AlignedBuffer data_;
};
using BufferRef = std::shared_ptr<Buffer>;

class TransactionManager;

// One operation's membership of the running transaction. Move-only; ends when destroyed.
class Handle {
 public:
  Handle(Handle&& other) noexcept;
  Handle& operator=(Handle&&) = delete;
  Handle(const Handle&) = delete;
  ~Handle();

  // Records that this operation changed `b` (call after changing it, still under the lock
  // covering it).
  void dirty(const BufferRef& b);
  // The block was freed: drop it from the cache, log a revoke, never write it home.
  void revoke(uint64_t blkno);
  // Sequence number of the transaction this handle joined (for fsync: commit_until).
  uint64_t transaction() const { return seq_; }

 private:
  friend class TransactionManager;
  Handle(TransactionManager* tm, uint64_t seq) : tm_(tm), seq_(seq) {}
  TransactionManager* tm_;
  uint64_t seq_;
};

struct TransactionManagerOptions {
  // Cached clean buffers beyond this are dropped, least recently read first.
  size_t max_clean_buffers = 65536;
};

class TransactionManager {
 public:
  TransactionManager(device::BlockDevice& dev, Journal& journal, uint32_t block_size,
                     TransactionManagerOptions opts = {});
  ~TransactionManager();

  // Metadata block `blkno` as last changed in memory or committed: from the cache, else
  // the journal's not-yet-checkpointed image, else the device.
  Result<BufferRef> read(uint64_t blkno);
  // A block about to be initialised from scratch (freshly allocated): zeroed, not read.
  BufferRef create(uint64_t blkno);
  // Drops cached copies of `blocks` that no open transaction has dirtied (another node may
  // change them once our lock is gone).
  void forget(std::span<const uint64_t> blocks);
  // Drops every cached buffer that nothing else references and no transaction pins; returns
  // how many. A cluster node does this when it gives up a lock, after committing and
  // checkpointing, so that whatever it reads next comes from the device. A buffer still
  // referenced is in use by an operation under some other lock this node holds: still
  // valid, so kept.
  size_t drop_unused();

  // Joins the running transaction (waits while it is being closed).
  Handle begin();
  // Commits the running transaction if it holds changes; returns the sequence number of
  // the last committed transaction. Durable when it returns.
  Result<uint64_t> commit();
  // Commits if transaction `seq` (from Handle::transaction) is not durable yet.
  Status commit_until(uint64_t seq);
  uint64_t last_committed() const;
  size_t cached_buffers() const;
  // Blocks changed (or revoked) by the running transaction so far: callers commit before
  // a transaction outgrows the log.
  size_t running_changes() const;

 private:
  friend class Handle;
  enum class Action { kWrite, kRevoke };
  void end_handle(uint64_t seq);
  void mark(uint64_t seq, uint64_t blkno, const BufferRef& b, Action action);
  void trim_locked();
  bool pinned_locked(uint64_t blkno) const;

  device::BlockDevice& dev_;
  Journal& journal_;
  const uint32_t bs_;
  const TransactionManagerOptions opts_;

  std::mutex commit_mu_;  // one commit at a time; taken before mu_
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, BufferRef> cache_;  // GUARDED_BY(mu_)
  std::map<uint64_t, uint64_t> lru_;     // GUARDED_BY(mu_): blkno -> last use tick
  uint64_t tick_ = 0;                    // GUARDED_BY(mu_)
  // The running transaction: its sequence number, open handles, what it changed.
  uint64_t running_seq_;                                      // GUARDED_BY(mu_)
  int open_handles_ = 0;                                      // GUARDED_BY(mu_)
  bool closing_ = false;                                      // GUARDED_BY(mu_)
  std::map<uint64_t, std::pair<Action, BufferRef>> changes_;  // GUARDED_BY(mu_)
  std::set<uint64_t> committing_;  // GUARDED_BY(mu_): blocks of the commit in progress
  uint64_t last_committed_;        // GUARDED_BY(mu_)
};

}  // namespace sharedfs::journal
