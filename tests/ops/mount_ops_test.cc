// sharedfs mounted the ways an operator does without typing `sharedfs mount`: an fstab line
// of type fuse.sharedfs through mount(8) and mount.fuse3, mount -t sharedfs through
// mount.sharedfs, `sharedfs mount --update-fstab`, and the readiness message the systemd
// unit waits for.
//
// mount(8) takes helpers from /sbin only, and mount.fuse3 runs sharedfs through /bin/sh with
// PATH unset. So the test process enters a mount namespace of its own where read-only
// overlays add mount.sharedfs to /sbin and sharedfs to /usr/local/sbin, both the binaries
// under test, and libmount's utab is a tmpfs: the host's directories and files stay
// untouched, and the overlays go with the process. fstab files are temporary (mount -T).
// The test process is the subreaper of the daemons mount(8) leaves behind, so it waits for
// each to exit cleanly after umount, and fsck.sharedfs must then find the image clean.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

namespace stdfs = std::filesystem;
using testing::CommandResult;
using testing::run_command;
using testing::ScratchImage;
using testing::slurp;
using testing::spit;

constexpr uint64_t kImageBytes = uint64_t{1} << 30;

constexpr std::string_view kSkip = "skip: ";

// Whether "/" is a mount of its own (field 5 of /proc/self/mountinfo). Under chroot(2) it
// usually is not, and then no mount of this namespace can be made a slave of the host's:
// what the tests mount would propagate to the host.
bool root_is_a_mount_point() {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mount_point;
    if (ls >> id >> parent >> devno >> root >> mount_point && mount_point == "/") return true;
  }
  return false;
}

// The namespace described at the top, entered once per process; "" or what failed (or,
// starting with kSkip, why it cannot be made safely here).
std::string enter_helper_namespace() {
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    auto fail = [](const std::string& what) { error = what + ": " + std::strerror(errno); };
    if (!root_is_a_mount_point()) {
      error = std::string(kSkip) +
              "/ is not a mount point here (a chroot?), so the test's mounts could not be kept "
              "out of the host's namespace";
      return;
    }
    if (unshare(CLONE_NEWNS) != 0) return fail("unshare(CLONE_NEWNS)");
    // Nothing mounted here reaches the host's namespace, but the host's unmounts reach
    // here: a private copy of another test's FUSE mount would keep its daemon serving
    // after that test unmounted it.
    if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0) {
      return fail("making / a slave of the host's mounts");
    }
    const stdfs::path helpers =
        stdfs::path("/var/tmp") / ("sharedfs-ops-helpers-" + std::to_string(getpid()));
    stdfs::remove_all(helpers);
    stdfs::create_directories(helpers / "sbin");
    stdfs::create_directories(helpers / "local");
    stdfs::create_symlink(MOUNT_HELPER_BIN, helpers / "sbin" / "mount.sharedfs");
    stdfs::create_symlink(SHAREDFS_BIN, helpers / "local" / "sharedfs");
    // /sbin is /usr/sbin on a merged-/usr system: overlay whichever directory it is.
    for (const auto& [upper, dir] :
         {std::pair{helpers / "sbin", stdfs::canonical("/sbin")},
          std::pair{helpers / "local", stdfs::path("/usr/local/sbin")}}) {
      stdfs::create_directories(dir);
      const std::string opts = "lowerdir=" + upper.string() + ":" + dir.string();
      if (mount("overlay", dir.c_str(), "overlay", MS_RDONLY, opts.c_str()) != 0) {
        return fail("overlay on " + dir.string());
      }
    }
    stdfs::create_directories("/run/mount");
    if (mount("tmpfs", "/run/mount", "tmpfs", 0, "size=1m") != 0) {
      return fail("tmpfs on /run/mount");
    }
    // The overlays show the links only while they exist: removed when the process ends.
    static const stdfs::path to_remove = helpers;
    std::atexit([] { stdfs::remove_all(to_remove); });
    // Daemons that mount(8) started and left become our children: their exit is seen.
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return fail("PR_SET_CHILD_SUBREAPER");
  });
  return error;
}

// Whether `dir` is a mount point of a sharedfs now, as /proc/self/mountinfo says; the
// mount's source and options on the way.
struct MountInfo {
  bool mounted = false;
  std::string source;
  std::string options;
};
MountInfo mount_info(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  MountInfo found;
  while (std::getline(in, line)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS
    std::istringstream ls(line);
    std::string id, parent, dev, root, mnt, opts, word;
    ls >> id >> parent >> dev >> root >> mnt >> opts;
    while (ls >> word && word != "-") {
    }
    std::string type, source;
    ls >> type >> source;
    if (mnt == dir && type == "fuse.sharedfs") found = {true, source, opts};
  }
  return found;
}

// The socket a Type=notify unit's manager listens on ($NOTIFY_SOCKET): datagrams.
class NotifyListener {
 public:
  explicit NotifyListener(std::string path) : path_(std::move(path)) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
      error_ = std::string("socket: ") + strerror(errno);
      return;
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      error_ = std::string("bind ") + path_ + ": " + strerror(errno);
    }
    timeval tv{0, 50 * 1000};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~NotifyListener() {
    if (fd_ >= 0) close(fd_);
  }
  NotifyListener(const NotifyListener&) = delete;
  NotifyListener& operator=(const NotifyListener&) = delete;

  const std::string& path() const { return path_; }
  // "" when listening; else what failed.
  const std::string& error() const { return error_; }
  // The first message within 20 s ("" if none); `on_message` runs the moment it arrives.
  std::string receive(const std::function<void()>& on_message = {}) {
    for (int i = 0; i < 400; ++i) {
      char buf[256];
      const ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        if (on_message) on_message();
        return std::string(buf, static_cast<size_t>(n));
      }
    }
    return "";
  }

 private:
  std::string path_;
  std::string error_;
  int fd_ = -1;
};

class MountOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string ns = enter_helper_namespace();
    if (ns.starts_with(kSkip)) GTEST_SKIP() << ns.substr(kSkip.size());
    ASSERT_EQ(ns, "") << "cannot set up the test's mount namespace";
    // A cluster id of this process's own: status finds a cluster's device among all the
    // host's mounts, other tests' clusters included.
    cluster_id_ = 1000000 + static_cast<uint64_t>(getpid());
    image_.emplace("ops", kImageBytes,
                   "--nodes 4 --cluster-id " + std::to_string(cluster_id_) + " --cluster-name ops");
    dir_ = image_->dir();
    fstab_ = (dir_ / "fstab").string();
  }

  void TearDown() override {
    for (const auto& [mnt, pid] : daemons_) {
      if (mount_info(mnt).mounted) unmount(mnt);
    }
    for (const auto& [mnt, pid] : std::map(daemons_)) wait_for_daemon(mnt);
    // Whatever else mount(8) orphaned onto us.
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    if (image_ && !::testing::Test::HasFailure()) {  // no image when SetUp skipped
      image_->fsck();  // fails the test unless clean
    }
    image_.reset();
  }

  std::string mnt(const std::string& name) {
    const auto d = dir_ / name;
    stdfs::create_directories(d);
    return d.string();
  }
  const std::string& image() const { return image_->image(); }

  // A cluster config for `nodes` nodes on 127.0.0.1 with quick heartbeats.
  std::string cluster_config(int nodes) {
    const std::string path = (dir_ / "cluster.toml").string();
    std::ofstream c(path);
    c << "[cluster]\nname = \"ops\"\nid = " << cluster_id_
      << "\nsecret = \"ops-test-secret-0123456789\"\n"
      << "heartbeat_interval_ms = 100\nheartbeat_timeout_ms = 1500\n";
    std::set<int> ports;
    while (static_cast<int>(ports.size()) < nodes) ports.insert(testing::free_port());
    int id = 1;
    for (int port : ports) {
      c << "[[node]]\nid = " << id << "\nname = \"n" << id << "\"\naddress = \"127.0.0.1:" << port
        << "\"\n";
      ++id;
    }
    return path;
  }

  // Runs `cmd`; when it should have left a daemon serving `mnt`, remembers that daemon.
  CommandResult run_mounting(const std::string& cmd, const std::string& mnt) {
    CommandResult r = run_command(cmd);
    if (r.rc == 0 && mount_info(mnt).mounted) {
      const pid_t pid = daemon_serving(mnt);
      EXPECT_GT(pid, 0) << "no sharedfs daemon of ours serves " << mnt;
      if (pid > 0) daemons_[mnt] = pid;
    }
    return r;
  }

  // Our child (we are the subreaper) whose command line names `mnt`.
  static pid_t daemon_serving(const std::string& mnt) {
    for (const auto& e : stdfs::directory_iterator("/proc")) {
      const std::string name = e.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(e.path() / "stat");
      std::string pid, comm, state;
      pid_t ppid = 0;
      if (!(stat >> pid >> comm >> state >> ppid) || ppid != getpid()) continue;
      const std::string cmdline = slurp((e.path() / "cmdline").string());
      if (cmdline.find(std::string(1, '\0') + mnt + std::string(1, '\0')) != std::string::npos) {
        return static_cast<pid_t>(std::stoi(name));
      }
    }
    return -1;
  }

  // umount(8), retried while busy (a file just closed may still be released).
  void unmount(const std::string& mnt) {
    CommandResult r;
    for (int i = 0; i < 50; ++i) {
      r = run_command("umount " + mnt);
      if (r.rc == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "umount " << mnt << ": " << r.out;
    run_command("umount -l " + mnt);
  }

  // Waits for the daemon of `mnt` to exit, which it must do with status 0: unmounted,
  // journal clean, out of the cluster.
  void wait_for_daemon(const std::string& mnt) {
    auto it = daemons_.find(mnt);
    if (it == daemons_.end()) return;
    const pid_t pid = it->second;
    daemons_.erase(it);
    int status = 0;
    for (int i = 0; i < 600; ++i) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << "daemon of " << mnt << " ended with status " << status;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "the daemon of " << mnt << " did not exit within 30 s of the unmount";
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }

  // Unmounts with umount(8) and waits for the daemon.
  void umount_and_wait(const std::string& mnt) {
    unmount(mnt);
    wait_for_daemon(mnt);
    EXPECT_FALSE(mount_info(mnt).mounted);
  }

  uint64_t cluster_id_ = 0;
  std::optional<ScratchImage> image_;
  stdfs::path dir_;
  std::string fstab_;
  std::map<std::string, pid_t> daemons_;  // by mount point
};

TEST_F(MountOpsTest, FstabLineMountsThroughMountFuse3AndMountAllSeesItMounted) {
  const std::string m = mnt("mnt");
  // _netdev and noauto mean something to mount(8) and mount.fuse3, not to the daemon;
  // noatime reaches the kernel.
  spit(fstab_, "# sharedfs test fstab\n" + image() + " " + m +
                   " fuse.sharedfs _netdev,node=1,noatime 0 0\n" + "/dev/nonexistent " +
                   mnt("other") + " fuse.sharedfs noauto,node=2 0 0\n");
  CommandResult r = run_mounting("mount -T " + fstab_ + " " + m, m);
  ASSERT_EQ(r.rc, 0) << r.out;
  const MountInfo info = mount_info(m);
  ASSERT_TRUE(info.mounted);
  // The source is the device, as in the fstab line: what lets mount -a see it mounted.
  EXPECT_EQ(info.source, image());
  EXPECT_NE(info.options.find("noatime"), std::string::npos) << info.options;
  spit(m + "/hello", "through fstab\n");

  r = run_command("mount -v -a -T " + fstab_);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("already mounted"), std::string::npos) << r.out;
  EXPECT_FALSE(mount_info(mnt("other")).mounted);

  umount_and_wait(m);
  // And back through mount -a: the file is there.
  r = run_mounting("mount -a -T " + fstab_, m);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(slurp(m + "/hello"), "through fstab\n");
  umount_and_wait(m);
}

TEST_F(MountOpsTest, MountTypeFuseSharedfsOnTheCommandLine) {
  const std::string m = mnt("mnt");
  CommandResult r = run_mounting("mount -t fuse.sharedfs -o node=2,ro " + image() + " " + m, m);
  ASSERT_EQ(r.rc, 0) << r.out;
  ASSERT_TRUE(mount_info(m).mounted);
  EXPECT_EQ(mount_info(m).options.rfind("ro,", 0), 0u) << mount_info(m).options;
  // Read-only really: the kernel refuses the write.
  EXPECT_EQ(open((m + "/f").c_str(), O_CREAT | O_WRONLY, 0644), -1);
  EXPECT_EQ(errno, EROFS);
  umount_and_wait(m);
}

TEST_F(MountOpsTest, MountTypeSharedfsRunsTheMountHelper) {
  const std::string m = mnt("mnt");
  CommandResult r = run_mounting("mount -v -t sharedfs -o node=1 " + image() + " " + m, m);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("mount.sharedfs: mounting " + image() + " on " + m), std::string::npos)
      << r.out;
  ASSERT_TRUE(mount_info(m).mounted);
  spit(m + "/f", "via mount.sharedfs\n");
  umount_and_wait(m);

  // Type sharedfs in an fstab goes the same way.
  spit(fstab_, image() + " " + m + " sharedfs node=1 0 0\n");
  r = run_mounting("mount -T " + fstab_ + " " + m, m);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(slurp(m + "/f"), "via mount.sharedfs\n");
  umount_and_wait(m);
}

TEST_F(MountOpsTest, MountHelperFakeChecksWithoutMountingAndFailuresAreMountFailures) {
  const std::string m = mnt("mnt");
  // -f: checked (the device holds a sharedfs), nothing mounted.
  CommandResult r = run_command("mount -f -t sharedfs -o node=1 " + image() + " " + m);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(mount_info(m).mounted);
  // mount.sharedfs -f directly, on something that is no sharedfs: refused, nothing mounted.
  const std::string junk = (dir_ / "junk.img").string();
  testing::make_sparse_file(junk, 64 << 20);
  r = run_command(std::string(MOUNT_HELPER_BIN) + " " + junk + " " + m + " -f -o node=1");
  EXPECT_EQ(r.rc, 32) << r.out;
  // A bad option: mount(8) reports the helper's failure (32) with the daemon's reason.
  r = run_command("mount -t sharedfs -o node=1,threads=many " + image() + " " + m);
  EXPECT_EQ(r.rc, 32) << r.out;
  EXPECT_NE(r.out.find("threads=many"), std::string::npos) << r.out;
  EXPECT_FALSE(mount_info(m).mounted);
  // Bad usage is 1.
  r = run_command(std::string(MOUNT_HELPER_BIN) + " " + image());
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("usage: mount.sharedfs"), std::string::npos) << r.out;
}

TEST_F(MountOpsTest, ClusterNodesMountThroughFstabAndMountHelper) {
  const std::string config = cluster_config(2);
  const std::string m1 = mnt("node1"), m2 = mnt("node2");
  spit(fstab_, image() + " " + m1 + " fuse.sharedfs _netdev,config=" + config + ",node=1 0 0\n" +
                   image() + " " + m2 + " sharedfs _netdev,config=" + config + ",node=2 0 0\n");
  CommandResult r = run_mounting("mount -T " + fstab_ + " " + m1, m1);
  ASSERT_EQ(r.rc, 0) << r.out;
  r = run_mounting("mount -T " + fstab_ + " " + m2, m2);
  ASSERT_EQ(r.rc, 0) << r.out;
  ASSERT_TRUE(mount_info(m1).mounted && mount_info(m2).mounted);
  // One cluster: what node 1 writes, node 2 reads.
  spit(m1 + "/shared", "written on node 1\n");
  EXPECT_EQ(slurp(m2 + "/shared"), "written on node 1\n");
  // status finds the cluster's device among the mounts (their source is the device).
  r = run_command(std::string(SHAREDFS_BIN) + " status --config " + config);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(
      r.out.find("cluster \"ops\" (id " + std::to_string(cluster_id_) + ") on " + image() + "\n"),
      std::string::npos)
      << r.out;
  // Leave one after another, as an operator's umount does.
  umount_and_wait(m2);
  umount_and_wait(m1);
}

TEST_F(MountOpsTest, UpdateFstabWritesTheLineThatMountsItAgain) {
  const std::string config = cluster_config(1);
  const std::string m = mnt("mnt");
  const std::string head = "# /etc/fstab for the test\nUUID=1234 / ext4 errors=remount-ro 0 1\n";
  const std::string tail = "\n  # indented comment\ntmpfs /scratch tmpfs size=1G 0 0\n";
  spit(fstab_, head + "/dev/old " + m + " fuse.sharedfs node=3 0 0\n" + tail);
  CommandResult r =
      run_mounting(std::string(SHAREDFS_BIN) + " mount --update-fstab --fstab " + fstab_ +
                       " --config " + config + " --node 1 -o noatime " + image() + " " + m,
                   m);
  ASSERT_EQ(r.rc, 0) << r.out;
  ASSERT_TRUE(mount_info(m).mounted);
  const std::string line =
      image() + " " + m + " fuse.sharedfs _netdev,config=" + config + ",node=1,noatime 0 0\n";
  EXPECT_EQ(slurp(fstab_), head + line + tail);
  umount_and_wait(m);

  // The line mounts it again, through mount.fuse3, as the same node of the same cluster.
  r = run_mounting("mount -T " + fstab_ + " " + m, m);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(mount_info(m).options.find("noatime"), std::string::npos);
  umount_and_wait(m);

  // SHAREDFS_FSTAB names the file as --fstab does; run again, the file does not change.
  r = run_mounting("SHAREDFS_FSTAB=" + fstab_ + " " + SHAREDFS_BIN +
                       " mount --update-fstab --config " + config + " --node 1 -o noatime " +
                       image() + " " + m,
                   m);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(slurp(fstab_), head + line + tail);
  umount_and_wait(m);
}

TEST_F(MountOpsTest, UpdateFstabThatCannotBeWrittenFailsBeforeMounting) {
  const std::string m = mnt("mnt");
  const std::string blocker = (dir_ / "not-a-directory").string();
  spit(blocker, "x");
  CommandResult r = run_mounting(std::string(SHAREDFS_BIN) + " mount --update-fstab --fstab " +
                                     blocker + "/fstab " + image() + " " + m,
                                 m);
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("--update-fstab"), std::string::npos) << r.out;
  EXPECT_FALSE(mount_info(m).mounted);
}

// What a Type=notify unit waits for: READY=1 on $NOTIFY_SOCKET, once the mount is up.
TEST_F(MountOpsTest, ForegroundDaemonTellsSystemdOnceMounted) {
  const std::string m = mnt("mnt");
  NotifyListener notify((dir_ / "notify.sock").string());
  ASSERT_EQ(notify.error(), "");
  const std::string& sock_path = notify.path();

  const pid_t pid = fork();
  if (pid == 0) {
    close_range(3, ~0U, 0);
    setenv("NOTIFY_SOCKET", sock_path.c_str(), 1);
    execl(SHAREDFS_BIN, SHAREDFS_BIN, "mount", "-f", image().c_str(), m.c_str(), nullptr);
    _exit(127);
  }
  ASSERT_GT(pid, 0);
  daemons_[m] = pid;
  bool mounted_when_told = false;
  const std::string message = notify.receive([&] { mounted_when_told = mount_info(m).mounted; });
  EXPECT_EQ(message, "READY=1");
  EXPECT_TRUE(mounted_when_told);
  umount_and_wait(m);
}

// The unit's commands as systemd runs them (its ${VAR} and $$ rules, the instance's
// environment file's values): ExecStartPre makes the mount point, ExecStart mounts and says
// READY=1, ExecStop unmounts and returns only once the daemon has left the cluster.
class UnitCommands {
 public:
  explicit UnitCommands(std::map<std::string, std::string> env) : env_(std::move(env)) {
    std::ifstream in(UNIT_TEMPLATE);
    std::string line;
    while (std::getline(in, line)) {
      const auto eq = line.find('=');
      if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
      std::string value = line.substr(eq + 1);
      // The unit as installed runs the sharedfs under test.
      const std::string sbin = "@SHAREDFS_SBIN_DIR@/sharedfs";
      if (auto at = value.find(sbin); at != std::string::npos) {
        value.replace(at, sbin.size(), SHAREDFS_BIN);
      }
      keys_[line.substr(0, eq)] = value;
    }
  }
  bool has(const std::string& key) const { return keys_.count(key) != 0; }
  // The command line of `key` as argv: words split at blanks outside single quotes,
  // "${VAR}" replaced by its value (one word), "$$" by "$".
  std::vector<std::string> argv(const std::string& key) const {
    std::vector<std::string> words;
    const std::string& text = keys_.at(key);
    std::string word;
    bool quoted = false, any = false;
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (c == '\'') {
        quoted = !quoted;
        any = true;
      } else if (c == ' ' && !quoted) {
        if (any) words.push_back(word);
        word.clear();
        any = false;
      } else if (c == '$' && i + 1 < text.size() && text[i + 1] == '$') {
        word += '$';
        ++i;
        any = true;
      } else if (c == '$' && i + 1 < text.size() && text[i + 1] == '{') {
        const auto end = text.find('}', i);
        word += env_.at(text.substr(i + 2, end - i - 2));
        i = end;
        any = true;
      } else {
        word += c;
        any = true;
      }
    }
    if (any) words.push_back(word);
    return words;
  }
  // Starts `key`'s command with the unit's environment (and `extra`); returns its pid.
  pid_t spawn(const std::string& key, const std::map<std::string, std::string>& extra) const {
    std::vector<std::string> args = argv(key);
    const pid_t pid = fork();
    if (pid == 0) {
      close_range(3, ~0U, 0);
      for (const auto& [k, v] : env_) setenv(k.c_str(), v.c_str(), 1);
      for (const auto& [k, v] : extra) setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> cargv;
      for (auto& a : args) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    return pid;
  }
  int run(const std::string& key, const std::map<std::string, std::string>& extra = {}) const {
    const pid_t pid = spawn(key, extra);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  std::map<std::string, std::string> env_;
  std::map<std::string, std::string> keys_;
};

TEST_F(MountOpsTest, SystemdUnitCommandsMountAndStopCleanly) {
  const std::string m = (dir_ / "by-unit" / "mnt").string();  // ExecStartPre makes it
  UnitCommands unit({{"DEVICE", image()},
                     {"MOUNTPOINT", m},
                     {"CONFIG", cluster_config(1)},
                     {"NODE", "1"},
                     {"OPTIONS", "noatime"}});
  ASSERT_TRUE(unit.has("ExecStartPre") && unit.has("ExecStart") && unit.has("ExecStop"));
  ASSERT_EQ(unit.run("ExecStartPre"), 0);
  ASSERT_TRUE(stdfs::is_directory(m));

  NotifyListener notify((dir_ / "notify.sock").string());
  ASSERT_EQ(notify.error(), "");
  const std::string& sock_path = notify.path();
  const pid_t main_pid = unit.spawn("ExecStart", {{"NOTIFY_SOCKET", sock_path}});
  ASSERT_GT(main_pid, 0);
  daemons_[m] = main_pid;  // until ExecStop: TearDown unmounts and waits if we fail before
  const std::string message = notify.receive();
  ASSERT_EQ(message, "READY=1");
  ASSERT_TRUE(mount_info(m).mounted);
  EXPECT_NE(mount_info(m).options.find("noatime"), std::string::npos);
  spit(m + "/f", "x");

  // systemd reaps its main process while ExecStop runs: so does this thread.
  daemons_.erase(m);
  std::atomic<int> main_status{-1};
  std::atomic<bool> main_exited{false};
  std::thread reaper([&] {
    int status = 0;
    waitpid(main_pid, &status, 0);
    main_status = status;
    main_exited = true;
  });
  const int stop = unit.run("ExecStop", {{"MAINPID", std::to_string(main_pid)}});
  // ExecStop returned: the daemon is gone (nothing left for systemd's SIGTERM to cut short).
  const bool gone_at_stop = main_exited.load();
  if (!gone_at_stop) kill(main_pid, SIGKILL);
  reaper.join();
  EXPECT_EQ(stop, 0);
  EXPECT_TRUE(gone_at_stop);
  EXPECT_TRUE(WIFEXITED(main_status.load()) && WEXITSTATUS(main_status.load()) == 0)
      << "status " << main_status.load();
  EXPECT_FALSE(mount_info(m).mounted);
}

}  // namespace
}  // namespace sharedfs
