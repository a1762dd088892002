// The operator's commands against a live 3-node cluster on this host (issue 7): `sharedfs
// status`, `locks` and `top`, each answered by the daemons over their control sockets and
// the DLM, with the JSON output parsed and checked against what the test did.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using json = nlohmann::json;
using testing::MountedCluster;
using Clock = std::chrono::steady_clock;

class OpsTest : public testing::MountedClusterTest {
 protected:
  // Runs `sharedfs ARGS` and parses its output as one JSON document.
  json cli_json(const std::string& args) {
    auto r = c_->cli(args);
    EXPECT_EQ(r.rc, 0) << args << ": " << r.out;
    json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << args << " printed no JSON: " << r.out;
    return j;
  }
};

TEST_F(OpsTest, StatusShowsEveryNodeAndWhatItsDaemonSays) {
  const json s = cli_json("status --json --config " + c_->config() + " " + c_->image());
  EXPECT_EQ(s["cluster"], "test");
  EXPECT_EQ(s["cluster_id"], 77);
  ASSERT_EQ(s["nodes"].size(), 3u);
  int holders = 0;
  for (const auto& n : s["nodes"]) {
    SCOPED_TRACE(n.dump());
    EXPECT_EQ(n["state"], "alive");
    EXPECT_TRUE(n["key_registered"].get<bool>());
    EXPECT_TRUE(n["heartbeat"]["advancing"].get<bool>());
    EXPECT_LT(n["heartbeat"]["age_s"].get<double>(), 2.0);
    holders += n["holds_reservation"].get<bool>() ? 1 : 0;
    ASSERT_TRUE(n["daemon"].is_object());
    EXPECT_EQ(n["version"], SHAREDFS_VERSION);
    EXPECT_EQ(n["daemon"]["node"], n["node"]);
    EXPECT_EQ(n["daemon"]["state"], "mounted");
    EXPECT_EQ(n["daemon"]["mountpoint"], c_->mnt(n["node"].get<int>()));
    EXPECT_EQ(n["daemon"]["membership"]["members"], json::array({1, 2, 3}));
    EXPECT_FALSE(n["recovering"].get<bool>());
    EXPECT_GE(n["journal_percent"].get<double>(), 0.0);
    EXPECT_LE(n["journal_percent"].get<double>(), 100.0);
    EXPECT_GT(n["daemon"]["journal"]["capacity_blocks"].get<uint64_t>(), 0u);
  }
  EXPECT_EQ(holders, 1) << "exactly one node holds the reservation";
  // The table says the same.
  auto t = c_->cli("status --config " + c_->config() + " " + c_->image());
  EXPECT_EQ(t.rc, 0) << t.out;
  EXPECT_NE(t.out.find(SHAREDFS_VERSION), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("journal"), std::string::npos) << t.out;

  // A node unmounted: still listed from the disk, no daemon answers for it.
  ASSERT_TRUE(c_->unmount(3));
  const json after = cli_json("status --json --config " + c_->config() + " " + c_->image());
  ASSERT_EQ(after["nodes"].size(), 3u);
  EXPECT_EQ(after["nodes"][2]["state"], "down");
  EXPECT_TRUE(after["nodes"][2]["daemon"].is_null());
  EXPECT_FALSE(after["nodes"][2]["key_registered"].get<bool>());
  EXPECT_EQ(after["nodes"][0]["daemon"]["membership"]["members"], json::array({1, 2}));
}

// The symptom on one node (a flock that does not return on node 2), the cause on another
// (node 1 holds it), in one view, with the wait time; gone once node 1 lets go.
TEST_F(OpsTest, LocksBusyShowsTheHolderOnOneNodeAndTheWaiterOnAnother) {
  testing::spit(c_->path(1, "contended"), "x");
  const int fd1 = ::open(c_->path(1, "contended").c_str(), O_RDWR);
  ASSERT_GE(fd1, 0);
  ASSERT_EQ(::flock(fd1, LOCK_EX), 0);
  std::atomic<bool> granted{false};
  // Whatever fails below, the waiter is let through and joined before the test returns (a
  // joinable thread at the end would abort the test binary and orphan the daemons).
  struct Release {
    int fd;
    std::thread& t;
    ~Release() {
      ::flock(fd, LOCK_UN);
      if (t.joinable()) t.join();
      ::close(fd);
    }
  };
  std::thread waiter;
  Release release{fd1, waiter};
  waiter = std::thread([&] {
    const int fd2 = ::open(c_->path(2, "contended").c_str(), O_RDWR);
    ASSERT_GE(fd2, 0);
    EXPECT_EQ(::flock(fd2, LOCK_EX), 0);
    granted = true;
    ::close(fd2);
  });
  const std::string cmd = "locks --busy --json --config " + c_->config();
  json found;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline && found.is_null()) {
    const json l = cli_json(cmd);
    EXPECT_EQ(l["members"], json::array({1, 2, 3}));
    EXPECT_TRUE(l["unanswered"].empty()) << l.dump();
    for (const auto& r : l["resources"]) {
      if (!r["waiters"].empty() && r["waiters"][0]["waited_ms"].get<uint64_t>() >= 300) found = r;
    }
    if (found.is_null()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_FALSE(found.is_null()) << "no waited-for lock in `sharedfs " << cmd << "`";
  SCOPED_TRACE(found.dump());
  EXPECT_FALSE(granted.load());
  EXPECT_NE(found["resource"].get<std::string>().find(":flock"), std::string::npos);
  const int master = found["master"].get<int>();
  EXPECT_TRUE(master >= 1 && master <= 3);
  ASSERT_EQ(found["holders"].size(), 1u);
  EXPECT_EQ(found["holders"][0]["node"], 1);
  EXPECT_EQ(found["holders"][0]["mode"], "EX");
  ASSERT_EQ(found["waiters"].size(), 1u);
  EXPECT_EQ(found["waiters"][0]["node"], 2);
  EXPECT_EQ(found["waiters"][0]["mode"], "EX");
  // The table names both sides.
  auto t = c_->cli("locks --busy --config " + c_->config());
  EXPECT_EQ(t.rc, 0) << t.out;
  EXPECT_NE(t.out.find(found["resource"].get<std::string>()), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("2 EX"), std::string::npos) << t.out;

  ASSERT_EQ(::flock(fd1, LOCK_UN), 0);
  waiter.join();
  EXPECT_TRUE(granted.load());
  // Nobody waits any more.
  bool quiet = false;
  for (int i = 0; i < 50 && !quiet; ++i) {
    quiet = cli_json(cmd)["resources"].empty();
    if (!quiet) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(quiet);
  // Without --busy, the cluster's cached locks are there: the file's inode lock, cached by
  // the nodes that opened it.
  std::string inode = found["resource"].get<std::string>();
  inode.resize(inode.rfind(":flock"));
  const json all = cli_json("locks --json --config " + c_->config());
  json file;
  for (const auto& r : all["resources"]) {
    if (r["resource"] == inode) file = r;
  }
  ASSERT_FALSE(file.is_null()) << inode << " not in " << all.dump();
  std::set<int> holders;
  for (const auto& h : file["holders"]) holders.insert(h["node"].get<int>());
  EXPECT_TRUE(holders.contains(1) && holders.contains(2)) << file.dump();
}

TEST_F(OpsTest, TopShowsTheWorkOfTheNodeThatWorks) {
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    const std::string block(4096, 'w');
    for (int i = 0; !stop; ++i) {
      testing::spit(c_->path(2, "busy-" + std::to_string(i % 50)), block);
    }
  });
  auto r = c_->cli("top --json -n 3 -i 0.5 --config " + c_->config());
  stop = true;
  writer.join();  // nothing between the start and here can return early
  ASSERT_EQ(r.rc, 0) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  int frames = 0;
  double node2_ops = 0, node1_ops = 0;
  bool saw_write = false;
  while (std::getline(lines, line)) {
    const json f = json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(f.is_discarded()) << line;
    ++frames;
    ASSERT_EQ(f["nodes"].size(), 3u) << line;
    for (const auto& n : f["nodes"]) {
      EXPECT_GT(n["interval_s"].get<double>(), 0.3);
      if (n["node"] == 2) {
        node2_ops += n["ops_per_s"].get<double>();
        saw_write = saw_write || n["ops"].contains("write");
        EXPECT_GE(n["op_avg_ms"].get<double>(), 0.0);
      }
      if (n["node"] == 1) node1_ops += n["ops_per_s"].get<double>();
    }
  }
  EXPECT_EQ(frames, 3);
  EXPECT_GT(node2_ops, 50.0) << r.out;
  EXPECT_TRUE(saw_write) << r.out;
  EXPECT_LT(node1_ops, node2_ops) << r.out;
}

}  // namespace
}  // namespace sharedfs

namespace sharedfs {
namespace {

// GET http://127.0.0.1:PORT/metrics; the body, or "" on failure.
std::string scrape(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  const auto body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

// The sample `name{labels}` (labels exactly as printed) of a text exposition; -1 if absent.
double sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with(series + " ")) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

// The Prometheus endpoint of node 1, scraped and parsed: base units, `sharedfs_` names,
// figures that follow what the test did.
TEST(OpsMetricsTest, TheEndpointServesWhatTheNodeDid) {
  MountedCluster c(3);
  const int port = testing::free_port();
  ASSERT_TRUE(c.mount(1, {"-o", "metrics=127.0.0.1:" + std::to_string(port)}));
  ASSERT_TRUE(c.mount(2));
  ASSERT_TRUE(c.mount(3));
  for (int i = 0; i < 20; ++i)
    testing::spit(c.path(1, "m" + std::to_string(i)), std::string(8192, 'm'));
  ASSERT_EQ(::truncate(c.path(1, "m0").c_str(), 0), 0);
  const std::string text = scrape(port);
  ASSERT_FALSE(text.empty()) << "nothing on port " << port;
  SCOPED_TRACE(text.substr(0, 4000));
  EXPECT_EQ(sample(text, R"(sharedfs_build_info{cluster="test",node="1",version=")" +
                             std::string(SHAREDFS_VERSION) + "\"}"),
            1);
  EXPECT_GE(sample(text, R"(sharedfs_fuse_request_duration_seconds_count{op="write"})"), 20);
  EXPECT_GE(sample(text, R"(sharedfs_fuse_request_duration_seconds_bucket{op="write",le="+Inf"})"),
            20);
  EXPECT_GT(sample(text, R"(sharedfs_fuse_request_duration_seconds_sum{op="write"})"), 0);
  EXPECT_GE(sample(text, R"(sharedfs_fuse_bytes_total{direction="write"})"), 20 * 8192);
  EXPECT_EQ(sample(text, R"(sharedfs_nodes{state="member"})"), 3);
  EXPECT_GE(sample(text, R"(sharedfs_heartbeat_age_seconds{peer="2"})"), 0);
  EXPECT_LT(sample(text, R"(sharedfs_heartbeat_age_seconds{peer="2"})"), 1.5);
  EXPECT_GT(sample(text, R"(sharedfs_dlm_lock_wait_seconds_count{mode="EX"})"), 0);
  EXPECT_GT(sample(text, R"(sharedfs_dlm_locks_held{mode="EX"})"), 0);
  EXPECT_GT(sample(text, R"(sharedfs_device_bytes_total{direction="write"})"), 0);
  EXPECT_GT(sample(text, R"(sharedfs_device_io_duration_seconds_count{op="write"})"), 0);
  EXPECT_GE(sample(text, R"(sharedfs_journal_used_ratio)"), 0);
  EXPECT_GE(sample(text, R"(sharedfs_journal_commits_total)"), 0);
  EXPECT_EQ(sample(text, R"(sharedfs_withdrawn)"), 0);
  EXPECT_NE(text.find("# TYPE sharedfs_fuse_request_duration_seconds histogram"),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE sharedfs_dlm_messages_total counter"), std::string::npos);
  // Node 2 reads what node 1 wrote: node 1 gives its locks up (revocations counted).
  EXPECT_EQ(testing::slurp(c.path(2, "m5")), std::string(8192, 'm'));
  const std::string later = scrape(port);
  EXPECT_GT(sample(later, R"(sharedfs_lock_revokes_total{kind="inode"})"), 0)
      << later.substr(0, 3000);
  EXPECT_EQ(c.unmount_all(), 0);
}

}  // namespace
}  // namespace sharedfs
