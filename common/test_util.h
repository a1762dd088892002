// GoogleTest helpers shared by every test binary: Status/Result checks and running a shell
// command.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "common/status.h"

#define SHAREDFS_STATUS_CHECK_(check, expr)                                 \
  do {                                                                      \
    const ::sharedfs::Status _st = ::sharedfs::internal::as_status((expr)); \
    check(_st.is_ok()) << #expr << " failed: " << _st.to_string();          \
  } while (0)

#define ASSERT_OK(expr) SHAREDFS_STATUS_CHECK_(ASSERT_TRUE, expr)
#define EXPECT_OK(expr) SHAREDFS_STATUS_CHECK_(EXPECT_TRUE, expr)

namespace sharedfs::testing {

// A tcp port on 127.0.0.1 that was free a moment ago (bound to port 0 and closed again:
// another process may take it in between, which tests accept).
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

struct CommandResult {
  int rc = -1;      // exit status; -1 if it could not run or was killed
  std::string out;  // standard output and standard error together
};

// Runs `cmd` with /bin/sh and waits for it.
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A fresh directory of the running test's own, /var/tmp/sharedfs-<what>-<pid>-<test>: on a
// real file system (O_DIRECT works there, unlike on tmpfs). The fixture removes it.
inline std::filesystem::path scratch_dir(std::string_view what) {
  const auto dir = std::filesystem::path("/var/tmp") /
                   ("sharedfs-" + std::string(what) + "-" + std::to_string(getpid()) + "-" +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Creates `path` (or cuts it back) as a sparse file of `bytes`.
inline void make_sparse_file(const std::string& path, uint64_t bytes) {
  std::ofstream(path).close();
  std::filesystem::resize_file(path, bytes);
}

}  // namespace sharedfs::testing
