// fsck.sharedfs's checks (docs/fsck.md lists them all). Each check reads one structure,
// validates it (decode checks magic, checksum, self block number, tag, version) and then its
// cross-references against the geometry; then the structure walk (fsck_walk.h) follows the
// tree from the root and the orphan lists, and its findings are reconciled with the AG
// bitmaps and headers. A problem names the block and the structure; with repair, a problem
// is fixed only where the right content is known for certain.
#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "journal/journal.h"
#include "mkfs/fsck_walk.h"
#include "mkfs/mkfs.h"

namespace sharedfs::mkfs {
namespace {

using device::AlignedBuffer;
using format::BlockContext;
using format::Geometry;
using format::Superblock;

class Checker {
 public:
  Checker(device::BlockDevice& dev, const FsckOptions& opts) : dev_(dev), opts_(opts) {}

  Result<FsckReport> run() {
    RETURN_IF_ERROR(check_superblocks());
    const Geometry& g = sb_.geo;
    RETURN_IF_ERROR(check_slot_table());
    for (uint32_t s = 0; s < g.slots; ++s) {
      RETURN_IF_ERROR(check_heartbeat(s));
      RETURN_IF_ERROR(check_orphans(s));
      RETURN_IF_ERROR(check_journal(s));
      progress("checking slots", s + 1, g.slots);
    }
    ag_bitmap_ok_.assign(g.ag_count, false);
    ag_inode_count_.assign(g.ag_count, std::nullopt);
    for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
      RETURN_IF_ERROR(check_ag(ag));
      progress("checking allocation groups", ag + 1, g.ag_count);
    }
    if (opts_.walk_tree) RETURN_IF_ERROR(check_tree());
    if (opts_.repair && dirty_) RETURN_IF_ERROR(dev_.flush().with_context("flushing repairs"));
    report_.superblock = sb_;
    return std::move(report_);
  }

 private:
  uint32_t bs() const { return sb_.geo.block_size; }
  void progress(std::string_view phase, uint64_t done, uint64_t total) const {
    if (opts_.progress) opts_.progress(phase, done, total);
  }
  BlockContext ctx(uint64_t blkno) const { return {blkno, sb_.fs_tag()}; }

  Status read_block(uint64_t blkno, AlignedBuffer& buf) {
    return dev_.read(blkno * buf.size(), buf.span())
        .with_context(fmt::format("reading block {}", blkno));
  }

  Status write_block(uint64_t blkno, const AlignedBuffer& buf) {
    dirty_ = true;
    return dev_.write(blkno * buf.size(), buf.span())
        .with_context(fmt::format("repairing block {}", blkno));
  }

  void problem(uint64_t blkno, std::string structure, std::string what, bool fixed = false) {
    report_.problems.push_back({blkno, std::move(structure), std::move(what), fixed});
  }

  void note(std::string text) {
    if (opts_.verbose) report_.notes.push_back(std::move(text));
  }

  // Decodes `blkno` as T; on failure records the problem and, when repair is on and
  // `rebuild` is given, writes the rebuilt structure in its place.
  template <typename T>
  Result<std::optional<T>> load(uint64_t blkno, const std::string& structure,
                                const std::function<std::optional<T>()>& rebuild = {}) {
    AlignedBuffer buf(bs());
    RETURN_IF_ERROR(read_block(blkno, buf));
    auto v = T::decode(buf.span(), ctx(blkno));
    if (v) return std::optional<T>(std::move(*v));
    std::optional<T> fresh;
    if (opts_.repair && rebuild) fresh = rebuild();
    if (fresh) {
      fresh->encode(buf.span(), ctx(blkno));
      RETURN_IF_ERROR(write_block(blkno, buf));
    }
    problem(blkno, structure, v.status().message(), fresh.has_value());
    return std::optional<T>();
  }

  template <typename T>
  Status store(uint64_t blkno, const T& value) {
    AlignedBuffer buf(bs());
    value.encode(buf.span(), ctx(blkno));
    return write_block(blkno, buf);
  }

  // Primary at block 0; the backup in the device's last block for the block size the
  // primary names, or, when the primary is unreadable, for each possible block size.
  Status check_superblocks() {
    const uint64_t size = dev_.size_bytes();
    AlignedBuffer first(format::kMinBlockSize);
    RETURN_IF_ERROR(dev_.read(0, first.span()).with_context("reading the superblock"));
    std::optional<Superblock> primary;
    std::string primary_error = "not a sharedfs superblock";
    uint32_t bs = format::sniff_block_size(first.span());
    if (bs >= format::kMinBlockSize && bs <= format::kMaxBlockSize && size >= 2 * uint64_t{bs} &&
        bs % dev_.sector_size() == 0 && (bs & (bs - 1)) == 0) {
      AlignedBuffer buf(bs);
      RETURN_IF_ERROR(dev_.read(0, buf.span()).with_context("reading the superblock"));
      auto sb = Superblock::decode(buf.span(), 0);
      if (sb) {
        primary = *sb;
      } else {
        primary_error = sb.status().message();
      }
    }
    std::optional<Superblock> backup;
    std::string backup_error = "not found";
    for (uint32_t cand = format::kMinBlockSize; cand <= format::kMaxBlockSize; cand *= 2) {
      if (primary && cand != primary->geo.block_size) continue;
      if (size < 2 * uint64_t{cand} || cand % dev_.sector_size() != 0) continue;
      const uint64_t blk = size / cand - 1;
      AlignedBuffer buf(cand);
      RETURN_IF_ERROR(dev_.read(blk * cand, buf.span()).with_context("reading the backup"));
      auto sb = Superblock::decode(buf.span(), blk);
      if (sb) {
        backup = *sb;
        break;
      }
      backup_error = sb.status().message();
    }
    if (!primary && !backup) {
      return make_status(Code::kNotFound,
                         "{} holds no sharedfs: superblock: {}; backup superblock: {}",
                         dev_.describe(), primary_error, backup_error);
    }
    sb_ = primary ? *primary : *backup;
    if (sb_.incompat_features & Superblock::kIncompatSlotAreaRewrite) {
      // The slot area is half old, half new layout: tunefs finishes it from the superblock.
      return make_status(Code::kBusy,
                         "{}: a tunefs.sharedfs change of the slot layout was interrupted; run "
                         "`tunefs.sharedfs DEVICE` again to finish it, then check",
                         dev_.describe());
    }
    if (sb_.geo.total_blocks > size / sb_.geo.block_size) {
      return make_status(Code::kInvalidArgument,
                         "{} is smaller ({} bytes) than the file system on it ({} blocks)",
                         dev_.describe(), size, sb_.geo.total_blocks);
    }
    const uint64_t backup_blk = sb_.geo.backup_superblock();
    if (!primary) {
      if (opts_.repair) RETURN_IF_ERROR(store_superblock(0));
      problem(0, "superblock", primary_error + " (the backup is good)", opts_.repair);
    } else if (!backup) {
      if (opts_.repair) RETURN_IF_ERROR(store_superblock(backup_blk));
      problem(backup_blk, "backup superblock", backup_error, opts_.repair);
    } else if (!primary->same_contents(*backup)) {
      // The primary is written last at every change, so it is the newer when both are good.
      if (opts_.repair) RETURN_IF_ERROR(store_superblock(backup_blk));
      problem(backup_blk, "backup superblock", "differs from the primary superblock", opts_.repair);
    }
    note(fmt::format("superblocks: block size {}, {} slots, {} AGs of {} blocks", bs, sb_.geo.slots,
                     sb_.geo.ag_count, sb_.geo.ag_blocks));
    return Status::ok();
  }

  Status store_superblock(uint64_t blkno) {
    AlignedBuffer buf(bs());
    sb_.encode(buf.span(), blkno);
    return write_block(blkno, buf);
  }

  Status check_slot_table() {
    const Geometry& g = sb_.geo;
    // No node is mounted while fsck runs, so an unreadable table can be reset to all
    // slots free; the next mounts claim theirs again.
    auto all_free = [&]() -> std::optional<format::SlotTable> {
      format::SlotTable t;
      t.slots.resize(g.slots);
      return t;
    };
    ASSIGN_OR_RETURN(auto table,
                     load<format::SlotTable>(g.slot_table_blkno, "slot table", all_free));
    if (table && table->slots.size() != g.slots) {
      if (opts_.repair) RETURN_IF_ERROR(store(g.slot_table_blkno, *all_free()));
      problem(g.slot_table_blkno, "slot table",
              fmt::format("has {} slots, superblock says {}", table->slots.size(), g.slots),
              opts_.repair);
    }
    note("slot table checked");
    return Status::ok();
  }

  Status check_heartbeat(uint32_t s) {
    const uint64_t blk = sb_.geo.heartbeat_blkno(s);
    const std::string name = fmt::format("heartbeat block of slot {}", s);
    auto idle = [&]() -> std::optional<format::Heartbeat> {
      return format::Heartbeat{.slot = s, .node_id = s};
    };
    ASSIGN_OR_RETURN(auto hb, load<format::Heartbeat>(blk, name, idle));
    if (hb && hb->slot != s) {
      if (opts_.repair) RETURN_IF_ERROR(store(blk, *idle()));
      problem(blk, name, fmt::format("names slot {}", hb->slot), opts_.repair);
    }
    return Status::ok();
  }

  Status check_orphans(uint32_t s) {
    const Geometry& g = sb_.geo;
    const uint64_t blk = g.orphan_blkno(s);
    const std::string name = fmt::format("orphan list of slot {}", s);
    // Resetting a list loses track of its orphans, whose blocks then leak until a full
    // check reclaims unreferenced inodes; it never frees a block still in use.
    auto empty = [&]() -> std::optional<format::OrphanList> {
      return format::OrphanList{.slot = s};
    };
    ASSIGN_OR_RETURN(auto ol, load<format::OrphanList>(blk, name, empty));
    if (!ol) return Status::ok();
    if (ol->slot != s || (ol->head != 0 && !g.ag_of(ol->head))) {
      if (opts_.repair) RETURN_IF_ERROR(store(blk, *empty()));
      problem(blk, name,
              ol->slot != s ? fmt::format("names slot {}", ol->slot)
                            : fmt::format("head {} is outside every AG", ol->head),
              opts_.repair);
    }
    return Status::ok();
  }

  Status check_journal(uint32_t s) {
    const Geometry& g = sb_.geo;
    const uint64_t blk = g.journal_header_blkno(s);
    const std::string name = fmt::format("journal header of slot {}", s);
    // No rebuild: a lost header may hide transactions that still need replay.
    ASSIGN_OR_RETURN(auto jh, load<format::JournalHeader>(blk, name));
    if (!jh) return Status::ok();
    if (jh->slot != s || jh->region_blocks != g.journal_blocks) {
      problem(blk, name,
              fmt::format("describes slot {} with {} blocks; the superblock says slot {} with "
                          "{}",
                          jh->slot, jh->region_blocks, s, g.journal_blocks));
    } else if (jh->state == format::JournalState::kDirty) {
      // A node stopped without unmounting. Replay is exactly what its next mount (or a
      // survivor) would do, so -y does it here.
      bool fixed = false;
      std::string what = "needs replay (the node did not unmount cleanly)";
      if (!opts_.repair) {
        journal_dirty_ = true;
        what += "; journal dirty: run fsck -y or mount to replay";
      } else {
        auto r = journal::replay(dev_, sb_, s);
        if (!r) return r.status().with_context(fmt::format("replaying the journal of slot {}", s));
        fixed = true;
        dirty_ = true;
        what += fmt::format(": replayed {} transactions, {} blocks", r->transactions,
                            r->blocks_written);
      }
      problem(blk, name, what, fixed);
    }
    return Status::ok();
  }

  Status check_ag(uint32_t ag) {
    const Geometry& g = sb_.geo;
    const uint64_t head = g.ag_header_blkno(ag);
    const uint64_t size = g.ag_size(ag);
    const uint32_t nbitmap = g.bitmap_blocks(ag);
    const std::string name = fmt::format("AG header {}", ag);
    ASSIGN_OR_RETURN(auto hdr, load<format::AgHeader>(head, name));
    if (hdr && (hdr->ag_index != ag || hdr->ag_blocks != size || hdr->bitmap_blocks != nbitmap)) {
      problem(head, name,
              fmt::format("describes AG {} of {} blocks with {} bitmap blocks; expected AG {} of "
                          "{} with {}",
                          hdr->ag_index, hdr->ag_blocks, hdr->bitmap_blocks, ag, size, nbitmap));
      hdr.reset();
    }

    const uint64_t per_block = g.bits_per_bitmap_block();
    uint64_t used = 0;
    bool bitmap_ok = true;
    for (uint32_t i = 0; i < nbitmap; ++i) {
      const uint64_t blk = g.bitmap_blkno(ag, i);
      const std::string bname = fmt::format("bitmap block {} of AG {}", i, ag);
      ASSIGN_OR_RETURN(auto bm, load<format::BitmapBlock>(blk, bname));
      if (!bm) {
        bitmap_ok = false;
        continue;
      }
      if (bm->ag_index != ag || bm->index != i || bm->first_bit != i * per_block) {
        problem(blk, bname,
                fmt::format("is labelled AG {} index {} first bit {}", bm->ag_index, bm->index,
                            bm->first_bit));
        bitmap_ok = false;
        continue;
      }
      // Bits of the header and bitmap blocks, and bits past the AG's end, must be set.
      const uint64_t lo = i * per_block;
      const uint64_t hi = lo + per_block;
      auto first_clear = [&](uint64_t from, uint64_t to) -> std::optional<uint64_t> {
        for (uint64_t bit = std::max(from, lo); bit < std::min(to, hi); ++bit) {
          if (!bm->test(bit - lo)) return bit;
        }
        return std::nullopt;
      };
      if (auto bit = first_clear(0, 1 + uint64_t{nbitmap})) {
        problem(blk, bname, fmt::format("block {} (AG metadata) is marked free", head + *bit));
        bitmap_ok = false;
      } else if (auto past = first_clear(size, hi)) {
        problem(blk, bname, fmt::format("bit {} past the end of the AG is clear", *past));
        bitmap_ok = false;
      }
      const uint64_t in_range = std::min(per_block, size - std::min(size, i * per_block));
      used += bm->count_set(in_range);
    }
    if (bitmap_ok) report_.free_blocks += size - used;
    ag_bitmap_ok_[ag] = bitmap_ok;
    if (hdr) ag_inode_count_[ag] = hdr->inode_count;
    if (hdr && bitmap_ok && hdr->free_blocks != size - used) {
      if (opts_.repair) {
        format::AgHeader fixed = *hdr;
        fixed.free_blocks = size - used;
        RETURN_IF_ERROR(store(head, fixed));
      }
      problem(head, name,
              fmt::format("free count {} but the bitmap has {} free blocks", hdr->free_blocks,
                          size - used),
              opts_.repair);
    }
    return Status::ok();
  }

  // Passes 1-4: the structure walk, then what it found against the bitmaps and headers.
  Status check_tree() {
    internal::WalkInput in{.dev = &dev_, .sb = sb_, .bitmap_ok = ag_bitmap_ok_};
    if (opts_.progress) {
      // The AG headers' inode counts say how many inodes the walk should meet.
      uint64_t expected = 0;
      for (const auto& n : ag_inode_count_) expected += n.value_or(0);
      in.on_inodes = [this, expected](uint64_t found) {
        progress("walking the directory tree", found, std::max(expected, found));
      };
    }
    ASSIGN_OR_RETURN(internal::WalkResult w, internal::walk_filesystem(in));
    const size_t first = report_.problems.size();
    for (auto& p : w.problems) report_.problems.push_back(std::move(p));
    // Repairs on the walk's word only when it saw everything: a structure it could not
    // read may own blocks that would otherwise look leaked. A dirty journal means -n, which
    // repairs nothing anyway.
    const bool can_fix = opts_.repair && w.complete && !journal_dirty_;
    RETURN_IF_ERROR(check_leaks(w, can_fix));
    RETURN_IF_ERROR(check_inode_counts(w, can_fix));
    report_.inodes = w.inodes;
    report_.directories = w.directories;
    note(fmt::format("tree: {} inodes ({} directories, {} orphans), {} blocks in use{}", w.inodes,
                     w.directories, w.orphans, w.referenced.count(),
                     w.complete ? "" : "; the walk could not read every structure"));
    if (journal_dirty_ && report_.problems.size() > first) {
      // Images not yet written home can make the tree look inconsistent: report what the
      // walk saw, but only the dirty journal counts.
      report_.notes.push_back(
          fmt::format("journal dirty: run fsck -y or mount to replay; the structure walk found {} "
                      "problem(s), not counted:",
                      report_.problems.size() - first));
      for (size_t i = first; i < report_.problems.size(); ++i) {
        const auto& p = report_.problems[i];
        report_.notes.push_back(fmt::format("  block {}: {}: {}", p.blkno, p.structure, p.what));
      }
      report_.problems.resize(first);
    }
    return Status::ok();
  }

  // Blocks an AG bitmap marks allocated in its data area that nothing the walk found uses.
  Status check_leaks(const internal::WalkResult& w, bool can_fix) {
    constexpr size_t kRunsReported = 16;  // per AG; the rest are summed up in one line
    const Geometry& g = sb_.geo;
    const uint64_t per = g.bits_per_bitmap_block();
    for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
      if (!ag_bitmap_ok_[ag]) continue;
      const uint64_t head = g.ag_header_blkno(ag);
      const uint64_t size = g.ag_size(ag);
      const uint32_t nbitmap = g.bitmap_blocks(ag);
      std::vector<format::BitmapBlock> bms;
      for (uint32_t i = 0; i < nbitmap; ++i) {
        const uint64_t blk = g.bitmap_blkno(ag, i);
        AlignedBuffer buf(bs());
        RETURN_IF_ERROR(read_block(blk, buf));
        auto bm = format::BitmapBlock::decode(buf.span(), ctx(blk));
        if (!bm) return bm.status().with_context("re-reading a bitmap block fsck checked");
        bms.push_back(std::move(*bm));
      }
      struct Run {
        uint64_t start;
        uint64_t count;
      };
      std::vector<Run> runs;
      uint64_t leaked = 0;
      for (uint64_t bit = 1 + uint64_t{nbitmap}; bit < size; ++bit) {
        const auto& bm = bms[bit / per];
        const uint64_t i = bit % per;
        if (i % 8 == 0 && bm.bits[i / 8] == 0 && bit + 8 <= size) {
          bit += 7;  // eight free blocks
          continue;
        }
        if (!bm.test(i) || w.referenced.test(head + bit)) continue;
        ++leaked;
        if (!runs.empty() && runs.back().start + runs.back().count == head + bit) {
          ++runs.back().count;
        } else {
          runs.push_back({head + bit, 1});
        }
      }
      if (leaked == 0) continue;
      const bool fix = can_fix && ag_inode_count_[ag].has_value();
      if (fix) {
        for (const Run& r : runs) {
          for (uint64_t b = r.start; b < r.start + r.count; ++b) {
            bms[(b - head) / per].set((b - head) % per, false);
          }
        }
        uint64_t used = 0;
        for (uint32_t i = 0; i < nbitmap; ++i) {
          RETURN_IF_ERROR(store(g.bitmap_blkno(ag, i), bms[i]));
          used += bms[i].count_set(std::min(per, size - std::min(size, i * per)));
        }
        RETURN_IF_ERROR(
            update_ag_header(ag, [&](format::AgHeader& h) { h.free_blocks = size - used; }));
        report_.free_blocks += leaked;
      }
      const std::string name = fmt::format("bitmap of AG {}", ag);
      const std::string why =
          fix ? ""
              : (opts_.repair && !w.complete ? " (not freed: the walk could not read every "
                                               "structure)"
                                             : "");
      for (size_t k = 0; k < std::min(runs.size(), kRunsReported); ++k) {
        const Run& r = runs[k];
        problem(r.start, name,
                r.count == 1 ? fmt::format("leaked block: block {} is allocated but nothing uses "
                                           "it{}",
                                           r.start, why)
                             : fmt::format("leaked blocks: blocks {}..{} are allocated but "
                                           "nothing uses them{}",
                                           r.start, r.start + r.count - 1, why),
                fix);
      }
      if (runs.size() > kRunsReported) {
        uint64_t rest = 0;
        for (size_t k = kRunsReported; k < runs.size(); ++k) rest += runs[k].count;
        problem(runs[kRunsReported].start, name,
                fmt::format("leaked blocks: {} more in {} more runs{}", rest,
                            runs.size() - kRunsReported, why),
                fix);
      }
    }
    return Status::ok();
  }

  Status check_inode_counts(const internal::WalkResult& w, bool can_fix) {
    const Geometry& g = sb_.geo;
    for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
      if (!ag_inode_count_[ag] || *ag_inode_count_[ag] == w.inodes_per_ag[ag]) continue;
      const uint64_t found = w.inodes_per_ag[ag];
      if (can_fix) {
        RETURN_IF_ERROR(update_ag_header(ag, [&](format::AgHeader& h) { h.inode_count = found; }));
      }
      problem(g.ag_header_blkno(ag), fmt::format("AG header {}", ag),
              fmt::format("inode count {} but the walk found {} inodes in the AG{}",
                          *ag_inode_count_[ag], found,
                          opts_.repair && !w.complete
                              ? " (not fixed: the walk could not read every structure)"
                              : ""),
              can_fix);
      if (can_fix) ag_inode_count_[ag] = found;
    }
    return Status::ok();
  }

  // Re-reads AG `ag`'s header (an earlier repair may have rewritten it), changes it and
  // writes it back.
  Status update_ag_header(uint32_t ag, const std::function<void(format::AgHeader&)>& change) {
    const uint64_t blk = sb_.geo.ag_header_blkno(ag);
    AlignedBuffer buf(bs());
    RETURN_IF_ERROR(read_block(blk, buf));
    auto hdr = format::AgHeader::decode(buf.span(), ctx(blk));
    if (!hdr) return hdr.status().with_context("re-reading an AG header fsck checked");
    change(*hdr);
    return store(blk, *hdr);
  }

  device::BlockDevice& dev_;
  const FsckOptions& opts_;
  Superblock sb_;
  FsckReport report_;
  bool dirty_ = false;
  // A journal needs replay and -n keeps it so: the walk's findings are not counted.
  bool journal_dirty_ = false;
  // Per AG, from check_ag: every bitmap block sound; the header's inode count when the
  // header is sound.
  std::vector<bool> ag_bitmap_ok_;
  std::vector<std::optional<uint64_t>> ag_inode_count_;
};

}  // namespace

int FsckReport::exit_code() const {
  if (problems.empty()) return 0;
  for (const auto& p : problems) {
    if (!p.fixed) return 4;
  }
  return 1;
}

Result<FsckReport> check_filesystem(device::BlockDevice& dev, const FsckOptions& opts) {
  return Checker(dev, opts).run();
}

}  // namespace sharedfs::mkfs
