#include "tools/stats_file.h"

#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace sharedfs::tools {

void StatsFile::block_signal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

StatsFile::StatsFile(std::string path, uint32_t node, std::function<std::string()> collect)
    : path_(std::move(path)), node_(node), collect_(std::move(collect)) {}

StatsFile::~StatsFile() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void StatsFile::start() { thread_ = std::thread([this] { run(); }); }

void StatsFile::run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  const timespec wait{0, 200'000'000};  // how soon stop_ is noticed
  while (!stop_) {
    if (sigtimedwait(&set, nullptr, &wait) != SIGUSR1) continue;
    if (auto st = write(); !st) spdlog::warn("stats file: {}", st.to_string());
  }
}

Status StatsFile::write() {
  const std::string json =
      fmt::format("{{\"node\": {}, \"seq\": {}, {}}}\n", node_, ++seq_, collect_());
  const std::string tmp = path_ + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return make_status(Code::kIoError, "{}: {}", tmp, std::strerror(errno));
  const bool ok = std::fwrite(json.data(), 1, json.size(), f) == json.size();
  if (std::fclose(f) != 0 || !ok) return make_status(Code::kIoError, "writing {}", tmp);
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
    return make_status(Code::kIoError, "renaming {} to {}: {}", tmp, path_, std::strerror(errno));
  }
  return Status::ok();
}

}  // namespace sharedfs::tools
