// Model test: 20,000 random operations on the FileSystem and on a plain in-memory model
// side by side. Every operation's outcome (errno) must match, file contents must match on
// every read, the whole tree is compared every 1,000 operations and after each remount.
#include <gtest/gtest.h>

#include <random>

#include "fs/fs_test_fixture.h"
#include "fs/fs_tree_model.h"

namespace sharedfs::fs {
namespace {

using testing::bytes_of;
using testing::Tree;
using testing::TreeNode;

class ModelTest : public testing::FsTest {
 protected:
  uint64_t image_bytes() const override { return 512 * kMiB; }

  // "dA/nB": four fixed top directories, a small pool of names so operations collide.
  std::string random_path() {
    return "d" + std::to_string(rng_() % 4) + "/n" + std::to_string(rng_() % 24);
  }
  Ino top(const std::string& path) { return tops_.at(path.substr(0, 2)); }
  static std::string leaf(const std::string& path) { return path.substr(3); }
  Result<Ino> ino_of(const std::string& path) {
    ASSIGN_OR_RETURN(auto a, fs_->lookup(top(path), leaf(path)));
    fs_->forget(a.ino, 1);
    return a.ino;
  }
  std::string random_bytes(size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng_());
    return s;
  }
  void compare_trees(int op) {
    auto t = testing::snapshot_tree(*fs_);
    ASSERT_OK(t);
    ASSERT_TRUE(*t == model_) << "after op " << op << "\nfs:\n"
                              << testing::describe(*t) << "model:\n"
                              << testing::describe(model_);
  }

  std::mt19937_64 rng_{7};
  Tree model_;
  std::map<std::string, Ino> tops_;
};

TEST_F(ModelTest, TwentyThousandRandomOperationsMatchTheModel) {
  for (int d = 0; d < 4; ++d) {
    const std::string name = "d" + std::to_string(d);
    tops_[name] = mkdir(fs_->root(), name);
    fs_->forget(tops_[name], 1);
    model_[name] = TreeNode{S_IFDIR, ""};
  }
  const int kOps = 20000;
  int counts[8] = {};
  for (int i = 1; i <= kOps; ++i) {
    const std::string path = random_path();
    auto it = model_.find(path);
    const bool exists = it != model_.end();
    const bool is_dir = exists && it->second.type == S_IFDIR;
    const int op = static_cast<int>(rng_() % 8);
    ++counts[op];
    SCOPED_TRACE("op " + std::to_string(i) + " kind " + std::to_string(op) + " on " + path);
    switch (op) {
      case 0: {  // create
        auto a = fs_->mknod(top(path), leaf(path), S_IFREG | 0644, 0, caller_);
        ASSERT_EQ(err(a), exists ? EEXIST : 0);
        if (a) {
          fs_->forget(a->ino, 1);
          model_[path] = TreeNode{S_IFREG, ""};
        }
        break;
      }
      case 1: {  // mkdir
        auto a = fs_->mkdir(top(path), leaf(path), 0755, caller_);
        ASSERT_EQ(err(a), exists ? EEXIST : 0);
        if (a) {
          fs_->forget(a->ino, 1);
          model_[path] = TreeNode{S_IFDIR, ""};
        }
        break;
      }
      case 2: {  // unlink or rmdir
        const bool as_dir = rng_() % 2 == 0;
        Status st = as_dir ? fs_->rmdir(top(path), leaf(path)) : fs_->unlink(top(path), leaf(path));
        int want = !exists ? ENOENT : as_dir && !is_dir ? ENOTDIR : !as_dir && is_dir ? EISDIR : 0;
        ASSERT_EQ(err(st), want) << st.to_string();
        if (st) model_.erase(path);
        break;
      }
      case 3: {  // rename
        const std::string to = random_path();
        auto jt = model_.find(to);
        const bool to_exists = jt != model_.end();
        const bool to_dir = to_exists && jt->second.type == S_IFDIR;
        Status st = fs_->rename(top(path), leaf(path), top(to), leaf(to), 0);
        int want = 0;
        if (!exists) {
          want = ENOENT;
        } else if (to_exists && path != to) {
          if (is_dir && !to_dir) want = ENOTDIR;
          if (!is_dir && to_dir) want = EISDIR;
        }
        ASSERT_EQ(err(st), want) << st.to_string() << " to " << to;
        if (st && path != to) {
          model_[to] = model_[path];
          model_.erase(path);
        }
        break;
      }
      case 4:
      case 5: {  // write at a random offset
        if (!exists || is_dir) {
          ASSERT_EQ(err(fs_->lookup(top(path), leaf(path))), exists ? 0 : ENOENT);
          if (exists) fs_->forget(*ino_of(path), 1);
          break;
        }
        auto ino = ino_of(path);
        ASSERT_OK(ino);
        const uint64_t off = rng_() % 2 == 0 ? it->second.contents.size() : rng_() % 70000;
        std::string data = random_bytes(1 + rng_() % 9000);
        auto n = fs_->write(*ino, off, bytes_of(data));
        ASSERT_OK(n);
        ASSERT_EQ(*n, data.size());
        auto& c = it->second.contents;
        if (c.size() < off + data.size()) c.resize(off + data.size(), '\0');
        c.replace(off, data.size(), data);
        break;
      }
      case 6: {  // truncate
        if (!exists || is_dir) break;
        auto ino = ino_of(path);
        ASSERT_OK(ino);
        SetAttr a;
        a.size = rng_() % 80000;
        ASSERT_OK(fs_->setattr(*ino, a, caller_));
        it->second.contents.resize(*a.size, '\0');
        break;
      }
      default: {  // read a random range and compare
        if (!exists || is_dir) break;
        auto ino = ino_of(path);
        ASSERT_OK(ino);
        const auto& c = it->second.contents;
        const uint64_t off = rng_() % (c.size() + 100);
        auto r = fs_->read(*ino, off, 1 + rng_() % 20000);
        ASSERT_OK(r);
        const std::string want = off >= c.size() ? "" : c.substr(off, r->size());
        ASSERT_EQ(testing::string_of(*r), want);
        ASSERT_EQ(r->size(), std::min<uint64_t>(c.size() - std::min<uint64_t>(off, c.size()),
                                                r->size()));
        break;
      }
    }
    if (i % 1000 == 0) compare_trees(i);
    if (i % 5000 == 0) {
      remount();
      compare_trees(i);
    }
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int c : counts) EXPECT_GT(c, 2000);
}

}  // namespace
}  // namespace sharedfs::fs
