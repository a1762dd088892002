// File data: read, write, truncate, fallocate, SEEK_DATA/SEEK_HOLE, fsync.
//
// Data goes straight to the device with direct I/O under the inode's lock (EX to write,
// PR to read) — never through the metadata cache. A write into a hole allocates blocks,
// writes the data into them and only then maps them in the running transaction, so the
// commit that makes the mapping durable comes after the data (ordered data: the journal
// flushes before its commit block). Partial blocks are read, changed and written whole
// under the EX lock. Unwritten (preallocated) extents read as zeros until written.
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cstring>

#include "fs/extent_tree.h"
#include "fs/fs.h"
#include "fs/fs_internal.h"

namespace sharedfs::fs {

using detail::posix_error;
using format::Inode;

namespace {
// The largest run of blocks one device I/O moves.
constexpr uint64_t kMaxRunBytes = 1 << 20;

// Direct I/O wants aligned memory. Each thread keeps one bounce buffer of the largest run:
// allocating (and so zeroing and faulting in) a fresh megabyte per request cost more than
// the device read it served.
std::span<std::byte> bounce_buffer(size_t bytes) {
  assert(bytes <= kMaxRunBytes);
  thread_local device::AlignedBuffer buf;
  if (buf.size() < kMaxRunBytes) buf = device::AlignedBuffer(kMaxRunBytes);
  return {buf.data(), bytes};
}

bool io_aligned(const std::byte* p) {
  return reinterpret_cast<uintptr_t>(p) % device::kIoAlignment == 0;
}
}  // namespace

Result<std::vector<std::byte>> FileSystem::read(Ino ino, uint64_t offset, size_t size) {
  std::vector<std::byte> out(size);
  ASSIGN_OR_RETURN(size_t n, read_into(ino, offset, out));
  out.resize(n);
  return out;
}

Result<size_t> FileSystem::read_into(Ino ino, uint64_t offset, std::span<std::byte> out) {
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(ino));
  // Regular files always map their data with extents (only directories and symlinks are
  // inline), and only regular files are read through the file system.
  if (!ref.is_reg()) return posix_error(ref.is_dir() ? EISDIR : EINVAL, "read of a non-file");
  const Inode& n = ref.inode;
  if (offset >= n.size || out.empty()) return size_t{0};
  const size_t total = static_cast<size_t>(std::min<uint64_t>(out.size(), n.size - offset));
  ExtentTree t(*tm_, *alloc_, sb_, ino, ref.inode);
  size_t done = 0;
  while (done < total) {
    const uint64_t pos = offset + done;
    const uint64_t blk = pos / bs_;
    const uint64_t in_blk = pos % bs_;
    ASSIGN_OR_RETURN(auto m, t.lookup(blk));
    const uint64_t want_blocks = (in_blk + (total - done) + bs_ - 1) / bs_;
    uint64_t run = std::min({m.length, want_blocks, kMaxRunBytes / bs_});
    size_t k = static_cast<size_t>(std::min<uint64_t>(run * bs_ - in_blk, total - done));
    std::byte* dst = out.data() + done;
    if (m.is_hole() || m.unwritten) {
      std::memset(dst, 0, k);
    } else if (in_blk == 0 && k >= bs_ && io_aligned(dst)) {
      // Whole blocks straight into the caller's buffer; a partial last block comes next
      // through the bounce buffer.
      run = k / bs_;
      k = static_cast<size_t>(run * bs_);
      RETURN_IF_ERROR(dev_.read(m.physical * bs_, std::span<std::byte>(dst, k)));
    } else {
      auto span = bounce_buffer(run * bs_);
      RETURN_IF_ERROR(dev_.read(m.physical * bs_, span));
      std::memcpy(dst, span.data() + in_blk, k);
    }
    done += k;
  }
  data_read_ += total;
  return total;
}

Result<size_t> FileSystem::write(Ino ino, uint64_t offset, std::span<const std::byte> data,
                                 bool append) {
  auto r = write_once(ino, offset, data, append);
  if (!r && retry_after_commit(r.status())) r = write_once(ino, offset, data, append);
  return r;
}

// ENOSPC while blocks freed by the running transaction wait for its commit: commit (no
// lock or handle is held here) and say whether trying again may succeed.
bool FileSystem::retry_after_commit(const Status& st) {
  if (st.to_errno() != ENOSPC || alloc_->busy_blocks() == 0) return false;
  return tm_->commit().is_ok();
}

Result<size_t> FileSystem::write_once(Ino ino, uint64_t offset, std::span<const std::byte> data,
                                      bool append) {
  if (data.empty()) return size_t{0};
  size_t done = 0;
  Status failed;
  {
    ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto ref, load(ino));
    if (!ref.is_reg()) return posix_error(ref.is_dir() ? EISDIR : EINVAL, "write of a non-file");
    Inode& n = ref.inode;
    if (append) offset = n.size;
    if (offset + data.size() < offset || offset + data.size() > (uint64_t{1} << 52)) {
      return posix_error(EFBIG, "write past the largest file size");
    }
    ExtentTree t(*tm_, *alloc_, sb_, ino, n);
    // Mapping unwritten blocks as written may empty (and free) extent-tree nodes: only a
    // write over unwritten extents of a file with tree nodes frees anything.
    std::set<uint32_t> frees;
    if (opts_.ag_locks && n.extent_depth > 0) {
      ASSIGN_OR_RETURN(auto written, t.extents(offset / bs_, (offset + data.size() + bs_ - 1) / bs_));
      if (std::any_of(written.begin(), written.end(), [](const format::Extent& e) {
            return (e.flags & format::Extent::kUnwritten) != 0;
          })) {
        ASSIGN_OR_RETURN(frees, ags_to_free(ref, UINT64_MAX, /*tree_nodes=*/true));
      }
    }
    ASSIGN_OR_RETURN(auto change, begin_change(data.size() / bs_ + kMetadataBlocks, frees));
    journal::Handle& h = change.handle;
    uint64_t goal = 0;  // device block after the previous run: keeps files contiguous
    while (done < data.size()) {
      const uint64_t pos = offset + done;
      const uint64_t blk = pos / bs_;
      const uint64_t in_blk = pos % bs_;
      const size_t left = data.size() - done;
      const uint64_t want_blocks =
          std::min<uint64_t>((in_blk + left + bs_ - 1) / bs_, kMaxRunBytes / bs_);
      auto m = t.lookup(blk);
      if (!m) {
        failed = m.status();
        break;
      }
      uint64_t phys = 0;
      uint64_t run = 0;
      bool fresh = false;  // blocks hold no file data yet: zero what we do not write
      if (m->is_hole()) {
        if (goal == 0 && blk > 0) {
          auto prev = t.lookup(blk - 1);
          if (prev && !prev->is_hole()) goal = prev->physical + 1;
        }
        if (goal == 0) goal = ino;
        auto r = alloc_->allocate(h, goal, static_cast<uint32_t>(std::min(want_blocks, m->length)), 1);
        if (!r) {
          failed = r.status().code() == Code::kNoSpace
                       ? posix_error(ENOSPC, r.status().message())
                       : r.status();
          break;
        }
        phys = r->start;
        run = r->count;
        fresh = true;
      } else {
        phys = m->physical;
        run = std::min(want_blocks, m->length);
        fresh = m->unwritten;
      }
      const size_t k = static_cast<size_t>(std::min<uint64_t>(run * bs_ - in_blk, left));
      auto span = bounce_buffer(run * bs_);
      const bool head_partial = in_blk != 0;
      const bool tail_partial = (in_blk + k) % bs_ != 0;
      Status io;
      if (fresh) {
        if (head_partial) std::memset(span.data(), 0, in_blk);
        if (tail_partial) std::memset(span.data() + in_blk + k, 0, run * bs_ - in_blk - k);
      } else {
        // Read-modify-write of the partial end blocks, under our EX lock.
        if (head_partial) io = dev_.read(phys * bs_, span.first(bs_));
        const uint64_t last = (run - 1) * bs_;
        if (io && tail_partial && !(head_partial && run == 1)) {
          io = dev_.read((phys + run - 1) * bs_, span.subspan(last, bs_));
        }
      }
      if (io) {
        std::memcpy(span.data() + in_blk, data.data() + done, k);
        io = dev_.write(phys * bs_, span);
      }
      if (io && m->is_hole()) {
        io = t.insert(h, {blk, phys, static_cast<uint32_t>(run), 0});
        if (io) n.blocks += run;
      } else if (io && m->unwritten) {
        // The blocks hold data now: map them as written.
        auto removed = t.remove(h, blk, blk + run);
        io = removed.status();
        if (io) io = t.insert(h, {blk, phys, static_cast<uint32_t>(run), 0});
      }
      if (!io) {
        if (m->is_hole()) (void)alloc_->free(h, {phys, static_cast<uint32_t>(run)}, false);
        failed = io;
        break;
      }
      goal = phys + run;
      done += k;
    }
    if (done > 0) {
      n.size = std::max<uint64_t>(n.size, offset + done);
      n.mtime_ns = n.ctime_ns = detail::now_ns();
      store(h, ref);
    }
  }
  data_written_ += done;
  RETURN_IF_ERROR(maybe_commit());
  if (done == 0 && !failed.is_ok()) return failed;
  return done;  // a short write reports what landed; the next call gets the error
}

Status FileSystem::fsync(Ino ino, bool datasync) {
  // Data is written through; what is left is the metadata of the running transaction. The
  // journal has one running transaction for all inodes, so this commits it whole, like
  // ext4's fsync. `ino` and `datasync` cannot narrow that down.
  (void)ino;
  (void)datasync;
  return sync();
}

Status FileSystem::sync() {
  RETURN_IF_ERROR(tm_->commit().status());
  return dev_.flush();
}

// Writes zeros over [offset, offset + length) of the file's mapped, written blocks (used
// for partial blocks around truncate and punch). length may not cross a block boundary.
Status FileSystem::zero_range_on_device(InodeRef& ref, uint64_t offset, uint64_t length) {
  if (length == 0) return Status::ok();
  const uint64_t blk = offset / bs_;
  const uint64_t in_blk = offset % bs_;
  SHAREDFS_CHECK(in_blk + length <= bs_, "zero range crosses a block");
  ExtentTree t(*tm_, *alloc_, sb_, ref.ino, ref.inode);
  ASSIGN_OR_RETURN(auto m, t.lookup(blk));
  if (m.is_hole() || m.unwritten) return Status::ok();
  device::AlignedBuffer buf(bs_);
  RETURN_IF_ERROR(dev_.read(m.physical * bs_, buf.span()));
  std::memset(buf.data() + in_blk, 0, length);
  return dev_.write(m.physical * bs_, buf.span());
}

Status FileSystem::truncate_blocks(journal::Handle& h, InodeRef& ref, uint64_t new_size) {
  // The tail of the new last block must read as zeros if the file grows again.
  if (new_size % bs_ != 0) {
    RETURN_IF_ERROR(zero_range_on_device(ref, new_size, bs_ - new_size % bs_));
  }
  return unmap_blocks(h, ref, (new_size + bs_ - 1) / bs_, UINT64_MAX);
}

// Unmaps the file blocks [first, end) and frees the device blocks they mapped.
Status FileSystem::unmap_blocks(journal::Handle& h, InodeRef& ref, uint64_t first, uint64_t end) {
  ExtentTree t(*tm_, *alloc_, sb_, ref.ino, ref.inode);
  ASSIGN_OR_RETURN(auto ranges, t.remove(h, first, end));
  for (const auto& r : ranges) {
    RETURN_IF_ERROR(alloc_->free(h, r, /*metadata=*/false));
    ref.inode.blocks -= r.count;
  }
  return Status::ok();
}

// Unmaps the whole blocks of [offset, offset + length) and zeros the partial ones.
Status FileSystem::punch(journal::Handle& h, InodeRef& ref, uint64_t offset, uint64_t length) {
  Inode& n = ref.inode;
  const uint64_t end = std::min(offset + length, std::max(n.size, offset + length));
  const uint64_t first_full = (offset + bs_ - 1) / bs_;
  const uint64_t end_full = end / bs_;
  if (first_full > end_full) {  // inside one block
    return zero_range_on_device(ref, offset, end - offset);
  }
  if (offset % bs_ != 0) RETURN_IF_ERROR(zero_range_on_device(ref, offset, bs_ - offset % bs_));
  if (end % bs_ != 0) RETURN_IF_ERROR(zero_range_on_device(ref, end - end % bs_, end % bs_));
  if (end_full > first_full) RETURN_IF_ERROR(unmap_blocks(h, ref, first_full, end_full));
  return Status::ok();
}

// Maps every hole in [first_block, end_block) to unwritten blocks.
Status FileSystem::preallocate(journal::Handle& h, InodeRef& ref, uint64_t first_block,
                               uint64_t end_block) {
  Inode& n = ref.inode;
  ExtentTree t(*tm_, *alloc_, sb_, ref.ino, n);
  uint64_t blk = first_block;
  uint64_t goal = 0;
  while (blk < end_block) {
    ASSIGN_OR_RETURN(auto m, t.lookup(blk));
    const uint64_t run = std::min<uint64_t>({m.length, end_block - blk, 1u << 20});
    if (!m.is_hole()) {
      goal = m.physical + run;
      blk += run;
      continue;
    }
    if (goal == 0) goal = ref.ino;
    auto r = alloc_->allocate(h, goal, static_cast<uint32_t>(run), 1);
    if (!r) {
      if (r.status().code() == Code::kNoSpace) return posix_error(ENOSPC, r.status().message());
      return r.status();
    }
    RETURN_IF_ERROR(t.insert(h, {blk, r->start, r->count, format::Extent::kUnwritten}));
    n.blocks += r->count;
    goal = r->end();
    blk += r->count;
  }
  return Status::ok();
}

Status FileSystem::fallocate(Ino ino, int mode, uint64_t offset, uint64_t length) {
  Status st = fallocate_once(ino, mode, offset, length);
  if (!st && retry_after_commit(st)) st = fallocate_once(ino, mode, offset, length);
  return st;
}

Status FileSystem::fallocate_once(Ino ino, int mode, uint64_t offset, uint64_t length) {
  if (length == 0) return posix_error(EINVAL, "fallocate of length 0");
  if (offset + length < offset || offset + length > (uint64_t{1} << 52)) {
    return posix_error(EFBIG, "fallocate past the largest file size");
  }
  const int known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
  if (mode & ~known) return posix_error(EOPNOTSUPP, fmt::format("fallocate mode {:#x}", mode));
  if ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE)) {
    return posix_error(EOPNOTSUPP, "FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE");
  }
  {
    ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto ref, load(ino));
    if (!ref.is_reg()) return posix_error(ref.is_dir() ? EISDIR : ENODEV, "fallocate of a non-file");
    Inode& n = ref.inode;
    const bool frees_blocks = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) != 0;
    ASSIGN_OR_RETURN(auto frees, ags_to_free(ref, frees_blocks ? offset / bs_ : UINT64_MAX));
    const uint64_t alloc_blocks = (mode & FALLOC_FL_PUNCH_HOLE) ? 0 : length / bs_ + 1;
    ASSIGN_OR_RETURN(auto change, begin_change(alloc_blocks + kMetadataBlocks, frees));
    journal::Handle& h = change.handle;
    const uint64_t end = offset + length;
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
      if (offset < n.size) RETURN_IF_ERROR(punch(h, ref, offset, std::min(end, n.size) - offset));
    }
    if (!(mode & FALLOC_FL_PUNCH_HOLE)) {
      RETURN_IF_ERROR(preallocate(h, ref, offset / bs_, (end + bs_ - 1) / bs_));
      if (!(mode & FALLOC_FL_KEEP_SIZE) && end > n.size) n.size = end;
    }
    n.ctime_ns = detail::now_ns();
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) n.mtime_ns = n.ctime_ns;
    store(h, ref);
  }
  return maybe_commit();
}

Result<uint64_t> FileSystem::lseek(Ino ino, uint64_t offset, int whence) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return posix_error(EINVAL, "lseek whence");
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(ino));
  const uint64_t size = ref.inode.size;
  if (offset >= size) return posix_error(ENXIO, "offset at or past the end of the file");
  if (ref.inode.flags & Inode::kInlineData) return whence == SEEK_DATA ? offset : size;
  ExtentTree t(*tm_, *alloc_, sb_, ino, ref.inode);
  uint64_t blk = offset / bs_;
  if (whence == SEEK_DATA) {
    ASSIGN_OR_RETURN(auto e, t.next_extent(blk));
    if (!e) return posix_error(ENXIO, "no data after the offset");
    const uint64_t at = std::max(offset, e->logical * bs_);
    if (at >= size) return posix_error(ENXIO, "no data after the offset");
    return at;
  }
  // SEEK_HOLE: walk extents while they are contiguous.
  for (;;) {
    ASSIGN_OR_RETURN(auto m, t.lookup(blk));
    if (m.is_hole()) return std::min(size, std::max(offset, blk * bs_));
    blk += m.length;
    if (blk * bs_ >= size) return size;
  }
}

}  // namespace sharedfs::fs
