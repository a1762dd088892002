// Model test through the mount: a seeded random sequence of namespace and data operations,
// made by system calls on the sharedfs mount and on a reference directory on a private
// tmpfs. After every step the error codes must agree and so must everything the step
// touched (type, mode, link count, size, contents, symlink targets, directory listings);
// the whole tree is compared every 1,000 steps, and across an unmount and remount half-way.
//
// A failure prints its seed and step; SHAREDFS_MODEL_SEED=N replays seed N and
// SHAREDFS_MODEL_STEPS=N changes the number of steps (default 20,000).
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using testing::MountedCluster;
using testing::MountedFs;

// A tmpfs of our own under a scratch directory, unmounted by the destructor.
class ReferenceTmpfs {
 public:
  ReferenceTmpfs() : dir_(testing::scratch_dir("model-ref")) {
    mounted_ = ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=256m,mode=0755") == 0;
  }
  ~ReferenceTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    std::filesystem::remove_all(dir_);
  }
  bool mounted() const { return mounted_; }
  std::string root() const { return dir_.string(); }

 private:
  std::filesystem::path dir_;
  bool mounted_ = false;
};

int err_of(int rc) { return rc < 0 ? errno : 0; }

// Everything a user can see of one path (lstat, not following a last symlink): the
// compared form of the model. Directory sizes and block counts are the file system's own
// business and are left out.
std::string describe(const std::string& root, const std::string& rel, bool with_data = true) {
  const std::string path = root + "/" + rel;
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return "<" + std::string(strerrorname_np(errno)) + ">";
  std::string out = fmt::format("mode {:o} nlink {}", st.st_mode, st.st_nlink);
  if (S_ISREG(st.st_mode)) {
    out += fmt::format(" size {}", st.st_size);
    if (!with_data) return out;
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return out + " <open: " + strerrorname_np(errno) + ">";
    std::string data(static_cast<size_t>(st.st_size) + 1, '\0');
    const ssize_t n = pread(fd, data.data(), data.size(), 0);
    close(fd);
    if (n < 0) return out + " <read: " + strerrorname_np(errno) + ">";
    data.resize(static_cast<size_t>(n));
    out += fmt::format(" data {:016x}", std::hash<std::string>{}(data));
  } else if (S_ISLNK(st.st_mode)) {
    char target[256] = {};
    const ssize_t n = readlink(path.c_str(), target, sizeof target);
    out += fmt::format(" size {} -> {}", st.st_size, n < 0 ? "<error>" : std::string(target, n));
  } else if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path)) {
      names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    out += " [";
    for (const auto& n : names) out += n + " ";
    out += "]";
  }
  return out;
}

// Every path under `root`, depth first, described.
void describe_tree(const std::string& root, const std::string& rel, std::string& out) {
  out += rel + ": " + describe(root, rel) + "\n";
  struct stat st {};
  if (lstat((root + "/" + rel).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(root + "/" + rel)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  for (const auto& n : names) describe_tree(root, rel == "." ? n : rel + "/" + n, out);
}

class PosixModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* s = std::getenv("SHAREDFS_MODEL_SEED");
    seed_ = s != nullptr ? std::strtoull(s, nullptr, 10) : 20261123;
    const char* n = std::getenv("SHAREDFS_MODEL_STEPS");
    steps_ = n != nullptr ? std::strtoul(n, nullptr, 10) : 0;
    rng_.seed(seed_);
    ASSERT_TRUE(ref_.mounted()) << "cannot mount a tmpfs for the reference tree";
    ::umask(022);
  }

  // 1 to 3 components from a pool of five names: operations collide, nest and miss.
  std::string random_path() {
    static const char* kNames[] = {"a", "b", "c", "d", "e"};
    std::string p = kNames[rng_() % 5];
    for (int depth = 1 + static_cast<int>(rng_() % 3); depth > 1; --depth) {
      p += std::string("/") + kNames[rng_() % 5];
    }
    return p;
  }
  // Mostly something that exists in the reference tree, of the type the operation wants
  // (so that operations do things), sometimes anything.
  enum class Want { kAny, kDir, kNonDir };
  std::string existing_path(Want want = Want::kAny) {
    std::vector<const std::string*> fit;
    for (const auto& [p, is_dir] : existing_) {
      if (want == Want::kAny || is_dir == (want == Want::kDir)) fit.push_back(&p);
    }
    if (fit.empty() || rng_() % 6 == 0) return random_path();
    return *fit[rng_() % fit.size()];
  }
  // A name from the pool in a directory that exists (it may be taken), at most three
  // levels down, so that the tree stays small (renames may still move things deeper).
  std::string path_in_existing_dir() {
    std::vector<std::string> dirs{"."};
    for (const auto& [p, is_dir] : existing_) {
      if (is_dir && std::count(p.begin(), p.end(), '/') < 2) dirs.push_back(p);
    }
    const std::string& d = dirs[rng_() % dirs.size()];
    static const char* kNames[] = {"a", "b", "c", "d", "e"};
    return (d == "." ? "" : d + "/") + kNames[rng_() % 5];
  }
  // Lists the reference tree (a small tmpfs tree: cheap) before each step.
  void scan_reference(const std::string& rel = ".") {
    if (rel == ".") existing_.clear();
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(ref_.root() + "/" + rel, ec)) {
      const std::string child = (rel == "." ? "" : rel + "/") + e.path().filename().string();
      const bool is_dir =
          e.symlink_status(ec).type() == std::filesystem::file_type::directory;
      existing_.emplace_back(child, is_dir);
      if (is_dir) scan_reference(child);
    }
  }
  static std::string parent_of(const std::string& rel) {
    const auto slash = rel.rfind('/');
    return slash == std::string::npos ? "." : rel.substr(0, slash);
  }
  std::string random_bytes(size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>('a' + rng_() % 26);
    return s;
  }

  // One random operation as a function of a root, applied to both trees in turn. Returns
  // a description for failure messages and the paths whose state the step may change
  // (contents compared only where the step writes data: reading every file back at every
  // step would make the test slow; the whole-tree checks read them all).
  struct Step {
    std::string what;
    std::vector<std::string> paths;
    bool changes_data = false;
    std::function<int(const std::string& root)> apply;  // errno, or 0
  };

  Step random_step() {
    scan_reference();
    const unsigned kind = rng_() % 13;
    // Creations name a new path `a`; the others act on an existing one. Renames and links
    // go from an existing path to a new or existing one.
    const bool creates = kind == 0 || kind == 4 || kind == 10;
    const bool on_dir = kind == 5;                                     // rmdir
    const bool on_file = (kind >= 1 && kind <= 3) || kind == 9 || kind >= 12;  // data, link
    const std::string a = creates   ? path_in_existing_dir()
                          : on_dir  ? existing_path(Want::kDir)
                          : on_file ? existing_path(Want::kNonDir)
                                    : existing_path();
    const std::string b = rng_() % 3 == 0 ? existing_path() : path_in_existing_dir();
    switch (kind) {
      case 0: {
        const mode_t mode = (rng_() % 2) ? 0644 : 0600;
        return {fmt::format("create {} {:o}", a, mode), {a, parent_of(a)}, true, [=](auto& r) {
                  int fd = open((r + "/" + a).c_str(), O_CREAT | O_EXCL | O_WRONLY, mode);
                  if (fd < 0) return errno;
                  close(fd);
                  return 0;
                }};
      }
      case 1:
      case 2: {
        const int flags = O_WRONLY | ((rng_() % 4 == 0) ? O_APPEND : 0) |
                          ((rng_() % 6 == 0) ? O_TRUNC : 0) | ((rng_() % 3 == 0) ? O_CREAT : 0);
        const uint64_t off = (rng_() % 3 == 0) ? rng_() % 4096 : rng_() % (200 * 1024);
        const std::string data = random_bytes(rng_() % 3 == 0 ? rng_() % 70000 : rng_() % 5000);
        return {fmt::format("write {} flags {:o} at {} len {}", a, flags, off, data.size()),
                {a, parent_of(a)},
                true,
                [=](auto& r) {
                  int fd = open((r + "/" + a).c_str(), flags, 0644);
                  if (fd < 0) return errno;
                  const ssize_t n = (flags & O_APPEND) ? write(fd, data.data(), data.size())
                                                       : pwrite(fd, data.data(), data.size(), off);
                  const int e = n < 0 ? errno : (n == static_cast<ssize_t>(data.size()) ? 0 : EIO);
                  close(fd);
                  return e;
                }};
      }
      case 3: {
        const off_t size = rng_() % 2 ? rng_() % 256000 : rng_() % 9000;
        return {fmt::format("truncate {} {}", a, size), {a}, true, [=](auto& r) {
                  return err_of(truncate((r + "/" + a).c_str(), size));
                }};
      }
      case 4:
        return {"mkdir " + a, {a, parent_of(a)},
        false,
                [=](auto& r) { return err_of(mkdir((r + "/" + a).c_str(), 0755)); }};
      case 5:
        return {"rmdir " + a, {a, parent_of(a)},
        false,
                [=](auto& r) { return err_of(rmdir((r + "/" + a).c_str())); }};
      case 6:
        return {"unlink " + a, {a, parent_of(a)},
        false,
                [=](auto& r) { return err_of(unlink((r + "/" + a).c_str())); }};
      case 7:
      case 8: {
        static const unsigned kFlags[] = {0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE};
        const unsigned flags = kFlags[rng_() % 4];
        return {fmt::format("rename {} {} flags {}", a, b, flags),
                {a, b, parent_of(a), parent_of(b)},
                false,
                [=](auto& r) {
                  return err_of(renameat2(AT_FDCWD, (r + "/" + a).c_str(), AT_FDCWD,
                                          (r + "/" + b).c_str(), flags));
                }};
      }
      case 9:
        return {fmt::format("link {} {}", a, b), {a, b, parent_of(b)}, false, [=](auto& r) {
                  return err_of(link((r + "/" + a).c_str(), (r + "/" + b).c_str()));
                }};
      case 10: {
        // Relative targets inside the tree only, so that both trees resolve them alike.
        const std::string target = rng_() % 4 == 0 ? "zz" : random_path();
        return {fmt::format("symlink {} -> {}", a, target), {a, parent_of(a)}, false,
                [=](auto& r) {
                  return err_of(symlink(target.c_str(), (r + "/" + a).c_str()));
                }};
      }
      case 11: {
        static const mode_t kModes[] = {0600, 0644, 0755, 0700, 01777, 0444};
        const mode_t mode = kModes[rng_() % 6];
        return {fmt::format("chmod {} {:o}", a, mode), {a}, false,
                [=](auto& r) { return err_of(chmod((r + "/" + a).c_str(), mode)); }};
      }
      default: {
        // tmpfs takes preallocation and punching holes (not zero-range or collapse).
        static const int kModes[] = {0, FALLOC_FL_KEEP_SIZE,
                                     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE};
        const int mode = kModes[rng_() % 3];
        const off_t off = rng_() % 200000;
        const off_t len = 1 + rng_() % 100000;
        return {fmt::format("fallocate {} mode {} at {} len {}", a, mode, off, len), {a}, true,
                [=](auto& r) {
                  int fd = open((r + "/" + a).c_str(), O_WRONLY);
                  if (fd < 0) return errno;
                  const int e = err_of(fallocate(fd, mode, off, len));
                  close(fd);
                  return e;
                }};
      }
    }
  }

  // The model run: each step is made through mount `roots[r]` for a random r and what it
  // touched is compared through another random one (every mount must see every change at
  // once); whole trees through every mount every 1,000 steps and after `remount` half-way.
  void run_model(const std::vector<std::string>& roots, const std::function<void()>& remount) {
    const std::string ref = ref_.root();
    const auto replay = [&](unsigned long step) {
      return fmt::format("seed {} step {} (replay: SHAREDFS_MODEL_SEED={})", seed_, step, seed_);
    };
    const auto all_trees_match = [&](unsigned long step, const char* when) {
      const std::string want = whole_tree(ref);
      for (const auto& root : roots) {
        ASSERT_EQ(whole_tree(root), want) << when << " through " << root << "; " << replay(step);
      }
    };
    std::map<std::string, std::pair<unsigned, unsigned>> tally;  // kind -> (ok, failed)
    for (unsigned long i = 0; i < steps_; ++i) {
      Step s = random_step();
      const std::string& on = roots[rng_() % roots.size()];
      const std::string& seen = roots[rng_() % roots.size()];
      const int want = s.apply(ref);
      const int got = s.apply(on);
      auto& t = tally[s.what.substr(0, s.what.find(' '))];
      ++(want == 0 ? t.first : t.second);
      ASSERT_EQ(strerrorname_np(got) ? std::string(strerrorname_np(got)) : std::to_string(got),
                strerrorname_np(want) ? std::string(strerrorname_np(want)) : std::to_string(want))
          << s.what << " through " << on << "; " << replay(i);
      for (const auto& p : s.paths) {
        ASSERT_EQ(describe(seen, p, s.changes_data), describe(ref, p, s.changes_data))
            << "after " << s.what << " through " << on << ", path " << p << " through " << seen
            << "; " << replay(i);
      }
      if ((i + 1) % 1000 == 0) {
        all_trees_match(i, "every 1,000 steps");
        if (HasFatalFailure()) return;
      }
      if (i + 1 == steps_ / 2) {
        // What was written must come back after an unmount (fsck must find it clean).
        remount();
        if (HasFatalFailure()) return;
        all_trees_match(i, "after remount");
        if (HasFatalFailure()) return;
      }
    }
    all_trees_match(steps_, "at the end");
    // The mix must keep doing things: most kinds succeed often, not just fail alike.
    unsigned succeeded = 0;
    for (const auto& [kind, t] : tally) {
      std::printf("%-10s %6u ok %6u failed\n", kind.c_str(), t.first, t.second);
      succeeded += t.first;
    }
    EXPECT_GE(succeeded, steps_ / 3) << "too few operations succeed to test much";
  }

  std::string whole_tree(const std::string& root) {
    std::string out;
    describe_tree(root, ".", out);
    return out;
  }

  uint64_t seed_ = 0;
  unsigned long steps_ = 0;
  std::mt19937_64 rng_;
  std::vector<std::pair<std::string, bool>> existing_;  // reference paths, is a directory
  ReferenceTmpfs ref_;
};

TEST_F(PosixModelTest, RandomOperationsMatchTmpfs) {
  if (steps_ == 0) steps_ = 20000;
  MountedFs m;
  ASSERT_TRUE(m.mount());
  run_model({m.mnt()}, [&] {
    ASSERT_EQ(m.unmount(), 0);
    ASSERT_TRUE(m.mount());
  });
}

// Three nodes of one cluster over one image: every step through a random node, checked
// through another (issue 5's multi-node model test).
TEST_F(PosixModelTest, ThreeNodesRandomOperationsMatchTmpfs) {
  if (steps_ == 0) steps_ = 10000;
  MountedCluster c(3);
  ASSERT_TRUE(c.mount_all());
  run_model({c.mnt(1), c.mnt(2), c.mnt(3)}, [&] {
    ASSERT_EQ(c.unmount_all(), 0);
    ASSERT_TRUE(c.mount_all());
  });
}

}  // namespace
}  // namespace sharedfs
