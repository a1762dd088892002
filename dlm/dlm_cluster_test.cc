// Three dlm_stress processes on 127.0.0.1 exchange locks over ZeroMQ tcp for 30 s
// (SHAREDFS_DLM_CLUSTER_SECONDS overrides). Part-way through, node 3 is killed with
// SIGKILL, the survivors get the new membership and, a second later, the go-ahead that its
// journal was replayed; they must finish. The merged logs are then checked:
//   - no resource ever had EX together with any other hold, across processes and threads;
//   - a resource node 3 held in EX when it died is not held by anyone before the go-ahead
//     (its PR holds end at the kill);
//   - the survivors kept granting after the go-ahead and exited cleanly.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using sharedfs::testing::free_port;

uint64_t mono_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

pid_t spawn(const std::vector<std::string>& args, const fs::path& out) {
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::freopen(out.c_str(), "w", stdout);
    if (f != nullptr) dup2(fileno(stdout), 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for `pid` until `deadline`; -1 when it did not exit in time (then it is killed).
int wait_until(pid_t pid, std::chrono::steady_clock::time_point deadline) {
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

struct Event {
  uint64_t t;
  int delta;  // +1 grant, -1 release
  bool ex;
  int node;
};

TEST(DlmCluster, ThreeProcessesWithOneKilledKeepLocksExclusive) {
  const char* env = std::getenv("SHAREDFS_DLM_CLUSTER_SECONDS");
  const double seconds = env != nullptr ? std::stod(env) : 30.0;
  const fs::path dir = fs::temp_directory_path() / ("dlm_cluster_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path exe = fs::read_symlink("/proc/self/exe").parent_path() / "dlm_stress";
  ASSERT_TRUE(fs::exists(exe)) << exe;
  std::string peers;
  for (int i = 1; i <= 3; ++i) {
    peers +=
        (i > 1 ? "," : "") + std::to_string(i) + "=tcp://127.0.0.1:" + std::to_string(free_port());
  }
  const fs::path control = dir / "control";
  std::ofstream(control) << "membership 1 1.1 2.1 3.1\n";
  std::vector<pid_t> pids;
  for (int i = 1; i <= 3; ++i) {
    pids.push_back(spawn({exe.string(), std::to_string(i), "1", peers, std::to_string(seconds),
                          control.string(), (dir / ("log" + std::to_string(i))).string()},
                         dir / ("out" + std::to_string(i))));
  }
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds * 0.4));
  kill(pids[2], SIGKILL);
  waitpid(pids[2], nullptr, 0);
  const uint64_t killed_at = mono_ns();
  std::ofstream(control, std::ios::app) << "membership 2 1.1 2.1\n";
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const uint64_t replayed_at = mono_ns();
  std::ofstream(control, std::ios::app) << "replayed 3.1\n";

  const auto deadline = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                    std::chrono::duration<double>(seconds + 30));
  // The survivors serve each other's locks until both are done.
  while (Clock::now() < deadline &&
         !(fs::exists(dir / "log1.done") && fs::exists(dir / "log2.done"))) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ofstream(control, std::ios::app) << "exit\n";
  for (int i = 0; i < 2; ++i) {
    const int rc = wait_until(pids[i], deadline);
    std::ifstream out(dir / ("out" + std::to_string(i + 1)));
    std::stringstream text;
    text << out.rdbuf();
    EXPECT_EQ(rc, 0) << "node " << i + 1 << " did not finish: " << text.str();
  }

  std::map<uint64_t, std::vector<Event>> events;  // by resource
  std::map<uint64_t, std::pair<int, int>> open3;  // node 3's unreleased holds: PR, EX
  uint64_t grants = 0;
  uint64_t survivor_grants_after_replay = 0;
  for (int node = 1; node <= 3; ++node) {
    std::ifstream in(dir / ("log" + std::to_string(node)));
    std::string line;
    while (std::getline(in, line)) {
      std::stringstream ls(line);
      char kind = 0;
      uint64_t t = 0, r = 0;
      int n = 0;
      std::string mode;
      if (!(ls >> kind >> t >> n >> r >> mode)) continue;  // a line cut by the kill
      const bool ex = mode == "EX";
      events[r].push_back(Event{t, kind == 'G' ? 1 : -1, ex, node});
      if (kind == 'G') {
        ++grants;
        if (node != 3 && t > replayed_at) ++survivor_grants_after_replay;
      }
      if (node == 3) {
        auto& [pr, exs] = open3[r];
        (ex ? exs : pr) += kind == 'G' ? 1 : -1;
      }
    }
  }
  // Node 3's holds at its death end at the kill (PR) or at the go-ahead (EX).
  for (const auto& [r, open] : open3) {
    for (int i = 0; i < open.first; ++i) events[r].push_back(Event{killed_at, -1, false, 3});
    for (int i = 0; i < open.second; ++i) events[r].push_back(Event{replayed_at, -1, true, 3});
  }
  int violations = 0;
  for (auto& [r, evs] : events) {
    std::sort(evs.begin(), evs.end(), [](const Event& a, const Event& b) {
      return a.t != b.t ? a.t < b.t : a.delta < b.delta;  // releases first at equal times
    });
    int ex = 0, pr = 0;
    for (const Event& e : evs) {
      (e.ex ? ex : pr) += e.delta;
      if (e.delta > 0 && (ex > 1 || (ex == 1 && pr > 0))) {
        if (++violations <= 5) {
          ADD_FAILURE() << "resource " << r << ": " << ex << " EX and " << pr
                        << " PR held at once (t=" << e.t << ", node " << e.node << ")";
        }
      }
    }
  }
  EXPECT_EQ(violations, 0);
  EXPECT_GT(grants, 1000u);
  EXPECT_GT(survivor_grants_after_replay, 100u) << "the survivors did not go on";
  fmt::print("{} grants, {} by survivors after the go-ahead\n", grants,
             survivor_grants_after_replay);
  if (!HasFailure()) fs::remove_all(dir);
}

}  // namespace
