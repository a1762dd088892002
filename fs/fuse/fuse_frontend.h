// fs/fuse/ — the thin libfuse3 low-level frontend (DESIGN.md §1): translates FUSE requests
// into FileSystem calls and Status errors into errno replies. No file-system logic here.
//
// FUSE node ids are inode numbers, except that the root is FUSE_ROOT_ID (1); block 1 is
// the slot table, never an inode, so the two never meet.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "dlm/advisory_locks.h"
#include "fs/fs.h"
#include "fs/fuse/request_metrics.h"

namespace sharedfs::fs::fuse {

struct FuseOptions {
  std::string mountpoint;
  std::string fsname;                   // shown in /proc/mounts as the source (the device)
  std::vector<std::string> mount_opts;  // extra -o options for the kernel mount
  // Kernel write-back caching of file data: faster small writes, but the daemon then sees
  // sizes late (SEEK_DATA/SEEK_HOLE and fallocate answer from stale sizes). Off by default.
  bool writeback_cache = false;
  // How long the kernel may trust names and attributes without asking. One node owns
  // everything it caches (the local lock service never revokes), so this can be long.
  double entry_timeout_s = 60.0;
  double attr_timeout_s = 60.0;
  unsigned max_threads = 16;
  // Kernel read-ahead of the mount, in KiB (0: leave the kernel's default). The kernel
  // starts a FUSE mount at 128 KiB whatever INIT asks for, which leaves sequential reads
  // latency-bound on one 128 KiB request at a time; 1 MiB lets each READ be a full-size
  // device read. Cached pages stay coherent: they are dropped with the inode lock.
  unsigned read_ahead_kb = 1024;
  bool debug = false;
  // Several nodes mount the device (docs/cluster.md, "Kernel caches"): names and
  // attributes keep their timeouts, and the file system invalidates them when the lock
  // covering them goes to another node (FileSystem::set_entry_invalidator,
  // set_attr_invalidator); the kernel drops cached pages when the getattr after that finds
  // the size or mtime changed (FUSE_CAP_AUTO_INVAL_DATA). Directory listings are never
  // cached, and writes go through (no write-back cache).
  bool cluster = false;
  // Cluster mounts: flock and fcntl locks through these (dlm/advisory_locks.h), so they
  // conflict across nodes; OPEN, FLUSH and RELEASE are then answered (a lock is dropped
  // when its file is closed). Null: the kernel keeps advisory locks to this host.
  dlm::AdvisoryLocks* advisory_locks = nullptr;
  // Request latencies and cache decisions (fs/fuse/request_metrics.h); null: not counted.
  RequestMetrics* metrics = nullptr;
};

// Mounts `fs` at opts.mountpoint. `on_mounted` runs once the kernel mount exists (a
// daemonizing caller reports success to its parent there). Serves requests until the file
// system is unmounted (fusermount3 -u, umount) or the process gets SIGINT/SIGTERM/SIGHUP,
// then returns; the caller unmounts `fs` afterwards.
Status serve(FileSystem& fs, const FuseOptions& opts, const std::function<void()>& on_mounted);

}  // namespace sharedfs::fs::fuse
