// POSIX behaviour through a real FUSE mount: system calls as applications make them.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using testing::MountedFs;
using testing::run_command;

class PosixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = std::make_unique<MountedFs>(
        image_bytes(), image_bytes() < (1 << 30) ? "--nodes 2 --journal-size 2M" : "");
    ASSERT_TRUE(m_->mount());
  }
  void TearDown() override { m_.reset(); }
  virtual uint64_t image_bytes() const { return uint64_t{2} << 30; }

  std::string p(const std::string& rel) const { return m_->path(rel); }
  static std::string slurp(const std::string& path) { return testing::slurp(path); }
  static void spit(const std::string& path, const std::string& data, int flags = O_TRUNC) {
    testing::spit(path, data, flags);
  }
  static std::multiset<std::string> list(const std::string& dir) { return testing::list_dir(dir); }
  // Runs `fn` in a child process as uid/gid 1000; returns its errno (0 for success).
  static int as_user(const std::function<int()>& fn) {
    pid_t pid = fork();
    if (pid == 0) {
      if (setresgid(1000, 1000, 1000) != 0 || setresuid(1000, 1000, 1000) != 0) _exit(255);
      _exit(fn());
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::unique_ptr<MountedFs> m_;
};

TEST_F(PosixTest, FilesReadWriteAppendTruncate) {
  spit(p("a"), "hello world");
  EXPECT_EQ(slurp(p("a")), "hello world");
  spit(p("a"), "!", O_APPEND);
  EXPECT_EQ(slurp(p("a")), "hello world!");
  spit(p("a"), "new");
  EXPECT_EQ(slurp(p("a")), "new");
  int fd = open(p("a").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "XY", 2, 10000), 2);
  char buf[8] = {};
  ASSERT_EQ(pread(fd, buf, 4, 9998), 4);
  EXPECT_EQ(std::string(buf, 4), std::string("\0\0XY", 4));
  ASSERT_EQ(ftruncate(fd, 2), 0);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 2);
  ASSERT_EQ(fsync(fd), 0);
  ASSERT_EQ(fdatasync(fd), 0);
  close(fd);
  EXPECT_EQ(slurp(p("a")), "ne");
  EXPECT_EQ(open(p("missing").c_str(), O_RDONLY), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(open(p("a").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(open(p(std::string(256, 'n')).c_str(), O_CREAT | O_WRONLY, 0600), -1);
  EXPECT_EQ(errno, ENAMETOOLONG);
}

TEST_F(PosixTest, DirectoriesLinksSymlinksSpecialFiles) {
  ASSERT_EQ(mkdir(p("d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p("d/e").c_str(), 0755), 0);
  spit(p("d/f"), "x");
  EXPECT_EQ(rmdir(p("d").c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);
  EXPECT_EQ(unlink(p("d").c_str()), -1);
  EXPECT_EQ(errno, EISDIR);
  ASSERT_EQ(link(p("d/f").c_str(), p("hard").c_str()), 0);
  struct stat st {};
  ASSERT_EQ(stat(p("hard").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 2u);
  ASSERT_EQ(symlink("d/f", p("sym").c_str()), 0);
  EXPECT_EQ(slurp(p("sym")), "x");
  char target[64] = {};
  ASSERT_EQ(readlink(p("sym").c_str(), target, sizeof target), 3);
  EXPECT_EQ(std::string(target), "d/f");
  ASSERT_EQ(mkfifo(p("fifo").c_str(), 0600), 0);
  ASSERT_EQ(mknod(p("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  ASSERT_EQ(stat(p("null").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
  ASSERT_EQ(stat(p("d").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 3u);
  EXPECT_EQ(list(p("d")), (std::multiset<std::string>{".", "..", "e", "f"}));
  ASSERT_EQ(chmod(p("d/f").c_str(), 0600), 0);
  ASSERT_EQ(chown(p("d/f").c_str(), 1000, 1000), 0);
  ASSERT_EQ(stat(p("d/f").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, 1000u);
  timespec times[2] = {{1000, 5}, {2000, 7}};
  ASSERT_EQ(utimensat(AT_FDCWD, p("d/f").c_str(), times, 0), 0);
  ASSERT_EQ(stat(p("d/f").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 2000);
  EXPECT_EQ(st.st_atim.tv_sec, 1000);
}

TEST_F(PosixTest, RenameFlavours) {
  spit(p("a"), "A");
  spit(p("b"), "B");
  ASSERT_EQ(mkdir(p("dir").c_str(), 0755), 0);
  ASSERT_EQ(syscall(SYS_renameat2, AT_FDCWD, p("a").c_str(), AT_FDCWD, p("b").c_str(),
                    RENAME_NOREPLACE),
            -1);
  EXPECT_EQ(errno, EEXIST);
  ASSERT_EQ(syscall(SYS_renameat2, AT_FDCWD, p("a").c_str(), AT_FDCWD, p("b").c_str(),
                    RENAME_EXCHANGE),
            0);
  EXPECT_EQ(slurp(p("a")), "B");
  EXPECT_EQ(slurp(p("b")), "A");
  ASSERT_EQ(rename(p("a").c_str(), p("dir/a2").c_str()), 0);
  EXPECT_EQ(slurp(p("dir/a2")), "B");
  ASSERT_EQ(rename(p("b").c_str(), p("dir/a2").c_str()), 0);  // replaces
  EXPECT_EQ(slurp(p("dir/a2")), "A");
  EXPECT_EQ(rename(p("dir").c_str(), p("dir/sub").c_str()), -1);
  EXPECT_EQ(errno, EINVAL);
  ASSERT_EQ(mkdir(p("other").c_str(), 0755), 0);
  ASSERT_EQ(rename(p("dir").c_str(), p("other/dir").c_str()), 0);
  EXPECT_EQ(slurp(p("other/dir/a2")), "A");
  EXPECT_EQ(list(m_->mnt()), (std::multiset<std::string>{".", "..", "other"}));
}

TEST_F(PosixTest, UnlinkedOpenFileLivesUntilClose) {
  std::string data(3 << 20, 'u');
  spit(p("victim"), data);
  struct statvfs before {};
  int fd = open(p("victim").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(unlink(p("victim").c_str()), 0);
  statvfs(m_->mnt().c_str(), &before);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_nlink, 0u);
  std::string back(data.size(), '\0');
  ASSERT_EQ(pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, data);
  ASSERT_EQ(pwrite(fd, "still", 5, 0), 5);
  close(fd);
  // The kernel forgets the inode a moment after the last close.
  struct statvfs after {};
  for (int i = 0; i < 100; ++i) {
    statvfs(m_->mnt().c_str(), &after);
    if (after.f_bfree >= before.f_bfree + 768) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_GE(after.f_bfree, before.f_bfree + 768);
}

TEST_F(PosixTest, PermissionsAndAcls) {
  ASSERT_EQ(mkdir(p("priv").c_str(), 0755), 0);
  spit(p("priv/secret"), "s");
  ASSERT_EQ(chmod(p("priv/secret").c_str(), 0600), 0);
  const std::string secret = p("priv/secret");
  const std::string newfile = p("priv/new");
  EXPECT_EQ(as_user([&] { return open(secret.c_str(), O_RDONLY) < 0 ? errno : 0; }), EACCES);
  EXPECT_EQ(as_user([&] { return open(newfile.c_str(), O_CREAT | O_WRONLY, 0600) < 0 ? errno : 0; }),
            EACCES);
  // An ACL entry for user 1000 grants read.
  auto r = run_command("setfacl -m u:1000:r " + secret);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(as_user([&] { return open(secret.c_str(), O_RDONLY) < 0 ? errno : 0; }), 0);
  EXPECT_EQ(as_user([&] { return open(secret.c_str(), O_WRONLY) < 0 ? errno : 0; }), EACCES);
  // A default ACL on the directory reaches new files.
  r = run_command("setfacl -m u:1000:rwx -d -m u:1000:rw " + p("priv"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(as_user([&] { return open(newfile.c_str(), O_CREAT | O_WRONLY, 0666) < 0 ? errno : 0; }),
            0);
  r = run_command("getfacl -cn " + newfile);
  EXPECT_NE(r.out.find("user:1000:rw-"), std::string::npos) << r.out;
  // Sticky directory: others' files cannot be removed.
  ASSERT_EQ(mkdir(p("tmp").c_str(), 01777), 0);
  ASSERT_EQ(chmod(p("tmp").c_str(), 01777), 0);
  spit(p("tmp/roots"), "r");
  const std::string roots = p("tmp/roots");
  EXPECT_EQ(as_user([&] { return unlink(roots.c_str()) < 0 ? errno : 0; }), EPERM);
}

TEST_F(PosixTest, XattrsThroughTheKernel) {
  spit(p("x"), "");
  const std::string f = p("x");
  ASSERT_EQ(setxattr(f.c_str(), "user.color", "blue", 4, 0), 0);
  char buf[64] = {};
  EXPECT_EQ(getxattr(f.c_str(), "user.color", buf, sizeof buf), 4);
  EXPECT_EQ(std::string(buf, 4), "blue");
  EXPECT_EQ(getxattr(f.c_str(), "user.color", nullptr, 0), 4);
  EXPECT_EQ(getxattr(f.c_str(), "user.color", buf, 2), -1);
  EXPECT_EQ(errno, ERANGE);
  EXPECT_EQ(getxattr(f.c_str(), "user.none", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(setxattr(f.c_str(), "user.color", "red", 3, XATTR_CREATE), -1);
  EXPECT_EQ(errno, EEXIST);
  char names[128] = {};
  EXPECT_EQ(listxattr(f.c_str(), names, sizeof names), 11);
  ASSERT_EQ(removexattr(f.c_str(), "user.color"), 0);
  EXPECT_EQ(listxattr(f.c_str(), names, sizeof names), 0);
}

TEST_F(PosixTest, SparseFilesPunchHoleSeekDataHole) {
  const std::string f = p("sparse");
  int fd = open(f.c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  const off_t tib = off_t{1} << 40;
  ASSERT_EQ(pwrite(fd, "end", 3, tib - 3), 3);
  std::string ones(1 << 20, '1');
  ASSERT_EQ(pwrite(fd, ones.data(), ones.size(), 0), static_cast<ssize_t>(ones.size()));
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192), 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_HOLE), 4096);
  EXPECT_EQ(lseek(fd, 4096, SEEK_DATA), 12288);
  EXPECT_EQ(lseek(fd, 1 << 20, SEEK_DATA), tib - 4096);
  char c = 'x';
  ASSERT_EQ(pread(fd, &c, 1, 5000), 1);
  EXPECT_EQ(c, '\0');
  ASSERT_EQ(fallocate(fd, 0, 2 << 20, 1 << 20), 0);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, tib);
  EXPECT_LT(st.st_blocks, 8 * 1024);
  close(fd);
}

TEST_F(PosixTest, ReaddirSeesEveryStableEntryOnceWhileOthersChange) {
  ASSERT_EQ(mkdir(p("big").c_str(), 0755), 0);
  const int stable = 3000;
  for (int i = 0; i < stable; ++i) spit(p("big/stable-" + std::to_string(i)), "");
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    int i = 0;
    while (!stop) {
      const std::string name = p("big/churn-" + std::to_string(i % 500));
      int fd = open(name.c_str(), O_CREAT | O_WRONLY, 0644);
      if (fd >= 0) close(fd);
      if (i % 2 == 1) unlink(p("big/churn-" + std::to_string((i * 7) % 500)).c_str());
      ++i;
    }
  });
  for (int round = 0; round < 5; ++round) {
    std::map<std::string, int> seen;
    DIR* d = opendir(p("big").c_str());
    ASSERT_NE(d, nullptr);
    while (dirent* e = readdir(d)) ++seen[e->d_name];
    closedir(d);
    int stable_seen = 0;
    for (const auto& [name, n] : seen) {
      EXPECT_EQ(n, 1) << name << " listed " << n << " times";
      if (name.rfind("stable-", 0) == 0) ++stable_seen;
    }
    EXPECT_EQ(stable_seen, stable);
  }
  stop = true;
  churn.join();
}

TEST_F(PosixTest, DataSurvivesRemount) {
  std::string data;
  for (int i = 0; i < 100000; ++i) data += std::to_string(i) + ",";
  spit(p("keep"), data);
  ASSERT_EQ(mkdir(p("kd").c_str(), 0700), 0);
  ASSERT_EQ(symlink("keep", p("kd/ln").c_str()), 0);
  EXPECT_EQ(m_->unmount(), 0);
  ASSERT_TRUE(m_->mount());
  EXPECT_EQ(slurp(p("keep")), data);
  EXPECT_EQ(slurp(p("kd/ln")), "<No such file or directory>");  // relative to kd/
  char target[16] = {};
  EXPECT_EQ(readlink(p("kd/ln").c_str(), target, sizeof target), 4);
}

// The daemon raises the mount's kernel read-ahead (128 KiB by default for every FUSE
// mount) to read_ahead_kb once the kernel has finished INIT.
std::string read_ahead_of(const std::string& mnt) {
  struct stat st {};
  if (stat(mnt.c_str(), &st) != 0) return "<stat failed>";
  std::ifstream in("/sys/class/bdi/" + std::to_string(major(st.st_dev)) + ":" +
                   std::to_string(minor(st.st_dev)) + "/read_ahead_kb");
  std::string kb;
  in >> kb;
  return kb;
}

TEST_F(PosixTest, ReadAheadIsRaisedAndConfigurable) {
  EXPECT_EQ(read_ahead_of(m_->mnt()), "1024");
  EXPECT_EQ(m_->unmount(), 0);
  ASSERT_TRUE(m_->mount("read_ahead_kb=4096"));
  EXPECT_EQ(read_ahead_of(m_->mnt()), "4096");
  // A file read through it is whole, at the end of the file too.
  std::string data(3 * 1024 * 1024 + 12345, 'r');
  for (size_t i = 0; i < data.size(); i += 4093) data[i] = static_cast<char>('a' + i % 26);
  spit(p("big"), data);
  EXPECT_EQ(slurp(p("big")), data);
}

class SmallPosixTest : public PosixTest {
  uint64_t image_bytes() const override { return 64 << 20; }
};

TEST_F(SmallPosixTest, FullDeviceGivesEnospcAndKeepsWhatWasWritten) {
  spit(p("first"), std::string(1 << 20, 'f'));
  int fd = open(p("filler").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  std::string chunk(1 << 20, 'z');
  int err = 0;
  for (int i = 0; i < 200; ++i) {
    if (write(fd, chunk.data(), chunk.size()) < 0) {
      err = errno;
      break;
    }
  }
  close(fd);
  EXPECT_EQ(err, ENOSPC);
  EXPECT_EQ(m_->unmount(), 0);
  ASSERT_TRUE(m_->mount());
  EXPECT_EQ(slurp(p("first")), std::string(1 << 20, 'f'));
  ASSERT_EQ(unlink(p("filler").c_str()), 0);
  spit(p("after"), "room again");
  EXPECT_EQ(slurp(p("after")), "room again");
}

TEST(MountBadInput, NotASharedfsDeviceIsRefusedClearly) {
  const std::string dir = "/var/tmp/sharedfs-posix-bad-" + std::to_string(getpid());
  std::filesystem::create_directories(dir + "/mnt");
  std::ofstream(dir + "/junk.img").close();
  std::filesystem::resize_file(dir + "/junk.img", 64 << 20);
  auto r = run_command(std::string(SHAREDFS_BIN) + " mount " + dir + "/junk.img " + dir + "/mnt");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("no sharedfs superblock"), std::string::npos) << r.out;
  r = run_command(std::string(SHAREDFS_BIN) + " mount " + dir + "/missing.img " + dir + "/mnt");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("missing.img"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sharedfs
