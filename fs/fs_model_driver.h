// The model test's random operations, for any file system and any number of nodes: each
// step runs on the FileSystem the caller passes (one node, or a random one of several)
// and checks its error code and the data it returns against a plain in-memory model.
// Assertions are gtest's: after a step, the caller checks HasFatalFailure().
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>

#include "fs/fs.h"
#include "fs/fs_test_fixture.h"
#include "fs/fs_tree_model.h"

namespace sharedfs::fs::testing {

class ModelDriver {
 public:
  static constexpr int kKinds = 8;

  ModelDriver(uint64_t seed, Caller caller) : rng_(seed), caller_(caller) {}

  std::mt19937_64& rng() { return rng_; }
  int count(int kind) const { return counts_[kind]; }

  // The four top directories d0..d3 every path lives in.
  void make_tops(FileSystem& fs) {
    for (int d = 0; d < 4; ++d) {
      const std::string name = "d" + std::to_string(d);
      auto a = fs.mkdir(fs.root(), name, 0755, caller_);
      ASSERT_OK(a);
      fs.forget(a->ino, 1);
      tops_[name] = a->ino;
      model_[name] = TreeNode{S_IFDIR, ""};
    }
  }

  // The whole tree as `fs` sees it must equal the model.
  void compare(FileSystem& fs, int op) {
    auto t = snapshot_tree(fs);
    ASSERT_OK(t);
    ASSERT_TRUE(*t == model_) << "after op " << op << "\nfs:\n"
                              << describe(*t) << "model:\n"
                              << describe(model_);
  }

  // One random operation (number i, for messages) on `fs`.
  void step(FileSystem& fs, int i) {
    const std::string path = random_path();
    auto it = model_.find(path);
    const bool exists = it != model_.end();
    const bool is_dir = exists && it->second.type == S_IFDIR;
    const int op = static_cast<int>(rng_() % kKinds);
    ++counts_[op];
    SCOPED_TRACE("op " + std::to_string(i) + " kind " + std::to_string(op) + " on " + path);
    switch (op) {
      case 0: {  // create
        auto a = fs.mknod(top(path), leaf(path), S_IFREG | 0644, 0, caller_);
        ASSERT_EQ(err(a), exists ? EEXIST : 0);
        if (a) {
          fs.forget(a->ino, 1);
          model_[path] = TreeNode{S_IFREG, ""};
        }
        break;
      }
      case 1: {  // mkdir
        auto a = fs.mkdir(top(path), leaf(path), 0755, caller_);
        ASSERT_EQ(err(a), exists ? EEXIST : 0);
        if (a) {
          fs.forget(a->ino, 1);
          model_[path] = TreeNode{S_IFDIR, ""};
        }
        break;
      }
      case 2: {  // unlink or rmdir
        const bool as_dir = rng_() % 2 == 0;
        Status st = as_dir ? fs.rmdir(top(path), leaf(path)) : fs.unlink(top(path), leaf(path));
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
        Status st = fs.rename(top(path), leaf(path), top(to), leaf(to), 0);
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
          ASSERT_EQ(err(fs.lookup(top(path), leaf(path))), exists ? 0 : ENOENT);
          if (exists) fs.forget(*ino_of(fs, path), 1);
          break;
        }
        auto ino = ino_of(fs, path);
        ASSERT_OK(ino);
        const uint64_t off = rng_() % 2 == 0 ? it->second.contents.size() : rng_() % 70000;
        std::string data = random_bytes(1 + rng_() % 9000);
        auto n = fs.write(*ino, off, bytes_of(data));
        ASSERT_OK(n);
        ASSERT_EQ(*n, data.size());
        auto& c = it->second.contents;
        if (c.size() < off + data.size()) c.resize(off + data.size(), '\0');
        c.replace(off, data.size(), data);
        break;
      }
      case 6: {  // truncate
        if (!exists || is_dir) break;
        auto ino = ino_of(fs, path);
        ASSERT_OK(ino);
        SetAttr a;
        a.size = rng_() % 80000;
        ASSERT_OK(fs.setattr(*ino, a, caller_));
        it->second.contents.resize(*a.size, '\0');
        break;
      }
      default: {  // read a random range and compare
        if (!exists || is_dir) break;
        auto ino = ino_of(fs, path);
        ASSERT_OK(ino);
        const auto& c = it->second.contents;
        const uint64_t off = rng_() % (c.size() + 100);
        auto r = fs.read(*ino, off, 1 + rng_() % 20000);
        ASSERT_OK(r);
        const std::string want = off >= c.size() ? "" : c.substr(off, r->size());
        ASSERT_EQ(string_of(*r), want);
        ASSERT_EQ(r->size(), std::min<uint64_t>(c.size() - std::min<uint64_t>(off, c.size()),
                                                r->size()));
        break;
      }
    }
  }

 private:
  template <typename T>
  static int err(const Result<T>& r) {
    return r.is_ok() ? 0 : r.status().to_errno();
  }
  static int err(const Status& s) { return s.is_ok() ? 0 : s.to_errno(); }

  // "dA/nB": four fixed top directories, a small pool of names so operations collide.
  std::string random_path() {
    return "d" + std::to_string(rng_() % 4) + "/n" + std::to_string(rng_() % 24);
  }
  Ino top(const std::string& path) { return tops_.at(path.substr(0, 2)); }
  static std::string leaf(const std::string& path) { return path.substr(3); }
  Result<Ino> ino_of(FileSystem& fs, const std::string& path) {
    ASSIGN_OR_RETURN(auto a, fs.lookup(top(path), leaf(path)));
    fs.forget(a.ino, 1);
    return a.ino;
  }
  std::string random_bytes(size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng_());
    return s;
  }

  std::mt19937_64 rng_;
  Caller caller_;
  Tree model_;
  std::map<std::string, Ino> tops_;
  int counts_[kKinds] = {};
};

}  // namespace sharedfs::fs::testing
