// fs/fuse/request_metrics.h — what the FUSE front end counts for the operator: every
// request's latency by kind (from its arrival to the return of the handler, which has
// replied by then except for lock waits, answered later on a thread of their own), and the
// kernel cache decisions (page cache kept across an open, names invalidated when another
// node takes a directory's lock). The daemon owns one and hands it to serve()
// (FuseOptions::metrics); `sharedfs top` and the Prometheus endpoint read it.
//
// Thread-safety: everything is atomic; any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>

#include "common/latency_histogram.h"

namespace sharedfs::fs::fuse {

enum class FuseOp : uint8_t {
  kLookup,
  kForget,
  kGetattr,
  kSetattr,
  kReadlink,
  kMknod,
  kMkdir,
  kUnlink,
  kRmdir,
  kSymlink,
  kRename,
  kLink,
  kOpen,
  kCreate,
  kRead,
  kWrite,
  kFlush,
  kRelease,
  kFsync,
  kOpendir,
  kReaddir,
  kReleasedir,
  kFsyncdir,
  kStatfs,
  kSetxattr,
  kGetxattr,
  kListxattr,
  kRemovexattr,
  kGetlk,
  kSetlk,
  kFlock,
  kFallocate,
  kLseek,
  kCount,
};

// "lookup", "getattr", ...: the `op` label of the metrics.
std::string_view fuse_op_name(FuseOp op);

struct RequestMetrics {
  std::array<LatencyHistogram, static_cast<size_t>(FuseOp::kCount)> latency;
  std::atomic<uint64_t> keep_cache_opens{0};     // opens that kept the page cache
  std::atomic<uint64_t> entry_invalidations{0};  // names dropped from the kernel's dcache
  std::atomic<uint64_t> attr_invalidations{0};   // inodes whose kernel attributes were dropped
  std::atomic<uint64_t> read_bytes{0};           // READ replies
  std::atomic<uint64_t> write_bytes{0};          // WRITE requests

  LatencyHistogram& of(FuseOp op) { return latency[static_cast<size_t>(op)]; }
};

}  // namespace sharedfs::fs::fuse
