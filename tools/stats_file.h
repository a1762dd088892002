// tools/stats_file.h — the daemon's counters as one JSON object in a file (mount option
// `stats_file=PATH`), rewritten whenever the daemon gets SIGUSR1 and once more after the
// file system is unmounted. Benchmarks signal every daemon, wait for "seq" to change and
// take differences (bench/cluster_bench.sh). Until the control socket exists this is how
// a running daemon's lock traffic and device I/O are seen from outside.
//
//   {"node": 1, "seq": 3,
//    "dlm": {"sent": .., "received": .., "lock_requests": .., "fast_path_hits": ..},
//    "device": {"reads": .., "read_bytes": .., "writes": .., "write_bytes": ..},
//    "fs": {"commits": .., "lock_flushes": .., "ag_lock_flushes": ..}}
//
// Thread-safety: one StatsFile per daemon; start() before any other thread exists is not
// needed, but block_signal() is (so that SIGUSR1 reaches only the stats thread).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "common/status.h"

namespace sharedfs::tools {

class StatsFile {
 public:
  // Blocks SIGUSR1 in the calling thread, and so in every thread it creates later.
  static void block_signal();

  // `collect` returns the JSON object's members after "seq" (without braces).
  StatsFile(std::string path, uint32_t node, std::function<std::string()> collect);
  ~StatsFile();  // stops the thread
  StatsFile(const StatsFile&) = delete;
  StatsFile& operator=(const StatsFile&) = delete;

  // Starts the thread that writes the file on each SIGUSR1.
  void start();
  // Writes the file now (atomically: a temporary file renamed over it).
  Status write();

 private:
  void run();

  const std::string path_;
  const uint32_t node_;
  std::function<std::string()> collect_;
  uint64_t seq_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace sharedfs::tools
