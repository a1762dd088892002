// A one-line progress indicator for the command-line tools: drawn on a terminal only, so
// piped output and logs stay clean.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace sharedfs::mkfs {

class ProgressLine {
 public:
  ProgressLine(std::string what, bool quiet)
      : what_(std::move(what)), enabled_(!quiet && isatty(STDERR_FILENO)) {}
  ~ProgressLine() { finish(); }

  void update(uint64_t done, uint64_t total) {
    if (!enabled_ || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 40;
    const int filled = static_cast<int>(kWidth * done / total);
    std::fprintf(stderr, "\r%s [%s%s] %llu/%llu", what_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<unsigned long long>(done),
                 static_cast<unsigned long long>(total));
    drawn_ = true;
  }

  void finish() {
    if (drawn_) std::fputs("\n", stderr);
    drawn_ = false;
  }

 private:
  std::string what_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace sharedfs::mkfs
