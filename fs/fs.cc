// FileSystem: mount and unmount, inodes, attributes, orphans, statfs. Names are in
// fs_names.cc, file data in fs_data.cc, xattrs and ACLs in fs_xattr.cc.
#include <dirent.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "fs/directory.h"
#include "fs/extent_tree.h"
#include "fs/fs.h"
#include "fs/fs_internal.h"

namespace sharedfs::fs {

using detail::posix_error;
using format::Inode;

namespace detail {

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return timespec_ns(ts);
}

uint64_t timespec_ns(const timespec& ts) {
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint32_t dirent_type(format::FileType type) {
  switch (type) {
    case format::FileType::kRegular:
      return DT_REG;
    case format::FileType::kDirectory:
      return DT_DIR;
    case format::FileType::kCharDev:
      return DT_CHR;
    case format::FileType::kBlockDev:
      return DT_BLK;
    case format::FileType::kFifo:
      return DT_FIFO;
    case format::FileType::kSocket:
      return DT_SOCK;
    case format::FileType::kSymlink:
      return DT_LNK;
    case format::FileType::kUnknown:
      break;
  }
  return DT_UNKNOWN;
}

Status check_name(std::string_view name) {
  if (name.size() > format::kMaxNameLength) {
    return posix_error(ENAMETOOLONG, fmt::format("name of {} bytes", name.size()));
  }
  if (name.empty() || name == "." || name == ".." ||
      name.find_first_of(std::string_view("/\0", 2)) != std::string_view::npos) {
    return posix_error(EINVAL, fmt::format("invalid name \"{}\"", name));
  }
  return Status::ok();
}

}  // namespace detail

Result<format::Superblock> read_superblock(device::BlockDevice& dev) {
  device::AlignedBuffer first(format::kMinBlockSize);
  RETURN_IF_ERROR(dev.read(0, first.span()));
  const uint32_t bs = format::sniff_block_size(first.span());
  if (bs < format::kMinBlockSize || bs > format::kMaxBlockSize) {
    return make_status(Code::kCorruption,
                       "{} has no sharedfs superblock at block 0 (fsck.sharedfs can restore it "
                       "from the backup)",
                       dev.describe());
  }
  device::AlignedBuffer buf(bs);
  RETURN_IF_ERROR(dev.read(0, buf.span()));
  ASSIGN_OR_RETURN(auto sb, format::Superblock::decode(buf.span(), 0));
  if (sb.incompat_features & format::Superblock::kIncompatSlotAreaRewrite) {
    return make_status(Code::kBusy,
                       "{}: a tunefs.sharedfs change of the slot layout was interrupted; run "
                       "`tunefs.sharedfs DEVICE` again to finish it",
                       dev.describe());
  }
  return sb;
}

// ---------------------------------------------------------------------------------------
// Mount and unmount

FileSystem::FileSystem(device::BlockDevice& dev, const format::Superblock& sb, MountOptions opts)
    : dev_(dev),
      sb_(sb),
      bs_(sb.geo.block_size),
      tag_(sb.fs_tag()),
      opts_(std::move(opts)),
      locks_(opts_.locks ? opts_.locks : std::shared_ptr<dlm::LockService>(
                                             dlm::make_local_lock_service())),
      next_generation_(detail::now_ns()) {
  if (opts_.flush_target) {
    std::lock_guard lock(opts_.flush_target->mu_);
    opts_.flush_target->fs_ = this;
  }
}

Result<std::unique_ptr<FileSystem>> FileSystem::mount(device::BlockDevice& dev, MountOptions opts) {
  ASSIGN_OR_RETURN(auto sb, read_superblock(dev));
  if (opts.slot >= sb.geo.slots) {
    return make_status(Code::kInvalidArgument, "slot {} does not exist (the device has {} slots)",
                       opts.slot, sb.geo.slots);
  }
  if (dev.size_bytes() < sb.geo.total_blocks * sb.geo.block_size) {
    return make_status(Code::kCorruption,
                       "{} is {} bytes but its file system needs {} (wrong or truncated device)",
                       dev.describe(), dev.size_bytes(), sb.geo.total_blocks * sb.geo.block_size);
  }
  std::unique_ptr<FileSystem> fs(new FileSystem(dev, sb, std::move(opts)));
  RETURN_IF_ERROR(fs->start());
  return fs;
}

Status prepare_own_slot(device::BlockDevice& dev, const format::Superblock& sb, uint32_t slot,
                        bool check_live) {
  const uint32_t bs = sb.geo.block_size;
  const format::BlockContext hb_ctx{sb.geo.heartbeat_blkno(slot), sb.fs_tag()};
  // Another live mount of this slot keeps bumping its heartbeat: watch it for a while.
  if (check_live) {
    device::AlignedBuffer b(bs);
    RETURN_IF_ERROR(dev.read(hb_ctx.blkno * bs, b.span()));
    auto before = format::Heartbeat::decode(b.span(), hb_ctx);
    if (before && before->state == format::HeartbeatState::kMounted) {
      const auto wait = std::chrono::milliseconds(
          2 * std::max<uint32_t>(before->interval_ms, 100) + 200);
      spdlog::info("slot {} was left mounted; watching its heartbeat for {} ms", slot,
                   wait.count());
      std::this_thread::sleep_for(wait);
      RETURN_IF_ERROR(dev.read(hb_ctx.blkno * bs, b.span()));
      auto after = format::Heartbeat::decode(b.span(), hb_ctx);
      if (after && after->counter != before->counter) {
        return make_status(Code::kBusy,
                           "slot {} is in use by a live node (node id {}): its heartbeat advances",
                           slot, after->node_id);
      }
    }
  }
  ASSIGN_OR_RETURN(auto replayed, journal::replay(dev, sb, slot));
  if (replayed.transactions > 0) {
    spdlog::warn("slot {}: replayed its own journal left by a crash ({} transactions, {} blocks)",
                 slot, replayed.transactions, replayed.blocks_written);
  }
  return Status::ok();
}

Status FileSystem::start() {
  const uint32_t slot = opts_.slot;
  if (!opts_.slot_prepared) RETURN_IF_ERROR(prepare_own_slot(dev_, sb_, slot, opts_.check_live_slot));
  ASSIGN_OR_RETURN(journal_, journal::Journal::open(dev_, sb_, slot));
  journal::TransactionManagerOptions tmo;
  tmo.max_clean_buffers = opts_.max_cached_blocks;
  tm_ = std::make_unique<journal::TransactionManager>(dev_, *journal_, bs_, tmo);
  ASSIGN_OR_RETURN(alloc_, allocator::Allocator::open(*tm_, sb_, slot));
  // The allocator read every AG header without the AG's lock, for its free-space hints.
  // Nothing may stay cached that was read without the lock covering it (another node may
  // be changing it), so allocation reads them again under the lock.
  (void)tm_->drop_unused();
  if (opts_.ag_locks) {
    ags_held_.assign(alloc_->ag_count(), false);
    alloc_->set_gate(&FileSystem::AgGate::allows);
  }
  RETURN_IF_ERROR(set_slot_in_use(opts_.slot, true));
  RETURN_IF_ERROR(free_orphans_at_mount());
  RETURN_IF_ERROR(tm_->commit().status());
  RETURN_IF_ERROR(write_heartbeat(format::HeartbeatState::kMounted));
  mounted_ = true;
  bg_thread_ = std::thread([this] { background_loop(); });
  return Status::ok();
}

// Marks a slot in use by this node (or free again) in the slot table, in the running
// transaction, under the slot-table lock.
Status FileSystem::set_slot_in_use(uint32_t slot, bool in_use) {
  SHAREDFS_CHECK(!in_use || slot == opts_.slot, "only our own slot is taken");
  ASSIGN_OR_RETURN(auto lock, locks_->lock({dlm::LockSpace::kSlotTable, 0}, dlm::LockMode::kEX));
  const uint64_t blk = sb_.geo.slot_table_blkno;
  ASSIGN_OR_RETURN(auto buf, tm_->read(blk));
  ASSIGN_OR_RETURN(auto table, format::SlotTable::decode(buf->data(), ctx(blk)));
  auto& e = table.slots.at(slot);
  if (in_use) {
    mount_generation_ = e.mount_generation + 1;
    e.state = format::SlotState::kInUse;
    e.node_id = opts_.node_id;
    e.mount_generation = mount_generation_;
    e.mounted_ns = detail::now_ns();
  } else {
    e.state = format::SlotState::kFree;
  }
  auto h = tm_->begin();
  ++table.seq;
  table.encode(buf->data(), ctx(blk));
  h.dirty(buf);
  return Status::ok();
}

Status FileSystem::write_heartbeat(format::HeartbeatState state) {
  format::Heartbeat hb;
  hb.slot = opts_.slot;
  hb.node_id = opts_.node_id;
  hb.counter = ++heartbeat_counter_;
  hb.seq = hb.counter;
  hb.timestamp_ns = detail::now_ns();
  hb.mount_generation = mount_generation_;
  hb.state = state;
  hb.interval_ms = static_cast<uint32_t>(opts_.heartbeat_interval.count());
  device::AlignedBuffer b(bs_);
  const uint64_t blk = sb_.geo.heartbeat_blkno(opts_.slot);
  hb.encode(b.span(), ctx(blk));
  return dev_.write(blk * bs_, b.span());
}

void FileSystem::background_loop() {
  auto next_commit = std::chrono::steady_clock::now() + opts_.commit_interval;
  auto next_beat = std::chrono::steady_clock::now() + opts_.heartbeat_interval;
  std::unique_lock lock(bg_mu_);
  while (!bg_stop_) {
    bg_cv_.wait_until(lock, std::min(next_commit, next_beat), [&] { return bg_stop_; });
    if (bg_stop_ || withdrawn()) break;  // a withdrawn node writes nothing
    lock.unlock();
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_commit) {
      if (auto st = tm_->commit(); !st) spdlog::error("periodic commit: {}", st.status().to_string());
      // Cluster: the AG headers go home too, where the other nodes read this node's
      // allocations for statfs (refresh_foreign_ag_counts).
      if (opts_.ag_locks) {
        std::lock_guard flush(flush_mu_);
        if (!journal_closed_) {
          if (auto st = journal_->checkpoint(); !st) spdlog::error("periodic checkpoint: {}", st.to_string());
        }
      }
      next_commit = now + opts_.commit_interval;
    }
    if (now >= next_beat) {
      if (auto st = write_heartbeat(format::HeartbeatState::kMounted); !st) {
        spdlog::error("heartbeat: {}", st.to_string());
      }
      if (opts_.open_locks || opts_.ag_locks) retry_orphans();
      // Only while someone watches statfs: an idle or read-only node reads nothing.
      if (opts_.ag_locks && now - std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(
                                      last_statfs_.load())) < kStatfsInterest) {
        refresh_foreign_ag_counts();
      }
      next_beat = now + opts_.heartbeat_interval;
    }
    lock.lock();
  }
}

Status FileSystem::maybe_commit() {
  // Leave room: one operation may add a few hundred blocks (a directory split, a large
  // truncate) on top of what is already running.
  if (tm_->running_changes() > journal_->log_capacity() / 4) return tm_->commit().status();
  return Status::ok();
}

Status FileSystem::unmount() {
  if (!mounted_) return Status::ok();
  if (withdrawn()) {
    abandon();  // nothing can be written; the survivor that fenced us replays our journal
    return make_status(Code::kIoError, "withdrawn: the file system was not written back");
  }
  mounted_ = false;
  {
    std::lock_guard lock(bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  if (bg_thread_.joinable()) bg_thread_.join();
  // Whatever the kernel still references is forgotten now: unlinked ones are freed.
  std::vector<Ino> known;
  {
    std::lock_guard lock(lookups_mu_);
    for (const auto& [ino, n] : lookups_) known.push_back(ino);
    lookups_.clear();
  }
  for (Ino ino : known) RETURN_IF_ERROR(evict(ino));
  RETURN_IF_ERROR(set_slot_in_use(opts_.slot, false));
  RETURN_IF_ERROR(tm_->commit().status());
  {
    // Flushes for other nodes find everything at home from here on.
    std::lock_guard lock(flush_mu_);
    journal_closed_ = true;
    RETURN_IF_ERROR(journal_->close());
  }
  RETURN_IF_ERROR(write_heartbeat(format::HeartbeatState::kIdle));
  return dev_.flush();
}

void FileSystem::abandon() {
  mounted_ = false;
  {
    std::lock_guard lock(flush_mu_);
    journal_closed_ = true;  // a crashed node writes nothing more
  }
  {
    std::lock_guard lock(bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  if (bg_thread_.joinable()) bg_thread_.join();
}

void FileSystem::withdraw() {
  withdrawn_.store(true, std::memory_order_release);
  bg_cv_.notify_all();
}

Status FileSystem::recover_slot(uint32_t slot, uint32_t dead_node) {
  SHAREDFS_CHECK(slot != opts_.slot, "a node does not recover its own slot while mounted");
  const uint64_t blk = sb_.geo.orphan_blkno(slot);
  uint64_t adopted = 0;
  // One orphan per change: popped off the dead slot's list and pushed onto ours in one
  // transaction, so a crash leaves every orphan on exactly one list. Nobody else changes
  // the dead slot's list (its node is fenced, one survivor recovers), so the head read
  // before the inode lock is still the head under it.
  for (;;) {
    Ino ino = 0;
    {
      ASSIGN_OR_RETURN(auto olock, locks_->lock({dlm::LockSpace::kOrphanList, slot},
                                                dlm::LockMode::kEX));
      ASSIGN_OR_RETURN(auto buf, tm_->read(blk));
      ASSIGN_OR_RETURN(auto list, format::OrphanList::decode(buf->data(), ctx(blk)));
      ino = list.head;
    }
    if (ino == 0) break;
    ASSIGN_OR_RETURN(auto ilock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto ref, load(ino));
    ASSIGN_OR_RETURN(auto change, begin_change(0));
    journal::Handle& h = change.handle;
    RETURN_IF_ERROR(change_orphan_list(h, slot, [&](format::OrphanList& list) {
      SHAREDFS_CHECK(list.head == ino, "a dead slot's orphan list changed under recovery");
      list.head = ref.inode.next_orphan;
      list.count = list.count > 0 ? list.count - 1 : 0;
      return Status::ok();
    }));
    RETURN_IF_ERROR(orphan_add(h, ref));
    ++adopted;
  }
  RETURN_IF_ERROR(set_slot_in_use(slot, false));
  RETURN_IF_ERROR(tm_->commit().status());
  if (adopted > 0) {
    spdlog::info("node {}: orphan recovery: took over {} unlinked inode(s) of node {} (slot {}), "
                 "freed once no node has them open",
                 opts_.node_id, adopted, dead_node, slot);
    retry_orphans();
  }
  return Status::ok();
}

FileSystem::~FileSystem() {
  if (mounted_) {
    if (auto st = unmount(); !st) spdlog::error("unmount: {}", st.to_string());
  }
  if (opts_.flush_target) {
    std::lock_guard lock(opts_.flush_target->mu_);
    opts_.flush_target->fs_ = nullptr;
  }
  if (bg_thread_.joinable()) {
    {
      std::lock_guard lock(bg_mu_);
      bg_stop_ = true;
    }
    bg_cv_.notify_all();
    bg_thread_.join();
  }
}

// ---------------------------------------------------------------------------------------
// Inodes

static Status withdrawn_error() {
  return make_status(Code::kIoError, "this node withdrew from the cluster (fenced)");
}

Result<dlm::Lock> FileSystem::lock_inode(Ino ino, dlm::LockMode mode) {
  if (withdrawn()) return withdrawn_error();
  std::atomic<int>& waiting = lock_waiters_[ino % lock_waiters_.size()];
  ++waiting;
  auto lock = locks_->lock({dlm::LockSpace::kInode, ino}, mode);
  --waiting;
  return lock;
}

thread_local FileSystem::AgGate* FileSystem::AgGate::current = nullptr;

// The AG locks come before the handle, never under one (docs/cluster.md: a flush commits,
// and a commit waits for open handles), in ascending AG order after every inode lock.
// Between this node's threads they are shared (the allocator's per-AG mutex orders them).
Result<FileSystem::Change> FileSystem::begin_change(uint64_t alloc_blocks,
                                                    const std::set<uint32_t>& frees) {
  if (withdrawn()) return withdrawn_error();
  std::vector<dlm::Lock> locks;
  std::unique_ptr<AgGate> gate;
  if (opts_.ag_locks) {
    std::set<uint32_t> ags;
    // The AGs are chosen by this node's counts, which for an AG another node held may be
    // old; its lock brings the current ones. When they show the chosen AGs too full for
    // the change, choose again with them (a few times at most: after that the allocator
    // says kNoSpace, or the caller commits and retries, as without a cluster).
    for (int attempt = 0;; ++attempt) {
      ags = frees;
      const std::vector<uint32_t> picked = alloc_->pick_ags(alloc_blocks);
      ags.insert(picked.begin(), picked.end());
      locks.clear();
      bool fresher_counts = false;
      for (uint32_t ag : ags) {
        ASSIGN_OR_RETURN(auto lock, locks_->lock({dlm::LockSpace::kAllocGroup, ag}, dlm::LockMode::kEX));
        if (!note_ag_held(ag, true)) fresher_counts |= take_counts_from_value_block(lock, ag);
        locks.push_back(std::move(lock));
      }
      uint64_t room = 0;
      for (uint32_t ag : picked) room += alloc_->counts(ag).free_blocks;
      if (!fresher_counts || room >= alloc_blocks || attempt == 3) break;
    }
    gate = std::make_unique<AgGate>(std::vector<uint32_t>(ags.begin(), ags.end()));
  }
  return Change{std::move(locks), std::move(gate), tm_->begin()};
}

Result<std::set<uint32_t>> FileSystem::ags_to_free(InodeRef& ref, uint64_t first,
                                                    bool tree_nodes) {
  std::set<uint32_t> ags;
  if (!opts_.ag_locks) return ags;
  auto add = [&](uint64_t start, uint64_t count) {
    for (uint64_t b : {start, start + count - 1}) {
      if (auto ag = alloc_->ag_of(b)) ags.insert(*ag);
    }
  };
  Inode& n = ref.inode;
  if (first == 0) add(ref.ino, 1);
  if (n.xattr_block != 0) add(n.xattr_block, 1);
  if (ref.is_dir() && first == 0) {
    Directory d(*tm_, *alloc_, sb_, ref.ino, n);
    ASSIGN_OR_RETURN(auto blocks, d.owned_blocks());
    for (const auto& r : blocks) add(r.start, r.count);
  } else if (!(n.flags & Inode::kInlineData) && (first != UINT64_MAX || tree_nodes)) {
    ExtentTree t(*tm_, *alloc_, sb_, ref.ino, n);
    if (first != UINT64_MAX) {
      ASSIGN_OR_RETURN(auto extents, t.extents(first, UINT64_MAX));
      for (const auto& e : extents) add(e.physical, e.length);
    }
    // A removal may empty tree nodes anywhere in the tree, which are freed with it.
    if (n.extent_depth > 0) {
      ASSIGN_OR_RETURN(auto nodes, t.node_blocks());
      for (uint64_t b : nodes) add(b, 1);
    }
  }
  return ags;
}

bool FileSystem::note_ag_held(uint32_t ag, bool held) {
  std::lock_guard lock(ags_held_mu_);
  SHAREDFS_CHECK(ag < ags_held_.size(), "AG index out of range");
  const bool before = ags_held_[ag];
  ags_held_[ag] = held;
  return before;
}

// The allocator encodes the counts without knowing the DLM; the two must be the same size.
static_assert(std::is_same_v<allocator::AgValueBlock, dlm::ValueBlockBytes>);

bool FileSystem::take_counts_from_value_block(const dlm::Lock& lock, uint32_t ag) {
  const auto bytes = locks_->value_block(lock);
  if (!bytes) return false;  // never written, or its last holder died: the header tells
  const auto counts = allocator::decode_ag_counts(tag_, ag, *bytes);
  if (!counts) {
    spdlog::warn("AG {}: its lock's value block holds no counts of this file system; "
                 "reading the AG header instead", ag);
    return false;
  }
  alloc_->note_counts(ag, counts->free_blocks, counts->inodes);
  ++ag_counts_from_value_blocks_;
  return true;
}

// The counts of the AGs another node may be changing come from their headers on the
// device, read without a lock or the cache: a hint for choosing AGs and statfs's figure,
// which is so right cluster-wide within a refresh interval.
void FileSystem::refresh_foreign_ag_counts() {
  device::AlignedBuffer buf(bs_);
  for (uint32_t ag = 0; ag < alloc_->ag_count(); ++ag) {
    {
      std::lock_guard lock(ags_held_mu_);
      if (ags_held_[ag]) continue;
    }
    const uint64_t blkno = alloc_->header_block(ag);
    if (!dev_.read(blkno * bs_, buf.span())) continue;
    // A header caught mid-write fails its checksum: keep the old figure until next time.
    auto hdr = format::AgHeader::decode(buf.span(), ctx(blkno));
    if (!hdr) continue;
    std::lock_guard lock(ags_held_mu_);
    if (!ags_held_[ag]) alloc_->note_counts(ag, hdr->free_blocks, hdr->inode_count);
  }
}

// ---------------------------------------------------------------------------------------
// Cluster: giving up locks

Result<std::optional<dlm::ValueBlockBytes>> FileSystem::flush_for_lock(const dlm::LockName& name,
                                                                       dlm::LockMode new_mode) {
  using Value = std::optional<dlm::ValueBlockBytes>;
  // The lock's users on this node are done (the lock service waits for them), and no
  // thread waits for a cluster lock while holding a handle, so this commit cannot wait on
  // anything that waits on us.
  std::lock_guard lock(flush_mu_);
  if (journal_closed_) return Value();  // unmounted: everything is at home
  if (withdrawn()) return Value();      // fenced: the survivors replay our journal
  RETURN_IF_ERROR(tm_->commit().status().with_context(fmt::format("flushing {}", name.to_string())));
  RETURN_IF_ERROR(journal_->checkpoint().with_context(fmt::format("flushing {}", name.to_string())));
  Value value;
  if (name.space == dlm::LockSpace::kAllocGroup && opts_.ag_locks) {
    // The AG's counts for the next holder, from its header as just committed: cached when
    // this node changed the AG (the in-memory counts are exact only if this node read the
    // header since the grant: a change may lock an AG it then does not use).
    const auto ag = static_cast<uint32_t>(name.id);
    const uint64_t blkno = alloc_->header_block(ag);
    ASSIGN_OR_RETURN(auto buf, tm_->read(blkno));
    ASSIGN_OR_RETURN(auto hdr, format::AgHeader::decode(buf->data(), ctx(blkno)));
    value = allocator::encode_ag_counts(tag_, ag, {hdr.free_blocks, hdr.inode_count});
  }
  if (new_mode == dlm::LockMode::kNL) (void)tm_->drop_unused();
  if (name.space == dlm::LockSpace::kAllocGroup) {
    ++ag_lock_flushes_;
    if (new_mode == dlm::LockMode::kNL) note_ag_held(static_cast<uint32_t>(name.id), false);
  }
  ++lock_flushes_;
  // Going to PR, nobody else can change the inode, its names or where it is (a rename
  // takes the moved directory in EX): what the kernel caches stays right. (Dropping the
  // directory's dentry there would also prune every unused dentry below it, and with them
  // the kernel's inodes and pages of files this node goes on reading.)
  if (name.space == dlm::LockSpace::kInode && new_mode == dlm::LockMode::kNL) {
    invalidate_kernel_caches(name.id);
  }
  return value;
}

void FileSystem::set_entry_invalidator(EntryInvalidator invalidate) {
  std::lock_guard lock(lookups_mu_);
  invalidate_entry_ = std::move(invalidate);
}

void FileSystem::set_attr_invalidator(AttrInvalidator invalidate) {
  std::lock_guard lock(lookups_mu_);
  invalidate_attr_ = std::move(invalidate);
}

void FileSystem::note_dir_alias(Ino dir, Ino parent, std::string_view name) {
  if (!opts_.open_locks || name == "." || name == "..") return;
  std::lock_guard lock(lookups_mu_);
  if (lookups_.contains(dir)) dir_alias_[dir] = {parent, std::string(name)};
}

void FileSystem::note_kernel_name(Ino dir, std::string_view name) {
  if (!opts_.open_locks || name == "." || name == "..") return;
  std::lock_guard lock(lookups_mu_);
  kernel_names_[dir].emplace(name);
}

// Another node may now create, remove or rename names in directory `dir`, or move it: the
// kernel's dentries of the names this node gave it there must go, and so must its one
// dentry of `dir` itself (or a lookup of the directory at its new place would find that
// alias and fail with ESTALE). The kernel drops them under the parent directory's
// i_rwsem, which a request of ours may hold while it waits for the lock this flush gives
// up (a create in the directory): so the flush waits at most 100 ms, not at all when such
// a request waits for this very lock, and the rest finish once that request is served
// (docs/cluster.md, "Kernel caches"). A LOOKUP answered under the lock but not yet
// instantiated by the kernel holds i_rwsem until it is: its dentry goes too.
void FileSystem::invalidate_kernel_caches(Ino dir) {
  std::vector<std::shared_future<void>> pending;
  {
    // Posted under the mutex (posting never waits), so that once set_entry_invalidator()
    // has cleared it no post can reach a frontend that is going away.
    std::lock_guard lock(lookups_mu_);
    // Another node may change the inode now: the kernel must ask again. A getattr
    // answered before this flush but not yet received is discarded by the kernel: its
    // attr_version is older than the invalidation's.
    if (invalidate_attr_) invalidate_attr_(dir);
    auto post = [&](Ino parent, const std::string& name) {
      if (invalidate_entry_) pending.push_back(invalidate_entry_(parent, name));
    };
    if (auto it = kernel_names_.find(dir); it != kernel_names_.end()) {
      for (const auto& n : it->second) post(dir, n);
      kernel_names_.erase(it);
    }
    if (auto it = dir_alias_.find(dir); it != dir_alias_.end()) {
      post(it->second.first, it->second.second);
      dir_alias_.erase(it);
    }
  }
  if (pending.empty() || lock_waiters_[dir % lock_waiters_.size()] > 0) return;
  // A job dropped unrun when the frontend stopped leaves a broken promise: ready too.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  for (auto& f : pending) {
    if (f.valid() && f.wait_until(deadline) != std::future_status::ready) break;
  }
}

Result<std::optional<dlm::ValueBlockBytes>> LockFlushTarget::flush(const dlm::LockName& name,
                                                                    dlm::LockMode new_mode) {
  std::lock_guard lock(mu_);
  if (fs_ == nullptr) return std::optional<dlm::ValueBlockBytes>();  // nothing mounted: nothing cached
  return fs_->flush_for_lock(name, new_mode);
}

Result<FileSystem::InodeRef> FileSystem::load(Ino ino) {
  if (!sb_.geo.ag_of(ino)) return posix_error(ESTALE, fmt::format("no inode {}", ino));
  InodeRef ref;
  ref.ino = ino;
  ASSIGN_OR_RETURN(ref.buf, tm_->read(ino));
  auto inode = Inode::decode(ref.buf->data(), ctx(ino));
  if (!inode) {
    // A freed and reused block, or damage: either way not an inode we can serve.
    return Status(Code::kCorruption, inode.status().message(), ESTALE);
  }
  ref.inode = std::move(*inode);
  return ref;
}

void FileSystem::store(journal::Handle& h, InodeRef& ref) {
  if (ref.inode.flags & Inode::kOrphan) {
    std::lock_guard lock(orphan_mu_);
    store_orphan_locked(h, ref);
    return;
  }
  ++ref.inode.seq;
  ref.inode.encode(ref.buf->data(), ctx(ref.ino));
  h.dirty(ref.buf);
}

// An orphan's chain link comes from the in-memory chain, whatever the caller decoded.
void FileSystem::store_orphan_locked(journal::Handle& h, InodeRef& ref) {
  auto it = orphan_next_.find(ref.ino);
  SHAREDFS_CHECK(it != orphan_next_.end(), "orphan missing from the in-memory chain");
  ref.inode.next_orphan = it->second;
  ++ref.inode.seq;
  ref.inode.encode(ref.buf->data(), ctx(ref.ino));
  h.dirty(ref.buf);
}

Attr FileSystem::make_attr(Ino ino, const Inode& inode) const {
  Attr a;
  a.ino = ino;
  a.generation = inode.generation;
  auto& st = a.st;
  st.st_ino = ino;
  st.st_mode = inode.mode;
  st.st_nlink = inode.nlink;
  st.st_uid = inode.uid;
  st.st_gid = inode.gid;
  st.st_rdev = inode.rdev;
  st.st_size = static_cast<off_t>(inode.size);
  st.st_blksize = bs_;
  st.st_blocks = static_cast<blkcnt_t>(inode.blocks * (bs_ / 512));
  auto ts = [](uint64_t ns) {
    return timespec{static_cast<time_t>(ns / 1'000'000'000ull),
                    static_cast<long>(ns % 1'000'000'000ull)};
  };
  st.st_atim = ts(inode.atime_ns);
  st.st_mtim = ts(inode.mtime_ns);
  st.st_ctim = ts(inode.ctime_ns);
  return a;
}

Result<Attr> FileSystem::getattr(Ino ino) {
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(ino));
  return make_attr(ino, ref.inode);
}

Result<Attr> FileSystem::setattr(Ino ino, const SetAttr& c, const Caller& caller) {
  Attr out;
  {
    ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto ref, load(ino));
    Inode& n = ref.inode;
    if (c.size && !ref.is_reg()) {
      return posix_error(ref.is_dir() ? EISDIR : EINVAL, "truncate of a non-regular file");
    }
    const uint64_t now = detail::now_ns();
    // A shrink frees the blocks past the new end; a chmod may rewrite the ACL block.
    std::set<uint32_t> frees;
    if ((c.size && *c.size < n.size) || c.mode) {
      const bool shrink = c.size && *c.size < n.size;
      ASSIGN_OR_RETURN(frees, ags_to_free(ref, shrink ? (*c.size + bs_ - 1) / bs_ : UINT64_MAX,
                                          shrink));
    }
    ASSIGN_OR_RETURN(auto change, begin_change(kMetadataBlocks, frees));
    journal::Handle& h = change.handle;
    if (c.size && *c.size != n.size) {
      if (*c.size < n.size) {
        RETURN_IF_ERROR(truncate_blocks(h, ref, *c.size));
      } else if (n.size % bs_ != 0) {
        // Bytes past the old end in its last block may hold old data: zero them.
        RETURN_IF_ERROR(zero_range_on_device(ref, n.size, bs_ - n.size % bs_));
      }
      n.size = *c.size;
      n.mtime_ns = now;
    }
    if (c.mode) n.mode = (n.mode & S_IFMT) | (*c.mode & 07777);
    if (c.uid || c.gid) {
      // chown clears set-id bits of non-directories (the kernel already decided it is allowed).
      if (!ref.is_dir() && ((c.uid && *c.uid != n.uid) || (c.gid && *c.gid != n.gid) ||
                            caller.uid != 0)) {
        if (n.mode & S_IXGRP) n.mode &= ~static_cast<uint32_t>(S_ISGID);
        n.mode &= ~static_cast<uint32_t>(S_ISUID);
      }
      if (c.uid) n.uid = *c.uid;
      if (c.gid) n.gid = *c.gid;
    }
    auto pick = [&](const std::optional<timespec>& t) {
      return t->tv_nsec == UTIME_NOW ? now : detail::timespec_ns(*t);
    };
    if (c.atime) n.atime_ns = pick(c.atime);
    if (c.mtime) n.mtime_ns = pick(c.mtime);
    n.ctime_ns = c.ctime ? pick(c.ctime) : now;
    if (c.mode) {
      // Keep an access ACL's group-class entry in step with the new mode.
      RETURN_IF_ERROR(sync_acl_with_mode(h, ref));
    }
    store(h, ref);
    out = make_attr(ino, n);
  }
  RETURN_IF_ERROR(maybe_commit());
  return out;
}

// ---------------------------------------------------------------------------------------
// Lookup counts, orphans and freeing

uint64_t FileSystem::lookup_count(Ino ino) const {
  std::lock_guard lock(lookups_mu_);
  auto it = lookups_.find(ino);
  return it == lookups_.end() ? 0 : it->second;
}

void FileSystem::remember(Ino ino) {
  {
    std::lock_guard lock(lookups_mu_);
    if (++lookups_[ino] > 1 || !opts_.open_locks) return;
  }
  // The first reference: tell the cluster this node uses the inode. The caller holds the
  // inode's lock, so no node is freeing it (that takes the inode lock in EX): this waits
  // for one round trip at most. The kernel cannot forget the reference before the reply.
  auto open = locks_->lock({dlm::LockSpace::kOpen, ino}, dlm::LockMode::kPR);
  if (!open) {
    spdlog::error("open lock of inode {}: {}", ino, open.status().to_string());
    return;
  }
  std::lock_guard lock(lookups_mu_);
  if (lookups_.contains(ino)) open_locks_[ino] = std::move(*open);
}

void FileSystem::forget(Ino ino, uint64_t nlookup) {
  dlm::Lock open;
  {
    std::lock_guard lock(lookups_mu_);
    auto it = lookups_.find(ino);
    if (it == lookups_.end()) return;
    if (it->second > nlookup) {
      it->second -= nlookup;
      return;
    }
    lookups_.erase(it);
    dir_alias_.erase(ino);
    if (auto o = open_locks_.find(ino); o != open_locks_.end()) {
      open = std::move(o->second);
      open_locks_.erase(o);
    }
  }
  open.reset();  // before evict: our own hold must not keep us from freeing it
  if (auto st = evict(ino); !st) spdlog::error("freeing inode {}: {}", ino, st.to_string());
  if (auto st = maybe_commit(); !st) spdlog::error("commit: {}", st.to_string());
}

// Frees `ino` if it is an orphan nobody references any more.
Status FileSystem::evict(Ino ino) {
  if (ino == root()) return Status::ok();
  {
    // Only our orphans are freed here: any other inode the kernel forgets costs no lock
    // (an EX lock would take it from the node that works on it, for nothing).
    std::lock_guard mu(orphan_mu_);
    if (!orphan_next_.contains(ino)) return Status::ok();
  }
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kEX));
  if (lookup_count(ino) != 0) return Status::ok();  // looked up again meanwhile
  {
    // Another node's orphan (unlinked there while we used it): that node frees it once
    // nobody holds its open lock.
    std::lock_guard mu(orphan_mu_);
    if (!orphan_next_.contains(ino)) return Status::ok();
  }
  auto ref = load(ino);
  if (!ref) return Status::ok();  // freed already
  if (ref->inode.nlink != 0 || !(ref->inode.flags & Inode::kOrphan)) return Status::ok();
  ASSIGN_OR_RETURN(bool used, used_elsewhere(ino));
  if (used) return Status::ok();  // retried by retry_orphans()
  ASSIGN_OR_RETURN(auto frees, ags_to_free(*ref, 0));
  ASSIGN_OR_RETURN(auto change, begin_change(kMetadataBlocks, frees));
  journal::Handle& h = change.handle;
  RETURN_IF_ERROR(orphan_remove(h, *ref));
  RETURN_IF_ERROR(free_inode_blocks(h, *ref));
  return alloc_->free_inode(h, ino);
}

Result<bool> FileSystem::used_elsewhere(Ino ino) {
  if (!opts_.open_locks) return false;
  // Never waits: a node that holds it keeps it as long as its kernel wants.
  auto probe = locks_->try_lock({dlm::LockSpace::kOpen, ino}, dlm::LockMode::kEX);
  if (probe) return false;
  if (probe.status().code() == Code::kBusy) return true;
  return probe.status();
}

void FileSystem::retry_orphans() {
  std::vector<Ino> candidates;
  {
    std::lock_guard mu(orphan_mu_);
    for (const auto& [ino, next] : orphan_next_) candidates.push_back(ino);
  }
  for (Ino ino : candidates) {
    if (lookup_count(ino) != 0) continue;
    if (auto st = evict(ino); !st) spdlog::error("freeing orphan {}: {}", ino, st.to_string());
  }
  if (!candidates.empty()) {
    if (auto st = maybe_commit(); !st) spdlog::error("commit: {}", st.to_string());
  }
}

Status FileSystem::drop_inode(journal::Handle& h, InodeRef& ref) {
  SHAREDFS_CHECK(ref.inode.nlink == 0, "dropping a linked inode");
  // With AG locks the blocks are freed in a change of their own (evict, which also asks
  // whether another node still uses the inode), because it must lock their AGs before its
  // handle; this change locked only what it allocates from.
  if (opts_.ag_locks) return orphan_add(h, ref);
  bool used = lookup_count(ref.ino) != 0;
  if (!used) {
    ASSIGN_OR_RETURN(used, used_elsewhere(ref.ino));
  }
  if (!used) {
    RETURN_IF_ERROR(free_inode_blocks(h, ref));
    return alloc_->free_inode(h, ref.ino);
  }
  return orphan_add(h, ref);
}

Status FileSystem::free_inode_blocks(journal::Handle& h, InodeRef& ref) {
  Inode& n = ref.inode;
  if (ref.is_dir()) {
    Directory d(*tm_, *alloc_, sb_, ref.ino, n);
    RETURN_IF_ERROR(d.release_blocks(h));
  } else if (!(n.flags & Inode::kInlineData)) {
    ExtentTree t(*tm_, *alloc_, sb_, ref.ino, n);
    ASSIGN_OR_RETURN(auto ranges, t.remove(h, 0, UINT64_MAX));
    for (const auto& r : ranges) {
      RETURN_IF_ERROR(alloc_->free(h, r, /*metadata=*/false));
      n.blocks -= r.count;
    }
  }
  if (n.xattr_block != 0) {
    RETURN_IF_ERROR(alloc_->free(h, {n.xattr_block, 1}, /*metadata=*/true));
    n.xattr_block = 0;
  }
  return Status::ok();
}

// The slot's orphan chain: OrphanList::head -> Inode::next_orphan -> ... The links live in
// the inode blocks, but they are covered by the orphan-list lock, not by the inodes' own
// locks: an inode marked kOrphan is encoded only under that lock (store_orphan), with its
// link taken from the in-memory chain, so two threads never write one block's link.
// Runs `change` on the slot's orphan list under the orphan-list lock and orphan_mu_, then
// writes the list back in `h`.
Status FileSystem::change_orphan_list(journal::Handle& h, uint32_t slot,
                                      const std::function<Status(format::OrphanList&)>& change) {
  ASSIGN_OR_RETURN(auto lock, locks_->lock({dlm::LockSpace::kOrphanList, slot}, dlm::LockMode::kEX));
  const uint64_t blk = sb_.geo.orphan_blkno(slot);
  ASSIGN_OR_RETURN(auto buf, tm_->read(blk));
  ASSIGN_OR_RETURN(auto list, format::OrphanList::decode(buf->data(), ctx(blk)));
  std::lock_guard mu(orphan_mu_);
  RETURN_IF_ERROR(change(list));
  ++list.seq;
  list.encode(buf->data(), ctx(blk));
  h.dirty(buf);
  return Status::ok();
}

Status FileSystem::orphan_add(journal::Handle& h, InodeRef& ref) {
  return change_orphan_list(h, opts_.slot, [&](format::OrphanList& list) {
    const Ino old_head = list.head;
    ref.inode.flags |= Inode::kOrphan;
    orphan_next_[ref.ino] = old_head;
    orphan_prev_[ref.ino] = 0;
    if (old_head != 0) orphan_prev_[old_head] = ref.ino;
    list.head = ref.ino;
    ++list.count;
    store_orphan_locked(h, ref);
    return Status::ok();
  });
}

Status FileSystem::orphan_remove(journal::Handle& h, InodeRef& ref) {
  return change_orphan_list(h, opts_.slot, [&](format::OrphanList& list) -> Status {
    auto pit = orphan_prev_.find(ref.ino);
    SHAREDFS_CHECK(pit != orphan_prev_.end(), "orphan missing from the in-memory chain");
    const Ino prev = pit->second;
    const Ino next = orphan_next_.at(ref.ino);
    if (prev == 0) {
      list.head = next;
    } else {
      // The previous orphan's block is re-read under orphan_mu_, which every encode of an
      // orphan holds, so this changes its link and nothing else.
      orphan_next_[prev] = next;
      ASSIGN_OR_RETURN(auto prev_ref, load(prev));
      store_orphan_locked(h, prev_ref);
    }
    if (next != 0) orphan_prev_[next] = prev;
    orphan_prev_.erase(pit);
    orphan_next_.erase(ref.ino);
    --list.count;
    ref.inode.flags &= ~Inode::kOrphan;
    ref.inode.next_orphan = 0;
    return Status::ok();
  });
}

Status FileSystem::free_orphans_at_mount() {
  const uint64_t blk = sb_.geo.orphan_blkno(opts_.slot);
  if (opts_.open_locks) {
    // Other nodes may still use our orphans (we crashed while they had them open): take
    // the chain into memory and free, through evict(), those nobody uses.
    // The chain of our slot changes only through this node, which is still mounting: the
    // orphan-list lock need not be held across the walk (inode locks come first in the
    // lock order).
    format::OrphanList list;
    {
      ASSIGN_OR_RETURN(auto olock, locks_->lock({dlm::LockSpace::kOrphanList, opts_.slot},
                                                dlm::LockMode::kEX));
      ASSIGN_OR_RETURN(auto buf, tm_->read(blk));
      ASSIGN_OR_RETURN(list, format::OrphanList::decode(buf->data(), ctx(blk)));
    }
    {
      std::lock_guard mu(orphan_mu_);
      Ino prev = 0;
      for (Ino ino = list.head; ino != 0;) {
        ASSIGN_OR_RETURN(auto ilock, lock_inode(ino, dlm::LockMode::kPR));
        ASSIGN_OR_RETURN(auto ref, load(ino));
        orphan_prev_[ino] = prev;
        orphan_next_[ino] = ref.inode.next_orphan;
        prev = ino;
        ino = ref.inode.next_orphan;
        SHAREDFS_CHECK(orphan_next_.size() <= sb_.geo.total_blocks, "orphan chain loops");
      }
      if (!orphan_next_.empty()) {
        spdlog::info("node {}: orphan recovery: {} unlinked inode(s) left on slot {} by its "
                     "previous mount, freed once no node has them open",
                     opts_.node_id, orphan_next_.size(), opts_.slot);
      }
    }
    retry_orphans();
    return Status::ok();
  }
  for (;;) {
    ASSIGN_OR_RETURN(auto buf, tm_->read(blk));
    ASSIGN_OR_RETURN(auto list, format::OrphanList::decode(buf->data(), ctx(blk)));
    if (list.head == 0) {
      if (list.count != 0) {
        list.count = 0;
        ++list.seq;
        ASSIGN_OR_RETURN(auto change, begin_change());
        journal::Handle& h = change.handle;
        list.encode(buf->data(), ctx(blk));
        h.dirty(buf);
      }
      if (orphans_freed_at_mount_ > 0) {
        spdlog::info("node {}: orphan recovery: freed {} unlinked inode(s) left on slot {} by its "
                     "previous mount",
                     opts_.node_id, orphans_freed_at_mount_, opts_.slot);
      }
      return Status::ok();
    }
    // One orphan per step, unlinked from the list in the same transaction that frees it:
    // a crash in the middle leaves a list of inodes that all still exist.
    const Ino ino = list.head;
    ASSIGN_OR_RETURN(auto ref, load(ino));
    {
      ASSIGN_OR_RETURN(auto frees, ags_to_free(ref, 0));
      ASSIGN_OR_RETURN(auto change, begin_change(kMetadataBlocks, frees));
      journal::Handle& h = change.handle;
      list.head = ref.inode.next_orphan;
      list.count = list.count > 0 ? list.count - 1 : 0;
      ++list.seq;
      list.encode(buf->data(), ctx(blk));
      h.dirty(buf);
      ref.inode.flags &= ~Inode::kOrphan;
      RETURN_IF_ERROR(free_inode_blocks(h, ref));
      RETURN_IF_ERROR(alloc_->free_inode(h, ino));
    }
    ++orphans_freed_at_mount_;
    RETURN_IF_ERROR(maybe_commit());
  }
}

// ---------------------------------------------------------------------------------------
// statfs and counters

struct statvfs FileSystem::statfs() const {
  last_statfs_ = std::chrono::steady_clock::now().time_since_epoch().count();
  const auto u = alloc_->usage();
  struct statvfs s {};
  s.f_bsize = bs_;
  s.f_frsize = bs_;
  s.f_blocks = u.total_blocks;
  s.f_bfree = u.free_blocks;
  s.f_bavail = u.free_blocks;
  s.f_files = u.inodes + u.free_blocks;  // every free block can become an inode
  s.f_ffree = u.free_blocks;
  s.f_favail = u.free_blocks;
  s.f_fsid = sb_.fs_tag();
  s.f_namemax = format::kMaxNameLength;
  return s;
}

const LatencyHistogram& FileSystem::journal_commit_latency() const {
  return journal_->commit_latency();
}

FsStats FileSystem::stats() const {
  FsStats s;
  s.commits = journal_->stats().commits;
  s.journal_used_blocks = journal_->log_used();
  s.journal_capacity_blocks = journal_->log_capacity();
  s.data_bytes_written = data_written_.load();
  s.data_bytes_read = data_read_.load();
  s.orphans_freed_at_mount = orphans_freed_at_mount_;
  return s;
}

}  // namespace sharedfs::fs
