// fs/ — the file system (DESIGN.md §3–§5): inodes, files, directories, transactions.
//
// FileSystem is usable without a mount: fs/fuse/ is only a thin translation of FUSE
// low-level requests into these calls, and the unit tests call them directly. Inodes are
// named by their inode number (= the block holding the inode). Errors are Status values
// whose to_errno() is the POSIX error for the caller (ENOENT, EEXIST, ENOTEMPTY, ENOSPC...).
//
// Locking (docs/locking.md): every metadata read or change is done under a lock of the
// LockService — the inode lock (PR to read, EX to change) covers the inode, its extent
// tree, its directory entries and its xattrs; the allocator's AG locks cover bitmaps; the
// rename lock serialises renames that move directories; the orphan-list lock covers the
// slot's orphan chain. Order: rename lock, then parent directories (ascending inode
// number), then the other inodes (ascending), then orphan list, then AGs.
//
// Durability: changes join the running journal transaction; it commits every
// `commit_interval` (like ext4's 5 s), when it grows large, on fsync/fdatasync/sync and at
// unmount. File data is written to the device directly (O_DIRECT) before the transaction
// that maps it commits (ordered data).
//
// Lifetime of inodes: an inode whose link count drops to 0 while the kernel still knows it
// (lookup count above 0, which covers open files) goes on this slot's orphan list and is
// freed by forget() when the count reaches 0; mount frees whatever a crash left there.
//
// Thread-safety: every method may be called concurrently from any thread.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "allocator/allocator.h"
#include "common/latency_histogram.h"
#include "common/status.h"
#include "device/device.h"
#include "dlm/lock_service.h"
#include "format/format.h"
#include "journal/journal.h"

namespace sharedfs::fs {

using Ino = uint64_t;

class FileSystem;
class LockFlushTarget;

struct MountOptions {
  uint32_t slot = 0;     // this node's journal/orphan slot
  uint32_t node_id = 1;  // recorded in the slot table and heartbeat
  std::chrono::milliseconds commit_interval{5000};
  std::chrono::milliseconds heartbeat_interval{1000};
  // Refuse a slot whose heartbeat still advances (another live mount) after watching it
  // this long; 0 skips the check (tests that know they are alone).
  bool check_live_slot = true;
  // The caller already ran prepare_own_slot() (a cluster mount does, before it joins).
  bool slot_prepared = false;
  size_t max_cached_blocks = 65536;
  // Lock service; null: a local in-process one.
  std::shared_ptr<dlm::LockService> locks;
  // Cluster mounts: where the lock service's flush hook finds this file system (attached
  // before the first lock is taken, detached when it is destroyed).
  std::shared_ptr<LockFlushTarget> flush_target;
  // Cluster mounts: every change first takes the cluster locks (ag:A, EX) of the AGs it may
  // allocate from and of those it frees into, before its journal handle, and allocates
  // only from those (docs/cluster.md, "Allocation"). An unlinked inode is then always freed
  // through the orphan list, in a change of its own that knows its blocks up front.
  bool ag_locks = false;
  // Cluster mounts: hold `open:N` in PR while the kernel may use inode N, and free an
  // unlinked inode only when try_lock(open:N, EX) says no node uses it; otherwise it waits
  // on this node's orphan list, retried in the background (docs/cluster.md, "Inode reuse").
  bool open_locks = false;
};

// What a cluster lock service's flush hook calls before the node gives up a lock: the
// attached FileSystem's flush_for_lock, or nothing while none is attached.
class LockFlushTarget {
 public:
  Result<std::optional<dlm::ValueBlockBytes>> flush(const dlm::LockName& name,
                                                     dlm::LockMode new_mode);

 private:
  friend class FileSystem;
  std::mutex mu_;  // held across a flush, so a file system is never detached mid-flush
  FileSystem* fs_ = nullptr;
};

// The identity a request runs as (from the FUSE request context).
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t umask = 0;  // applied to new inodes' modes unless a default ACL applies
};

struct Attr {
  Ino ino = 0;
  uint64_t generation = 0;
  struct stat st {};
};

// Which fields of SetAttr apply.
struct SetAttr {
  std::optional<uint32_t> mode;  // permission bits (and S_ISUID/S_ISGID/S_ISVTX)
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
  std::optional<uint64_t> size;
  std::optional<timespec> atime;  // tv_nsec == UTIME_NOW: now
  std::optional<timespec> mtime;
  std::optional<timespec> ctime;
};

struct DirListEntry {
  uint64_t cookie = 0;  // pass back to readdir to continue after this entry
  Ino ino = 0;
  uint32_t type = 0;  // DT_* value
  std::string name;
};

struct FsStats {
  uint64_t commits = 0;
  uint64_t journal_used_blocks = 0;  // log blocks holding transactions not checkpointed
  uint64_t journal_capacity_blocks = 0;
  uint64_t data_bytes_written = 0;
  uint64_t data_bytes_read = 0;
  uint64_t orphans_freed_at_mount = 0;
};

class FileSystem {
 public:
  // Mounts `dev` (which must outlive the FileSystem): reads and checks the superblock,
  // replays the slot's journal if a crash left it dirty, claims the slot, frees orphans.
  static Result<std::unique_ptr<FileSystem>> mount(device::BlockDevice& dev, MountOptions opts);
  // Unmounts cleanly if unmount() was not called (errors are only logged then).
  ~FileSystem();
  FileSystem(const FileSystem&) = delete;
  FileSystem& operator=(const FileSystem&) = delete;

  // Commits, checkpoints, marks the journal clean and releases the slot.
  Status unmount();
  // What a crash looks like to the device: stops background work and writes nothing more;
  // the object can only be destroyed afterwards. For tests.
  void abandon();

  Ino root() const { return sb_.root_inode; }
  const format::Superblock& superblock() const { return sb_; }
  uint32_t block_size() const { return bs_; }

  // --- names ---------------------------------------------------------------------------
  // Each call that returns an Attr of an inode by name (lookup, create, mkdir, mknod,
  // symlink, link) adds one to its lookup count; forget() takes them back.
  Result<Attr> lookup(Ino parent, std::string_view name);
  void forget(Ino ino, uint64_t nlookup);
  Result<Attr> getattr(Ino ino);
  Result<Attr> setattr(Ino ino, const SetAttr& changes, const Caller& caller);

  Result<Attr> mknod(Ino parent, std::string_view name, uint32_t mode, uint32_t rdev,
                     const Caller& caller);
  Result<Attr> mkdir(Ino parent, std::string_view name, uint32_t mode, const Caller& caller);
  Result<Attr> symlink(Ino parent, std::string_view name, std::string_view target,
                       const Caller& caller);
  Result<std::string> readlink(Ino ino);
  Result<Attr> link(Ino ino, Ino new_parent, std::string_view new_name);
  Status unlink(Ino parent, std::string_view name);
  Status rmdir(Ino parent, std::string_view name);
  // flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
  Status rename(Ino parent, std::string_view name, Ino new_parent, std::string_view new_name,
                unsigned flags);
  // Entries after `cookie` (0: from the start; "." and ".." come first) until `max` or the
  // end. Cookies stay valid while the directory changes.
  Result<std::vector<DirListEntry>> readdir(Ino dir, uint64_t cookie, size_t max);

  // --- data ----------------------------------------------------------------------------
  // Reads up to `size` bytes at `offset` (short at end of file).
  Result<std::vector<std::byte>> read(Ino ino, uint64_t offset, size_t size);
  // Reads into `out`; returns the bytes read (short at end of file).
  Result<size_t> read_into(Ino ino, uint64_t offset, std::span<std::byte> out);
  // append: at the end of the file as it is under the inode's lock, whatever `offset` says
  // (O_APPEND on a cluster mount, where the kernel's idea of the size may be stale).
  Result<size_t> write(Ino ino, uint64_t offset, std::span<const std::byte> data,
                       bool append = false);
  // fsync: commits the transactions that changed the inode (and its data: data is written
  // through) and flushes the device.
  Status fsync(Ino ino, bool datasync);
  // Every change so far made durable.
  Status sync();
  // mode: 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE,
  // FALLOC_FL_ZERO_RANGE (|KEEP_SIZE). Others: EOPNOTSUPP.
  Status fallocate(Ino ino, int mode, uint64_t offset, uint64_t length);
  // SEEK_DATA / SEEK_HOLE from `offset`; ENXIO past the end.
  Result<uint64_t> lseek(Ino ino, uint64_t offset, int whence);

  // --- xattrs --------------------------------------------------------------------------
  Result<std::vector<uint8_t>> getxattr(Ino ino, std::string_view name);
  // flags: 0, XATTR_CREATE, XATTR_REPLACE.
  Status setxattr(Ino ino, std::string_view name, std::span<const uint8_t> value, int flags);
  // Names, each followed by a NUL, as listxattr(2) returns them.
  Result<std::string> listxattr(Ino ino);
  Status removexattr(Ino ino, std::string_view name);

  struct statvfs statfs() const;
  FsStats stats() const;
  // The journal's commit latencies (tools/metrics.h).
  const LatencyHistogram& journal_commit_latency() const;
  // The inode numbers the kernel may still name (lookup count above 0): for tests.
  uint64_t lookup_count(Ino ino) const;

  // Cluster: what must happen before this node gives up `name` or lowers it to `new_mode`
  // (docs/cluster.md): the running transaction is committed and the journal checkpointed
  // (everything changed reaches its home, and the log can no longer replay old images
  // over the next holder's changes); going to NL also drops every cached block nothing is
  // using, so the next read comes from the device. For an inode lock going to NL, the
  // kernel's attributes of the inode are invalidated (set_attr_invalidator); for a
  // directory the kernel knows, its dentry too (set_entry_invalidator).
  // Returns what the lock's value block carries to the next holder when the node leaves EX:
  // an AG lock carries the AG's counts (docs/allocator.md), other locks nothing (nullopt).
  Result<std::optional<dlm::ValueBlockBytes>> flush_for_lock(const dlm::LockName& name,
                                                              dlm::LockMode new_mode);
  uint64_t lock_flushes() const { return lock_flushes_.load(); }
  // Of which AG locks (ag_locks): how often another node took one of ours.
  uint64_t ag_lock_flushes() const { return ag_lock_flushes_.load(); }
  // How often an AG's counts came with its lock (the value block), not from its header.
  uint64_t ag_counts_from_value_blocks() const { return ag_counts_from_value_blocks_.load(); }

  // --- failure (docs/failure.md) ------------------------------------------------------
  // This node was fenced: nothing more is written (the device under it refuses anyway),
  // every operation that takes a lock fails with EIO, flushes for other nodes do nothing
  // (what they would write could not land), and unmount() only tears down.
  void withdraw();
  bool withdrawn() const { return withdrawn_.load(std::memory_order_acquire); }
  // After a survivor replayed the journal of dead node `dead_node`'s slot and the DLM let
  // that node's locks go: moves the slot's orphans onto this node's list (freed here once
  // no node uses them) and marks the slot free in the slot table. Safe to repeat.
  Status recover_slot(uint32_t slot, uint32_t dead_node);

  // The frontend's way to make the kernel drop its dentry `name` in `parent`; the future
  // is ready once the kernel did. Set while the FUSE session runs (null: none). It must
  // not block: it is called under an internal mutex.
  using EntryInvalidator = std::function<std::shared_future<void>(Ino parent, const std::string& name)>;
  void set_entry_invalidator(EntryInvalidator invalidate);
  // The frontend's way to make the kernel forget the attributes it caches of inode `ino`
  // (not its pages: the next getattr finds a changed size or mtime, and the kernel drops
  // them then). Called from a flush when the inode's lock goes to NL; it must not wait
  // for a request (it is called under an internal mutex). Null: none.
  using AttrInvalidator = std::function<void(Ino ino)>;
  void set_attr_invalidator(AttrInvalidator invalidate);

 private:
  struct InodeRef;

  FileSystem(device::BlockDevice& dev, const format::Superblock& sb, MountOptions opts);
  Status start();
  Status set_slot_in_use(uint32_t slot, bool in_use);
  Status free_orphans_at_mount();
  void background_loop();
  Status write_heartbeat(format::HeartbeatState state);
  Status maybe_commit();

  // Inode block I/O under a lock the caller holds.
  Result<InodeRef> load(Ino ino);
  void store(journal::Handle& h, InodeRef& ref);
  void store_orphan_locked(journal::Handle& h, InodeRef& ref);
  // One more reference the kernel holds on `ino` (see forget()).
  void remember(Ino ino);
  void note_dir_alias(Ino dir, Ino parent, std::string_view name);
  // Cluster: a name in `dir` the kernel may now cache (positive or negative dentry, long
  // entry timeout), noted under dir's lock; all of them are invalidated when that lock
  // goes to another node (invalidate_kernel_caches, from flush_for_lock).
  void note_kernel_name(Ino dir, std::string_view name);
  // The kernel's attributes of inode `dir`, its dentry if it is a directory, and those of
  // the names noted in it: what another node taking its lock may make wrong.
  void invalidate_kernel_caches(Ino dir);
  format::BlockContext ctx(uint64_t blkno) const { return {blkno, tag_}; }

  Result<dlm::Lock> lock_inode(Ino ino, dlm::LockMode mode);
  // A journal handle for a change. With ag_locks, first the locks of the AGs it may use: an
  // AG with room for `alloc_blocks` more blocks (pick_ag) and the AGs in `frees` (of the
  // blocks the change will free), taken in ascending order; the allocator allocates and
  // frees only in those while the change lasts (on this thread). Declared in the order of
  // release: the handle ends first, then the gate, then the AG locks.
  struct AgGate;
  struct Change {
    std::vector<dlm::Lock> ag_locks;
    std::unique_ptr<AgGate> gate;
    journal::Handle handle;
  };
  static constexpr uint64_t kMetadataBlocks = 64;  // what a metadata change may allocate
  Result<Change> begin_change(uint64_t alloc_blocks = kMetadataBlocks,
                              const std::set<uint32_t>& frees = {});
  // The AGs of the blocks inode `ref` owns from file block `first` on (data and, with
  // `tree_nodes`, every extent-tree node), its xattr block, and when `first` is 0 also its
  // directory blocks and its own inode block: what freeing them needs locked. UINT64_MAX:
  // no data. Empty without ag_locks.
  Result<std::set<uint32_t>> ags_to_free(InodeRef& ref, uint64_t first, bool tree_nodes = true);
  // ag_locks: the AGs this node holds (took since it last gave them up), whose in-memory
  // counts are its own; the others' are refreshed from their headers in the background,
  // each heartbeat for a minute after statfs was asked (one read per AG).
  // Returns whether the node held it before.
  bool note_ag_held(uint32_t ag, bool held);
  // A fresh grant of AG `ag`'s lock: takes the counts its value block carries. Returns
  // whether it carried any.
  bool take_counts_from_value_block(const dlm::Lock& lock, uint32_t ag);
  void refresh_foreign_ag_counts();
  Attr make_attr(Ino ino, const format::Inode& inode) const;
  Result<Attr> create_node(Ino parent, std::string_view name, uint32_t mode, uint32_t rdev,
                           std::string_view symlink_target, const Caller& caller);
  Result<Attr> create_node_once(Ino parent, std::string_view name, uint32_t mode, uint32_t rdev,
                                std::string_view symlink_target, const Caller& caller);
  Result<size_t> write_once(Ino ino, uint64_t offset, std::span<const std::byte> data, bool append);
  Status fallocate_once(Ino ino, int mode, uint64_t offset, uint64_t length);
  bool retry_after_commit(const Status& st);
  Status remove_entry(Ino parent, std::string_view name, bool want_dir);
  // After the link count of `ref` dropped to 0 (under its EX lock, in handle h): free it
  // now if the kernel does not know it, else put it on the orphan list.
  Status drop_inode(journal::Handle& h, InodeRef& ref);
  Status free_inode_blocks(journal::Handle& h, InodeRef& ref);
  // Changes slot `slot`'s orphan-list block (ours unless a dead node's is taken over) in
  // `h`, under its lock and orphan_mu_.
  Status change_orphan_list(journal::Handle& h, uint32_t slot,
                            const std::function<Status(format::OrphanList&)>& change);
  Status orphan_add(journal::Handle& h, InodeRef& ref);
  Status orphan_remove(journal::Handle& h, InodeRef& ref);
  Status evict(Ino ino);
  // open_locks: whether any node still uses `ino` (taken under its EX inode lock).
  Result<bool> used_elsewhere(Ino ino);
  // Retries freeing this node's orphans that the kernel let go of (background).
  void retry_orphans();
  Result<bool> is_ancestor(Ino maybe_ancestor, Ino dir);

  Status truncate_blocks(journal::Handle& h, InodeRef& ref, uint64_t new_size);
  Status unmap_blocks(journal::Handle& h, InodeRef& ref, uint64_t first, uint64_t end);
  Status zero_range_on_device(InodeRef& ref, uint64_t offset, uint64_t length);
  Status punch(journal::Handle& h, InodeRef& ref, uint64_t offset, uint64_t length);
  Status preallocate(journal::Handle& h, InodeRef& ref, uint64_t first_block, uint64_t end_block);

  Result<format::XattrBlock> load_xattrs(const format::Inode& inode, Ino ino);
  Status store_xattrs(journal::Handle& h, InodeRef& ref, format::XattrBlock& xb);
  // Stores `xb` and the inode (ctime now) in a change of its own.
  Status write_xattrs(InodeRef& ref, format::XattrBlock& xb);
  // New inode `child` in `parent`: applies the parent's default ACL (or the umask) to
  // child.inode.mode and gives the child its ACLs. Call before the child is stored.
  Status inherit_acls(journal::Handle& h, const InodeRef& parent, InodeRef& child,
                      const Caller& caller);
  // After a chmod: the access ACL's owner, group-class and other entries follow the mode.
  Status sync_acl_with_mode(journal::Handle& h, InodeRef& ref);

  device::BlockDevice& dev_;
  const format::Superblock sb_;
  const uint32_t bs_;
  const uint32_t tag_;
  MountOptions opts_;
  std::shared_ptr<dlm::LockService> locks_;
  std::unique_ptr<journal::Journal> journal_;
  std::unique_ptr<journal::TransactionManager> tm_;
  std::unique_ptr<allocator::Allocator> alloc_;
  bool mounted_ = false;

  // Lookup counts the kernel holds (see forget()).
  mutable std::mutex lookups_mu_;
  std::unordered_map<Ino, uint64_t> lookups_;
  // open_locks: the open:N lock held while lookups_[N] > 0.
  std::unordered_map<Ino, dlm::Lock> open_locks_;
  // open_locks (cluster): where the kernel's one dentry of each directory it knows is.
  std::unordered_map<Ino, std::pair<Ino, std::string>> dir_alias_;
  // Threads waiting in lock_inode, per inode number modulo the size (a hint: a collision
  // only makes a flush skip waiting for the kernel's dentry invalidations).
  std::array<std::atomic<int>, 1024> lock_waiters_{};
  // open_locks (cluster): names per directory the kernel may cache (note_kernel_name).
  std::unordered_map<Ino, std::unordered_set<std::string>> kernel_names_;
  EntryInvalidator invalidate_entry_;
  AttrInvalidator invalidate_attr_;  // GUARDED_BY(lookups_mu_)
  // The orphan chain of our slot in memory: ino -> previous / next (0: none).
  std::mutex orphan_mu_;
  std::unordered_map<Ino, Ino> orphan_prev_;
  std::unordered_map<Ino, Ino> orphan_next_;
  std::atomic<uint64_t> next_generation_;
  std::atomic<bool> withdrawn_{false};
  std::atomic<uint64_t> lock_flushes_{0};
  std::atomic<uint64_t> ag_lock_flushes_{0};
  std::atomic<uint64_t> ag_counts_from_value_blocks_{0};
  // When statfs was last asked (steady_clock ticks): the other nodes' AG counts are
  // refreshed each heartbeat for this long after it (refresh_foreign_ag_counts).
  static constexpr std::chrono::seconds kStatfsInterest{60};
  mutable std::atomic<int64_t> last_statfs_{INT64_MIN / 2};
  std::mutex ags_held_mu_;
  std::vector<bool> ags_held_;  // GUARDED_BY(ags_held_mu_); ag_locks only
  // Serialises flush_for_lock with closing the journal at unmount.
  std::mutex flush_mu_;
  bool journal_closed_ = false;  // GUARDED_BY(flush_mu_)

  // Background commit and heartbeat.
  std::mutex bg_mu_;
  std::condition_variable bg_cv_;
  bool bg_stop_ = false;
  std::thread bg_thread_;
  uint64_t heartbeat_counter_ = 0;
  uint64_t mount_generation_ = 0;

  std::atomic<uint64_t> data_written_{0};
  std::atomic<uint64_t> data_read_{0};
  uint64_t orphans_freed_at_mount_ = 0;
};

Result<format::Superblock> read_superblock(device::BlockDevice& dev);

// The first step of a mount, without any lock: refuses the slot while another live node
// still bumps its heartbeat (kBusy; skipped without `check_live`), then replays the slot's
// journal. A cluster mount runs it before joining, so that when the other nodes learn this
// node restarted they may treat its older incarnation's journal as replayed.
Status prepare_own_slot(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot,
                        bool check_live);

}  // namespace sharedfs::fs
