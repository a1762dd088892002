// fstab(5) lines for sharedfs mounts: the line that reproduces a `sharedfs mount`, and
// putting it into an fstab in place of the line for the same mount point, atomically
// (`sharedfs mount --update-fstab`).
//
// The line uses type fuse.sharedfs, which mount(8) hands to mount.fuse3; that runs
// `sharedfs DEVICE MOUNTPOINT -o OPTIONS` (tools/mount_helper.h). fs_passno is always 0:
// boot-time fsck must never run on a device other nodes have mounted.
//
// Thread-safety: functions of values, except update_fstab, which writes a file; two
// concurrent updates of one fstab may lose one of them (the rename is atomic, the
// read-modify-write is not).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace sharedfs::tools {

struct FstabEntry {
  std::string device;      // fs_spec
  std::string mountpoint;  // fs_file
  std::string type = "fuse.sharedfs";
  std::string options;  // fs_mntops, comma-separated
  int dump = 0;
  int pass = 0;
};

// fstab fields are separated by blanks, so blanks (and backslashes) in a field are written
// as octal escapes (`\040` for a space), as libmount reads them.
std::string escape_fstab_field(std::string_view field);
std::string unescape_fstab_field(std::string_view field);

// "DEVICE MOUNTPOINT TYPE OPTIONS DUMP PASS", escaped, without a newline.
std::string format_fstab_line(const FstabEntry& entry);

// The entry that mounts `device` on `mountpoint` again as `sharedfs mount` was asked to:
// `_netdev,config=CONFIG,node=N` (with a cluster config: the node needs the network) or
// `node=N` (alone), then the user's -o options in their order, less the ones already
// written and `defaults`. Paths should be absolute: mount -a runs from anywhere.
FstabEntry fstab_entry_for_mount(const std::string& device, const std::string& mountpoint,
                                 const std::string& config, uint32_t node,
                                 const std::vector<std::string>& option_groups);

// `text` (the contents of an fstab) with `entry` in place of the first active line whose
// mount point is entry.mountpoint, or appended when there is none. Further active lines
// for that mount point are dropped: mount -a would mount twice. Comments, blank lines and
// every other line are kept byte for byte.
std::string fstab_with_entry(std::string_view text, const FstabEntry& entry);

// Checks, before mounting, that update_fstab(path, ...) can work: the file (if it exists)
// can be read and its directory written.
Status check_fstab_updatable(const std::string& path);

// Rewrites the fstab at `path` (following a symbolic link; created 0644 when missing) with
// fstab_with_entry: a temporary file in the same directory, with the old file's mode and
// owner, fsync'd and renamed over it, so a crash leaves the old or the new fstab, never a
// torn one.
Status update_fstab(const std::string& path, const FstabEntry& entry);

}  // namespace sharedfs::tools
