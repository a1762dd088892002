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

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <vector>

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
  format::JournalHeader header_;            // GUARDED_BY(mu_): tail as on the device
  uint64_t head_;                           // GUARDED_BY(mu_): next log position
  uint64_t next_seq_;                       // GUARDED_BY(mu_)
  std::vector<Committed> live_;             // GUARDED_BY(mu_): in log order
  std::map<uint64_t, Image> pending_;       // GUARDED_BY(mu_): not yet at home
  std::map<uint64_t, uint64_t> home_seq_;   // GUARDED_BY(mu_): seq at home, for live targets
  JournalStats stats_;                      // GUARDED_BY(mu_)
};

struct ReplayResult {
  uint64_t transactions = 0;    // complete transactions found
  uint64_t blocks_written = 0;  // images written home
  uint64_t images_revoked = 0;  // images skipped because of a revoke
  uint64_t next_sequence = 0;
};

// Replays `slot`'s journal and leaves it empty and clean. Safe to repeat, and safe to
// interrupt: a replay cut short is simply done again.
Result<ReplayResult> replay(device::BlockDevice& dev, const format::Superblock& sb,
                            uint32_t slot);

}  // namespace sharedfs::journal
