// sharedfs images formatted and mounted with `sharedfs mount -f` for one test: MountedFs
// (one node alone) and MountedCluster (several nodes of one cluster config over one image,
// their DLMs on 127.0.0.1). Daemons are started and stopped by pid; every mount is always
// taken down, and fsck.sharedfs -n must find the image clean afterwards.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.h"

namespace sharedfs::testing {

// A whole file's bytes, or "<error text>".
inline std::string slurp(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return "<" + std::string(strerror(errno)) + ">";
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}
// Writes `data` to `path` (created 0644) opened with `flags` added.
inline void spit(const std::string& path, const std::string& data, int flags = O_TRUNC) {
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | flags, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(close(fd), 0);
}
// The names readdir returns, "." and ".." included.
inline std::multiset<std::string> list_dir(const std::string& dir) {
  std::multiset<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) out.insert(e->d_name);
  closedir(d);
  return out;
}

// One `sharedfs mount -f` child serving one mount point. Its control socket goes to a run
// directory of its own (SHAREDFS_RUN_DIR, unless set_env names another), removed with the
// object: a daemon killed by a test cannot remove its socket, and /run/sharedfs would
// keep it.
class FuseDaemon {
 public:
  explicit FuseDaemon(std::string mountpoint) : mnt_(std::move(mountpoint)) {
    static std::atomic<int> daemons{0};
    // Short, under /tmp: a socket path has room for 107 bytes.
    run_dir_ = "/tmp/sharedfs-run-" + std::to_string(getpid()) + "-d" + std::to_string(daemons++);
  }
  ~FuseDaemon() {
    stop();
    std::error_code ec;
    std::filesystem::remove_all(run_dir_, ec);
  }
  FuseDaemon(const FuseDaemon&) = delete;
  FuseDaemon& operator=(const FuseDaemon&) = delete;

  const std::string& mnt() const { return mnt_; }
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // The daemon's stdout and stderr go to `path` (appended) instead of the test's.
  void set_log(std::string path) { log_ = std::move(path); }
  const std::string& log() const { return log_; }
  // Set in the daemon's environment (test hooks such as SHAREDFS_TEST_REPLAY_WRITE_DELAY_MS),
  // besides what was set before.
  void set_env(std::vector<std::pair<std::string, std::string>> env) {
    env_.insert(env_.end(), env.begin(), env.end());
  }
  // Run the daemon through these words first (e.g. nsenter --net=... for a network namespace).
  void set_prefix(std::vector<std::string> prefix) { prefix_ = std::move(prefix); }

  // SIGKILL: the node dies with its locks and journal as they are; its FUSE connection is
  // aborted and the mount point taken down (the others must recover it).
  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    run_command("fusermount3 -u -z " + mnt_ + " 2>/dev/null");
  }

  // Runs `sharedfs mount -f IMAGE MNT EXTRA...` and waits (up to `wait`) for the mount.
  bool start(const std::string& image, const std::vector<std::string>& extra,
             std::chrono::milliseconds wait = std::chrono::seconds(10)) {
    pid_ = fork();
    if (pid_ == 0) {
      if (!log_.empty()) {
        const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
          dup2(fd, 1);
          dup2(fd, 2);
          close(fd);
        }
      }
      // The daemon must not inherit the test's descriptors: one that a test thread has
      // open on another node's mount at the fork kept that mount busy for the daemon's
      // life (the crash-loop test's unmount of node 1 failed with EBUSY about 1 run in 3).
      close_range(3, ~0U, 0);
      setenv("SHAREDFS_RUN_DIR", run_dir_.c_str(), 1);
      for (const auto& [k, v] : env_) setenv(k.c_str(), v.c_str(), 1);
      std::vector<std::string> args = prefix_;
      for (std::string a : {std::string(SHAREDFS_BIN), std::string("mount"), std::string("-f"), image, mnt_}) {
        args.push_back(a);
      }
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      _exit(127);
    }
    struct stat parent {};
    stat(std::filesystem::path(mnt_).parent_path().c_str(), &parent);
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < deadline) {
      struct stat st {};
      if (stat(mnt_.c_str(), &st) == 0 && st.st_dev != parent.st_dev) return true;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // The processes with a descriptor, working directory or root under the mount point, one
  // line each: what makes an unmount fail with EBUSY.
  std::string holders() const {
    std::string out;
    const std::string prefix = mnt_ + "/";
    auto under = [&](const std::string& target) { return target == mnt_ || target.rfind(prefix, 0) == 0; };
    std::error_code ec;
    // Processes come and go while we look: iterate without exceptions.
    auto entries = [](const std::filesystem::path& dir) {
      std::vector<std::filesystem::path> paths;
      std::error_code e;
      for (std::filesystem::directory_iterator it(dir, e), end; !e && it != end; it.increment(e)) {
        paths.push_back(it->path());
      }
      return paths;
    };
    for (const auto& proc : entries("/proc")) {
      const std::string pid = proc.filename();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      std::vector<std::string> what;
      for (const char* link : {"cwd", "root"}) {
        auto t = std::filesystem::read_symlink(proc / link, ec);
        if (!ec && under(t.string())) what.push_back(link);
      }
      for (const auto& fd : entries(proc / "fd")) {
        auto t = std::filesystem::read_symlink(fd, ec);
        if (!ec && under(t.string())) what.push_back("fd " + fd.filename().string() + " " + t.string());
      }
      if (what.empty()) continue;
      std::ifstream comm(proc / "comm");
      std::string name;
      std::getline(comm, name);
      out += "  pid " + pid + " (" + name + "):";
      for (const auto& w : what) out += " " + w;
      out += "\n";
    }
    return out.empty() ? "  (no process found)\n" : out;
  }

  // Unmounts and waits for the daemon; false (and a test failure) when it did not exit
  // cleanly. A withdrawn node's daemon exits with an error by design: `expect_clean` false.
  bool stop(bool expect_clean = true) {
    if (pid_ <= 0) return true;
    CommandResult r;
    for (int i = 0; i < 50; ++i) {
      r = run_command("fusermount3 -u " + mnt_);
      if (r.rc == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (r.rc != 0) {
      // Still busy after 5 s: detach it, and if the daemon then still waits for requests
      // (something keeps the lazily unmounted mount alive), abort its FUSE connection, so
      // the test cleans up whatever went wrong.
      const std::string held_by = holders();
      std::fprintf(stderr, "fusermount3 -u %s kept failing (%s): lazy unmount; held by:\n%s",
                   mnt_.c_str(), r.out.c_str(), held_by.c_str());
      // A mount still in use when a test is done with it is the test's bug (the harness's
      // own cause, descriptors inherited by daemons, is gone); a withdrawn node's may be.
      if (expect_clean) ADD_FAILURE() << "unmount of " << mnt_ << " stayed busy for 5 s; held by:\n" << held_by;
      struct stat st {};
      const bool known = stat(mnt_.c_str(), &st) == 0;
      run_command("fusermount3 -u -z " + mnt_);
      // Exited yet? (WNOWAIT: the status is still collected below.)
      auto gone = [&] {
        siginfo_t info{};
        return waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
               info.si_pid == pid_;
      };
      for (int i = 0; i < 40 && !gone(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (known && !gone()) {
        run_command("mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections");
        run_command("echo 1 > /sys/fs/fuse/connections/" + std::to_string(minor(st.st_dev)) + "/abort");
      }
    }
    int status = 0;
    bool exited = false;
    for (int i = 0; i < 400 && !exited; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) exited = true;
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!exited) {
      ADD_FAILURE() << "sharedfs daemon " << pid_ << " did not exit after unmount";
      // Where it hangs, for whoever reads the failure (gdb is optional).
      auto bt = run_command("command -v gdb >/dev/null && gdb -p " + std::to_string(pid_) +
                            " -batch -ex 'thread apply all bt 14' 2>&1 | grep -E '^(#|Thread)' | head -300");
      std::fprintf(stderr, "--- daemon %d threads ---\n%s\n", pid_, bt.out.c_str());
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    const bool clean = exited && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (expect_clean) {
      EXPECT_TRUE(clean) << "daemon exit status " << status;
    }
    return clean;
  }

 private:
  std::string mnt_;
  std::string run_dir_;
  pid_t pid_ = -1;
  std::string log_;
  std::vector<std::pair<std::string, std::string>> env_;
  std::vector<std::string> prefix_;
};

// A fresh image in a scratch directory, removed with the object.
class ScratchImage {
 public:
  ScratchImage(const std::string& what, uint64_t image_bytes, const std::string& mkfs_args)
      : dir_(scratch_dir(what)) {
    image_ = (dir_ / "disk.img").string();
    make_sparse_file(image_, image_bytes);
    auto r = run_command(std::string(MKFS_BIN) + " --force " + mkfs_args + " " + image_);
    EXPECT_EQ(r.rc, 0) << r.out;
  }
  ~ScratchImage() { std::filesystem::remove_all(dir_); }
  const std::filesystem::path& dir() const { return dir_; }
  const std::string& image() const { return image_; }
  // fsck.sharedfs -n; returns its exit code (0: clean).
  int fsck() const {
    auto r = run_command(std::string(FSCK_BIN) + " -n " + image_);
    EXPECT_EQ(r.rc, 0) << r.out;
    return r.rc;
  }

 private:
  std::filesystem::path dir_;
  std::string image_;
};

class MountedFs {
 public:
  explicit MountedFs(uint64_t image_bytes = uint64_t{2} << 30, const std::string& mkfs_args = "")
      : image_("posix", image_bytes, mkfs_args),
        daemon_((image_.dir() / "mnt").string()) {
    std::filesystem::create_directories(daemon_.mnt());
  }
  ~MountedFs() { unmount(); }

  const std::string& mnt() const { return daemon_.mnt(); }
  const std::string& image() const { return image_.image(); }
  std::string path(const std::string& rel) const { return mnt() + "/" + rel; }

  // Starts the daemon in the foreground (as a child) and waits for the mount.
  bool mount(const std::string& opts = "") {
    std::vector<std::string> extra;
    if (!opts.empty()) extra = {"-o", opts};
    return daemon_.start(image(), extra);
  }

  // Unmounts, waits for the daemon and checks the image. Returns fsck's exit code.
  int unmount() {
    if (!daemon_.running()) return -1;
    daemon_.stop();
    return image_.fsck();
  }

 private:
  ScratchImage image_;
  FuseDaemon daemon_;
};

struct ClusterTimings {
  int heartbeat_ms = 100;
  int timeout_ms = 1500;
};

// `nodes` nodes of one cluster over one image, node i (1-based) mounted at mnt(i). The
// cluster config uses short heartbeat timings so that joins and leaves are quick. Each
// daemon logs to log(i). `hosts` (one per node) replaces 127.0.0.1 as the nodes' addresses.
class MountedCluster {
 public:
  explicit MountedCluster(int nodes, uint64_t image_bytes = uint64_t{2} << 30,
                          ClusterTimings timings = {}, std::vector<std::string> hosts = {})
      : image_("cluster", image_bytes, "--nodes 4 --cluster-id 77 --cluster-name test"),
        timings_(timings) {
    static std::atomic<int> clusters{0};
    run_dir_ = "/tmp/sharedfs-run-" + std::to_string(getpid()) + "-" + std::to_string(clusters++);
    config_ = (image_.dir() / "cluster.toml").string();
    std::set<int> ports;
    // Distinct ports: a port free a moment ago may come back from the next probe.
    while (static_cast<int>(ports.size()) < nodes) ports.insert(free_port());
    auto port = ports.begin();
    for (int i = 1; i <= nodes; ++i, ++port) {
      const std::string host = hosts.empty() ? "127.0.0.1" : hosts.at(i - 1);
      addresses_.push_back(host + ":" + std::to_string(*port));
      const auto mnt = image_.dir() / ("mnt" + std::to_string(i));
      std::filesystem::create_directories(mnt);
      daemons_.push_back(std::make_unique<FuseDaemon>(mnt.string()));
      daemons_.back()->set_log((image_.dir() / ("node" + std::to_string(i) + ".log")).string());
      // Every test cluster has id 77: each keeps its control sockets and state files in
      // its own directory, where its commands (cli()) look too.
      daemons_.back()->set_env({{"SHAREDFS_RUN_DIR", run_dir()}});
    }
    write_config(config_, "cluster-test-secret-0123");
  }

  // Where this cluster's daemons put their control sockets (tools/control_socket.h): short
  // (a Unix socket's path has at most 107 bytes; the scratch directory's name is long),
  // removed with the cluster.
  const std::string& run_dir() const { return run_dir_; }
  // `sharedfs ARGS` as an operator on this host runs it (shell words, 2>&1).
  CommandResult cli(const std::string& args) const {
    return run_command("SHAREDFS_RUN_DIR=" + run_dir() + " " + std::string(SHAREDFS_BIN) + " " +
                       args + " 2>&1");
  }

  // A config for the same nodes (e.g. with another secret) at `path`.
  void write_config(const std::string& path, const std::string& secret) const {
    std::ofstream c(path);
    c << "[cluster]\nname = \"test\"\nid = 77\nsecret = \"" << secret << "\"\n"
      << "heartbeat_interval_ms = " << timings_.heartbeat_ms << "\n"
      << "heartbeat_timeout_ms = " << timings_.timeout_ms << "\n";
    for (size_t i = 0; i < addresses_.size(); ++i) {
      c << "[[node]]\nid = " << i + 1 << "\nname = \"n" << i + 1 << "\"\naddress = \""
        << addresses_[i] << "\"\n";
    }
  }
  FuseDaemon& daemon(int node) { return *daemons_.at(node - 1); }
  std::string log(int node) const { return daemons_.at(node - 1)->log(); }
  const std::filesystem::path& dir() const { return image_.dir(); }
  const ClusterTimings& timings() const { return timings_; }
  // SIGKILL of node `node` (FuseDaemon::kill9).
  void kill(int node) { daemons_.at(node - 1)->kill9(); }
  ~MountedCluster() {
    unmount_all();
    std::filesystem::remove_all(run_dir_);
    if (::testing::Test::HasFailure()) {
      // The daemons' own account, before the scratch directory goes.
      for (int i = 1; i <= nodes(); ++i) {
        std::string text = slurp(log(i));
        if (text.size() > 6000) text = "..." + text.substr(text.size() - 6000);
        std::fprintf(stderr, "--- node %d log (end) ---\n%s\n", i, text.c_str());
      }
    }
  }

  int nodes() const { return static_cast<int>(daemons_.size()); }
  const std::string& mnt(int node) const { return daemons_.at(node - 1)->mnt(); }
  std::string path(int node, const std::string& rel) const { return mnt(node) + "/" + rel; }
  const std::string& image() const { return image_.image(); }
  const std::string& config() const { return config_; }

  bool mount(int node, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"--config", config_, "--node", std::to_string(node)};
    args.insert(args.end(), extra.begin(), extra.end());
    return daemons_.at(node - 1)->start(image(), args);
  }
  // Mounts every node at once (they join one another) and waits for all.
  // One after another, as an operator would: a simultaneous start once formed two views at
  // once (docs/cluster.md, "Known limits"); the membership agent's own tests cover that.
  bool mount_all() {
    for (int i = 1; i <= nodes(); ++i) {
      if (!mount(i)) return false;
    }
    return true;
  }
  bool unmount(int node) { return daemons_.at(node - 1)->stop(); }
  // Unmounts every node and checks the image. Returns fsck's exit code.
  int unmount_all() {
    bool any = false;
    for (auto& d : daemons_) {
      any = any || d->running();
      d->stop();
    }
    return any ? image_.fsck() : -1;
  }
  int fsck() const { return image_.fsck(); }

 private:
  ScratchImage image_;
  ClusterTimings timings_;
  std::vector<std::string> addresses_;
  std::string config_;
  std::string run_dir_;
  std::vector<std::unique_ptr<FuseDaemon>> daemons_;
};

// A test with three nodes of one cluster mounted; at its end every node is unmounted and
// fsck.sharedfs -n must find the image clean.
class MountedClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = std::make_unique<MountedCluster>(3);
    ASSERT_TRUE(c_->mount_all());
  }
  void TearDown() override {
    if (c_) {
      EXPECT_EQ(c_->unmount_all(), 0);
    }
    c_.reset();
  }

  std::unique_ptr<MountedCluster> c_;
};

}  // namespace sharedfs::testing
