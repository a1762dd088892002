#define FUSE_USE_VERSION 314
#include "fs/fuse/fuse_frontend.h"

#include <fmt/format.h>
#include <fuse3/fuse_lowlevel.h>
#include <spdlog/spdlog.h>

#include <sys/file.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

#include "device/device.h"

namespace sharedfs::fs::fuse {
namespace {

struct Context {
  FileSystem* fs;
  FuseOptions opts;
  std::once_flag read_ahead_set;
  // The kernel opens files without asking us (FUSE_CAP_NO_OPEN_SUPPORT): set at INIT.
  bool zero_message_open = false;
  // SETLKW and blocking flock wait on threads of their own (a FUSE worker that waited could
  // leave none to serve the unlock it waits for); the session ends only after they do.
  std::mutex waiters_mu;
  std::condition_variable waiters_cv;
  int waiters = 0;
  std::atomic<bool> closing{false};
};

Context& ctx_of(fuse_req_t req) { return *static_cast<Context*>(fuse_req_userdata(req)); }
FileSystem& fs_of(fuse_req_t req) { return *ctx_of(req).fs; }

Ino to_fs(fuse_req_t req, fuse_ino_t ino) {
  return ino == FUSE_ROOT_ID ? fs_of(req).root() : static_cast<Ino>(ino);
}
fuse_ino_t to_fuse(const FileSystem& fs, Ino ino) {
  return ino == fs.root() ? FUSE_ROOT_ID : static_cast<fuse_ino_t>(ino);
}

Caller caller_of(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  return Caller{c->uid, c->gid, c->umask};
}

void reply_status(fuse_req_t req, const Status& st) {
  fuse_reply_err(req, st.is_ok() ? 0 : st.to_errno());
}

struct stat fuse_stat(fuse_req_t req, const Attr& a) {
  struct stat st = a.st;
  st.st_ino = to_fuse(fs_of(req), a.ino);
  return st;
}

fuse_entry_param entry_of(fuse_req_t req, const Attr& a) {
  const auto& o = ctx_of(req).opts;
  fuse_entry_param e{};
  e.ino = to_fuse(fs_of(req), a.ino);
  e.generation = a.generation;
  e.attr = fuse_stat(req, a);
  e.attr_timeout = o.attr_timeout_s;
  e.entry_timeout = o.entry_timeout_s;
  return e;
}

void reply_entry(fuse_req_t req, const Result<Attr>& a) {
  if (!a) return reply_status(req, a.status());
  fuse_entry_param e = entry_of(req, *a);
  if (fuse_reply_entry(req, &e) != 0) fs_of(req).forget(a->ino, 1);  // interrupted
}

void reply_attr(fuse_req_t req, const Result<Attr>& a) {
  if (!a) return reply_status(req, a.status());
  struct stat st = fuse_stat(req, *a);
  fuse_reply_attr(req, &st, ctx_of(req).opts.attr_timeout_s);
}

// Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(std::string_view s) {
  auto is_octal = [](char c) { return c >= '0' && c <= '7'; };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && is_octal(s[i + 1]) && is_octal(s[i + 2]) &&
        is_octal(s[i + 3])) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The kernel's "major:minor" of the FUSE mount at `mountpoint` (the newest one there), read
// from /proc/self/mountinfo: a stat() of the mount point would itself wait on this daemon.
Result<std::string> fuse_mount_device(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return make_status(Code::kIoError, "cannot read /proc/self/mountinfo");
  std::string line, found;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source super
    std::istringstream ls(line);
    std::string id, parent, dev, root, mnt, field;
    if (!(ls >> id >> parent >> dev >> root >> mnt)) continue;
    while (ls >> field && field != "-") {
    }
    std::string fstype;
    if (!(ls >> fstype) || !fstype.starts_with("fuse")) continue;
    if (unescape_mountinfo(mnt) == mountpoint) found = dev;
  }
  if (found.empty()) return make_status(Code::kNotFound, "no FUSE mount on {} in mountinfo", mountpoint);
  return found;
}

// Sets the mount's read-ahead once the kernel has taken INIT's answer (which would lower
// it again): the first LOOKUP or GETATTR comes after that, and before any file is opened.
void set_read_ahead_once(fuse_req_t req) {
  Context& c = ctx_of(req);
  if (c.opts.read_ahead_kb == 0) return;
  std::call_once(c.read_ahead_set, [&c] {
    auto dev = fuse_mount_device(c.opts.mountpoint);
    if (!dev) {
      spdlog::warn("read-ahead left at the kernel default: {}", dev.status().to_string());
      return;
    }
    const std::string path = fmt::format("/sys/class/bdi/{}/read_ahead_kb", *dev);
    std::ofstream out(path);
    out << c.opts.read_ahead_kb << '\n';
    out.flush();
    if (!out) {
      spdlog::warn("read-ahead left at the kernel default: cannot write {}", path);
    } else {
      spdlog::debug("read-ahead {} KiB ({})", c.opts.read_ahead_kb, path);
    }
  });
}

// --- operations --------------------------------------------------------------------------

void op_init(void* userdata, fuse_conn_info* conn) {
  auto* c = static_cast<Context*>(userdata);
  auto want = [&](unsigned cap) {
    if (conn->capable & cap) conn->want |= cap;
  };
  want(FUSE_CAP_ASYNC_READ);
  // Opens need nothing from us: unlinked-but-open files live by the kernel's lookup
  // references, not by open handles, and the page cache is kept across opens. So the
  // first OPEN answers ENOSYS and the kernel stops sending OPEN and RELEASE — two fewer
  // messages per file, which is most of what reading many small files costs. O_TRUNC then
  // comes as a SETATTR before the open instead of with it (no ATOMIC_O_TRUNC).
  // Advisory locks need FLUSH and RELEASE to drop a closed file's locks, so they need OPEN.
  // (libfuse asks for POSIX_LOCKS and FLOCK_LOCKS only when make_ops() gave the lock ops.)
  c->zero_message_open =
      (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) != 0 && c->opts.advisory_locks == nullptr;
  if (c->zero_message_open) {
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  } else {
    want(FUSE_CAP_ATOMIC_O_TRUNC);
  }
  want(FUSE_CAP_READDIRPLUS);
  want(FUSE_CAP_READDIRPLUS_AUTO);
  want(FUSE_CAP_PARALLEL_DIROPS);
  want(FUSE_CAP_POSIX_ACL);  // the kernel enforces ACLs from our xattrs
  // The umask reaches us instead of being applied by the kernel: a default ACL replaces it.
  want(FUSE_CAP_DONT_MASK);
  want(FUSE_CAP_EXPORT_SUPPORT);
  if (c->opts.cluster) {
    want(FUSE_CAP_AUTO_INVAL_DATA);
  } else if (c->opts.writeback_cache) {
    want(FUSE_CAP_WRITEBACK_CACHE);
  }
  conn->max_write = 1 << 20;
  conn->max_readahead = std::max(conn->max_readahead, 1u << 20);
  conn->time_gran = 1;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  set_read_ahead_once(req);
  auto a = fs_of(req).lookup(to_fs(req, parent), name);
  if (!a && a.status().to_errno() == ENOENT) {
    // A negative entry: the kernel may remember the name is absent.
    fuse_entry_param e{};
    e.entry_timeout = ctx_of(req).opts.entry_timeout_s;
    fuse_reply_entry(req, &e);
    return;
  }
  reply_entry(req, a);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  fs_of(req).forget(to_fs(req, ino), nlookup);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) fs_of(req).forget(to_fs(req, forgets[i].ino), forgets[i].nlookup);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  set_read_ahead_once(req);
  reply_attr(req, fs_of(req).getattr(to_fs(req, ino)));
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  SetAttr c;
  if (to_set & FUSE_SET_ATTR_MODE) c.mode = attr->st_mode;
  if (to_set & FUSE_SET_ATTR_UID) c.uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) c.gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) c.size = static_cast<uint64_t>(attr->st_size);
  if (to_set & FUSE_SET_ATTR_ATIME) c.atime = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_MTIME) c.mtime = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) c.atime = timespec{0, UTIME_NOW};
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) c.mtime = timespec{0, UTIME_NOW};
  if (to_set & FUSE_SET_ATTR_CTIME) c.ctime = attr->st_ctim;
  reply_attr(req, fs_of(req).setattr(to_fs(req, ino), c, caller_of(req)));
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  auto t = fs_of(req).readlink(to_fs(req, ino));
  if (!t) return reply_status(req, t.status());
  fuse_reply_readlink(req, t->c_str());
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  reply_entry(req, fs_of(req).mknod(to_fs(req, parent), name, mode, static_cast<uint32_t>(rdev),
                                    caller_of(req)));
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  reply_entry(req, fs_of(req).mkdir(to_fs(req, parent), name, mode, caller_of(req)));
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, fs_of(req).unlink(to_fs(req, parent), name));
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, fs_of(req).rmdir(to_fs(req, parent), name));
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  reply_entry(req, fs_of(req).symlink(to_fs(req, parent), name, target, caller_of(req)));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned int flags) {
  reply_status(req, fs_of(req).rename(to_fs(req, parent), name, to_fs(req, newparent), newname,
                                      flags));
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  reply_entry(req, fs_of(req).link(to_fs(req, ino), to_fs(req, newparent), newname));
}

// Cluster: O_APPEND writes go to the end of the file as the daemon knows it under the
// inode's lock, not where this kernel's possibly stale size says; and past the page cache,
// which would otherwise hold them at that stale offset.
bool appends_at_daemon_eof(fuse_req_t req, const fuse_file_info* fi) {
  return ctx_of(req).opts.cluster && (fi->flags & O_APPEND);
}
void set_append_mode(fuse_req_t req, fuse_file_info* fi) {
  if (appends_at_daemon_eof(req, fi)) fi->direct_io = 1;
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (fi->flags & O_TRUNC) {
    SetAttr c;
    c.size = 0;
    auto a = fs_of(req).setattr(to_fs(req, ino), c, caller_of(req));
    if (!a) return reply_status(req, a.status());
  }
  if (ctx_of(req).zero_message_open) {
    fuse_reply_err(req, ENOSYS);  // success, and no more OPENs (the kernel keeps the cache)
    return;
  }
  // Nobody else changes the file behind this node's back while it holds its locks: the
  // page cache stays valid across opens.
  fi->keep_cache = 1;
  if (auto* m = ctx_of(req).opts.metrics) m->keep_cache_opens.fetch_add(1, std::memory_order_relaxed);
  set_append_mode(req, fi);
  fuse_reply_open(req, fi);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  auto a = fs_of(req).mknod(to_fs(req, parent), name, (mode & 07777) | S_IFREG, 0,
                            caller_of(req));
  if (!a) return reply_status(req, a.status());
  fi->keep_cache = 1;
  set_append_mode(req, fi);
  fuse_entry_param e = entry_of(req, *a);
  if (fuse_reply_create(req, &e, fi) != 0) fs_of(req).forget(a->ino, 1);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  // Aligned, so that whole blocks go from the device straight into it (direct I/O).
  thread_local device::AlignedBuffer buf;
  if (buf.size() < size) buf = device::AlignedBuffer(std::max<size_t>(size, 1 << 20));
  auto n = fs_of(req).read_into(to_fs(req, ino), static_cast<uint64_t>(off),
                                std::span<std::byte>(buf.data(), size));
  if (!n) return reply_status(req, n.status());
  if (auto* m = ctx_of(req).opts.metrics) m->read_bytes.fetch_add(*n, std::memory_order_relaxed);
  fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), *n);
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off,
              fuse_file_info* fi) {
  auto n = fs_of(req).write(to_fs(req, ino), static_cast<uint64_t>(off),
                            std::as_bytes(std::span<const char>(data, size)),
                            appends_at_daemon_eof(req, fi));
  if (!n) return reply_status(req, n.status());
  if (auto* m = ctx_of(req).opts.metrics) m->write_bytes.fetch_add(*n, std::memory_order_relaxed);
  fuse_reply_write(req, *n);
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info*) {
  reply_status(req, fs_of(req).fsync(to_fs(req, ino), datasync != 0));
}

// The kernel sends OPENDIR for directories only (ENOTDIR is its own answer), and READDIR
// reports a vanished directory: nothing to look at here.
void op_opendir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  // One node alone: the listing stays valid while the directory lock is ours. In a
  // cluster another node may change it at any time.
  const bool keep = !ctx_of(req).opts.cluster;
  fi->cache_readdir = keep;
  fi->keep_cache = keep;
  fuse_reply_open(req, fi);
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  FileSystem& fs = fs_of(req);
  const Ino dir = to_fs(req, ino);
  std::vector<char> buf(size);
  size_t used = 0;
  uint64_t cookie = static_cast<uint64_t>(off);
  // Entries are small: ask for about as many as could fit and stop at the first that does
  // not (its cookie is not passed on, so the next call starts with it).
  const size_t batch = std::max<size_t>(8, size / (plus ? 160 : 32));
  for (;;) {
    auto page = fs.readdir(dir, cookie, batch);
    if (!page) {
      if (used == 0) return reply_status(req, page.status());
      break;
    }
    if (page->empty()) break;
    bool full = false;
    for (const auto& e : *page) {
      size_t need = 0;
      if (plus) {
        fuse_entry_param ep{};
        const bool dots = e.name == "." || e.name == "..";
        Result<Attr> a = dots ? fs.getattr(e.ino) : fs.lookup(dir, e.name);
        if (!a) continue;  // removed meanwhile
        ep = entry_of(req, *a);
        need = fuse_add_direntry_plus(req, buf.data() + used, size - used, e.name.c_str(), &ep,
                                      static_cast<off_t>(e.cookie));
        if (need > size - used) {
          if (!dots) fs.forget(a->ino, 1);  // not handed to the kernel
          full = true;
          break;
        }
      } else {
        struct stat st {};
        st.st_ino = to_fuse(fs, e.ino);
        st.st_mode = e.type << 12;
        need = fuse_add_direntry(req, buf.data() + used, size - used, e.name.c_str(), &st,
                                 static_cast<off_t>(e.cookie));
        if (need > size - used) {
          full = true;
          break;
        }
      }
      used += need;
      cookie = e.cookie;
    }
    if (full || page->size() < batch) break;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, false);
}
void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, true);
}
void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info*) {
  reply_status(req, fs_of(req).fsync(to_fs(req, ino), datasync != 0));
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs s = fs_of(req).statfs();
  fuse_reply_statfs(req, &s);
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                 int flags) {
  reply_status(req, fs_of(req).setxattr(to_fs(req, ino), name,
                                        std::span<const uint8_t>(
                                            reinterpret_cast<const uint8_t*>(value), size),
                                        flags));
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  auto v = fs_of(req).getxattr(to_fs(req, ino), name);
  if (!v) return reply_status(req, v.status());
  if (size == 0) return static_cast<void>(fuse_reply_xattr(req, v->size()));
  if (size < v->size()) {
    fuse_reply_err(req, ERANGE);
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(v->data()), v->size());
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto v = fs_of(req).listxattr(to_fs(req, ino));
  if (!v) return reply_status(req, v.status());
  if (size == 0) return static_cast<void>(fuse_reply_xattr(req, v->size()));
  if (size < v->size()) {
    fuse_reply_err(req, ERANGE);
    return;
  }
  fuse_reply_buf(req, v->data(), v->size());
}

void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  reply_status(req, fs_of(req).removexattr(to_fs(req, ino), name));
}

void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                  fuse_file_info*) {
  reply_status(req, fs_of(req).fallocate(to_fs(req, ino), mode, static_cast<uint64_t>(offset),
                                         static_cast<uint64_t>(length)));
}

// --- advisory locks (cluster mounts) -------------------------------------------------------

dlm::AdvisoryLocks& locks_of(fuse_req_t req) { return *ctx_of(req).opts.advisory_locks; }

// Runs `wait` (which replies) on a thread of its own, counted so serve() can wait for it.
void wait_aside(fuse_req_t req, std::function<void()> wait) {
  Context& c = ctx_of(req);
  {
    std::lock_guard l(c.waiters_mu);
    ++c.waiters;
  }
  std::thread([&c, wait = std::move(wait)] {
    wait();
    std::lock_guard l(c.waiters_mu);
    --c.waiters;
    c.waiters_cv.notify_all();
  }).detach();
}

std::function<bool()> interrupted_of(fuse_req_t req) {
  Context* c = &ctx_of(req);
  return [req, c] { return c->closing.load() || fuse_req_interrupted(req) != 0; };
}

dlm::RecordLock record_of(const fuse_file_info* fi, const struct flock* lock) {
  dlm::RecordLock r;
  r.write = lock->l_type == F_WRLCK;
  r.start = static_cast<uint64_t>(lock->l_start);
  r.end = lock->l_len == 0 ? UINT64_MAX : static_cast<uint64_t>(lock->l_start + lock->l_len - 1);
  r.owner = fi->lock_owner;
  r.pid = static_cast<uint32_t>(lock->l_pid);
  return r;
}

void op_getlk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
  auto c = locks_of(req).test(to_fs(req, ino), record_of(fi, lock));
  if (!c) return reply_status(req, c.status());
  struct flock out = *lock;
  if (!c->has_value()) {
    out.l_type = F_UNLCK;
  } else {
    const dlm::RecordLock& h = **c;
    out.l_type = h.write ? F_WRLCK : F_RDLCK;
    out.l_start = static_cast<off_t>(h.start);
    out.l_len = h.end == UINT64_MAX ? 0 : static_cast<off_t>(h.end - h.start + 1);
    out.l_pid = static_cast<pid_t>(h.pid);
  }
  fuse_reply_lock(req, &out);
}

void op_setlk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock, int sleep) {
  const Ino i = to_fs(req, ino);
  const dlm::RecordLock r = record_of(fi, lock);
  if (lock->l_type == F_UNLCK) {
    locks_of(req).unlock(i, r.owner, r.start, r.end);
    fuse_reply_err(req, 0);
    return;
  }
  if (!sleep) return reply_status(req, locks_of(req).set(i, r, false, {}));
  wait_aside(req, [req, i, r, interrupted = interrupted_of(req), &locks = locks_of(req)] {
    reply_status(req, locks.set(i, r, true, interrupted));
  });
}

void op_flock(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, int op) {
  const Ino i = to_fs(req, ino);
  const uint64_t owner = fi->lock_owner;
  if (op & LOCK_UN) {
    locks_of(req).flock_unlock(i, owner);
    fuse_reply_err(req, 0);
    return;
  }
  const bool exclusive = (op & LOCK_EX) != 0;
  if (op & LOCK_NB) return reply_status(req, locks_of(req).flock(i, owner, exclusive, false, {}));
  wait_aside(req, [req, i, owner, exclusive, interrupted = interrupted_of(req), &locks = locks_of(req)] {
    reply_status(req, locks.flock(i, owner, exclusive, true, interrupted));
  });
}

// close(2) of a file descriptor: its process's fcntl locks on the file go.
void op_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  locks_of(req).unlock(to_fs(req, ino), fi->lock_owner, 0, UINT64_MAX);
  fuse_reply_err(req, 0);
}

// The last close of an open file: its flock goes.
void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (fi->flock_release) locks_of(req).flock_unlock(to_fs(req, ino), fi->lock_owner);
  fuse_reply_err(req, 0);
}

void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info*) {
  auto r = fs_of(req).lseek(to_fs(req, ino), static_cast<uint64_t>(off), whence);
  if (!r) return reply_status(req, r.status());
  fuse_reply_lseek(req, static_cast<off_t>(*r));
}

// Times a request handler into RequestMetrics: Timed<kOp, op_x>::call has op_x's signature.
// The metrics pointer is read before the handler runs: the request is gone once replied.
template <FuseOp kOp, auto Handler>
struct Timed;
template <FuseOp kOp, typename... Args, void (*Handler)(fuse_req_t, Args...)>
struct Timed<kOp, Handler> {
  static void call(fuse_req_t req, Args... args) {
    RequestMetrics* m = ctx_of(req).opts.metrics;
    if (m == nullptr) return Handler(req, args...);
    const auto start = std::chrono::steady_clock::now();
    Handler(req, args...);
    m->of(kOp).observe(std::chrono::steady_clock::now() - start);
  }
};

// advisory_locks: the cluster's flock and fcntl locks (FuseOptions::advisory_locks). Without
// them the lock ops stay unset, so the kernel keeps advisory locks to this host, and so do
// FLUSH and RELEASE (data is written through and opens hold nothing): libfuse answers the
// first of each ENOSYS and the kernel sends no more.
fuse_lowlevel_ops make_ops(bool advisory_locks) {
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.lookup = Timed<FuseOp::kLookup, op_lookup>::call;
  ops.forget = Timed<FuseOp::kForget, op_forget>::call;
  ops.forget_multi = Timed<FuseOp::kForget, op_forget_multi>::call;
  ops.getattr = Timed<FuseOp::kGetattr, op_getattr>::call;
  ops.setattr = Timed<FuseOp::kSetattr, op_setattr>::call;
  ops.readlink = Timed<FuseOp::kReadlink, op_readlink>::call;
  ops.mknod = Timed<FuseOp::kMknod, op_mknod>::call;
  ops.mkdir = Timed<FuseOp::kMkdir, op_mkdir>::call;
  ops.unlink = Timed<FuseOp::kUnlink, op_unlink>::call;
  ops.rmdir = Timed<FuseOp::kRmdir, op_rmdir>::call;
  ops.symlink = Timed<FuseOp::kSymlink, op_symlink>::call;
  ops.rename = Timed<FuseOp::kRename, op_rename>::call;
  ops.link = Timed<FuseOp::kLink, op_link>::call;
  ops.open = Timed<FuseOp::kOpen, op_open>::call;
  ops.create = Timed<FuseOp::kCreate, op_create>::call;
  ops.read = Timed<FuseOp::kRead, op_read>::call;
  ops.write = Timed<FuseOp::kWrite, op_write>::call;
  if (advisory_locks) {
    ops.flush = Timed<FuseOp::kFlush, op_flush>::call;
    ops.release = Timed<FuseOp::kRelease, op_release>::call;
    ops.getlk = Timed<FuseOp::kGetlk, op_getlk>::call;
    ops.setlk = Timed<FuseOp::kSetlk, op_setlk>::call;
    ops.flock = Timed<FuseOp::kFlock, op_flock>::call;
  }
  ops.fsync = Timed<FuseOp::kFsync, op_fsync>::call;
  ops.opendir = Timed<FuseOp::kOpendir, op_opendir>::call;
  ops.readdir = Timed<FuseOp::kReaddir, op_readdir>::call;
  ops.readdirplus = Timed<FuseOp::kReaddir, op_readdirplus>::call;
  ops.releasedir = Timed<FuseOp::kReleasedir, op_releasedir>::call;
  ops.fsyncdir = Timed<FuseOp::kFsyncdir, op_fsyncdir>::call;
  ops.statfs = Timed<FuseOp::kStatfs, op_statfs>::call;
  ops.setxattr = Timed<FuseOp::kSetxattr, op_setxattr>::call;
  ops.getxattr = Timed<FuseOp::kGetxattr, op_getxattr>::call;
  ops.listxattr = Timed<FuseOp::kListxattr, op_listxattr>::call;
  ops.removexattr = Timed<FuseOp::kRemovexattr, op_removexattr>::call;
  ops.fallocate = Timed<FuseOp::kFallocate, op_fallocate>::call;
  ops.lseek = Timed<FuseOp::kLseek, op_lseek>::call;
  return ops;
}

}  // namespace

// Kernel dentry invalidations asked for by the file system (FileSystem::set_entry_invalidator),
// made on a thread of their own: the kernel takes the parent directory's i_rwsem for them,
// which a request may hold while it waits for something the asking thread is doing.
class EntryInvalidations {
 public:
  EntryInvalidations(fuse_session* se, const FileSystem& fs)
      : se_(se), fs_(fs), thread_([this] { run(); }) {}
  ~EntryInvalidations() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  std::shared_future<void> post(Ino parent, const std::string& name) {
    std::promise<void> done;
    std::shared_future<void> f = done.get_future().share();
    {
      std::lock_guard l(mu_);
      queue_.push_back({parent, name, std::move(done)});
    }
    cv_.notify_all();
    return f;
  }

 private:
  struct Job {
    Ino parent;
    std::string name;
    std::promise<void> done;
  };
  void run() {
    std::unique_lock l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      Job job = std::move(queue_.front());
      queue_.pop_front();
      l.unlock();
      // ENOENT: the kernel had already dropped it.
      (void)fuse_lowlevel_notify_inval_entry(se_, to_fuse(fs_, job.parent), job.name.data(),
                                             job.name.size());
      job.done.set_value();
      l.lock();
    }
  }
  fuse_session* se_;
  const FileSystem& fs_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::thread thread_;
};

Status serve(FileSystem& fs, const FuseOptions& opts, const std::function<void()>& on_mounted) {
  Context context{&fs, opts, {}};
  if (opts.cluster) {
    // Names and attributes stay cached: the file system invalidates them when the lock
    // covering them goes to another node, so an inode and its pages outlive a close and a
    // read of cached pages asks nothing. The getattr after an invalidation finds a changed
    // size or mtime and the kernel drops the pages (FUSE_CAP_AUTO_INVAL_DATA).
    context.opts.writeback_cache = false;
  }
  // mountinfo names the mount point by its canonical path.
  if (char* real = ::realpath(opts.mountpoint.c_str(), nullptr)) {
    context.opts.mountpoint = real;
    std::free(real);
  }
  std::vector<std::string> argv_s{"sharedfs"};
  std::string o = "default_permissions,subtype=sharedfs";
  if (!opts.fsname.empty()) o += ",fsname=" + opts.fsname;
  if (geteuid() == 0) o += ",allow_other";
  for (const auto& extra : opts.mount_opts) o += "," + extra;
  argv_s.push_back("-o");
  argv_s.push_back(o);
  if (opts.debug) argv_s.push_back("-d");
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  const fuse_lowlevel_ops ops = make_ops(opts.advisory_locks != nullptr);
  fuse_session* se = fuse_session_new(&args, &ops, sizeof(ops), &context);
  if (se == nullptr) {
    fuse_opt_free_args(&args);
    return make_status(Code::kInvalidArgument, "cannot start a FUSE session (mount options {})", o);
  }
  Status result;
  if (fuse_set_signal_handlers(se) != 0) {
    result = make_status(Code::kInternal, "cannot install signal handlers");
  } else {
    if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0) {
      result = make_status(Code::kInvalidArgument, "cannot mount on {}", opts.mountpoint);
    } else {
      if (on_mounted) on_mounted();
      EntryInvalidations invalidations(se, fs);
      fs.set_entry_invalidator([&](Ino parent, const std::string& name) {
        if (opts.metrics != nullptr) {
          opts.metrics->entry_invalidations.fetch_add(1, std::memory_order_relaxed);
        }
        return invalidations.post(parent, name);
      });
      if (opts.cluster) {
        // Attributes only (offset -1): no page lock is taken, so this never waits for a
        // request, and the flush that calls it may run while reads wait for the lock.
        fs.set_attr_invalidator([&](Ino ino) {
          if (opts.metrics != nullptr) {
            opts.metrics->attr_invalidations.fetch_add(1, std::memory_order_relaxed);
          }
          // ENOENT: the kernel holds no such inode (nothing cached).
          (void)fuse_lowlevel_notify_inval_inode(se, to_fuse(fs, ino), -1, 0);
        });
      }
      fuse_loop_config* cfg = fuse_loop_cfg_create();
      fuse_loop_cfg_set_clone_fd(cfg, 0);
      fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
      fuse_loop_cfg_set_idle_threads(cfg, opts.max_threads);
      const int rc = fuse_session_loop_mt(se, cfg);
      fuse_loop_cfg_destroy(cfg);
      {
        // Lock waiters see `closing` within one poll and reply EINTR.
        context.closing = true;
        std::unique_lock l(context.waiters_mu);
        context.waiters_cv.wait(l, [&] { return context.waiters == 0; });
      }
      fs.set_entry_invalidator(nullptr);
      fs.set_attr_invalidator(nullptr);
      if (rc != 0 && rc != SIGINT && rc != SIGTERM && rc != SIGHUP) {
        result = make_status(Code::kInternal, "FUSE loop ended with {}", rc);
      }
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  fuse_opt_free_args(&args);
  return result;
}

}  // namespace sharedfs::fs::fuse
