// Three nodes of one cluster mounted over one image on this host (issue 5): what a call
// on one node changes, the next call on another sees; nodes working in one directory at
// once; a file unlinked while another node reads it; readers racing a rewriting node.
// Every test ends with all nodes unmounted and fsck.sharedfs -n clean (MountedCluster).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using testing::list_dir;
using testing::MountedCluster;
using testing::slurp;
using testing::spit;
using Clock = std::chrono::steady_clock;

// "4096 bytes: 2048 x 'C', 2048 x 0x00": what a read returned, as runs of one byte.
std::string describe(const char* b, size_t n) {
  std::string out = std::to_string(n) + " bytes:";
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && b[j] == b[i]) ++j;
    const unsigned char c = static_cast<unsigned char>(b[i]);
    char byte[8];
    if (c >= 0x20 && c < 0x7f) {
      std::snprintf(byte, sizeof byte, "'%c'", c);
    } else {
      std::snprintf(byte, sizeof byte, "0x%02x", c);
    }
    out += " " + std::to_string(j - i) + " x " + byte;
    i = j;
  }
  return out;
}

class ClusterFsTest : public testing::MountedClusterTest {
 protected:
  std::string p(int node, const std::string& rel) const { return c_->path(node, rel); }
  static struct stat stat_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(lstat(path.c_str(), &st), 0) << path << ": " << strerror(errno);
    return st;
  }
  static std::set<std::string> names(const std::string& dir) {
    std::set<std::string> out;
    for (const auto& n : list_dir(dir)) {
      if (n != "." && n != "..") out.insert(n);
    }
    return out;
  }
};

TEST_F(ClusterFsTest, WhatOneNodeChangesTheNextCallOnAnotherSees) {
  // Data, including into the middle of a file the reader has cached.
  spit(p(1, "f"), std::string(100000, 'a'));
  EXPECT_EQ(slurp(p(2, "f")), std::string(100000, 'a'));
  EXPECT_EQ(slurp(p(2, "f")), std::string(100000, 'a'));  // now in node 2's page cache
  {
    int fd = open(p(1, "f").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, "MIDDLE", 6, 50000), 6);
    close(fd);
  }
  std::string want(100000, 'a');
  want.replace(50000, 6, "MIDDLE");
  EXPECT_EQ(slurp(p(2, "f")), want);
  EXPECT_EQ(slurp(p(3, "f")), want);
  // Size.
  ASSERT_EQ(truncate(p(3, "f").c_str(), 1234), 0);
  EXPECT_EQ(stat_of(p(1, "f")).st_size, 1234);
  EXPECT_EQ(slurp(p(2, "f")).size(), 1234u);
  // Mtime.
  const timespec times[2] = {{1000, 0}, {123456789, 42}};
  ASSERT_EQ(utimensat(AT_FDCWD, p(1, "f").c_str(), times, 0), 0);
  const auto st = stat_of(p(2, "f"));
  EXPECT_EQ(st.st_mtim.tv_sec, 123456789);
  EXPECT_EQ(st.st_mtim.tv_nsec, 42);
  // Mode and owner.
  ASSERT_EQ(chmod(p(2, "f").c_str(), 0600), 0);
  EXPECT_EQ(stat_of(p(3, "f")).st_mode & 07777, 0600u);
  ASSERT_EQ(chown(p(3, "f").c_str(), 1234, 5678), 0);
  EXPECT_EQ(stat_of(p(1, "f")).st_uid, 1234u);
  EXPECT_EQ(stat_of(p(1, "f")).st_gid, 5678u);
  // Xattrs, set and removed.
  ASSERT_EQ(setxattr(p(1, "f").c_str(), "user.k", "v1", 2, 0), 0);
  char buf[16] = {};
  EXPECT_EQ(getxattr(p(2, "f").c_str(), "user.k", buf, sizeof buf), 2);
  EXPECT_EQ(std::string(buf, 2), "v1");
  ASSERT_EQ(removexattr(p(3, "f").c_str(), "user.k"), 0);
  EXPECT_EQ(getxattr(p(1, "f").c_str(), "user.k", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENODATA);
  // Entries: created, renamed, hard-linked, unlinked; a symlink's target.
  spit(p(2, "g"), "gee");
  EXPECT_EQ(slurp(p(1, "g")), "gee");
  ASSERT_EQ(rename(p(1, "g").c_str(), p(1, "h").c_str()), 0);
  EXPECT_NE(access(p(3, "g").c_str(), F_OK), 0);
  EXPECT_EQ(slurp(p(3, "h")), "gee");
  ASSERT_EQ(link(p(3, "h").c_str(), p(3, "h2").c_str()), 0);
  EXPECT_EQ(stat_of(p(2, "h")).st_nlink, 2u);
  EXPECT_EQ(slurp(p(2, "h2")), "gee");
  ASSERT_EQ(unlink(p(2, "h").c_str()), 0);
  EXPECT_NE(access(p(1, "h").c_str(), F_OK), 0);
  EXPECT_EQ(stat_of(p(1, "h2")).st_nlink, 1u);
  ASSERT_EQ(symlink("somewhere/else", p(1, "s").c_str()), 0);
  char target[64] = {};
  EXPECT_EQ(readlink(p(2, "s").c_str(), target, sizeof target), 14);
  EXPECT_STREQ(target, "somewhere/else");
  // A directory node 2 has listed gets 1,000 entries on node 1: node 2 lists all of them.
  ASSERT_EQ(mkdir(p(1, "d").c_str(), 0755), 0);
  EXPECT_TRUE(names(p(2, "d")).empty());
  for (int i = 0; i < 1000; ++i) spit(p(1, "d/e" + std::to_string(i)), "");
  EXPECT_EQ(names(p(2, "d")).size(), 1000u);
  EXPECT_EQ(names(p(3, "d")).size(), 1000u);
}

TEST_F(ClusterFsTest, ThreeNodesCreateWriteAndDeleteInOneDirectoryAtOnce) {
  ASSERT_EQ(mkdir(p(1, "shared").c_str(), 0755), 0);
  constexpr int kFiles = 150;
  std::vector<std::thread> workers;
  std::atomic<int> errors{0};
  for (int node = 1; node <= 3; ++node) {
    workers.emplace_back([&, node] {
      for (int i = 0; i < kFiles; ++i) {
        const std::string name = p(node, "shared/n" + std::to_string(node) + "-" + std::to_string(i));
        const std::string data = "node " + std::to_string(node) + " file " + std::to_string(i);
        int fd = open(name.c_str(), O_CREAT | O_WRONLY | O_EXCL, 0644);
        if (fd < 0 || write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) {
          ++errors;
        }
        if (fd >= 0) close(fd);
        // Every third file goes again, one created earlier.
        if (i % 3 == 2) {
          const std::string old = p(node, "shared/n" + std::to_string(node) + "-" + std::to_string(i - 1));
          if (unlink(old.c_str()) != 0) ++errors;
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  EXPECT_EQ(errors.load(), 0);
  std::set<std::string> want;
  for (int node = 1; node <= 3; ++node) {
    for (int i = 0; i < kFiles; ++i) {
      if (i % 3 != 1) want.insert("n" + std::to_string(node) + "-" + std::to_string(i));
    }
  }
  for (int node = 1; node <= 3; ++node) {
    EXPECT_EQ(names(p(node, "shared")), want) << "listed on node " << node;
  }
  // Contents, each read on a node other than the writer.
  for (int writer = 1; writer <= 3; ++writer) {
    const int reader = writer % 3 + 1;
    for (int i = 0; i < kFiles; i += 3) {
      EXPECT_EQ(slurp(p(reader, "shared/n" + std::to_string(writer) + "-" + std::to_string(i))),
                "node " + std::to_string(writer) + " file " + std::to_string(i));
    }
  }
}

TEST_F(ClusterFsTest, RenamesBetweenDirectoriesLastTouchedByDifferentNodes) {
  ASSERT_EQ(mkdir(p(1, "a").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(p(2, "b").c_str(), 0755), 0);
  spit(p(1, "a/x"), "from a");
  spit(p(2, "b/y"), "from b");
  ASSERT_EQ(mkdir(p(1, "a/sub").c_str(), 0755), 0);
  spit(p(1, "a/sub/z"), "deep");
  // Node 3 moves a file each way and a directory across.
  ASSERT_EQ(rename(p(3, "a/x").c_str(), p(3, "b/x").c_str()), 0);
  ASSERT_EQ(rename(p(3, "b/y").c_str(), p(3, "a/y").c_str()), 0);
  ASSERT_EQ(rename(p(3, "a/sub").c_str(), p(3, "b/sub").c_str()), 0);
  for (int node = 1; node <= 3; ++node) {
    EXPECT_EQ(names(p(node, "a")), (std::set<std::string>{"y"})) << node;
    EXPECT_EQ(names(p(node, "b")), (std::set<std::string>{"sub", "x"})) << node;
    EXPECT_EQ(slurp(p(node, "b/sub/z")), "deep") << node;
    EXPECT_EQ(stat_of(p(node, "b")).st_nlink, 3u) << node;
    EXPECT_EQ(stat_of(p(node, "a")).st_nlink, 2u) << node;
  }
  // Node 1, which made a/sub, moves it back under its new name from node 2's side.
  ASSERT_EQ(rename(p(1, "b/sub").c_str(), p(1, "a/sub2").c_str()), 0);
  EXPECT_EQ(slurp(p(2, "a/sub2/z")), "deep");
  EXPECT_NE(access(p(2, "b/sub").c_str(), F_OK), 0);
}

TEST_F(ClusterFsTest, AFileUnlinkedWhileAnotherNodeReadsItLivesUntilClosed) {
  std::string data(8 << 20, 0);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + i / 4096);
  struct statvfs before {};
  ASSERT_EQ(statvfs(c_->mnt(1).c_str(), &before), 0);
  spit(p(1, "victim"), data);
  int fd = open(p(2, "victim").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string head(1 << 20, 0);
  ASSERT_EQ(read(fd, head.data(), head.size()), static_cast<ssize_t>(head.size()));
  ASSERT_EQ(unlink(p(1, "victim").c_str()), 0);
  EXPECT_NE(access(p(3, "victim").c_str(), F_OK), 0);
  // The reader goes on to the end, from the device (drop node 2's cached pages first).
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  std::string all(data.size(), 0);
  ASSERT_EQ(pread(fd, all.data(), all.size(), 0), static_cast<ssize_t>(all.size()));
  EXPECT_TRUE(all == data) << "the unlinked file's content changed under its reader";
  close(fd);
  // Once node 2's kernel lets go of the inode, node 1 frees it (background retry).
  sync();
  std::ofstream("/proc/sys/vm/drop_caches") << "2";
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  struct statvfs after {};
  for (;;) {
    ASSERT_EQ(statvfs(c_->mnt(1).c_str(), &after), 0);
    if (after.f_bfree + 16 >= before.f_bfree || Clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_GE(after.f_bfree + 16, before.f_bfree) << "the unlinked file's blocks were not freed";
}

// Three nodes append fixed-size records to one log with O_APPEND, each append inside a
// cluster-wide fcntl write lock: no record lost, torn or overwritten, and never two nodes
// inside the lock at once.
TEST_F(ClusterFsTest, ThreeNodesAppendToOneLogUnderAnFcntlLock) {
  spit(p(1, "log"), "");
  constexpr int kRecords = 150;
  constexpr size_t kRecord = 64;
  std::atomic<int> inside{0}, overlaps{0}, errors{0};
  auto worker = [&](int node) {
    int fd = open(p(node, "log").c_str(), O_WRONLY | O_APPEND);
    if (fd < 0) {
      ++errors;
      return;
    }
    for (int i = 0; i < kRecords; ++i) {
      struct flock lk {};
      lk.l_type = F_WRLCK;
      lk.l_whence = SEEK_SET;
      if (fcntl(fd, F_SETLKW, &lk) != 0) {
        ++errors;
        continue;
      }
      if (inside.fetch_add(1) != 0) ++overlaps;
      std::string rec = "node " + std::to_string(node) + " record " + std::to_string(i);
      rec.resize(kRecord - 1, '.');
      rec += '\n';
      if (write(fd, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) ++errors;
      inside.fetch_sub(1);
      lk.l_type = F_UNLCK;
      if (fcntl(fd, F_SETLK, &lk) != 0) ++errors;
    }
    close(fd);
  };
  std::thread t[] = {std::thread(worker, 1), std::thread(worker, 2), std::thread(worker, 3)};
  for (auto& th : t) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(overlaps.load(), 0) << "two nodes were inside the fcntl lock at once";
  const std::string log = slurp(p(2, "log"));
  ASSERT_EQ(log.size(), 3 * kRecords * kRecord);
  std::map<std::string, int> seen;
  for (size_t off = 0; off < log.size(); off += kRecord) {
    std::string rec = log.substr(off, kRecord);
    ASSERT_EQ(rec.back(), '\n') << "torn record at " << off;
    ++seen[rec.substr(0, rec.find('.'))];
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(3 * kRecords));
  for (const auto& [rec, n] : seen) EXPECT_EQ(n, 1) << rec;
}

// flock and fcntl locks taken on one node are seen on the others, and go with the close.
TEST_F(ClusterFsTest, FlockAndFcntlLocksConflictAcrossNodes) {
  spit(p(1, "f"), "data");
  int a = open(p(1, "f").c_str(), O_RDWR);
  int b = open(p(2, "f").c_str(), O_RDWR);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  // flock: exclusive on node 1 keeps node 2 out until node 1 lets go.
  ASSERT_EQ(flock(a, LOCK_EX), 0);
  EXPECT_EQ(flock(b, LOCK_SH | LOCK_NB), -1);
  EXPECT_EQ(errno, EWOULDBLOCK);
  auto waiter = std::async(std::launch::async, [b] { return flock(b, LOCK_EX); });
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  ASSERT_EQ(flock(a, LOCK_UN), 0);
  EXPECT_EQ(waiter.get(), 0);
  EXPECT_EQ(flock(a, LOCK_SH | LOCK_NB), -1);
  // Closing node 2's file drops its flock: when the kernel sends RELEASE, which it does
  // after close() returns (FUSE releases asynchronously).
  close(b);
  bool shared = false;
  for (int i = 0; i < 100 && !shared; ++i) {
    shared = flock(a, LOCK_SH | LOCK_NB) == 0;
    if (!shared) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(shared) << "node 2's flock outlived its close by 2 s";
  ASSERT_EQ(flock(a, LOCK_UN), 0);
  // fcntl: byte ranges conflict across nodes as on one host. Node 1 write-locks 0..9;
  // node 3 sees exactly that range (pid 0: another host's), is refused there, and locks
  // bytes 10..19 at once; closing the descriptor on node 1 drops its lock.
  auto range = [](short type, off_t start, off_t len) {
    struct flock l {};
    l.l_type = type;
    l.l_whence = SEEK_SET;
    l.l_start = start;
    l.l_len = len;
    return l;
  };
  struct flock lk = range(F_WRLCK, 0, 10);
  ASSERT_EQ(fcntl(a, F_SETLK, &lk), 0);
  int c = open(p(3, "f").c_str(), O_RDWR);
  ASSERT_GE(c, 0);
  struct flock q = range(F_RDLCK, 0, 0);
  ASSERT_EQ(fcntl(c, F_GETLK, &q), 0);
  EXPECT_EQ(q.l_type, F_WRLCK);
  EXPECT_EQ(q.l_start, 0);
  EXPECT_EQ(q.l_len, 10);
  EXPECT_EQ(q.l_pid, 0);
  struct flock beyond = range(F_WRLCK, 10, 0);
  ASSERT_EQ(fcntl(c, F_GETLK, &beyond), 0);
  EXPECT_EQ(beyond.l_type, F_UNLCK) << "bytes from 10 on are free";
  struct flock r = range(F_RDLCK, 9, 2);
  EXPECT_EQ(fcntl(c, F_SETLK, &r), -1);
  EXPECT_TRUE(errno == EAGAIN || errno == EACCES) << strerror(errno);
  struct flock next = range(F_WRLCK, 10, 10);
  EXPECT_EQ(fcntl(c, F_SETLK, &next), 0) << "a disjoint range of another node: " << strerror(errno);
  // Node 1's lock on 10..19 now waits for node 3 (F_SETLKW), and gets it when node 3
  // unlocks.
  auto blocked = std::async(std::launch::async, [a, range] {
    struct flock w = range(F_WRLCK, 15, 1);
    return fcntl(a, F_SETLKW, &w);
  });
  EXPECT_EQ(blocked.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  struct flock un = range(F_UNLCK, 10, 10);
  ASSERT_EQ(fcntl(c, F_SETLK, &un), 0);
  EXPECT_EQ(blocked.get(), 0);
  close(a);
  EXPECT_EQ(fcntl(c, F_SETLK, &r), 0) << strerror(errno);
  close(c);
}

// DESIGN.md §4 revocation hazards: node 1 reads a file (buffered and through mmap) and
// lists a directory in loops while node 2 rewrites the file and creates and unlinks in
// the directory. No hang; every read() returns a version the file had. A copy out of an
// mmap is not atomic, even on one host: the kernel may drop the old page in the middle
// of the copy (the file changed), and the rest then comes from the new version; so each
// byte of an mmap copy must belong to some version, and mixed copies are only counted.
TEST_F(ClusterFsTest, ReadersRaceARewritingNode) {
  const char* env = std::getenv("SHAREDFS_RACE_SECONDS");
  const double seconds = env != nullptr ? std::stod(env) : 60.0;
  constexpr size_t kSize = 4096;  // one page: one READ, so a version cannot tear
  spit(p(2, "v"), std::string(kSize, 'A'));
  ASSERT_EQ(mkdir(p(2, "dir").c_str(), 0755), 0);
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<uint64_t> writes{0}, reads{0}, mmap_reads{0}, mmap_mixed{0}, listings{0}, dir_changes{0};
  std::set<char> seen;  // versions the buffered reader saw
  std::mutex failures_mu;
  std::vector<std::string> failures;  // the first few, to say what went wrong
  auto fail = [&](const std::string& what) {
    ++bad;
    std::lock_guard lock(failures_mu);
    if (failures.size() < 10) failures.push_back(what);
  };
  auto errno_text = [](const char* call) { return std::string(call) + ": " + std::strerror(errno); };
  auto version_ok = [&](const char* b, size_t n) {
    if (n != kSize) return false;
    for (size_t i = 1; i < n; ++i) {
      if (b[i] != b[0]) return false;
    }
    return b[0] >= 'A' && b[0] <= 'Z';
  };
  std::thread writer([&] {
    for (uint64_t v = 1; !stop; ++v) {
      const std::string data(kSize, static_cast<char>('A' + v % 26));
      int fd = open(p(2, "v").c_str(), O_WRONLY);
      if (fd < 0) {
        fail(errno_text("writer: open"));
      } else {
        if (pwrite(fd, data.data(), kSize, 0) != static_cast<ssize_t>(kSize)) fail(errno_text("writer: pwrite"));
        close(fd);
      }
      ++writes;
    }
  });
  std::thread dir_writer([&] {
    for (uint64_t i = 0; !stop; ++i) {
      const std::string name = p(2, "dir/e" + std::to_string(i % 8));
      if (i % 16 < 8) {
        spit(name, "x");
      } else if (unlink(name.c_str()) != 0) {
        fail(errno_text("directory writer: unlink"));
      }
      ++dir_changes;
    }
  });
  std::thread reader([&] {
    char buf[kSize * 2];
    while (!stop) {
      int fd = open(p(1, "v").c_str(), O_RDONLY);
      if (fd < 0) {
        fail(errno_text("reader: open"));
        continue;
      }
      const ssize_t n = pread(fd, buf, sizeof buf, 0);
      close(fd);
      if (n < 0) {
        fail(errno_text("reader: pread"));
      } else if (!version_ok(buf, static_cast<size_t>(n))) {
        fail("reader: a version the file never had: " + describe(buf, static_cast<size_t>(n)));
      } else {
        seen.insert(buf[0]);
      }
      ++reads;
    }
  });
  std::thread mapper([&] {
    int fd = open(p(1, "v").c_str(), O_RDONLY);
    if (fd < 0) {
      fail(errno_text("mapper: open"));
      return;
    }
    void* m = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      fail(errno_text("mapper: mmap"));
      close(fd);
      return;
    }
    char copy[kSize];
    while (!stop) {
      std::memcpy(copy, m, kSize);
      if (!version_ok(copy, kSize)) {
        const bool bytes_ok = std::all_of(copy, copy + kSize, [](char c) { return c >= 'A' && c <= 'Z'; });
        if (!bytes_ok) fail("mapper: bytes no version had: " + describe(copy, kSize));
        ++mmap_mixed;
      }
      ++mmap_reads;
      struct stat st {};
      fstat(fd, &st);  // revalidates: the kernel drops pages of an older version
    }
    munmap(m, kSize);
    close(fd);
  });
  std::thread lister([&] {
    while (!stop) {
      for (const auto& n : names(p(1, "dir"))) {
        if (n.size() != 2 || n[0] != 'e' || n[1] < '0' || n[1] > '7') fail("lister: a name never created: '" + n + "'");
      }
      ++listings;
    }
  });
  while (Clock::now() < end && bad == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  // A hang shows as threads that do not come back: the ctest timeout catches it.
  for (auto* t : {&writer, &dir_writer, &reader, &mapper, &lister}) t->join();
  std::printf("%.0f s: %lu rewrites, %lu reads (%zu versions seen), %lu mmap reads (%lu mixed), "
              "%lu listings, %lu directory changes\n",
              seconds, static_cast<unsigned long>(writes), static_cast<unsigned long>(reads),
              seen.size(), static_cast<unsigned long>(mmap_reads),
              static_cast<unsigned long>(mmap_mixed),
              static_cast<unsigned long>(listings), static_cast<unsigned long>(dir_changes));
  for (const auto& f : failures) std::printf("  %s\n", f.c_str());
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(writes.load(), 10u);
  EXPECT_GT(listings.load(), 10u);
  EXPECT_GT(seen.size(), 1u) << "the reader never saw the file change";
}

}  // namespace
}  // namespace sharedfs
