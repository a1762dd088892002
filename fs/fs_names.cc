// Names: lookup, create, link, unlink, rename, readdir.
//
// Lock order (docs/locking.md): the rename lock, then parent directories by ascending inode
// number, then the inodes named in them by ascending number; locks are taken before the
// journal handle is begun. lookup("..") is the one walk upwards: it lets go of the
// directory before it locks the parent.
#include <fmt/format.h>
#include <dirent.h>
#include <linux/fs.h>

#include <algorithm>

#include "fs/directory.h"
#include "fs/fs.h"
#include "fs/fs_internal.h"

namespace sharedfs::fs {

using detail::posix_error;
using format::Inode;

Result<Attr> FileSystem::lookup(Ino parent, std::string_view name) {
  if (name.size() > format::kMaxNameLength) {
    return posix_error(ENAMETOOLONG, fmt::format("name of {} bytes", name.size()));
  }
  Ino child = 0;
  std::optional<dlm::Lock> parent_lock;
  {
    ASSIGN_OR_RETURN(auto plock, lock_inode(parent, dlm::LockMode::kPR));
    ASSIGN_OR_RETURN(auto pref, load(parent));
    if (!pref.is_dir()) return posix_error(ENOTDIR, fmt::format("inode {} is no directory", parent));
    if (name == ".") {
      child = parent;
    } else if (name == "..") {
      child = pref.inode.parent;
    } else {
      Directory d(*tm_, *alloc_, sb_, parent, pref.inode);
      ASSIGN_OR_RETURN(auto e, d.lookup(name));
      note_kernel_name(parent, name);  // positive or negative, the kernel may cache it
      if (!e) return posix_error(ENOENT, fmt::format("no \"{}\" in {}", name, parent));
      child = e->ino;
      parent_lock = std::move(plock);  // held across the child's lock: parent before child
    }
  }
  ASSIGN_OR_RETURN(auto clock, lock_inode(child, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto cref, load(child));
  remember(child);
  if (cref.is_dir()) note_dir_alias(child, parent, name);
  return make_attr(child, cref.inode);
}

Result<Attr> FileSystem::mknod(Ino parent, std::string_view name, uint32_t mode, uint32_t rdev,
                               const Caller& caller) {
  switch (mode & S_IFMT) {
    case 0:
      mode |= S_IFREG;
      break;
    case S_IFREG:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK:
      break;
    default:
      return posix_error(EINVAL, fmt::format("mknod of type {:o}", mode & S_IFMT));
  }
  return create_node(parent, name, mode, rdev, {}, caller);
}

Result<Attr> FileSystem::mkdir(Ino parent, std::string_view name, uint32_t mode,
                               const Caller& caller) {
  return create_node(parent, name, S_IFDIR | (mode & 07777), 0, {}, caller);
}

Result<Attr> FileSystem::symlink(Ino parent, std::string_view name, std::string_view target,
                                 const Caller& caller) {
  if (target.empty()) return posix_error(ENOENT, "empty symlink target");
  if (target.size() > Inode::inline_capacity(bs_)) {
    return posix_error(ENAMETOOLONG,
                       fmt::format("symlink target of {} bytes (at most {})", target.size(),
                                   Inode::inline_capacity(bs_)));
  }
  return create_node(parent, name, S_IFLNK | 0777, 0, target, caller);
}

Result<Attr> FileSystem::create_node(Ino parent, std::string_view name, uint32_t mode,
                                     uint32_t rdev, std::string_view target,
                                     const Caller& caller) {
  auto r = create_node_once(parent, name, mode, rdev, target, caller);
  if (!r && retry_after_commit(r.status())) {
    r = create_node_once(parent, name, mode, rdev, target, caller);
  }
  return r;
}

Result<Attr> FileSystem::create_node_once(Ino parent, std::string_view name, uint32_t mode,
                                          uint32_t rdev, std::string_view target,
                                          const Caller& caller) {
  RETURN_IF_ERROR(detail::check_name(name));
  Attr out;
  {
    ASSIGN_OR_RETURN(auto plock, lock_inode(parent, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto pref, load(parent));
    if (!pref.is_dir()) return posix_error(ENOTDIR, fmt::format("inode {} is no directory", parent));
    if (pref.inode.nlink == 0) return posix_error(ENOENT, "directory was removed");
    if (S_ISDIR(mode) && pref.inode.nlink >= 0xFFFFFFF0u) {
      return posix_error(EMLINK, "too many subdirectories");
    }
    Directory d(*tm_, *alloc_, sb_, parent, pref.inode);
    ASSIGN_OR_RETURN(auto existing, d.lookup(name));
    if (existing) return posix_error(EEXIST, fmt::format("\"{}\" exists", name));

    ASSIGN_OR_RETURN(auto change, begin_change());
    journal::Handle& h = change.handle;
    ASSIGN_OR_RETURN(Ino ino, alloc_->allocate_inode(h, parent));
    // A fresh inode nobody else can name yet; its lock only keeps the rule "changed under EX".
    ASSIGN_OR_RETURN(auto clock, lock_inode(ino, dlm::LockMode::kEX));
    InodeRef cref;
    cref.ino = ino;
    cref.buf = tm_->create(ino);
    Inode& n = cref.inode;
    const uint64_t now = detail::now_ns();
    n.generation = next_generation_++;
    n.mode = mode;
    n.uid = caller.uid;
    n.gid = caller.gid;
    if (pref.inode.mode & S_ISGID) {  // BSD group semantics for set-group-ID directories
      n.gid = pref.inode.gid;
      if (S_ISDIR(mode)) n.mode |= S_ISGID;
    }
    n.rdev = rdev;
    n.nlink = S_ISDIR(mode) ? 2 : 1;
    n.atime_ns = n.mtime_ns = n.ctime_ns = n.btime_ns = now;
    if (S_ISDIR(mode)) {
      n.flags = Inode::kInlineData;
      n.parent = parent;
    } else if (S_ISLNK(mode)) {
      n.flags = Inode::kInlineData;
      n.inline_data.assign(target.begin(), target.end());
      n.size = target.size();
    }
    if (!S_ISLNK(mode)) {
      auto acl = inherit_acls(h, pref, cref, caller);
      if (!acl) {
        (void)alloc_->free_inode(h, ino);
        return acl;
      }
    }
    auto added = d.add(h, {ino, 0, format::file_type_of_mode(mode), std::string(name)});
    if (!added) {
      if (n.xattr_block != 0) (void)alloc_->free(h, {n.xattr_block, 1}, true);
      (void)alloc_->free_inode(h, ino);
      return added;
    }
    store(h, cref);
    if (S_ISDIR(mode)) ++pref.inode.nlink;
    pref.inode.mtime_ns = pref.inode.ctime_ns = now;
    store(h, pref);
    remember(ino);
    note_kernel_name(parent, name);
    if (S_ISDIR(mode)) note_dir_alias(ino, parent, name);
    out = make_attr(ino, n);
  }
  RETURN_IF_ERROR(maybe_commit());
  return out;
}

Result<std::string> FileSystem::readlink(Ino ino) {
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(ino));
  if (!ref.is_symlink()) return posix_error(EINVAL, "not a symlink");
  return std::string(ref.inode.inline_data.begin(), ref.inode.inline_data.end());
}

Result<Attr> FileSystem::link(Ino ino, Ino new_parent, std::string_view new_name) {
  RETURN_IF_ERROR(detail::check_name(new_name));
  if (ino == new_parent) return posix_error(EPERM, "hard link to a directory");
  Attr out;
  {
    ASSIGN_OR_RETURN(auto plock, lock_inode(new_parent, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto clock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto pref, load(new_parent));
    ASSIGN_OR_RETURN(auto cref, load(ino));
    if (!pref.is_dir()) return posix_error(ENOTDIR, "link into a non-directory");
    if (pref.inode.nlink == 0) return posix_error(ENOENT, "directory was removed");
    if (cref.is_dir()) return posix_error(EPERM, "hard link to a directory");
    if (cref.inode.nlink == 0) return posix_error(ENOENT, "inode was unlinked");
    if (cref.inode.nlink >= 65000) return posix_error(EMLINK, "too many links");
    Directory d(*tm_, *alloc_, sb_, new_parent, pref.inode);
    ASSIGN_OR_RETURN(auto change, begin_change());
    journal::Handle& h = change.handle;
    RETURN_IF_ERROR(d.add(h, {ino, 0, format::file_type_of_mode(cref.inode.mode), std::string(new_name)}));
    const uint64_t now = detail::now_ns();
    ++cref.inode.nlink;
    cref.inode.ctime_ns = now;
    store(h, cref);
    pref.inode.mtime_ns = pref.inode.ctime_ns = now;
    store(h, pref);
    remember(ino);
    note_kernel_name(new_parent, new_name);
    out = make_attr(ino, cref.inode);
  }
  RETURN_IF_ERROR(maybe_commit());
  return out;
}

Status FileSystem::unlink(Ino parent, std::string_view name) {
  return remove_entry(parent, name, /*want_dir=*/false);
}

Status FileSystem::rmdir(Ino parent, std::string_view name) {
  if (name == ".") return posix_error(EINVAL, "rmdir of \".\"");
  if (name == "..") return posix_error(ENOTEMPTY, "rmdir of \"..\"");
  return remove_entry(parent, name, /*want_dir=*/true);
}

Status FileSystem::remove_entry(Ino parent, std::string_view name, bool want_dir) {
  RETURN_IF_ERROR(detail::check_name(name));
  {
    ASSIGN_OR_RETURN(auto plock, lock_inode(parent, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto pref, load(parent));
    if (!pref.is_dir()) return posix_error(ENOTDIR, "not a directory");
    Directory d(*tm_, *alloc_, sb_, parent, pref.inode);
    ASSIGN_OR_RETURN(auto e, d.lookup(name));
    if (!e) return posix_error(ENOENT, fmt::format("no \"{}\"", name));
    ASSIGN_OR_RETURN(auto clock, lock_inode(e->ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto cref, load(e->ino));
    if (want_dir) {
      if (!cref.is_dir()) return posix_error(ENOTDIR, fmt::format("\"{}\" is no directory", name));
      if (cref.inode.dir_entries != 0) {
        return posix_error(ENOTEMPTY, fmt::format("\"{}\" is not empty", name));
      }
    } else if (cref.is_dir()) {
      return posix_error(EISDIR, fmt::format("\"{}\" is a directory", name));
    }
    ASSIGN_OR_RETURN(auto change, begin_change());
    journal::Handle& h = change.handle;
    RETURN_IF_ERROR(d.remove(h, name).status());
    const uint64_t now = detail::now_ns();
    if (want_dir) {
      cref.inode.nlink = 0;
      --pref.inode.nlink;
    } else {
      --cref.inode.nlink;
    }
    cref.inode.ctime_ns = now;
    pref.inode.mtime_ns = pref.inode.ctime_ns = now;
    store(h, pref);
    if (cref.inode.nlink == 0) {
      RETURN_IF_ERROR(drop_inode(h, cref));
    } else {
      store(h, cref);
    }
  }
  return maybe_commit();
}

// Whether `ancestor` is `dir` or above it. Called under the rename lock, which keeps
// directories from moving meanwhile.
Result<bool> FileSystem::is_ancestor(Ino ancestor, Ino dir) {
  Ino cur = dir;
  for (int depth = 0; depth < 100000; ++depth) {
    if (cur == ancestor) return true;
    if (cur == root()) return false;
    ASSIGN_OR_RETURN(auto ref, load(cur));
    const Ino parent = ref.inode.parent;
    if (cur != dir) {
      // Read without the directory's own lock: parent links only change under the rename
      // lock we hold, and whoever held it last wrote them home before giving it up, so
      // the device copy is right — but it must not stay cached, where nothing would drop
      // it when another node changes the directory later.
      ref = {};
      const uint64_t blk = cur;
      tm_->forget(std::span<const uint64_t>(&blk, 1));
    }
    if (parent == cur || parent == 0) return false;
    cur = parent;
  }
  return posix_error(ELOOP, "directory parent chain too long");
}

Status FileSystem::rename(Ino p1, std::string_view n1, Ino p2, std::string_view n2,
                          unsigned flags) {
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
    return posix_error(EINVAL, fmt::format("rename flags {:#x}", flags));
  }
  if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) {
    return posix_error(EINVAL, "RENAME_NOREPLACE with RENAME_EXCHANGE");
  }
  const bool exchange = flags & RENAME_EXCHANGE;
  RETURN_IF_ERROR(detail::check_name(n1));
  RETURN_IF_ERROR(detail::check_name(n2));
  {
    ASSIGN_OR_RETURN(auto rename_lock, locks_->lock({dlm::LockSpace::kRename, 0}, dlm::LockMode::kEX));
    std::vector<dlm::Lock> held;
    auto lock_all = [&](std::vector<Ino> inos) -> Status {
      std::sort(inos.begin(), inos.end());
      inos.erase(std::unique(inos.begin(), inos.end()), inos.end());
      for (Ino i : inos) {
        ASSIGN_OR_RETURN(auto l, lock_inode(i, dlm::LockMode::kEX));
        held.push_back(std::move(l));
      }
      return Status::ok();
    };
    RETURN_IF_ERROR(lock_all({p1, p2}));
    ASSIGN_OR_RETURN(auto pref1, load(p1));
    std::optional<InodeRef> pref2_storage;
    if (p2 != p1) {
      ASSIGN_OR_RETURN(auto r, load(p2));
      pref2_storage = std::move(r);
    }
    InodeRef& pr1 = pref1;
    InodeRef& pr2 = p2 != p1 ? *pref2_storage : pref1;
    if (!pr1.is_dir() || !pr2.is_dir()) return posix_error(ENOTDIR, "rename between non-directories");
    if (pr2.inode.nlink == 0) return posix_error(ENOENT, "target directory was removed");
    Directory d1(*tm_, *alloc_, sb_, p1, pr1.inode);
    std::optional<Directory> d2_storage;
    if (p2 != p1) d2_storage.emplace(*tm_, *alloc_, sb_, p2, pr2.inode);
    Directory& d2 = p2 != p1 ? *d2_storage : d1;

    ASSIGN_OR_RETURN(auto src_entry, d1.lookup(n1));
    if (!src_entry) return posix_error(ENOENT, fmt::format("no \"{}\"", n1));
    ASSIGN_OR_RETURN(auto dst_entry, d2.lookup(n2));
    if (exchange && !dst_entry) return posix_error(ENOENT, fmt::format("no \"{}\"", n2));
    if ((flags & RENAME_NOREPLACE) && dst_entry) {
      return posix_error(EEXIST, fmt::format("\"{}\" exists", n2));
    }
    const Ino src = src_entry->ino;
    const Ino dst = dst_entry ? dst_entry->ino : 0;
    if (src == dst) return Status::ok();  // two links of one inode: nothing to do
    if (src == p2 || src == p1) return posix_error(EINVAL, "rename of a directory into itself");
    if (dst == p1 || dst == p2) return posix_error(ENOTEMPTY, "rename over an ancestor");

    std::vector<Ino> children{src};
    if (dst != 0) children.push_back(dst);
    RETURN_IF_ERROR(lock_all(children));
    ASSIGN_OR_RETURN(auto sref, load(src));
    std::optional<InodeRef> dref;
    if (dst != 0) {
      ASSIGN_OR_RETURN(auto r, load(dst));
      dref = std::move(r);
    }
    const bool src_dir = sref.is_dir();
    const bool dst_dir = dref && dref->is_dir();
    if (dref && !exchange) {
      if (src_dir && !dst_dir) return posix_error(ENOTDIR, "rename of a directory over a file");
      if (!src_dir && dst_dir) return posix_error(EISDIR, "rename of a file over a directory");
      if (dst_dir && dref->inode.dir_entries != 0) {
        return posix_error(ENOTEMPTY, fmt::format("\"{}\" is not empty", n2));
      }
    }
    if (p1 != p2) {
      if (src_dir) {
        ASSIGN_OR_RETURN(bool loop, is_ancestor(src, p2));
        if (loop) return posix_error(EINVAL, "rename of a directory below itself");
      }
      if (exchange && dst_dir) {
        ASSIGN_OR_RETURN(bool loop, is_ancestor(dst, p1));
        if (loop) return posix_error(EINVAL, "rename of a directory below itself");
      }
    }

    ASSIGN_OR_RETURN(auto change, begin_change());
    journal::Handle& h = change.handle;
    const uint64_t now = detail::now_ns();
    const auto src_type = format::file_type_of_mode(sref.inode.mode);
    if (exchange) {
      const auto dst_type = format::file_type_of_mode(dref->inode.mode);
      RETURN_IF_ERROR(d1.remove(h, n1).status());
      RETURN_IF_ERROR(d2.remove(h, n2).status());
      RETURN_IF_ERROR(d1.add(h, {dst, 0, dst_type, std::string(n1)}));
      RETURN_IF_ERROR(d2.add(h, {src, 0, src_type, std::string(n2)}));
      if (p1 != p2) {
        if (src_dir) {
          sref.inode.parent = p2;
          --pr1.inode.nlink;
          ++pr2.inode.nlink;
        }
        if (dst_dir) {
          dref->inode.parent = p1;
          --pr2.inode.nlink;
          ++pr1.inode.nlink;
        }
      }
      dref->inode.ctime_ns = now;
      store(h, *dref);
    } else {
      if (dref) {
        RETURN_IF_ERROR(d2.remove(h, n2).status());
        if (dst_dir) {
          dref->inode.nlink = 0;
          --pr2.inode.nlink;
        } else {
          --dref->inode.nlink;
        }
        dref->inode.ctime_ns = now;
      }
      RETURN_IF_ERROR(d1.remove(h, n1).status());
      RETURN_IF_ERROR(d2.add(h, {src, 0, src_type, std::string(n2)}));
      if (src_dir && p1 != p2) {
        sref.inode.parent = p2;
        --pr1.inode.nlink;
        ++pr2.inode.nlink;
      }
      if (dref) {
        if (dref->inode.nlink == 0) {
          RETURN_IF_ERROR(drop_inode(h, *dref));
        } else {
          store(h, *dref);
        }
      }
    }
    sref.inode.ctime_ns = now;
    store(h, sref);
    pr1.inode.mtime_ns = pr1.inode.ctime_ns = now;
    store(h, pr1);
    if (p2 != p1) {
      pr2.inode.mtime_ns = pr2.inode.ctime_ns = now;
      store(h, pr2);
    }
    // The kernel moves its own dentries on a rename it sent.
    note_kernel_name(p2, n2);
    if (exchange) note_kernel_name(p1, n1);
    if (src_dir) note_dir_alias(src, p2, n2);
    if (exchange && dst_dir) note_dir_alias(dst, p1, n1);
  }
  return maybe_commit();
}

Result<std::vector<DirListEntry>> FileSystem::readdir(Ino dir, uint64_t cookie, size_t max) {
  ASSIGN_OR_RETURN(auto lock, lock_inode(dir, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(dir));
  if (!ref.is_dir()) return posix_error(ENOTDIR, "readdir of a non-directory");
  std::vector<DirListEntry> out;
  if (max == 0) return out;
  if (cookie < Directory::kDotCookie) out.push_back({Directory::kDotCookie, dir, DT_DIR, "."});
  if (cookie < Directory::kDotDotCookie && out.size() < max) {
    out.push_back({Directory::kDotDotCookie, ref.inode.parent, DT_DIR, ".."});
  }
  if (out.size() >= max) return out;
  Directory d(*tm_, *alloc_, sb_, dir, ref.inode);
  ASSIGN_OR_RETURN(auto listed, d.list(cookie <= Directory::kDotDotCookie ? 0 : cookie,
                                       max - out.size()));
  for (auto& l : listed) {
    out.push_back({l.cookie, l.entry.ino, detail::dirent_type(l.entry.type), std::move(l.entry.name)});
  }
  return out;
}

}  // namespace sharedfs::fs
