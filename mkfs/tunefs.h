// tunefs.sharedfs: changes an unmounted file system in place (docs/tunefs.md).
//
// What may change: the label, the cluster name, the cluster id, and the slot layout — more
// slots (--add-slots) and another journal size per slot (--journal-size). The slot area
// (slot table, heartbeats, orphan lists, journals) lies between the superblock and the
// first allocation group, so a new layout must fit in front of ag_start: the AGs never
// move. A layout change needs every journal clean and empty, every orphan list empty and
// every slot free; it then rewrites the slot area as mkfs would.
//
// Crash safety: a superblock-only change writes the backup, then the primary (fsck trusts
// the primary). A layout change first writes both superblocks with the new layout and
// Superblock::kIncompatSlotAreaRewrite set (nothing mounts or checks such a device), then
// the slot area, then the superblocks without the bit; run again after a crash, tunefs
// sees the bit and finishes from the superblock alone.
//
// Thread-safety: none; one call owns the device.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "device/device.h"
#include "format/format.h"

namespace sharedfs::mkfs {

struct TuneRequest {
  std::optional<std::string> label;
  std::optional<std::string> cluster_name;
  std::optional<uint64_t> cluster_id;
  uint32_t add_slots = 0;
  std::optional<uint64_t> journal_bytes;  // per slot
};

struct TuneChange {
  std::string what;  // "label", "slots", ...
  std::string from;
  std::string to;
};

struct TunePlan {
  format::Superblock before;
  format::Superblock after;
  std::vector<TuneChange> changes;  // empty: nothing to do
  bool relayout = false;            // the slot area is rewritten
  bool resume = false;              // finishing an interrupted layout change
  // Relayout: the tail sequence of the new journals, above every sequence a block of the
  // old logs carries, so that no leftover log block ever validates in a new region.
  uint64_t journal_sequence = 0;
};

// Reads the superblock and plans `req` against it; writes nothing. Refuses (naming what
// would fit) a layout that does not fit in front of the first AG, and a layout change
// while the slot area is not quiet: a slot in use, a heartbeat left mounted, fenced or
// withdrawn, a journal dirty or holding transactions, an orphan list not empty (these
// hold state a rewrite would lose; --force does not override them). A device left with
// kIncompatSlotAreaRewrite yields a `resume` plan whatever `req` says.
Result<TunePlan> plan_tune(device::BlockDevice& dev, const TuneRequest& req);

// Refuses (kBusy, naming the nodes) a device some node uses: a slot whose heartbeat is in
// the mounted state and advances over two beats, or a registered reservation key. Notes
// what --force overrode in `warnings`.
// Samples the heartbeats twice, 2 beats apart, when some slot says mounted (a few seconds).
// `force`: go on despite live heartbeats and registered keys.
Status check_not_in_use(device::BlockDevice& dev, device::Reservations& resv,
                        const format::Superblock& sb, bool force,
                        std::vector<std::string>& warnings);

// Writes the plan (nothing when it has no changes).
Status apply_tune(device::BlockDevice& dev, const TunePlan& plan);

}  // namespace sharedfs::mkfs
