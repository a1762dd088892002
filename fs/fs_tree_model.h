// For fs/ tests: the whole visible tree of a FileSystem as plain values, to compare with a
// model of what it should hold.
#pragma once

#include <map>
#include <string>

#include "fs/fs.h"

namespace sharedfs::fs::testing {

struct TreeNode {
  uint32_t type = 0;     // S_IFREG, S_IFDIR, S_IFLNK
  std::string contents;  // file data or symlink target
  bool operator==(const TreeNode&) const = default;
};
using Tree = std::map<std::string, TreeNode>;  // path ("a/b") -> node; root not listed

inline std::string describe(const Tree& t) {
  std::string s;
  for (const auto& [path, n] : t) {
    s += path + (n.type == S_IFDIR ? "/" : "") + " (" + std::to_string(n.contents.size()) + " bytes)\n";
  }
  return s;
}

// Walks the tree through readdir/lookup/read; any error is returned.
inline Result<Tree> snapshot_tree(FileSystem& fs) {
  Tree out;
  std::vector<std::pair<Ino, std::string>> pending{{fs.root(), ""}};
  while (!pending.empty()) {
    auto [dir, prefix] = pending.back();
    pending.pop_back();
    uint64_t cookie = 0;
    for (;;) {
      ASSIGN_OR_RETURN(auto page, fs.readdir(dir, cookie, 64));
      if (page.empty()) break;
      for (const auto& e : page) {
        cookie = e.cookie;
        if (e.name == "." || e.name == "..") continue;
        const std::string path = prefix.empty() ? e.name : prefix + "/" + e.name;
        ASSIGN_OR_RETURN(auto a, fs.lookup(dir, e.name));
        fs.forget(a.ino, 1);
        TreeNode n;
        n.type = a.st.st_mode & S_IFMT;
        if (n.type == S_IFDIR) {
          pending.push_back({a.ino, path});
        } else if (n.type == S_IFLNK) {
          ASSIGN_OR_RETURN(n.contents, fs.readlink(a.ino));
        } else {
          ASSIGN_OR_RETURN(auto data, fs.read(a.ino, 0, static_cast<size_t>(a.st.st_size)));
          n.contents.assign(reinterpret_cast<const char*>(data.data()), data.size());
        }
        out[path] = std::move(n);
      }
    }
  }
  return out;
}

}  // namespace sharedfs::fs::testing
