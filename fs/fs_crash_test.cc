// Crash consistency: one deterministic workload (creates, appends, truncates, renames,
// unlinks, mkdir/rmdir, symlinks, with a sync every few operations) is cut off at several
// hundred crash points — after the k-th device write, dropping every unflushed write, some
// with the last write torn. After each crash the image is mounted again (the journal is
// replayed) and must hold exactly the tree of the last sync that returned, or of the sync
// in progress at the crash, and fsck must find it clean.
#include <gtest/gtest.h>

#include <random>

#include "fs/fs_test_fixture.h"
#include "fs/fs_tree_model.h"

namespace sharedfs::fs {
namespace {

using testing::bytes_of;
using testing::Tree;
using testing::TreeNode;

class Workload {
 public:
  explicit Workload(FileSystem& fs) : fs_(fs), rng_(20261123) {}

  // Runs until `ops` operations are done or one fails (the device crashed). Calls
  // on_sync(model) before each sync and on_synced(model) after each that succeeded.
  void run(int ops, const std::function<void(const Tree&)>& on_sync,
           const std::function<void(const Tree&)>& on_synced) {
    for (int d = 0; d < 3; ++d) {
      auto a = fs_.mkdir(fs_.root(), "d" + std::to_string(d), 0755, caller_);
      if (!a) return;
      fs_.forget(a->ino, 1);
      dirs_["d" + std::to_string(d)] = a->ino;
      model_["d" + std::to_string(d)] = TreeNode{S_IFDIR, ""};
    }
    for (int i = 0; i < ops; ++i) {
      if (i % 4 == 3) {
        on_sync(model_);
        if (!fs_.sync()) return;
        on_synced(model_);
        continue;
      }
      if (!step(i)) return;
    }
  }

 private:
  std::string random_bytes(size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>('a' + rng_() % 26);
    return s;
  }
  Ino dir_of(const std::string& path) { return dirs_.at(path.substr(0, path.find('/'))); }
  std::string leaf(const std::string& path) { return path.substr(path.find('/') + 1); }
  std::vector<std::string> files() {
    std::vector<std::string> out;
    for (const auto& [p, n] : model_) {
      if (n.type == S_IFREG) out.push_back(p);
    }
    return out;
  }
  Result<Ino> ino_of(const std::string& path) {
    ASSIGN_OR_RETURN(auto a, fs_.lookup(dir_of(path), leaf(path)));
    fs_.forget(a.ino, 1);
    return a.ino;
  }

  bool step(int i) {
    const std::string dir = "d" + std::to_string(rng_() % 3);
    const auto existing = files();
    const int op = static_cast<int>(rng_() % 10);
    if (op <= 2 || existing.empty()) {  // create with contents
      const std::string path = dir + "/f" + std::to_string(i);
      auto a = fs_.mknod(dir_of(path), leaf(path), S_IFREG | 0644, 0, caller_);
      if (!a) return false;
      fs_.forget(a->ino, 1);
      std::string data = random_bytes(rng_() % 30000);
      model_[path] = TreeNode{S_IFREG, ""};
      if (!data.empty()) {
        if (!fs_.write(a->ino, 0, bytes_of(data))) return false;
      }
      model_[path].contents = data;
      return true;
    }
    const std::string victim = existing[rng_() % existing.size()];
    auto ino = ino_of(victim);
    if (!ino) return false;
    auto& node = model_[victim];
    switch (op) {
      case 3:
      case 4: {  // append
        std::string data = random_bytes(1 + rng_() % 10000);
        if (!fs_.write(*ino, node.contents.size(), bytes_of(data))) return false;
        node.contents += data;
        return true;
      }
      case 5: {  // truncate to a block boundary (the partial tail block is not rewritten)
        const size_t size = node.contents.size() / 4096 / 2 * 4096;
        SetAttr c;
        c.size = size;
        if (!fs_.setattr(*ino, c, caller_)) return false;
        node.contents.resize(size);
        return true;
      }
      case 6:
      case 7: {  // rename, maybe over another file
        const std::string to = rng_() % 2 == 0 && existing.size() > 1
                                   ? existing[rng_() % existing.size()]
                                   : dir + "/r" + std::to_string(i);
        if (to == victim) return true;
        if (!fs_.rename(dir_of(victim), leaf(victim), dir_of(to), leaf(to), 0)) return false;
        model_[to] = model_[victim];
        model_.erase(victim);
        return true;
      }
      case 8: {  // unlink
        if (!fs_.unlink(dir_of(victim), leaf(victim))) return false;
        model_.erase(victim);
        return true;
      }
      default: {  // a symlink, or a directory made and removed
        if (rng_() % 2 == 0) {
          const std::string path = dir + "/s" + std::to_string(i);
          auto a = fs_.symlink(dir_of(path), leaf(path), victim, caller_);
          if (!a) return false;
          fs_.forget(a->ino, 1);
          model_[path] = TreeNode{S_IFLNK, victim};
          return true;
        }
        const std::string path = dir + "/sub" + std::to_string(i);
        auto a = fs_.mkdir(dir_of(path), leaf(path), 0700, caller_);
        if (!a) return false;
        fs_.forget(a->ino, 1);
        model_[path] = TreeNode{S_IFDIR, ""};
        if (rng_() % 2 == 0) {
          if (!fs_.rmdir(dir_of(path), leaf(path))) return false;
          model_.erase(path);
        }
        return true;
      }
    }
  }

  FileSystem& fs_;
  std::mt19937_64 rng_;
  Tree model_;
  std::map<std::string, Ino> dirs_;
  Caller caller_{0, 0, 022};
};

class CrashTest : public testing::FsTest {
 protected:
  uint64_t image_bytes() const override { return 256 * kMiB; }
  uint64_t journal_bytes() const override { return 4 * kMiB; }
  void SetUp() override {
    FsTest::SetUp();
    // The crash runs make their own file systems on the image.
    ASSERT_OK(fs_->unmount());
    fs_.reset();
  }

  MountOptions quiet_options() const {
    MountOptions o = mount_options();
    o.commit_interval = std::chrono::hours(1);  // commits only where the workload syncs
    o.heartbeat_interval = std::chrono::hours(1);
    return o;
  }

  void format() {
    auto sb = mkfs::make_filesystem(*dev_, {.slots = 2, .journal_bytes = journal_bytes()});
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
  }

  static constexpr int kOps = 240;
};

TEST_F(CrashTest, EveryCrashPointRecoversToASyncedTree) {
  // A run without a crash counts the device writes the workload makes.
  format();
  uint64_t total_writes = 0;
  {
    auto base = device::open_file_device(image_, {});
    ASSERT_OK(base);
    device::FaultyDevice faulty(std::move(base->io), {});
    auto fs = FileSystem::mount(faulty, quiet_options());
    ASSERT_OK(fs);
    Workload w(**fs);
    int syncs = 0;
    w.run(kOps, [](const Tree&) {}, [&](const Tree&) { ++syncs; });
    EXPECT_EQ(syncs, kOps / 4);
    ASSERT_OK((*fs)->unmount());
    total_writes = faulty.counters().writes;
  }
  ASSERT_GT(total_writes, 300u);
  const int points = 320;
  int recovered_to_attempted = 0;
  for (int i = 0; i < points; ++i) {
    const uint64_t k = 1 + static_cast<uint64_t>(i) * total_writes / points;
    SCOPED_TRACE("crash after write " + std::to_string(k) + " of " + std::to_string(total_writes));
    format();
    Tree last_ok;       // the tree of the last sync that returned
    Tree attempted;     // the tree of the sync under way at the crash, if any
    bool in_sync = false;
    {
      auto base = device::open_file_device(image_, {});
      ASSERT_OK(base);
      device::FaultConfig cfg;
      cfg.crash_after_write = k;
      cfg.tear_sectors = i % 3 == 1 ? 3 : 0;
      device::FaultyDevice faulty(std::move(base->io), cfg);
      auto fs = FileSystem::mount(faulty, quiet_options());
      if (fs) {
        Workload w(**fs);
        w.run(
            kOps,
            [&](const Tree& t) {
              attempted = t;
              in_sync = true;
            },
            [&](const Tree& t) {
              last_ok = t;
              in_sync = false;
            });
        if (faulty.crashed()) {
          (*fs)->abandon();
        } else {
          // The crash point may fall in the unmount, which changes no file.
          Status st = (*fs)->unmount();
          if (!st) {
            EXPECT_TRUE(faulty.crashed()) << st.to_string();
            (*fs)->abandon();
          }
          in_sync = false;
        }
      }
    }
    // Mount again: replay, orphans, then the tree.
    {
      auto dev = device::open_file_device(image_, {});
      ASSERT_OK(dev);
      auto fs = FileSystem::mount(*dev->io, mount_options());
      ASSERT_OK(fs);
      auto tree = testing::snapshot_tree(**fs);
      ASSERT_OK(tree);
      if (in_sync && *tree == attempted && attempted != last_ok) ++recovered_to_attempted;
      EXPECT_TRUE(*tree == last_ok || (in_sync && *tree == attempted))
          << "recovered:\n" << testing::describe(*tree) << "last sync:\n"
          << testing::describe(last_ok);
      ASSERT_OK((*fs)->unmount());
      auto report = mkfs::check_filesystem(*dev->io, {});
      ASSERT_OK(report);
      for (const auto& p : report->problems) ADD_FAILURE() << p.structure << ": " << p.what;
    }
    if (::testing::Test::HasFailure()) break;
  }
  // Some crashes land after a commit block went out but before sync returned.
  EXPECT_GT(recovered_to_attempted, 0);
  format();  // leave an image the fixture's final fsck accepts
}

}  // namespace
}  // namespace sharedfs::fs
