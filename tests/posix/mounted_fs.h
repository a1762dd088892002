// A sharedfs image formatted and mounted with `sharedfs mount -f` for one test. The
// daemon is started and stopped by pid; the mount is always taken down, and fsck.sharedfs
// -n must find the image clean afterwards.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/test_util.h"

namespace sharedfs::testing {

class MountedFs {
 public:
  explicit MountedFs(uint64_t image_bytes = uint64_t{2} << 30, const std::string& mkfs_args = "")
      : dir_(scratch_dir("posix")) {
    std::filesystem::create_directories(dir_ / "mnt");
    image_ = (dir_ / "disk.img").string();
    mnt_ = (dir_ / "mnt").string();
    make_sparse_file(image_, image_bytes);
    auto r = run_command(std::string(MKFS_BIN) + " --force " + mkfs_args + " " + image_);
    EXPECT_EQ(r.rc, 0) << r.out;
  }
  ~MountedFs() {
    unmount();
    std::filesystem::remove_all(dir_);
  }

  const std::string& mnt() const { return mnt_; }
  const std::string& image() const { return image_; }
  std::string path(const std::string& rel) const { return mnt_ + "/" + rel; }

  // Starts the daemon in the foreground (as a child) and waits for the mount.
  bool mount(const std::string& opts = "") {
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<std::string> args{SHAREDFS_BIN, "mount", "-f", image_, mnt_};
      if (!opts.empty()) {
        args.push_back("-o");
        args.push_back(opts);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    struct stat parent {};
    stat(dir_.c_str(), &parent);
    for (int i = 0; i < 200; ++i) {
      struct stat st {};
      if (stat(mnt_.c_str(), &st) == 0 && st.st_dev != parent.st_dev) return true;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Unmounts, waits for the daemon and checks the image. Returns fsck's exit code.
  int unmount() {
    if (pid_ <= 0) return -1;
    CommandResult r;
    for (int i = 0; i < 50; ++i) {
      r = run_command("fusermount3 -u " + mnt_);
      if (r.rc == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (r.rc != 0) run_command("fusermount3 -u -z " + mnt_);
    int status = 0;
    bool exited = false;
    for (int i = 0; i < 300 && !exited; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) exited = true;
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!exited) {
      ADD_FAILURE() << "sharedfs daemon " << pid_ << " did not exit after unmount";
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    EXPECT_TRUE(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "daemon exit status " << status;
    auto fsck = run_command(std::string(FSCK_BIN) + " -n " + image_);
    EXPECT_EQ(fsck.rc, 0) << fsck.out;
    return fsck.rc;
  }

 private:
  std::filesystem::path dir_;
  std::string image_;
  std::string mnt_;
  pid_t pid_ = -1;
};

}  // namespace sharedfs::testing
