#include "mkfs/mkfs.h"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>

namespace sharedfs::mkfs {
namespace {

using device::AlignedBuffer;
using format::BlockContext;
using format::Geometry;

uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::array<uint8_t, 16> random_uuid(std::mt19937_64& rng) {
  std::array<uint8_t, 16> u{};
  for (auto& b : u) b = static_cast<uint8_t>(rng());
  u[6] = static_cast<uint8_t>((u[6] & 0x0f) | 0x40);  // RFC 4122 version 4
  u[8] = static_cast<uint8_t>((u[8] & 0x3f) | 0x80);
  return u;
}

std::span<std::byte> block_of(AlignedBuffer& buf, uint32_t bs, uint64_t i) {
  return buf.span().subspan(i * bs, bs);
}

// The bitmap of one AG as encoded blocks: header, bitmap blocks and every bit past the
// AG's end marked used, plus `extra_used` (AG-relative).
std::vector<format::BitmapBlock> initial_bitmap(const Geometry& g, uint32_t ag,
                                                const std::vector<uint64_t>& extra_used) {
  const uint64_t per_block = g.bits_per_bitmap_block();
  const uint32_t nblocks = g.bitmap_blocks(ag);
  const uint64_t size = g.ag_size(ag);
  std::vector<format::BitmapBlock> out(nblocks);
  for (uint32_t i = 0; i < nblocks; ++i) {
    out[i].ag_index = ag;
    out[i].index = i;
    out[i].first_bit = i * per_block;
    out[i].bits.assign(g.block_size - format::BitmapBlock::kBitsOffset, 0);
  }
  auto mark = [&](uint64_t bit) { out[bit / per_block].set(bit % per_block, true); };
  for (uint64_t b = 0; b < 1 + uint64_t{nblocks}; ++b) mark(b);
  for (uint64_t b = size; b < uint64_t{nblocks} * per_block; ++b) mark(b);
  for (uint64_t b : extra_used) mark(b);
  return out;
}

}  // namespace

Status write_slot_area(device::BlockDevice& dev, const format::Superblock& sb,
                       uint64_t tail_sequence) {
  const Geometry& g = sb.geo;
  const uint32_t bs = g.block_size;
  const uint32_t tag = sb.fs_tag();
  // Slot table, heartbeat and orphan blocks (blocks 1 .. journal_start - 1), in one write.
  {
    const uint64_t first = g.slot_table_blkno;
    AlignedBuffer buf((g.journal_start - first) * bs);
    auto at = [&](uint64_t blkno) { return block_of(buf, bs, blkno - first); };
    format::SlotTable table;
    table.slots.resize(g.slots);
    table.encode(at(g.slot_table_blkno), {g.slot_table_blkno, tag});
    for (uint32_t s = 0; s < g.slots; ++s) {
      format::Heartbeat hb{.slot = s, .node_id = s};
      hb.encode(at(g.heartbeat_blkno(s)), {g.heartbeat_blkno(s), tag});
      format::OrphanList ol{.slot = s};
      ol.encode(at(g.orphan_blkno(s)), {g.orphan_blkno(s), tag});
    }
    RETURN_IF_ERROR(dev.write(first * bs, buf.span()).with_context("writing the slot region"));
  }
  // Journal headers: clean and empty. Log blocks are not zeroed: replay accepts only
  // blocks with this file system's tag, the expected position and the expected sequence.
  AlignedBuffer buf(bs);
  for (uint32_t s = 0; s < g.slots; ++s) {
    const uint64_t blk = g.journal_header_blkno(s);
    format::JournalHeader jh{.slot = s,
                             .state = format::JournalState::kClean,
                             .region_start = blk,
                             .region_blocks = g.journal_blocks,
                             .tail_block = blk + 1,
                             .tail_sequence = tail_sequence};
    jh.encode(buf.span(), {blk, tag});
    RETURN_IF_ERROR(dev.write(blk * bs, buf.span())
                        .with_context(fmt::format("writing journal header of slot {}", s)));
  }
  return Status::ok();
}

Result<format::Superblock> make_filesystem(device::BlockDevice& dev, const MkfsOptions& opts) {
  if (opts.label.size() >= format::kLabelSize) {
    return make_status(Code::kInvalidArgument, "label is longer than {} bytes",
                       format::kLabelSize - 1);
  }
  if (opts.cluster_name.size() >= format::kClusterNameSize) {
    return make_status(Code::kInvalidArgument, "cluster name is longer than {} bytes",
                       format::kClusterNameSize - 1);
  }
  if (opts.block_size % dev.sector_size() != 0) {
    return make_status(Code::kInvalidArgument,
                       "block size {} is not a multiple of the device's sector size {}",
                       opts.block_size, dev.sector_size());
  }
  ASSIGN_OR_RETURN(Geometry g, format::plan_geometry({.device_bytes = dev.size_bytes(),
                                                      .block_size = opts.block_size,
                                                      .slots = opts.slots,
                                                      .journal_bytes = opts.journal_bytes,
                                                      .ag_bytes = opts.ag_bytes}));
  const uint32_t bs = g.block_size;
  std::mt19937_64 rng(std::random_device{}() ^ now_ns());

  format::Superblock sb;
  sb.geo = g;
  sb.uuid = random_uuid(rng);
  // 63 bits: a cluster config's id is a TOML integer, which is signed.
  sb.cluster_id = opts.cluster_id.value_or((rng() >> 1) | 1);
  sb.created_ns = now_ns();
  sb.label = opts.label;
  sb.cluster_name = opts.cluster_name;
  sb.root_inode = g.ag_first_data_block(0);
  sb.seq = 1;
  const uint32_t tag = sb.fs_tag();
  if (opts.progress) opts.progress(0, g.ag_count);

  // Block 0 (the superblock) stays zero until everything else is durable, so a crash
  // during mkfs leaves a device that is plainly not a file system.
  {
    AlignedBuffer zero(bs);
    RETURN_IF_ERROR(dev.write(0, zero.span()).with_context("clearing the superblock"));
  }
  RETURN_IF_ERROR(write_slot_area(dev, sb, /*tail_sequence=*/1));

  // Allocation groups: header and bitmap blocks, one write per AG. AG 0 also holds the
  // root directory's inode in its first data block.
  for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
    const uint64_t head = g.ag_header_blkno(ag);
    const uint32_t nbitmap = g.bitmap_blocks(ag);
    std::vector<uint64_t> extra;
    if (ag == 0) extra.push_back(sb.root_inode - head);
    const auto bitmap = initial_bitmap(g, ag, extra);
    uint64_t used = 1 + nbitmap + extra.size();

    AlignedBuffer buf((1 + uint64_t{nbitmap}) * bs);
    format::AgHeader hdr{.ag_index = ag,
                         .bitmap_blocks = nbitmap,
                         .ag_blocks = g.ag_size(ag),
                         .free_blocks = g.ag_size(ag) - used,
                         .inode_count = ag == 0 ? 1u : 0u};
    hdr.encode(block_of(buf, bs, 0), {head, tag});
    for (uint32_t i = 0; i < nbitmap; ++i) {
      bitmap[i].encode(block_of(buf, bs, 1 + i), {head + 1 + i, tag});
    }
    RETURN_IF_ERROR(dev.write(head * bs, buf.span())
                        .with_context(fmt::format("writing allocation group {}", ag)));
    if (opts.progress) opts.progress(ag + 1, g.ag_count);
  }

  // The root directory: empty, inline.
  {
    AlignedBuffer buf(bs);
    const uint64_t t = sb.created_ns;
    format::Inode root;
    root.generation = 1;
    root.mode = 040755;
    root.nlink = 2;
    root.atime_ns = root.mtime_ns = root.ctime_ns = root.btime_ns = t;
    root.flags = format::Inode::kInlineData;
    root.parent = sb.root_inode;
    root.encode(buf.span(), {sb.root_inode, tag});
    RETURN_IF_ERROR(
        dev.write(sb.root_inode * bs, buf.span()).with_context("writing the root directory inode"));
  }

  // Superblocks last, after a flush, backup before primary.
  RETURN_IF_ERROR(dev.flush().with_context("flushing metadata"));
  {
    AlignedBuffer buf(bs);
    sb.encode(buf.span(), g.backup_superblock());
    RETURN_IF_ERROR(dev.write(g.backup_superblock() * bs, buf.span())
                        .with_context("writing the backup superblock"));
    sb.encode(buf.span(), 0);
    RETURN_IF_ERROR(dev.write(0, buf.span()).with_context("writing the superblock"));
  }
  RETURN_IF_ERROR(dev.flush().with_context("flushing superblocks"));
  return sb;
}

namespace {
struct ProbeDeleter {
  void operator()(blkid_probe p) const { blkid_free_probe(p); }
};
using Probe = std::unique_ptr<std::remove_pointer_t<blkid_probe>, ProbeDeleter>;

Result<Probe> open_probe(const std::string& path, int fd) {
  Probe pr(blkid_new_probe());
  if (!pr) return Status(Code::kInternal, "blkid_new_probe failed");
  if (blkid_probe_set_device(pr.get(), fd, 0, 0) != 0) {
    return make_status(Code::kIoError, "libblkid cannot probe {}", path);
  }
  blkid_probe_enable_superblocks(pr.get(), 1);
  blkid_probe_set_superblocks_flags(pr.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_MAGIC);
  blkid_probe_enable_partitions(pr.get(), 1);
  blkid_probe_set_partitions_flags(pr.get(), BLKID_PARTS_MAGIC);
  return pr;
}
}  // namespace

Result<std::optional<std::string>> detect_signature(const std::string& path) {
  // Our own superblock first (libblkid does not know sharedfs), primary or backup.
  {
    auto dev = device::open_file_device(path, {.read_only = true});
    if (!dev) return dev.status();
    device::AlignedBuffer first(format::kMinBlockSize);
    RETURN_IF_ERROR(dev->io->read(0, first.span()));
    if (format::peek_magic(first.span()) == static_cast<uint32_t>(format::BlockType::kSuperblock)) {
      return std::optional<std::string>("sharedfs");
    }
    const uint64_t size = dev->io->size_bytes();
    for (uint32_t bs = format::kMinBlockSize; bs <= format::kMaxBlockSize; bs *= 2) {
      if (size < 2 * uint64_t{bs}) break;
      device::AlignedBuffer last(bs);
      RETURN_IF_ERROR(dev->io->read((size / bs - 1) * bs, last.span()));
      if (format::Superblock::decode(last.span(), size / bs - 1).is_ok()) {
        return std::optional<std::string>("sharedfs (backup superblock)");
      }
    }
  }
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "opening " + path);
  auto pr = open_probe(path, fd);
  if (!pr) {
    close(fd);
    return pr.status();
  }
  std::optional<std::string> found;
  if (blkid_do_safeprobe(pr->get()) == 0) {
    const char* value = nullptr;
    if (blkid_probe_lookup_value(pr->get(), "TYPE", &value, nullptr) == 0 && value) {
      found = value;
    } else if (blkid_probe_lookup_value(pr->get(), "PTTYPE", &value, nullptr) == 0 && value) {
      found = std::string("partition table (") + value + ")";
    }
  }
  pr->reset();
  close(fd);
  return found;
}

Status wipe_signatures(const std::string& path) {
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "opening " + path);
  Status st;
  {
    auto pr = open_probe(path, fd);
    if (!pr) {
      st = pr.status();
    } else {
      // As wipefs -a: probe, wipe what was found, probe again from where it left off.
      while (blkid_do_probe(pr->get()) == 0) {
        if (blkid_do_wipe(pr->get(), 0) != 0) {
          st = make_status(Code::kIoError, "wiping a signature on {} failed", path);
          break;
        }
      }
    }
  }
  if (st && fsync(fd) != 0) st = errno_status(errno, "flushing " + path);
  close(fd);
  return st;
}

}  // namespace sharedfs::mkfs
