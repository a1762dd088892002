// The control socket alone: a request and its answer, a daemon's socket left behind by a
// crash replaced, a second daemon for the same node refused, a silent daemon timed out,
// the cluster's sockets found by the commands.
#include "tools/control_socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/test_util.h"

namespace sharedfs::tools {
namespace {

class ControlSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/sharedfs-ctl-test-" + std::to_string(getpid());
    std::filesystem::remove_all(dir_);
    ::setenv("SHAREDFS_RUN_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("SHAREDFS_RUN_DIR");
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST_F(ControlSocketTest, AnswersOneRequestPerConnection) {
  const std::string path = control_socket_path(42, 3);
  EXPECT_EQ(path, dir_ + "/cluster-42/node-3.sock");
  auto server = ControlServer::start(path, [](const std::string& r) { return "answer to " + r; });
  ASSERT_OK(server);
  for (int i = 0; i < 3; ++i) {
    auto a = control_request(path, "question " + std::to_string(i), std::chrono::seconds(2));
    ASSERT_OK(a);
    EXPECT_EQ(*a, "answer to question " + std::to_string(i));
  }
  // Large answers arrive whole.
  auto big = ControlServer::start(control_socket_path(42, 4),
                                  [](const std::string&) { return std::string(5 << 20, 'z'); });
  ASSERT_OK(big);
  auto a = control_request(control_socket_path(42, 4), "x", std::chrono::seconds(5));
  ASSERT_OK(a);
  EXPECT_EQ(a->size(), size_t{5} << 20);
  // Both are found, in order; ask_any_daemon takes one that answers.
  auto found = find_control_sockets();
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].cluster_id, 42u);
  EXPECT_EQ(found[0].node, 3u);
  EXPECT_EQ(found[1].node, 4u);
  auto any = ask_any_daemon(42, "q", std::chrono::seconds(2));
  ASSERT_OK(any);
  EXPECT_EQ(*any, "answer to q");
  EXPECT_EQ(ask_any_daemon(7, "q", std::chrono::seconds(1)).status().code(), Code::kNotFound);
  // Gone with the server: the socket file, and the directory once empty.
  server->reset();
  big->reset();
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/cluster-42"));
}

TEST_F(ControlSocketTest, AStaleSocketIsReplacedALiveOneIsNot) {
  const std::string path = control_socket_path(5, 1);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  {
    // What a daemon killed with SIGKILL leaves: a bound socket file nobody listens on.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ::close(fd);
  }
  EXPECT_EQ(control_request(path, "q", std::chrono::seconds(1)).status().code(), Code::kNotFound);
  auto first = ControlServer::start(path, [](const std::string&) { return "first"; });
  ASSERT_OK(first);
  auto second = ControlServer::start(path, [](const std::string&) { return "second"; });
  EXPECT_EQ(second.status().code(), Code::kBusy);
  auto a = control_request(path, "q", std::chrono::seconds(2));
  ASSERT_OK(a);
  EXPECT_EQ(*a, "first");
}

TEST_F(ControlSocketTest, ASilentDaemonTimesOut) {
  const std::string path = control_socket_path(6, 1);
  std::atomic<bool> release{false};
  auto server = ControlServer::start(path, [&](const std::string&) {
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return std::string("late");
  });
  ASSERT_OK(server);
  const auto start = std::chrono::steady_clock::now();
  auto a = control_request(path, "q", std::chrono::milliseconds(300));
  EXPECT_EQ(a.status().code(), Code::kBusy);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  release = true;
}

}  // namespace
}  // namespace sharedfs::tools
