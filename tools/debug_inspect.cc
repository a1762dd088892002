#include "tools/debug_inspect.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "format/format.h"
#include "fs/fs.h"
#include "journal/journal.h"

namespace sharedfs::tools::debug {
namespace {

using device::AlignedBuffer;
using format::Superblock;

constexpr uint64_t kMountRootIno = 1;

std::string hex64(uint64_t v) { return fmt::format("{:#018x}", v); }

Status read_block(device::BlockDevice& dev, const Superblock& sb, uint64_t blkno,
                  AlignedBuffer& buf) {
  return dev.read(blkno * sb.geo.block_size, buf.span())
      .with_context(fmt::format("reading block {}", blkno));
}

template <typename T>
Result<T> read_struct(device::BlockDevice& dev, const Superblock& sb, uint64_t blkno) {
  AlignedBuffer buf(sb.geo.block_size);
  RETURN_IF_ERROR(read_block(dev, sb, blkno, buf));
  return T::decode(buf.span(), {blkno, sb.fs_tag()});
}

Json superblock_json(const Superblock& sb) {
  const auto& g = sb.geo;
  return Json{
      {"block_size", g.block_size},
      {"total_blocks", g.total_blocks},
      {"uuid", format::uuid_to_string(sb.uuid)},
      {"cluster_id", sb.cluster_id},
      {"cluster_name", sb.cluster_name},
      {"label", sb.label},
      {"slots", g.slots},
      {"slot_table_blkno", g.slot_table_blkno},
      {"heartbeat_start", g.heartbeat_start},
      {"orphan_start", g.orphan_start},
      {"journal_start", g.journal_start},
      {"journal_blocks", g.journal_blocks},
      {"ag_start", g.ag_start},
      {"ag_blocks", g.ag_blocks},
      {"ag_count", g.ag_count},
      {"last_ag_blocks", g.last_ag_blocks},
      {"ag_bitmap_blocks", g.ag_bitmap_blocks},
      {"root_inode", sb.root_inode},
      {"backup_superblock", g.backup_superblock()},
      {"seq", sb.seq},
      {"created_ns", sb.created_ns},
      {"compat_features", sb.compat_features},
      {"incompat_features", sb.incompat_features},
      {"ro_compat_features", sb.ro_compat_features},
  };
}

std::string_view file_type_name(format::FileType t) {
  switch (t) {
    case format::FileType::kRegular:
      return "regular";
    case format::FileType::kDirectory:
      return "directory";
    case format::FileType::kCharDev:
      return "char device";
    case format::FileType::kBlockDev:
      return "block device";
    case format::FileType::kFifo:
      return "fifo";
    case format::FileType::kSocket:
      return "socket";
    case format::FileType::kSymlink:
      return "symlink";
    case format::FileType::kUnknown:
      break;
  }
  return "unknown";
}

// The suggestion every "not an inode" error ends with.
std::string try_root(const Superblock& sb, const std::string& device) {
  return fmt::format("list a directory with `sharedfs debug inode 1 {}` (the root, inode {})",
                     device, sb.root_inode);
}

// Whether `ino` is an allocated block of its AG's data area, or an error naming why not.
Status check_allocated(device::BlockDevice& dev, const Superblock& sb, uint64_t ino,
                       const std::string& device) {
  const auto& g = sb.geo;
  const auto ag = g.ag_of(ino);
  if (!ag || ino < g.ag_first_data_block(*ag)) {
    return make_status(Code::kNotFound,
                       "{} is not an inode number: inode numbers are block numbers in the "
                       "allocation groups' data areas (blocks {}..{}, less each AG's header "
                       "and bitmap); {}",
                       ino, g.ag_first_data_block(0), g.backup_superblock() - 1,
                       try_root(sb, device));
  }
  const uint64_t rel = ino - g.ag_header_blkno(*ag);
  const uint64_t per = g.bits_per_bitmap_block();
  const auto index = static_cast<uint32_t>(rel / per);
  auto bm = read_struct<format::BitmapBlock>(dev, sb, g.bitmap_blkno(*ag, index));
  if (!bm) {
    return bm.status().with_context(
        fmt::format("inode {}: its AG's bitmap cannot be read (check the device with "
                    "`fsck.sharedfs -n {}`)",
                    ino, device));
  }
  if (!bm->test(rel % per)) {
    return make_status(Code::kNotFound, "inode {} is free (not allocated): {}", ino,
                       try_root(sb, device));
  }
  return Status::ok();
}

Json extent_json(const format::Extent& e) {
  return Json{{"logical", e.logical},
              {"physical", e.physical},
              {"length", e.length},
              {"unwritten", (e.flags & format::Extent::kUnwritten) != 0}};
}

// The leaf extents below `entries` (a node at `depth`), and the tree's node blocks.
Status collect_extents(device::BlockDevice& dev, const Superblock& sb, uint64_t ino,
                       const std::vector<format::Extent>& entries, uint16_t depth,
                       std::vector<format::Extent>& leaves, std::vector<uint64_t>& nodes) {
  if (depth == 0) {
    leaves.insert(leaves.end(), entries.begin(), entries.end());
    return Status::ok();
  }
  for (const auto& e : entries) {
    ASSIGN_OR_RETURN(auto node, read_struct<format::ExtentNode>(dev, sb, e.physical));
    if (node.owner != ino || node.depth + 1 != depth) {
      return make_status(Code::kCorruption,
                         "inode {}: extent node {} belongs to inode {} at depth {}, expected "
                         "depth {}",
                         ino, e.physical, node.owner, node.depth, depth - 1);
    }
    nodes.push_back(e.physical);
    RETURN_IF_ERROR(collect_extents(dev, sb, ino, node.entries, node.depth, leaves, nodes));
  }
  return Status::ok();
}

// The device block holding logical block `l`, 0 in a hole.
uint64_t physical_of(const std::vector<format::Extent>& extents, uint64_t l) {
  for (const auto& e : extents) {
    if (l >= e.logical && l < e.logical + e.length) return e.physical + (l - e.logical);
  }
  return 0;
}

// A hashed directory's entries: every leaf (chain) its hash table points at, in table
// order (which is hash order).
Result<std::vector<format::DirEntry>> hashed_entries(device::BlockDevice& dev, const Superblock& sb,
                                                     uint64_t ino, const format::Inode& n,
                                                     const std::vector<format::Extent>& table) {
  const uint64_t per_block = format::DirIndex::capacity(sb.geo.block_size);
  const uint64_t slots = uint64_t{1} << n.dir_depth;
  std::vector<uint64_t> heads;
  for (uint64_t b = 0; b * per_block < slots; ++b) {
    const uint64_t blk = physical_of(table, b);
    if (blk == 0) {
      return make_status(Code::kCorruption, "directory {}: hash table block {} is not mapped", ino,
                         b);
    }
    ASSIGN_OR_RETURN(auto idx, read_struct<format::DirIndex>(dev, sb, blk));
    for (uint64_t leaf : idx.leaves) {
      if (heads.empty() || heads.back() != leaf) heads.push_back(leaf);
    }
  }
  std::vector<format::DirEntry> out;
  std::set<uint64_t> seen;
  for (uint64_t head : heads) {
    for (uint64_t blk = head; blk != 0 && seen.insert(blk).second;) {
      ASSIGN_OR_RETURN(auto leaf, read_struct<format::DirLeaf>(dev, sb, blk));
      out.insert(out.end(), leaf.entries.begin(), leaf.entries.end());
      blk = leaf.next_leaf;
    }
  }
  return out;
}

// Printable text as is; anything else as hex.
Json bytes_json(const std::vector<uint8_t>& v) {
  const bool printable =
      std::all_of(v.begin(), v.end(), [](uint8_t c) { return c >= 0x20 && c < 0x7f; });
  if (printable) return std::string(v.begin(), v.end());
  std::string hex = "0x";
  for (uint8_t c : v) hex += fmt::format("{:02x}", c);
  return hex;
}

}  // namespace

Result<Json> inspect_superblock(device::BlockDevice& dev) {
  // Decoded directly, not through fs::read_superblock: that refuses a device whose slot
  // layout change was interrupted, which is just when an operator wants to look at it.
  AlignedBuffer first(format::kMinBlockSize);
  RETURN_IF_ERROR(dev.read(0, first.span()).with_context("reading the superblock"));
  const uint32_t bs = format::sniff_block_size(first.span());
  if (bs < format::kMinBlockSize || bs > format::kMaxBlockSize || (bs & (bs - 1)) != 0) {
    return make_status(Code::kCorruption,
                       "{} has no sharedfs superblock at block 0 (fsck.sharedfs can restore it "
                       "from the backup)",
                       dev.describe());
  }
  AlignedBuffer primary(bs);
  RETURN_IF_ERROR(dev.read(0, primary.span()).with_context("reading the superblock"));
  ASSIGN_OR_RETURN(Superblock sb, Superblock::decode(primary.span(), 0));
  Json j = superblock_json(sb);
  // The backup is rewritten with the primary at every change; say whether it agrees.
  const uint64_t blk = sb.geo.backup_superblock();
  AlignedBuffer buf(sb.geo.block_size);
  RETURN_IF_ERROR(read_block(dev, sb, blk, buf));
  auto backup = Superblock::decode(buf.span(), blk);
  if (!backup) {
    j["backup_status"] = backup.status().message();
  } else {
    j["backup_status"] = backup->same_contents(sb) ? "same" : "differs from the primary";
  }
  return j;
}

Result<Json> inspect_slots(device::BlockDevice& dev) {
  ASSIGN_OR_RETURN(Superblock sb, fs::read_superblock(dev));
  ASSIGN_OR_RETURN(auto table, read_struct<format::SlotTable>(dev, sb, sb.geo.slot_table_blkno));
  Json slots = Json::array();
  for (size_t i = 0; i < table.slots.size(); ++i) {
    const auto& e = table.slots[i];
    slots.push_back(Json{{"slot", i},
                         {"state", e.state == format::SlotState::kInUse ? "in-use" : "free"},
                         {"node_id", e.node_id},
                         {"host_id", device::HostId{e.host_id}.to_string()},
                         {"reservation_key", hex64(e.reservation_key)},
                         {"mount_generation", e.mount_generation},
                         {"mounted_ns", e.mounted_ns}});
  }
  return Json{{"slots", std::move(slots)}};
}

Result<Json> inspect_heartbeats(device::BlockDevice& dev) {
  ASSIGN_OR_RETURN(Superblock sb, fs::read_superblock(dev));
  Json beats = Json::array();
  for (uint32_t s = 0; s < sb.geo.slots; ++s) {
    auto hb = read_struct<format::Heartbeat>(dev, sb, sb.geo.heartbeat_blkno(s));
    if (!hb) {
      beats.push_back(Json{{"slot", s}, {"error", hb.status().message()}});
      continue;
    }
    beats.push_back(Json{{"slot", s},
                         {"node_id", hb->node_id},
                         {"state", format::heartbeat_state_name(hb->state)},
                         {"counter", hb->counter},
                         {"timestamp_ns", hb->timestamp_ns},
                         {"interval_ms", hb->interval_ms},
                         {"mount_generation", hb->mount_generation},
                         {"by_node", hb->by_node}});
  }
  return Json{{"heartbeats", std::move(beats)}};
}

Result<Json> inspect_inode(device::BlockDevice& dev, uint64_t ino, const InodeOptions& opts) {
  ASSIGN_OR_RETURN(Superblock sb, fs::read_superblock(dev));
  // The root is inode 1 on the mount (FUSE's root id; `ls -i` shows it), and block 1 is
  // the slot table, never an inode.
  if (ino == kMountRootIno) ino = sb.root_inode;
  RETURN_IF_ERROR(check_allocated(dev, sb, ino, opts.device_name));
  AlignedBuffer buf(sb.geo.block_size);
  RETURN_IF_ERROR(read_block(dev, sb, ino, buf));
  const uint32_t magic = format::peek_magic(buf.span());
  if (magic != static_cast<uint32_t>(format::BlockType::kInode)) {
    return make_status(Code::kNotFound, "block {} is allocated but holds a {}, not an inode: {}",
                       ino, format::block_type_name(static_cast<format::BlockType>(magic)),
                       try_root(sb, opts.device_name));
  }
  auto decoded = format::Inode::decode(buf.span(), {ino, sb.fs_tag()});
  if (!decoded) {
    return decoded.status().with_context(
        fmt::format("inode {} is damaged (or was caught mid-write on a mounted device: try again); "
                    "`fsck.sharedfs -n {}` checks it while nothing is mounted",
                    ino, opts.device_name));
  }
  const format::Inode& n = *decoded;
  const auto type = format::file_type_of_mode(n.mode);
  Json flags = Json::array();
  if (n.flags & format::Inode::kInlineData) flags.push_back("inline_data");
  if (n.flags & format::Inode::kOrphan) flags.push_back("orphan");
  if (n.flags & format::Inode::kHashedDir) flags.push_back("hashed_dir");
  Json j{{"inode", ino},
         {"seq", n.seq},
         {"type", file_type_name(type)},
         {"mode", fmt::format("{:06o}", n.mode)},
         {"uid", n.uid},
         {"gid", n.gid},
         {"nlink", n.nlink},
         {"size", n.size},
         {"blocks", n.blocks},
         {"generation", n.generation},
         {"atime_ns", n.atime_ns},
         {"mtime_ns", n.mtime_ns},
         {"ctime_ns", n.ctime_ns},
         {"btime_ns", n.btime_ns},
         {"flags", std::move(flags)},
         {"flags_value", n.flags},
         {"rdev", n.rdev},
         {"parent", n.parent},
         {"next_orphan", n.next_orphan},
         {"xattr_block", n.xattr_block}};

  std::vector<format::Extent> extents;
  if (n.flags & format::Inode::kInlineData) {
    j["inline_bytes"] = n.inline_data.size();
    if (type == format::FileType::kSymlink) j["target"] = bytes_json(n.inline_data);
  } else {
    std::vector<uint64_t> nodes;
    RETURN_IF_ERROR(collect_extents(dev, sb, ino, n.extent_root, n.extent_depth, extents, nodes));
    j["extent_depth"] = n.extent_depth;
    Json ex = Json::array();
    for (const auto& e : extents) ex.push_back(extent_json(e));
    j["extents"] = std::move(ex);
    j["extent_tree_blocks"] = nodes;
  }

  if (n.xattr_block != 0) {
    ASSIGN_OR_RETURN(auto x, read_struct<format::XattrBlock>(dev, sb, n.xattr_block));
    Json xs = Json::array();
    for (const auto& e : x.entries)
      xs.push_back(Json{{"name", e.name}, {"value", bytes_json(e.value)}});
    j["xattrs"] = std::move(xs);
  }

  if (type == format::FileType::kDirectory) {
    std::vector<format::DirEntry> entries;
    if (n.flags & format::Inode::kInlineData) {
      ASSIGN_OR_RETURN(entries,
                       format::decode_dir_entries(std::as_bytes(std::span(n.inline_data))));
    } else {
      ASSIGN_OR_RETURN(entries, hashed_entries(dev, sb, ino, n, extents));
    }
    j["dir_entries"] = n.dir_entries;
    j["dir_depth"] = n.dir_depth;
    j["entries_found"] = entries.size();
    Json list = Json::array();
    for (size_t i = 0; i < entries.size() && i < opts.max_entries; ++i) {
      list.push_back(Json{{"name", entries[i].name},
                          {"inode", entries[i].ino},
                          {"type", file_type_name(entries[i].type)}});
    }
    j["entries"] = std::move(list);
  }
  return j;
}

Result<Json> inspect_journal(device::BlockDevice& dev, uint32_t slot,
                             const std::string& device_name) {
  ASSIGN_OR_RETURN(Superblock sb, fs::read_superblock(dev));
  if (slot >= sb.geo.slots) {
    return make_status(Code::kInvalidArgument,
                       "slot {} does not exist: the device has {} slots (0..{}); node N uses "
                       "slot N-1, see `sharedfs debug slots {}`",
                       slot, sb.geo.slots, sb.geo.slots - 1, device_name);
  }
  auto found = journal::scan(dev, sb, slot);
  if (!found) {
    return found.status().with_context(
        fmt::format("journal of slot {} (check the device with `fsck.sharedfs -n {}` while "
                    "nothing is mounted)",
                    slot, device_name));
  }
  const auto& h = found->header;
  const uint64_t cap = found->log_end - found->log_start;
  Json txns = Json::array();
  for (const auto& t : found->transactions) {
    Json targets = Json::array();
    for (const auto& [target, pos] : t.images) targets.push_back(target);
    txns.push_back(Json{{"sequence", t.seq},
                        {"start", t.start},
                        {"blocks", t.blocks},
                        {"images", t.images.size()},
                        {"targets", std::move(targets)},
                        {"revokes", t.revokes},
                        {"commit_ns", t.commit_ns},
                        // scan() lists only transactions whose every checksum matched.
                        {"checksums_valid", true}});
  }
  return Json{{"slot", slot},
              {"header_block", sb.geo.journal_header_blkno(slot)},
              {"state", h.state == format::JournalState::kClean ? "clean" : "dirty"},
              {"region_start", h.region_start},
              {"region_blocks", h.region_blocks},
              {"log_start", found->log_start},
              {"log_end", found->log_end},
              {"tail_block", h.tail_block},
              {"tail_sequence", h.tail_sequence},
              {"head_block", found->end},
              {"next_sequence", found->next_sequence},
              {"used_blocks", (found->end + cap - h.tail_block) % cap},
              {"needs_replay", !found->transactions.empty()},
              {"transactions", std::move(txns)},
              {"end_reason", found->stop_reason}};
}

}  // namespace sharedfs::tools::debug
