#include "mkfs/tunefs.h"

#include <fmt/format.h>

#include <algorithm>

#include "cluster/failure_manager.h"
#include "journal/journal.h"
#include "mkfs/mkfs.h"

namespace sharedfs::mkfs {
namespace {

using device::AlignedBuffer;
using format::Superblock;

constexpr uint32_t kRewriteBit = Superblock::kIncompatSlotAreaRewrite;

std::string size_text(uint64_t bytes) {
  if (bytes % (1 << 20) == 0) return fmt::format("{}M", bytes >> 20);
  return fmt::format("{}K", bytes >> 10);
}

// The primary superblock, decoded even while a layout change is unfinished (which
// fs::read_superblock refuses).
Result<Superblock> read_primary(device::BlockDevice& dev) {
  AlignedBuffer first(format::kMinBlockSize);
  RETURN_IF_ERROR(dev.read(0, first.span()).with_context("reading the superblock"));
  const uint32_t bs = format::sniff_block_size(first.span());
  if (bs < format::kMinBlockSize || bs > format::kMaxBlockSize || (bs & (bs - 1)) != 0) {
    return make_status(Code::kNotFound,
                       "{} has no sharedfs superblock at block 0: if it is a sharedfs, "
                       "`fsck.sharedfs -y DEVICE` restores it from the backup",
                       dev.describe());
  }
  AlignedBuffer buf(bs);
  RETURN_IF_ERROR(dev.read(0, buf.span()).with_context("reading the superblock"));
  auto sb = Superblock::decode(buf.span(), 0);
  if (!sb) {
    return sb.status().with_context(
        "the primary superblock cannot be used (`fsck.sharedfs -n "
        "DEVICE` tells more; -y restores it from the backup)");
  }
  return sb;
}

template <typename T>
Result<T> read_struct(device::BlockDevice& dev, const Superblock& sb, uint64_t blkno) {
  AlignedBuffer buf(sb.geo.block_size);
  RETURN_IF_ERROR(dev.read(blkno * sb.geo.block_size, buf.span()));
  return T::decode(buf.span(), {blkno, sb.fs_tag()});
}

// Last block of the slot area for `slots` slots with journals of `journal_blocks`.
uint64_t slot_area_end(uint32_t slots, uint64_t journal_blocks) {
  return 2 + 2 * uint64_t{slots} + uint64_t{slots} * journal_blocks;
}

// Why `slots` slots of `journal_blocks` do not fit in front of the first AG, and what would.
Status layout_does_not_fit(const Superblock& sb, uint32_t slots, uint64_t journal_blocks) {
  const auto& g = sb.geo;
  const uint64_t bs = g.block_size;
  const auto fit_slots = static_cast<uint32_t>(
      std::min<uint64_t>((g.ag_start - 2) / (journal_blocks + 2), format::kMaxSlots));
  std::string at_size =
      fit_slots > g.slots
          ? fmt::format("with journals of {} blocks, {} slots fit (--add-slots {})", journal_blocks,
                        fit_slots, fit_slots - g.slots)
          : fmt::format("with journals of {} blocks no slot can be added", journal_blocks);
  const uint64_t room = g.ag_start - 2 - 2 * uint64_t{slots};
  const uint64_t max_journal = room / slots;
  std::string smaller =
      max_journal >= format::kMinJournalBlocks
          ? fmt::format("{} slots fit with journals of at most {} blocks (--journal-size {})",
                        slots, max_journal, size_text(max_journal * bs))
          : fmt::format("{} slots do not fit with any journal size (at least {} blocks each)",
                        slots, format::kMinJournalBlocks);
  return make_status(Code::kNoSpace,
                     "{} slots with journals of {} blocks need blocks 2..{}, but the first "
                     "allocation group starts at block {} and allocation groups do not move: "
                     "{}; {}",
                     slots, journal_blocks, slot_area_end(slots, journal_blocks) - 1, g.ag_start,
                     at_size, smaller);
}

// What a layout change needs whatever --force says (tunefs.h); returns the sequence the new
// journals start from.
Result<uint64_t> check_slot_area_quiet(device::BlockDevice& dev, const Superblock& sb) {
  const auto& g = sb.geo;
  auto unreadable = [&](const Status& st, std::string_view what) {
    return st.with_context(
        fmt::format("{} cannot be read; `fsck.sharedfs -n DEVICE` tells more", what));
  };
  auto table = read_struct<format::SlotTable>(dev, sb, g.slot_table_blkno);
  if (!table) return unreadable(table.status(), "the slot table");
  uint64_t max_sequence = 1;
  for (uint32_t s = 0; s < g.slots; ++s) {
    const uint32_t node = s + 1;
    if (s < table->slots.size() && table->slots[s].state == format::SlotState::kInUse) {
      return make_status(Code::kBusy,
                         "slot {} is in use by node {} (slot table): unmount it before changing "
                         "the slot layout",
                         s, table->slots[s].node_id);
    }
    auto hb = read_struct<format::Heartbeat>(dev, sb, g.heartbeat_blkno(s));
    if (!hb) return unreadable(hb.status(), fmt::format("the heartbeat of slot {}", s));
    switch (hb->state) {
      case format::HeartbeatState::kIdle:
      case format::HeartbeatState::kRecovered:
        break;
      case format::HeartbeatState::kFenced:
        return make_status(Code::kBusy,
                           "slot {} (node {}) was fenced by node {} whose recovery did not "
                           "finish: mount a node of the cluster so it completes, then unmount",
                           s, hb->node_id, hb->by_node);
      case format::HeartbeatState::kMounted:
      case format::HeartbeatState::kWithdrawn:
        return make_status(Code::kBusy,
                           "slot {} says node {} is {} (it did not unmount cleanly): mount node "
                           "{} again and unmount it, which replays its journal and frees its "
                           "orphans",
                           s, hb->node_id, format::heartbeat_state_name(hb->state), node);
    }
    auto ol = read_struct<format::OrphanList>(dev, sb, g.orphan_blkno(s));
    if (!ol) return unreadable(ol.status(), fmt::format("the orphan list of slot {}", s));
    if (ol->count != 0) {
      return make_status(Code::kBusy,
                         "the orphan list of slot {} holds {} inodes: mount node {} and unmount "
                         "it cleanly to free them",
                         s, ol->count, node);
    }
    auto j = journal::scan(dev, sb, s);
    if (!j) return unreadable(j.status(), fmt::format("the journal of slot {}", s));
    if (j->header.state != format::JournalState::kClean || !j->transactions.empty()) {
      return make_status(Code::kBusy,
                         "the journal of slot {} is dirty ({} transactions to replay): "
                         "`fsck.sharedfs -y DEVICE` replays it",
                         s, j->transactions.size());
    }
    max_sequence = std::max({max_sequence, j->header.tail_sequence, j->next_sequence});
  }
  // Every block of a clean log carries a sequence below its header's tail sequence (a
  // torn transaction at most equal to it): one above the largest is in no old log block.
  return max_sequence + 1;
}

Status write_superblocks(device::BlockDevice& dev, const Superblock& sb) {
  // Backup first: fsck trusts the primary when they differ, so a crash in between leaves
  // the old superblock in force.
  const uint32_t bs = sb.geo.block_size;
  AlignedBuffer buf(bs);
  sb.encode(buf.span(), sb.geo.backup_superblock());
  RETURN_IF_ERROR(dev.write(sb.geo.backup_superblock() * bs, buf.span())
                      .with_context("writing the backup superblock"));
  RETURN_IF_ERROR(dev.flush().with_context("flushing the backup superblock"));
  sb.encode(buf.span(), 0);
  RETURN_IF_ERROR(dev.write(0, buf.span()).with_context("writing the superblock"));
  return dev.flush().with_context("flushing the superblock");
}

std::string key_owner(device::ReservationKey key) {
  // node_reservation_key: "SF", 32 bits of cluster id, 16 bits of node id.
  if ((key >> 48) == 0x5346) return fmt::format("node {} (key {:#018x})", key & 0xffff, key);
  return fmt::format("key {:#018x}", key);
}

}  // namespace

Result<TunePlan> plan_tune(device::BlockDevice& dev, const TuneRequest& req) {
  ASSIGN_OR_RETURN(Superblock sb, read_primary(dev));
  TunePlan plan{.before = sb, .after = sb};
  plan.after.seq = sb.seq + 1;
  const auto& g = sb.geo;

  if (sb.incompat_features & kRewriteBit) {
    if (req.label || req.cluster_name || req.cluster_id || req.add_slots != 0 ||
        req.journal_bytes) {
      return make_status(Code::kInvalidArgument,
                         "an earlier slot layout change was interrupted: run `tunefs.sharedfs "
                         "DEVICE` without options to finish it first");
    }
    plan.resume = plan.relayout = true;
    plan.journal_sequence = sb.rewrite_sequence;
    plan.after.incompat_features &= ~kRewriteBit;
    plan.after.rewrite_sequence = 0;
    plan.changes.push_back(
        {"slot area", "half rewritten",
         fmt::format("{} slots, journals of {} blocks", g.slots, g.journal_blocks)});
    return plan;
  }

  if (req.label && *req.label != sb.label) {
    if (req.label->size() >= format::kLabelSize) {
      return make_status(Code::kInvalidArgument, "label \"{}\" is longer than {} bytes", *req.label,
                         format::kLabelSize - 1);
    }
    plan.changes.push_back({"label", sb.label, *req.label});
    plan.after.label = *req.label;
  }
  if (req.cluster_name && *req.cluster_name != sb.cluster_name) {
    if (req.cluster_name->size() >= format::kClusterNameSize) {
      return make_status(Code::kInvalidArgument, "cluster name \"{}\" is longer than {} bytes",
                         *req.cluster_name, format::kClusterNameSize - 1);
    }
    plan.changes.push_back({"cluster name", sb.cluster_name, *req.cluster_name});
    plan.after.cluster_name = *req.cluster_name;
  }
  if (req.cluster_id && *req.cluster_id != sb.cluster_id) {
    if (*req.cluster_id == 0) {
      return make_status(Code::kInvalidArgument,
                         "cluster id 0 is not valid: give the id of the cluster config "
                         "([cluster] id) that will mount the device");
    }
    plan.changes.push_back(
        {"cluster id", fmt::format("{:#x}", sb.cluster_id), fmt::format("{:#x}", *req.cluster_id)});
    plan.after.cluster_id = *req.cluster_id;
  }

  const uint64_t bs = g.block_size;
  uint64_t journal_blocks = g.journal_blocks;
  if (req.journal_bytes) {
    if (*req.journal_bytes % bs != 0 || *req.journal_bytes / bs < format::kMinJournalBlocks) {
      return make_status(Code::kInvalidArgument,
                         "journal size {} must be a multiple of the block size {} and at least "
                         "{} blocks ({})",
                         *req.journal_bytes, bs, format::kMinJournalBlocks,
                         size_text(format::kMinJournalBlocks * bs));
    }
    journal_blocks = *req.journal_bytes / bs;
  }
  const uint64_t slots = uint64_t{g.slots} + req.add_slots;
  if (slots > format::kMaxSlots) {
    return make_status(Code::kInvalidArgument,
                       "{} slots is more than the {} the format allows: the device has {}, so "
                       "--add-slots {} at most",
                       slots, format::kMaxSlots, g.slots, format::kMaxSlots - g.slots);
  }
  if (slots != g.slots || journal_blocks != g.journal_blocks) {
    if (slot_area_end(static_cast<uint32_t>(slots), journal_blocks) > g.ag_start) {
      return layout_does_not_fit(sb, static_cast<uint32_t>(slots), journal_blocks);
    }
    ASSIGN_OR_RETURN(plan.journal_sequence, check_slot_area_quiet(dev, sb));
    plan.relayout = true;
    auto& ng = plan.after.geo;
    ng.slots = static_cast<uint32_t>(slots);
    ng.orphan_start = ng.heartbeat_start + ng.slots;
    ng.journal_start = ng.orphan_start + ng.slots;
    ng.journal_blocks = journal_blocks;
    if (slots != g.slots) {
      plan.changes.push_back({"slots", std::to_string(g.slots), std::to_string(slots)});
    }
    if (journal_blocks != g.journal_blocks) {
      plan.changes.push_back({"journal blocks per slot", std::to_string(g.journal_blocks),
                              std::to_string(journal_blocks)});
    }
    plan.changes.push_back(
        {"slot area", fmt::format("blocks 1..{}", slot_area_end(g.slots, g.journal_blocks) - 1),
         fmt::format("blocks 1..{} (first AG stays at {})",
                     slot_area_end(ng.slots, journal_blocks) - 1, g.ag_start)});
  }
  return plan;
}

Status check_not_in_use(device::BlockDevice& dev, device::Reservations& resv,
                        const format::Superblock& sb, bool force,
                        std::vector<std::string>& warnings) {
  std::vector<std::string> users;
  ASSIGN_OR_RETURN(auto rep, resv.report());
  for (const auto& r : rep.registrants) {
    users.push_back(fmt::format("{} is registered on the device{}", key_owner(r.key),
                                r.holds_reservation ? " and holds its reservation" : ""));
  }

  // As `sharedfs status` does: a slot in the mounted state whose counter moves over two
  // beats belongs to a live node; a still one to a node that died without unmounting.
  cluster::DiskHeartbeats beats;
  RETURN_IF_ERROR(beats.sample(dev, sb, std::chrono::steady_clock::now()));
  uint32_t interval_ms = 0;
  bool any_mounted = false;
  for (const auto& s : beats.slots()) {
    if (s.readable && s.beat.state == format::HeartbeatState::kMounted) {
      any_mounted = true;
      interval_ms = std::max(interval_ms, s.beat.interval_ms);
    }
  }
  if (any_mounted) {
    const auto first = beats.slots();
    const auto interval = std::chrono::milliseconds(interval_ms != 0 ? interval_ms : 1000);
    RETURN_IF_ERROR(beats.sample_after_beats(dev, sb, interval));
    for (uint32_t s = 0; s < first.size(); ++s) {
      if (!first[s].readable || first[s].beat.state != format::HeartbeatState::kMounted) continue;
      const auto& now = beats.slots()[s];
      if (beats.moved(s)) {
        users.push_back(
            fmt::format("node {} is mounted (slot {}: its heartbeat advanced from {} to {})",
                        now.beat.node_id, s, first[s].beat.counter, now.beat.counter));
      } else {
        warnings.push_back(fmt::format(
            "slot {} says node {} is mounted but its heartbeat is still: it died without "
            "unmounting",
            s, first[s].beat.node_id));
      }
    }
  }
  if (users.empty()) return Status::ok();
  std::string list;
  for (const auto& u : users) list += (list.empty() ? "" : "; ") + u;
  if (force) {
    warnings.push_back("going on with --force although " + list);
    return Status::ok();
  }
  return make_status(Code::kBusy,
                     "the device is in use: {}. Unmount it on every node first (`sharedfs "
                     "status --config CLUSTER.toml` shows who); --force overrides this check",
                     list);
}

Status apply_tune(device::BlockDevice& dev, const TunePlan& plan) {
  if (plan.changes.empty()) return Status::ok();
  if (!plan.relayout) return write_superblocks(dev, plan.after);

  // 1. Both superblocks describe the new layout and say that the slot area is being
  //    rewritten: from here on nothing mounts the device, and a rerun finishes the job.
  Superblock rewriting = plan.after;
  rewriting.incompat_features |= kRewriteBit;
  rewriting.rewrite_sequence = plan.journal_sequence;
  if (!plan.resume) RETURN_IF_ERROR(write_superblocks(dev, rewriting));
  // 2. The slot area as mkfs writes it, with journals that start above every old sequence.
  RETURN_IF_ERROR(write_slot_area(dev, rewriting, plan.journal_sequence));
  RETURN_IF_ERROR(dev.flush().with_context("flushing the slot area"));
  // 3. Done: the superblocks without the bit.
  Superblock done = plan.after;
  done.incompat_features &= ~kRewriteBit;
  done.rewrite_sequence = 0;
  return write_superblocks(dev, done);
}

}  // namespace sharedfs::mkfs
