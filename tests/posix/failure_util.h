// Helpers of the failure and partition tests: writes made durable with fsync and recorded,
// then checked on another node; waiting for a daemon's log line or for a dead node's slot
// to be recovered.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/posix/mounted_fs.h"

namespace sharedfs::testing {

// Writes `data` to `path` (created 0644, `flags` added: O_TRUNC or O_APPEND) and fsyncs it.
// False on any error (the node died or withdrew).
inline bool write_fsync(const std::string& path, const std::string& data, int flags) {
  const int fd = open(path.c_str(), O_CREAT | O_WRONLY | flags, 0644);
  if (fd < 0) return false;
  const bool ok = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
                  fsync(fd) == 0;
  return close(fd) == 0 && ok;
}

inline bool fsync_path(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  const bool ok = fsync(fd) == 0;
  close(fd);
  return ok;
}

// What fsync made durable, by path relative to the mount point: whole files, a prefix of a
// file (an append log: later appends may have landed too), directories.
class FsyncedWrites {
 public:
  void file(const std::string& rel, const std::string& data) {
    std::lock_guard l(mu_);
    files_[rel] = data;
  }
  void prefix(const std::string& rel, const std::string& data) {
    std::lock_guard l(mu_);
    prefixes_[rel] = data;
  }
  void directory(const std::string& rel) {
    std::lock_guard l(mu_);
    dirs_.insert(rel);
  }
  size_t size() const {
    std::lock_guard l(mu_);
    return files_.size() + prefixes_.size() + dirs_.size();
  }
  // Every record holds on node `node` of `c`.
  void verify(const MountedCluster& c, int node) const {
    std::lock_guard l(mu_);
    int bad = 0;
    for (const auto& [rel, data] : files_) {
      const std::string got = slurp(c.path(node, rel));
      if (got != data && ++bad <= 5) ADD_FAILURE() << rel << ": fsync'd content lost (" << got.size() << " bytes read)";
    }
    for (const auto& [rel, data] : prefixes_) {
      const std::string got = slurp(c.path(node, rel));
      if (got.compare(0, data.size(), data) != 0 && ++bad <= 5) {
        ADD_FAILURE() << rel << ": fsync'd appends lost: " << data.size() << " bytes recorded, read "
                      << got.size();
      }
    }
    for (const auto& rel : dirs_) {
      struct stat st {};
      if ((stat(c.path(node, rel).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) && ++bad <= 5) {
        ADD_FAILURE() << rel << ": fsync'd directory lost";
      }
    }
    EXPECT_EQ(bad, 0) << "of " << files_.size() + prefixes_.size() + dirs_.size() << " records";
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::string> files_;
  std::map<std::string, std::string> prefixes_;
  std::set<std::string> dirs_;
};

// Polls the daemon log at `path` until it holds `needle`.
inline bool wait_for_log(const std::string& path, const std::string& needle,
                         std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (slurp(path).find(needle) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

// How many times `needle` occurs in `text`.
inline int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// Checks that each of `needles` occurs exactly once in `text`, in this order; `who` names
// the log in the failure message.
inline void expect_once_in_order(const std::string& text, const std::vector<std::string>& needles,
                                 const std::string& who) {
  size_t last = 0;
  std::string prev = "(start)";
  for (const std::string& n : needles) {
    EXPECT_EQ(count_of(text, n), 1) << who << ": \"" << n << "\" should occur once\n" << text;
    const size_t at = text.find(n);
    if (at == std::string::npos) continue;
    EXPECT_GE(at, last) << who << ": \"" << n << "\" before \"" << prev << "\"\n" << text;
    last = at;
    prev = n;
  }
}

// Polls the daemon log at `path` until `needle` occurs `times` times.
inline bool wait_for_log_count(const std::string& path, const std::string& needle, int times,
                               std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (count_of(slurp(path), needle) >= times) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

// Polls `sharedfs debug heartbeats` until the slot of dead node `node` says a survivor
// recovered it (journal replayed, orphans and slot taken over).
inline bool wait_until_recovered(const MountedCluster& c, int node, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    auto r = run_command(std::string(SHAREDFS_BIN) + " debug heartbeats " + c.image());
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string slot, id, state;
      if (ls >> slot >> id >> state && slot == std::to_string(node - 1) && state == "recovered") {
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

}  // namespace sharedfs::testing
