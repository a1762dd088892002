// A one-line progress indicator for the command-line tools: drawn on a terminal only, so
// piped output and logs stay clean. Each phase gets its own line.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace sharedfs::mkfs {

class ProgressLine {
 public:
  // Draws on stderr when it is a terminal and `quiet` is false.
  explicit ProgressLine(bool quiet) : enabled_(!quiet && isatty(STDERR_FILENO)) {}
  ~ProgressLine() { finish(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  bool enabled() const { return enabled_; }

  void update(std::string_view phase, uint64_t done, uint64_t total) {
    if (!enabled_ || total == 0) return;
    if (phase != phase_) {
      finish();
      phase_ = phase;
    }
    const auto now = std::chrono::steady_clock::now();
    // At most 10 redraws a second, but always the first and the last.
    if (drawn_ && done != total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr uint64_t kWidth = 40;
    const uint64_t filled = kWidth * std::min(done, total) / total;
    std::fprintf(stderr, "\r%s [%s%s] %llu/%llu", phase_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<unsigned long long>(done),
                 static_cast<unsigned long long>(total));
    std::fflush(stderr);
    drawn_ = true;
  }

  // Ends the current line (before other output, or at the end).
  void finish() {
    if (drawn_) std::fputs("\n", stderr);
    drawn_ = false;
  }

 private:
  bool enabled_;
  std::string phase_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace sharedfs::mkfs
