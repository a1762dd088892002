// Internal to tools/: what `sharedfs debug ...` reads from a device, as JSON objects. The
// text output of debug_command.cc is rendered from the same objects, so both say the same.
//
// Everything here only reads: the device is opened read-only by the caller, and a device
// mounted elsewhere is safe to inspect (a block caught mid-write reads as a checksum error
// and is reported, not trusted).
//
// Thread-safety: pure functions over a caller-owned device.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "device/device.h"

namespace sharedfs::tools::debug {

using Json = nlohmann::ordered_json;

// Geometry, identity and features of the primary superblock, and whether the backup agrees.
Result<Json> inspect_superblock(device::BlockDevice& dev);
// The slot table: which node uses which slot.
Result<Json> inspect_slots(device::BlockDevice& dev);
// Each slot's disk heartbeat block (an unreadable one is reported in its entry).
Result<Json> inspect_heartbeats(device::BlockDevice& dev);

struct InodeOptions {
  size_t max_entries = 1000;  // directory entries listed at most (all are counted)
  std::string device_name;    // the DEVICE argument, for the commands errors suggest
};
// Inode `ino` (its block number; 1, the root's number on a mount, means the root): fields, flags,
// extents or inline data, xattrs, and for a directory its entries. Fails naming the inode and the
// fix when `ino` is no inode.
Result<Json> inspect_inode(device::BlockDevice& dev, uint64_t ino, const InodeOptions& opts);

// Slot `slot`'s journal: header and the transactions replay would apply (journal::scan).
// `device_name` as in InodeOptions.
Result<Json> inspect_journal(device::BlockDevice& dev, uint32_t slot,
                             const std::string& device_name);

}  // namespace sharedfs::tools::debug
