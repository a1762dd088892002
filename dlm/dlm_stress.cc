// dlm_stress: one node of the multi-process DLM test (dlm_cluster_test.cc).
//
//   dlm_stress ID INCARNATION PEERS SECONDS CONTROL LOG [THREADS] [RESOURCES]
//
// PEERS is "1=tcp://127.0.0.1:7001,2=...". Worker threads lock random resources (PR or EX)
// through a ClusterLockService for SECONDS, each hold logged to LOG as
//   G <monotonic ns> <node> <resource> <mode>     after the grant
//   R <monotonic ns> <node> <resource> <mode>     before the release
// so a logged interval lies inside the real one and a logged overlap is a real one. The
// cluster layer is played by CONTROL, a file of lines the node applies in order:
//   membership <epoch> <id>.<incarnation> ...      replayed <id>.<incarnation>      exit
// When its workers are done the node creates LOG.done but keeps serving the DLM (other
// nodes may need the locks it caches or masters) until the `exit` line; then exits 0.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dlm/cluster_lock_service.h"

using namespace sharedfs;
using namespace sharedfs::dlm;

namespace {

uint64_t mono_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Member parse_member(const std::string& s) {
  const auto dot = s.find('.');
  return Member{NodeId(static_cast<uint32_t>(std::stoul(s.substr(0, dot)))),
                std::stoull(s.substr(dot + 1))};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    fmt::print(stderr,
               "usage: dlm_stress ID INCARNATION PEERS SECONDS CONTROL LOG [THREADS] "
               "[RESOURCES]\n");
    return 2;
  }
  const Member self{NodeId(static_cast<uint32_t>(std::stoul(argv[1]))), std::stoull(argv[2])};
  std::vector<Peer> peers;
  {
    std::stringstream ss(argv[3]);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto eq = item.find('=');
      peers.push_back(
          Peer{NodeId(static_cast<uint32_t>(std::stoul(item.substr(0, eq)))), item.substr(eq + 1)});
    }
  }
  const double seconds = std::stod(argv[4]);
  const std::string control = argv[5];
  FILE* log = std::fopen(argv[6], "w");
  if (log == nullptr) return 2;
  const int threads = argc > 7 ? std::stoi(argv[7]) : 4;
  const int resources = argc > 8 ? std::stoi(argv[8]) : 8;

  std::mutex log_mu;
  auto write_log = [&](char kind, uint64_t r, LockMode mode) {
    std::lock_guard lock(log_mu);
    fmt::print(log, "{} {} {} {} {}\n", kind, mono_ns(), self.id.value, r, lock_mode_name(mode));
    std::fflush(log);  // the process may be killed at any time
  };
  auto svc = ClusterLockService::start(
      DlmNodeOptions{self, peers, "stress-secret", 50, 10},
      [](const LockName&, LockMode) -> std::optional<ValueBlockBytes> {
        std::this_thread::sleep_for(std::chrono::microseconds(200));  // "write back"
        return std::nullopt;
      });
  if (!svc.is_ok()) {
    fmt::print(stderr, "node {}: {}\n", self.to_string(), svc.status().to_string());
    return 1;
  }

  // The cluster layer: apply control lines in order.
  std::atomic<bool> done{false};
  std::atomic<bool> exit_asked{false};
  std::thread ctl([&] {
    size_t applied = 0;
    while (!done) {
      std::ifstream in(control);
      std::string line;
      size_t n = 0;
      while (std::getline(in, line)) {
        if (n++ < applied) continue;
        std::stringstream ls(line);
        std::string word;
        ls >> word;
        if (word == "membership") {
          Membership ms;
          ls >> ms.epoch;
          while (ls >> word) ms.members.push_back(parse_member(word));
          const Status st = (*svc)->node().set_membership(ms);
          if (!st.is_ok()) fmt::print(stderr, "node {}: {}\n", self.to_string(), st.to_string());
        } else if (word == "replayed") {
          ls >> word;
          const Status st = (*svc)->node().journal_replayed(parse_member(word));
          if (!st.is_ok()) fmt::print(stderr, "node {}: {}\n", self.to_string(), st.to_string());
        } else if (word == "exit") {
          exit_asked = true;
        }
        applied = n;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  std::atomic<uint64_t> ops{0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 rng(self.id.value * 1000 + t);
      while (std::chrono::steady_clock::now() < deadline) {
        const uint64_t r = rng() % resources;
        const LockMode mode = rng() % 10 < 6 ? LockMode::kPR : LockMode::kEX;
        auto l = (*svc)->lock(LockName{LockSpace::kInode, r}, mode);
        if (!l.is_ok()) {
          fmt::print(stderr, "node {}: {}\n", self.to_string(), l.status().to_string());
          std::exit(1);
        }
        write_log('G', r, mode);
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
        write_log('R', r, mode);
        l->reset();
        ++ops;
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
      }
    });
  }
  for (auto& w : workers) w.join();
  std::ofstream(std::string(argv[6]) + ".done") << ops.load() << "\n";
  while (!exit_asked) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  done = true;
  ctl.join();
  fmt::print("node {}: {} lock operations\n", self.to_string(), ops.load());
  std::fclose(log);
  svc->reset();
  return 0;
}
