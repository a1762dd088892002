#include "journal/journal.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace sharedfs::journal {
namespace {

using device::AlignedBuffer;
using format::BlockContext;
using format::BlockType;

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

Result<format::JournalHeader> read_header(device::BlockDevice& dev, const format::Superblock& sb,
                                          uint32_t slot) {
  const uint64_t blk = sb.geo.journal_header_blkno(slot);
  AlignedBuffer buf(sb.geo.block_size);
  RETURN_IF_ERROR(dev.read(blk * sb.geo.block_size, buf.span())
                      .with_context(fmt::format("reading journal header of slot {}", slot)));
  ASSIGN_OR_RETURN(auto hdr, format::JournalHeader::decode(buf.span(), {blk, sb.fs_tag()}));
  if (hdr.slot != slot || hdr.region_blocks != sb.geo.journal_blocks) {
    return make_status(Code::kCorruption,
                       "journal header at block {} describes slot {} with {} blocks", blk, hdr.slot,
                       hdr.region_blocks);
  }
  return hdr;
}

// Where the log of a slot lies: [start, end), circular.
struct LogRegion {
  uint64_t start;
  uint64_t end;
  uint64_t capacity() const { return end - start; }
  uint64_t wrap(uint64_t pos) const { return start + (pos - start) % capacity(); }
};

LogRegion log_region(const format::Superblock& sb, uint32_t slot) {
  const uint64_t hdr = sb.geo.journal_header_blkno(slot);
  return {hdr + 1, hdr + sb.geo.journal_blocks};
}


}  // namespace

// ---------------------------------------------------------------------------------------
// Transaction

void Transaction::write(uint64_t blkno, std::span<const std::byte> image) {
  revokes_.erase(blkno);  // writing it again cancels an earlier revoke, as in JBD2
  images_[blkno].assign(image.begin(), image.end());
}

void Transaction::revoke(uint64_t blkno) {
  images_.erase(blkno);
  revokes_.insert(blkno);
}

// ---------------------------------------------------------------------------------------
// Journal

Journal::Journal(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot,
                 format::JournalHeader header)
    : dev_(dev),
      sb_(sb),
      slot_(slot),
      bs_(sb.geo.block_size),
      log_start_(log_region(sb, slot).start),
      log_end_(log_region(sb, slot).end),
      header_(header),
      head_(header.tail_block),
      next_seq_(header.tail_sequence) {}

Journal::~Journal() = default;

Result<bool> complete_transaction_at_tail(device::BlockDevice& dev, const format::Superblock& sb,
                                          uint32_t slot, const format::JournalHeader& hdr);

Result<std::unique_ptr<Journal>> Journal::open(device::BlockDevice& dev,
                                               const format::Superblock& sb, uint32_t slot) {
  if (slot >= sb.geo.slots) {
    return make_status(Code::kInvalidArgument, "slot {} does not exist ({} slots)", slot,
                       sb.geo.slots);
  }
  ASSIGN_OR_RETURN(auto hdr, read_header(dev, sb, slot));
  // A complete transaction at the tail must be replayed first; a torn one (a crash before
  // its commit block) is what replay ignores, and new transactions overwrite it.
  ASSIGN_OR_RETURN(bool complete, complete_transaction_at_tail(dev, sb, slot, hdr));
  if (complete) {
    return make_status(Code::kBusy, "the journal of slot {} holds transactions: replay it first",
                       slot);
  }
  auto j = std::unique_ptr<Journal>(new Journal(dev, sb, slot, hdr));
  j->header_.state = format::JournalState::kDirty;
  std::lock_guard lock(j->mu_);
  RETURN_IF_ERROR(j->write_header());
  return j;
}

uint64_t Journal::wrap(uint64_t pos) const { return LogRegion{log_start_, log_end_}.wrap(pos); }

uint64_t Journal::log_capacity() const { return log_end_ - log_start_; }

uint64_t Journal::used_locked() const {
  if (live_.empty()) return 0;
  const uint64_t tail = live_.front().start;
  const uint64_t cap = log_capacity();
  return (head_ + cap - tail) % cap;
}

uint64_t Journal::log_used() const {
  std::lock_guard lock(mu_);
  return used_locked();
}

uint64_t Journal::next_sequence() const {
  std::lock_guard lock(mu_);
  return next_seq_;
}

JournalStats Journal::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

bool Journal::read_committed(uint64_t blkno, std::span<std::byte> out) const {
  std::lock_guard lock(mu_);
  auto it = pending_.find(blkno);
  if (it == pending_.end()) return false;
  SHAREDFS_CHECK(out.size() == it->second.data->size(), "read_committed buffer size");
  std::memcpy(out.data(), it->second.data->data(), out.size());
  return true;
}

Status Journal::write_header() {
  AlignedBuffer buf(bs_);
  const uint64_t blk = log_start_ - 1;
  header_.encode(buf.span(), {blk, sb_.fs_tag()});
  // FUA: the new tail must be durable before log space behind it is reused.
  return dev_.write(blk * bs_, buf.span(), {.fua = true})
      .with_context(fmt::format("writing journal header of slot {}", slot_));
}

// Writes consecutive log blocks starting at `pos`, split where the log wraps.
Status Journal::write_log(uint64_t pos, std::span<const std::byte> blocks) {
  const uint64_t n = blocks.size() / bs_;
  const uint64_t first = std::min(n, log_end_ - pos);
  RETURN_IF_ERROR(dev_.write(pos * bs_, blocks.first(first * bs_)));
  if (first < n) RETURN_IF_ERROR(dev_.write(log_start_ * bs_, blocks.subspan(first * bs_)));
  stats_.log_blocks_written += n;
  return Status::ok();
}

Result<uint64_t> Journal::commit(Transaction txn) {
  if (txn.empty()) {
    std::lock_guard lock(mu_);
    return commit_locked(txn);
  }
  const auto start = std::chrono::steady_clock::now();
  Result<uint64_t> seq = [&] {
    std::lock_guard lock(mu_);
    return commit_locked(txn);
  }();
  commit_latency_.observe(std::chrono::steady_clock::now() - start);
  return seq;
}

Result<uint64_t> Journal::commit_locked(const Transaction& txn) {
  if (txn.empty()) return next_seq_ - 1;
  const uint64_t desc_cap = format::JournalDescriptor::capacity(bs_);
  const uint64_t revoke_cap = format::JournalRevoke::capacity(bs_);
  const uint64_t nimages = txn.images_.size();
  const uint64_t ndesc = div_up(nimages, desc_cap);
  const uint64_t nrevoke = div_up(txn.revokes_.size(), revoke_cap);
  const uint64_t nblocks = ndesc + nimages + nrevoke + 1;  // + commit
  if (nblocks >= log_capacity()) {
    return make_status(Code::kNoSpace,
                       "transaction of {} blocks does not fit the {}-block journal of slot {}",
                       nblocks, log_capacity(), slot_);
  }
  // Keep one block free so a full log never looks empty (head == tail).
  if (used_locked() + nblocks >= log_capacity()) RETURN_IF_ERROR(checkpoint_locked());

  const uint64_t seq = next_seq_;
  const uint32_t tag = sb_.fs_tag();
  AlignedBuffer body((nblocks - 1) * bs_);
  uint64_t i = 0;  // block index within the transaction
  auto block_at = [&](uint64_t k) { return body.span().subspan(k * bs_, bs_); };
  auto image_it = txn.images_.begin();
  for (uint64_t d = 0; d < ndesc; ++d) {
    format::JournalDescriptor desc{.seq = seq};
    const uint64_t desc_index = i++;
    for (uint64_t k = 0; k < desc_cap && image_it != txn.images_.end(); ++k, ++image_it) {
      const auto& [target, image] = *image_it;
      SHAREDFS_CHECK(image.size() == bs_, "journal image is not one block");
      std::memcpy(block_at(i++).data(), image.data(), bs_);
      desc.entries.push_back({target, crc32c(image)});
    }
    desc.encode(block_at(desc_index), {wrap(head_ + desc_index), tag});
  }
  auto revoke_it = txn.revokes_.begin();
  for (uint64_t r = 0; r < nrevoke; ++r) {
    format::JournalRevoke rev{.seq = seq};
    for (uint64_t k = 0; k < revoke_cap && revoke_it != txn.revokes_.end(); ++k, ++revoke_it) {
      rev.blocks.push_back(*revoke_it);
    }
    rev.encode(block_at(i), {wrap(head_ + i), tag});
    ++i;
  }
  SHAREDFS_CHECK(i == nblocks - 1, "journal transaction layout");

  RETURN_IF_ERROR(write_log(head_, body.span()).with_context("writing journal blocks"));
  // Everything before the commit block — the caller's data, our descriptors and images —
  // is durable before the commit block can be.
  RETURN_IF_ERROR(dev_.flush().with_context("flushing before journal commit"));
  AlignedBuffer commit_block(bs_);
  const uint64_t commit_pos = wrap(head_ + nblocks - 1);
  format::JournalCommit commit{.seq = seq,
                               .log_blocks = static_cast<uint32_t>(nblocks - 1),
                               .image_count = static_cast<uint32_t>(nimages),
                               .commit_ns = now_ns()};
  commit.encode(commit_block.span(), {commit_pos, tag});
  RETURN_IF_ERROR(dev_.write(commit_pos * bs_, commit_block.span(), {.fua = true})
                      .with_context("writing journal commit block"));
  ++stats_.log_blocks_written;

  Committed c{.seq = seq, .start = head_, .blocks = nblocks, .targets = {}};
  for (const auto& [target, image] : txn.images_) {
    c.targets.push_back(target);
    pending_[target] = Image{seq, std::make_shared<std::vector<std::byte>>(image)};
  }
  // A revoked block's content at home is authoritative (it was written home already, or
  // it was freed and may now hold another node's data): never write it home from here.
  for (uint64_t b : txn.revokes_) pending_.erase(b);
  live_.push_back(std::move(c));
  head_ = wrap(head_ + nblocks);
  ++next_seq_;
  ++stats_.commits;
  return seq;
}

Status Journal::checkpoint() {
  std::lock_guard lock(mu_);
  return checkpoint_locked();
}

Status Journal::checkpoint_locked() {
  // Home writes in block order, contiguous runs coalesced.
  auto it = pending_.begin();
  while (it != pending_.end()) {
    auto run_end = std::next(it);
    uint64_t n = 1;
    while (run_end != pending_.end() && run_end->first == it->first + n) {
      ++run_end;
      ++n;
    }
    AlignedBuffer buf(n * bs_);
    uint64_t k = 0;
    for (auto r = it; r != run_end; ++r, ++k) {
      std::memcpy(buf.data() + k * bs_, r->second.data->data(), bs_);
    }
    RETURN_IF_ERROR(dev_.write(it->first * bs_, buf.span())
                        .with_context(fmt::format("checkpointing block {}", it->first)));
    stats_.blocks_checkpointed += n;
    it = run_end;
  }
  RETURN_IF_ERROR(dev_.flush().with_context("flushing checkpoint"));
  pending_.clear();
  ++stats_.checkpoints;
  return advance_tail_locked();
}

Status Journal::advance_tail_locked() {
  // A transaction may leave the log once none of its images is the latest one not yet at
  // home. A revoke-only transaction at the front cancels nothing still in the log.
  auto needed = [&](const Committed& c) {
    for (uint64_t t : c.targets) {
      auto p = pending_.find(t);
      if (p != pending_.end() && p->second.seq == c.seq) return true;
    }
    return false;
  };
  size_t drop = 0;
  while (drop < live_.size() && !needed(live_[drop])) ++drop;
  live_.erase(live_.begin(), live_.begin() + static_cast<std::ptrdiff_t>(drop));
  const uint64_t tail = live_.empty() ? head_ : live_.front().start;
  const uint64_t tail_seq = live_.empty() ? next_seq_ : live_.front().seq;
  if (tail == header_.tail_block && tail_seq == header_.tail_sequence) return Status::ok();
  header_.tail_block = tail;
  header_.tail_sequence = tail_seq;
  return write_header();
}

Status Journal::checkpoint_blocks(std::span<const uint64_t> blocks) {
  std::lock_guard lock(mu_);
  Transaction revoke;
  bool wrote = false;
  for (uint64_t b : blocks) {
    auto p = pending_.find(b);
    if (p != pending_.end()) {
      AlignedBuffer buf(bs_);  // direct I/O wants an aligned buffer
      std::memcpy(buf.data(), p->second.data->data(), bs_);
      RETURN_IF_ERROR(
          dev_.write(b * bs_, buf.span()).with_context(fmt::format("checkpointing block {}", b)));
      ++stats_.blocks_checkpointed;
      wrote = true;
    }
    // Revoke only what an older image in the log could bring back.
    for (const Committed& c : live_) {
      if (std::find(c.targets.begin(), c.targets.end(), b) != c.targets.end()) {
        revoke.revoke(b);
        break;
      }
    }
  }
  if (wrote) RETURN_IF_ERROR(dev_.flush().with_context("flushing checkpointed blocks"));
  for (uint64_t b : blocks) pending_.erase(b);
  if (!revoke.empty()) RETURN_IF_ERROR(commit_locked(revoke).status());
  return advance_tail_locked();
}

Status Journal::close() {
  std::lock_guard lock(mu_);
  RETURN_IF_ERROR(checkpoint_locked());
  header_.state = format::JournalState::kClean;
  return write_header();
}

// ---------------------------------------------------------------------------------------
// Replay

namespace {

// Reads one transaction starting at `pos`; nullopt if there is no complete, intact
// transaction `seq` there, with the reason in `why`. `end` receives the position after its
// commit block.
Result<std::optional<ScannedTransaction>> scan_transaction(device::BlockDevice& dev,
                                                           const LogRegion& log, uint32_t bs,
                                                           uint32_t tag, uint64_t pos, uint64_t seq,
                                                           uint64_t* end, std::string* why) {
  ScannedTransaction t{.seq = seq, .start = pos};
  AlignedBuffer blk(bs);
  uint64_t n = 0;  // blocks of this transaction before the commit
  auto read = [&](uint64_t p) { return dev.read(p * bs, blk.span()); };
  auto none = [&](std::string reason) {
    *why = std::move(reason);
    return std::optional<ScannedTransaction>();
  };
  auto wrong_seq = [&](uint64_t p, std::string_view what, uint64_t found) {
    return none(fmt::format("block {} is a {} of transaction {}, not {}", p, what, found, seq));
  };
  while (n + 1 < log.capacity()) {
    const uint64_t p = log.wrap(pos + n);
    RETURN_IF_ERROR(read(p));
    const BlockContext ctx{p, tag};
    const uint32_t magic = format::peek_magic(blk.span());
    switch (static_cast<BlockType>(magic)) {
      case BlockType::kJournalDescriptor: {
        auto d = format::JournalDescriptor::decode(blk.span(), ctx);
        if (!d) return none(d.status().message());
        if (d->seq != seq) return wrong_seq(p, "descriptor", d->seq);
        for (size_t k = 0; k < d->entries.size(); ++k) {
          const uint64_t ip = log.wrap(pos + n + 1 + k);
          RETURN_IF_ERROR(read(ip));
          // A torn or missing image makes the whole transaction void.
          if (crc32c(blk.span()) != d->entries[k].image_crc) {
            return none(fmt::format(
                "image of block {} at block {} does not match its descriptor's checksum "
                "(transaction {} is torn)",
                d->entries[k].target, ip, seq));
          }
          t.images.emplace_back(d->entries[k].target, ip);
        }
        n += 1 + d->entries.size();
        break;
      }
      case BlockType::kJournalRevoke: {
        auto r = format::JournalRevoke::decode(blk.span(), ctx);
        if (!r) return none(r.status().message());
        if (r->seq != seq) return wrong_seq(p, "revoke block", r->seq);
        t.revokes.insert(t.revokes.end(), r->blocks.begin(), r->blocks.end());
        n += 1;
        break;
      }
      case BlockType::kJournalCommit: {
        auto c = format::JournalCommit::decode(blk.span(), ctx);
        if (!c) return none(c.status().message());
        if (c->seq != seq) return wrong_seq(p, "commit block", c->seq);
        if (c->log_blocks != n || c->image_count != t.images.size()) {
          return none(fmt::format(
              "commit block {} of transaction {} counts {} blocks and {} images; the log holds "
              "{} and {}",
              p, seq, c->log_blocks, c->image_count, n, t.images.size()));
        }
        t.blocks = n + 1;
        t.commit_ns = c->commit_ns;
        *end = log.wrap(pos + n + 1);
        return std::optional<ScannedTransaction>(std::move(t));
      }
      default:
        return none(fmt::format(
            "block {} is not a journal block of transaction {} (magic {:#010x})", p, seq, magic));
    }
  }
  return none(fmt::format("transaction {} from block {} has no commit block", seq, pos));
}

}  // namespace

Result<bool> complete_transaction_at_tail(device::BlockDevice& dev, const format::Superblock& sb,
                                          uint32_t slot, const format::JournalHeader& hdr) {
  uint64_t end = 0;
  std::string why;
  ASSIGN_OR_RETURN(auto t,
                   scan_transaction(dev, log_region(sb, slot), sb.geo.block_size, sb.fs_tag(),
                                    hdr.tail_block, hdr.tail_sequence, &end, &why));
  return t.has_value();
}

Result<JournalScan> scan(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot) {
  if (slot >= sb.geo.slots) {
    return make_status(Code::kInvalidArgument, "slot {} does not exist ({} slots)", slot,
                       sb.geo.slots);
  }
  ASSIGN_OR_RETURN(auto hdr, read_header(dev, sb, slot));
  const LogRegion log = log_region(sb, slot);
  JournalScan out{.header = hdr, .log_start = log.start, .log_end = log.end};
  uint64_t pos = hdr.tail_block;
  uint64_t seq = hdr.tail_sequence;
  uint64_t scanned = 0;
  while (true) {
    if (scanned >= log.capacity()) {
      out.stop_reason = "the transactions fill the whole log";
      break;
    }
    uint64_t end = 0;
    ASSIGN_OR_RETURN(auto t, scan_transaction(dev, log, sb.geo.block_size, sb.fs_tag(), pos, seq,
                                              &end, &out.stop_reason));
    if (!t) break;
    scanned += (end + log.capacity() - pos) % log.capacity();
    out.transactions.push_back(std::move(*t));
    pos = end;
    ++seq;
  }
  out.end = pos;
  out.next_sequence = seq;
  return out;
}

Result<ReplayResult> replay(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot) {
  ASSIGN_OR_RETURN(JournalScan found, scan(dev, sb, slot));
  const std::vector<ScannedTransaction>& txns = found.transactions;
  const uint32_t bs = sb.geo.block_size;
  const uint32_t tag = sb.fs_tag();

  // The last unrevoked image of each block wins; a revoke in transaction R cancels the
  // images of transactions up to and including R.
  std::map<uint64_t, uint64_t> revoked_at;
  for (const auto& t : txns) {
    for (uint64_t b : t.revokes) revoked_at[b] = std::max(revoked_at[b], t.seq);
  }
  ReplayResult result{.transactions = txns.size(), .next_sequence = found.next_sequence};
  std::map<uint64_t, uint64_t> latest;  // target -> log position
  for (const auto& t : txns) {
    for (const auto& [target, p] : t.images) {
      auto r = revoked_at.find(target);
      if (r != revoked_at.end() && r->second >= t.seq) {
        ++result.images_revoked;
        continue;
      }
      latest[target] = p;
    }
  }
  AlignedBuffer blk(bs);
  for (const auto& [target, p] : latest) {
    RETURN_IF_ERROR(dev.read(p * bs, blk.span()));
    RETURN_IF_ERROR(
        dev.write(target * bs, blk.span()).with_context(fmt::format("replaying block {}", target)));
    ++result.blocks_written;
  }
  RETURN_IF_ERROR(dev.flush().with_context("flushing replayed blocks"));

  format::JournalHeader hdr = found.header;
  hdr.tail_block = found.end;
  hdr.tail_sequence = found.next_sequence;
  hdr.state = format::JournalState::kClean;
  AlignedBuffer hbuf(bs);
  const uint64_t hblk = found.log_start - 1;
  hdr.encode(hbuf.span(), {hblk, tag});
  RETURN_IF_ERROR(dev.write(hblk * bs, hbuf.span(), {.fua = true})
                      .with_context("writing journal header after replay"));
  return result;
}

}  // namespace sharedfs::journal
