#include "format/format.h"

#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>

namespace sharedfs::format {
namespace {

// Little-endian field access at fixed offsets within a block.
class Writer {
 public:
  explicit Writer(std::span<std::byte> b) : b_(b) {}
  void u8(size_t off, uint8_t v) { b_[off] = std::byte{v}; }
  void u16(size_t off, uint16_t v) { put(off, v, 2); }
  void u32(size_t off, uint32_t v) { put(off, v, 4); }
  void u64(size_t off, uint64_t v) { put(off, v, 8); }
  void bytes(size_t off, const void* p, size_t n) {
    if (n != 0) std::memcpy(b_.data() + off, p, n);  // p may be null when n is 0
  }
  void str(size_t off, const std::string& s, size_t field) {
    std::memset(b_.data() + off, 0, field);
    std::memcpy(b_.data() + off, s.data(), std::min(s.size(), field - 1));
  }

 private:
  void put(size_t off, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b_[off + i] = std::byte(static_cast<uint8_t>(v >> (8 * i)));
  }
  std::span<std::byte> b_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) : b_(b) {}
  uint8_t u8(size_t off) const { return std::to_integer<uint8_t>(b_[off]); }
  uint16_t u16(size_t off) const { return static_cast<uint16_t>(get(off, 2)); }
  uint32_t u32(size_t off) const { return static_cast<uint32_t>(get(off, 4)); }
  uint64_t u64(size_t off) const { return get(off, 8); }
  void bytes(size_t off, void* p, size_t n) const {
    if (n != 0) std::memcpy(p, b_.data() + off, n);
  }
  std::string str(size_t off, size_t field) const {
    const char* p = reinterpret_cast<const char*>(b_.data() + off);
    return std::string(p, strnlen(p, field));
  }

 private:
  uint64_t get(size_t off, int n) const {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{std::to_integer<uint8_t>(b_[off + i])} << (8 * i);
    return v;
  }
  std::span<const std::byte> b_;
};

constexpr size_t kCrcOffset = 4;

uint32_t block_crc(std::span<const std::byte> block) {
  static constexpr std::byte kZero[4] = {};
  uint32_t crc = crc32c(block.first(kCrcOffset));
  crc = crc32c(kZero, crc);
  return crc32c(block.subspan(kCrcOffset + 4), crc);
}

Status corrupt(BlockType type, uint64_t blkno, std::string_view what) {
  return Status(Code::kCorruption,
                fmt::format("{} at block {}: {}", block_type_name(type), blkno, what));
}

bool valid_block_size(uint32_t bs) {
  return bs >= kMinBlockSize && bs <= kMaxBlockSize && std::has_single_bit(bs);
}

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Starts a structure: zeroes the block so unused bytes are deterministic.
Writer begin(std::span<std::byte> block) {
  std::memset(block.data(), 0, block.size());
  return Writer(block);
}

void encode_extents(Writer& w, size_t off, const std::vector<Extent>& xs) {
  for (const Extent& x : xs) {
    w.u64(off, x.logical);
    w.u64(off + 8, x.physical);
    w.u32(off + 16, x.length);
    w.u32(off + 20, x.flags);
    off += kExtentSize;
  }
}

std::vector<Extent> decode_extents(const Reader& r, size_t off, size_t n) {
  std::vector<Extent> xs(n);
  for (auto& x : xs) {
    x = {r.u64(off), r.u64(off + 8), r.u32(off + 16), r.u32(off + 20)};
    off += kExtentSize;
  }
  return xs;
}

}  // namespace

std::string_view block_type_name(BlockType type) {
  switch (type) {
    case BlockType::kSuperblock:
      return "superblock";
    case BlockType::kSlotTable:
      return "slot table";
    case BlockType::kHeartbeat:
      return "heartbeat block";
    case BlockType::kOrphanList:
      return "orphan list block";
    case BlockType::kJournalHeader:
      return "journal header";
    case BlockType::kAgHeader:
      return "AG header";
    case BlockType::kBitmap:
      return "bitmap block";
    case BlockType::kInode:
      return "inode";
    case BlockType::kExtentNode:
      return "extent node";
    case BlockType::kDirLeaf:
      return "directory leaf";
    case BlockType::kDirIndex:
      return "directory index";
    case BlockType::kJournalDescriptor:
      return "journal descriptor";
    case BlockType::kJournalRevoke:
      return "journal revoke block";
    case BlockType::kJournalCommit:
      return "journal commit block";
    case BlockType::kXattr:
      return "xattr block";
  }
  return "unknown block";
}

std::string uuid_to_string(const std::array<uint8_t, 16>& uuid) {
  std::string s;
  for (size_t i = 0; i < uuid.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", uuid[i]);
  }
  return s;
}

uint32_t fs_tag_of(const std::array<uint8_t, 16>& uuid) {
  return crc32c(std::as_bytes(std::span(uuid)));
}

void seal_block(std::span<std::byte> block, BlockType type, const BlockContext& ctx, uint64_t seq) {
  Writer w(block);
  w.u32(0, static_cast<uint32_t>(type));
  w.u32(kCrcOffset, 0);
  w.u64(8, ctx.blkno);
  w.u64(16, seq);
  w.u32(24, ctx.fs_tag);
  w.u16(28, kFormatVersion);
  w.u16(30, 0);
  w.u32(kCrcOffset, block_crc(block));
}

uint32_t peek_magic(std::span<const std::byte> block) { return Reader(block).u32(0); }

Result<uint64_t> check_block(std::span<const std::byte> block, BlockType type,
                             const BlockContext& ctx) {
  Reader r(block);
  if (r.u32(0) != static_cast<uint32_t>(type)) {
    return corrupt(type, ctx.blkno, fmt::format("wrong magic {:#010x}", r.u32(0)));
  }
  if (r.u32(kCrcOffset) != block_crc(block)) {
    return corrupt(type, ctx.blkno,
                   fmt::format("checksum mismatch (stored {:#010x}, computed {:#010x})",
                               r.u32(kCrcOffset), block_crc(block)));
  }
  if (r.u64(8) != ctx.blkno) {
    return corrupt(type, ctx.blkno, fmt::format("self block number is {}", r.u64(8)));
  }
  if (r.u32(24) != ctx.fs_tag) {
    return corrupt(type, ctx.blkno,
                   fmt::format("belongs to another file system (tag {:#010x}, expected {:#010x})",
                               r.u32(24), ctx.fs_tag));
  }
  if (r.u16(28) != kFormatVersion) {
    return corrupt(type, ctx.blkno, fmt::format("unsupported format version {}", r.u16(28)));
  }
  return r.u64(16);
}

// ---------------------------------------------------------------------------------------
// Geometry

uint32_t Geometry::bitmap_blocks(uint32_t ag) const {
  return static_cast<uint32_t>(div_up(ag_size(ag), bits_per_bitmap_block()));
}

uint64_t Geometry::bits_per_bitmap_block() const { return BitmapBlock::bits_per_block(block_size); }

std::optional<uint32_t> Geometry::ag_of(uint64_t blkno) const {
  if (blkno < ag_start || ag_count == 0) return std::nullopt;
  const uint64_t ag = (blkno - ag_start) / ag_blocks;
  if (ag >= ag_count) return std::nullopt;
  if (blkno - ag_header_blkno(static_cast<uint32_t>(ag)) >= ag_size(static_cast<uint32_t>(ag))) {
    return std::nullopt;
  }
  return static_cast<uint32_t>(ag);
}

namespace {

constexpr uint64_t kMiB = 1 << 20;

// Fills in everything from block size, slots, journal and AG size; fails if no AG fits.
std::optional<Geometry> try_layout(uint64_t total, uint32_t bs, uint32_t slots,
                                   uint64_t journal_blocks, uint64_t ag_blocks_req) {
  Geometry g;
  g.block_size = bs;
  g.slots = slots;
  g.total_blocks = total;
  g.slot_table_blkno = 1;
  g.heartbeat_start = 2;
  g.orphan_start = g.heartbeat_start + slots;
  g.journal_start = g.orphan_start + slots;
  g.journal_blocks = journal_blocks;
  const uint64_t align = kMiB / bs;
  g.ag_start = div_up(g.journal_start + uint64_t{slots} * journal_blocks, align) * align;
  if (total < g.ag_start + kMinAgBlocks + 1) return std::nullopt;
  const uint64_t data = total - 1 - g.ag_start;  // the last block holds the backup
  uint64_t ag = ag_blocks_req;
  if (ag == 0) {
    // Several AGs per node so nodes allocate without meeting; 16 MiB .. 1 GiB each.
    const uint64_t want = std::bit_floor(std::max<uint64_t>(data / (4 * uint64_t{slots}), 1));
    ag = std::clamp<uint64_t>(want, std::max<uint64_t>(kMinAgBlocks, 16 * kMiB / bs),
                              1024 * kMiB / bs);
  }
  if (ag > data) ag = data;
  g.ag_blocks = ag;
  g.ag_count = static_cast<uint32_t>(data / ag);
  g.last_ag_blocks = ag;
  const uint64_t rem = data % ag;
  if (rem >= kMinAgBlocks) {
    ++g.ag_count;
    g.last_ag_blocks = rem;
  }
  g.ag_bitmap_blocks = static_cast<uint32_t>(div_up(ag, g.bits_per_bitmap_block()));
  return g;
}

}  // namespace

Result<Geometry> plan_geometry(const LayoutRequest& req) {
  const uint32_t bs = req.block_size;
  if (!valid_block_size(bs)) {
    return make_status(Code::kInvalidArgument,
                       "block size {} is not a power of two between {} and {}", bs, kMinBlockSize,
                       kMaxBlockSize);
  }
  if (req.slots < 1 || req.slots > kMaxSlots) {
    return make_status(Code::kInvalidArgument, "node slots must be 1..{}, not {}", kMaxSlots,
                       req.slots);
  }
  const uint64_t total = req.device_bytes / bs;
  uint64_t journal = req.journal_bytes / bs;
  if (req.journal_bytes != 0) {
    if (req.journal_bytes % bs != 0 || journal < kMinJournalBlocks) {
      return make_status(Code::kInvalidArgument,
                         "journal size must be a multiple of the block size and at least {} "
                         "KiB",
                         kMinJournalBlocks * bs / 1024);
    }
  } else {
    // 4..128 MiB, and never fewer blocks than the minimum (large block sizes).
    journal = std::clamp<uint64_t>(total / (32 * uint64_t{req.slots}),
                                   std::max<uint64_t>(4 * kMiB / bs, kMinJournalBlocks),
                                   std::max<uint64_t>(128 * kMiB / bs, kMinJournalBlocks));
  }
  uint64_t ag = 0;
  if (req.ag_bytes != 0) {
    ag = req.ag_bytes / bs;
    if (req.ag_bytes % bs != 0 || ag < kMinAgBlocks) {
      return make_status(Code::kInvalidArgument,
                         "AG size must be a multiple of the block size and at least {} KiB",
                         kMinAgBlocks * bs / 1024);
    }
  }
  if (auto g = try_layout(total, bs, req.slots, journal, ag)) return *g;

  // Does not fit: say how much is needed and what would fit instead.
  const uint64_t align = kMiB / bs;
  const uint64_t need_blocks =
      div_up(2 + 2 * uint64_t{req.slots} + uint64_t{req.slots} * journal, align) * align +
      kMinAgBlocks + 1;
  std::string fits;
  for (uint32_t s = req.slots; s-- > 1;) {
    if (try_layout(total, bs, s, journal, ag)) {
      fits = fmt::format("--nodes {} with journals of {} MiB", s, journal * bs / kMiB);
      break;
    }
  }
  for (uint64_t j = journal / 2; j >= kMinJournalBlocks; j /= 2) {
    if (try_layout(total, bs, req.slots, j, ag)) {
      fits += fmt::format("{}--journal-size {}K with {} nodes", fits.empty() ? "" : ", or ",
                          j * bs / 1024, req.slots);
      break;
    }
  }
  return make_status(Code::kNoSpace,
                     "device of {} bytes is too small for {} node slots with {} MiB journals: "
                     "that needs at least {} bytes. {}",
                     req.device_bytes, req.slots, journal * bs / kMiB, need_blocks * bs,
                     fits.empty() ? "Nothing fits on it." : "It would fit: " + fits + ".");
}

// ---------------------------------------------------------------------------------------
// Superblock
//
// Offsets after the header are fixed; docs/on-disk-format.md lists them.

void Superblock::encode(std::span<std::byte> block, uint64_t blkno) const {
  Writer w = begin(block);
  w.bytes(32, kSignature, sizeof(kSignature));
  w.u32(40, geo.block_size);
  w.u32(44, geo.slots);
  w.u64(48, geo.total_blocks);
  w.bytes(56, uuid.data(), uuid.size());
  w.u64(72, cluster_id);
  w.u64(80, created_ns);
  w.u32(88, compat_features);
  w.u32(92, incompat_features);
  w.u32(96, ro_compat_features);
  w.u64(104, geo.slot_table_blkno);
  w.u64(112, geo.heartbeat_start);
  w.u64(120, geo.orphan_start);
  w.u64(128, geo.journal_start);
  w.u64(136, geo.journal_blocks);
  w.u64(144, geo.ag_start);
  w.u64(152, geo.ag_blocks);
  w.u32(160, geo.ag_count);
  w.u32(164, geo.ag_bitmap_blocks);
  w.u64(168, geo.last_ag_blocks);
  w.u64(176, root_inode);
  w.u64(184, geo.backup_superblock());
  w.str(192, label, kLabelSize);
  w.str(256, cluster_name, kClusterNameSize);
  w.u64(320, rewrite_sequence);
  seal_block(block, BlockType::kSuperblock, {blkno, fs_tag()}, seq);
}

uint32_t sniff_block_size(std::span<const std::byte> first_4k) {
  Reader r(first_4k);
  if (r.u32(0) != static_cast<uint32_t>(BlockType::kSuperblock)) return 0;
  return r.u32(40);
}

Result<Superblock> Superblock::decode(std::span<const std::byte> block, uint64_t blkno) {
  Reader r(block);
  Superblock sb;
  sb.geo.block_size = r.u32(40);
  if (sb.geo.block_size != block.size()) {
    if (r.u32(0) != static_cast<uint32_t>(BlockType::kSuperblock)) {
      return corrupt(BlockType::kSuperblock, blkno, fmt::format("wrong magic {:#010x}", r.u32(0)));
    }
    return corrupt(BlockType::kSuperblock, blkno,
                   fmt::format("block size field {} does not match the {}-byte block read",
                               sb.geo.block_size, block.size()));
  }
  r.bytes(56, sb.uuid.data(), sb.uuid.size());
  ASSIGN_OR_RETURN(sb.seq, check_block(block, BlockType::kSuperblock, {blkno, sb.fs_tag()}));
  if (std::memcmp(block.data() + 32, kSignature, sizeof(kSignature)) != 0) {
    return corrupt(BlockType::kSuperblock, blkno, "signature is not SHAREDFS");
  }
  Geometry& g = sb.geo;
  g.slots = r.u32(44);
  g.total_blocks = r.u64(48);
  sb.cluster_id = r.u64(72);
  sb.created_ns = r.u64(80);
  sb.compat_features = r.u32(88);
  sb.incompat_features = r.u32(92);
  sb.ro_compat_features = r.u32(96);
  g.slot_table_blkno = r.u64(104);
  g.heartbeat_start = r.u64(112);
  g.orphan_start = r.u64(120);
  g.journal_start = r.u64(128);
  g.journal_blocks = r.u64(136);
  g.ag_start = r.u64(144);
  g.ag_blocks = r.u64(152);
  g.ag_count = r.u32(160);
  g.ag_bitmap_blocks = r.u32(164);
  g.last_ag_blocks = r.u64(168);
  sb.root_inode = r.u64(176);
  const uint64_t backup = r.u64(184);
  sb.label = r.str(192, kLabelSize);
  sb.cluster_name = r.str(256, kClusterNameSize);
  sb.rewrite_sequence = r.u64(320);

  // A checksummed superblock can still describe an impossible layout (a bug, or a
  // hand-edited device): reject it rather than read or write outside the regions.
  auto bad = [&](std::string_view what) { return corrupt(BlockType::kSuperblock, blkno, what); };
  if (!valid_block_size(g.block_size)) return bad("invalid block size");
  if (g.slots < 1 || g.slots > kMaxSlots) return bad("invalid slot count");
  if ((sb.incompat_features & ~kKnownIncompatFeatures) != 0) {
    return bad("unknown incompatible features");
  }
  if (g.slot_table_blkno != 1 || g.heartbeat_start != 2 ||
      g.orphan_start != g.heartbeat_start + g.slots ||
      g.journal_start != g.orphan_start + g.slots) {
    return bad("fixed regions are not where they belong");
  }
  if (g.journal_blocks < kMinJournalBlocks) return bad("journal regions are too small");
  if (g.ag_start < g.journal_start + uint64_t{g.slots} * g.journal_blocks) {
    return bad("journal regions overlap the allocation groups");
  }
  if (g.ag_count == 0 || g.ag_blocks < kMinAgBlocks || g.last_ag_blocks < kMinAgBlocks ||
      g.last_ag_blocks > g.ag_blocks ||
      g.ag_bitmap_blocks != div_up(g.ag_blocks, g.bits_per_bitmap_block())) {
    return bad("invalid allocation group geometry");
  }
  if (g.ag_start + uint64_t{g.ag_count - 1} * g.ag_blocks + g.last_ag_blocks > g.total_blocks - 1 ||
      backup != g.total_blocks - 1) {
    return bad("allocation groups run past the end of the device");
  }
  if (sb.root_inode != 0 && !g.ag_of(sb.root_inode)) return bad("root inode outside any AG");
  return sb;
}

bool Superblock::same_contents(const Superblock& o) const {
  const Geometry& a = geo;
  const Geometry& b = o.geo;
  return seq == o.seq && uuid == o.uuid && cluster_id == o.cluster_id &&
         created_ns == o.created_ns && compat_features == o.compat_features &&
         incompat_features == o.incompat_features && ro_compat_features == o.ro_compat_features &&
         root_inode == o.root_inode && label == o.label && cluster_name == o.cluster_name &&
         rewrite_sequence == o.rewrite_sequence && a.block_size == b.block_size &&
         a.slots == b.slots && a.total_blocks == b.total_blocks &&
         a.journal_blocks == b.journal_blocks && a.ag_start == b.ag_start &&
         a.ag_blocks == b.ag_blocks && a.ag_count == b.ag_count &&
         a.last_ag_blocks == b.last_ag_blocks;
}

// ---------------------------------------------------------------------------------------
// Slot table, heartbeat, orphan list, journal header, AG header, bitmap

namespace {
constexpr size_t kSlotEntriesOffset = 64;
constexpr size_t kSlotEntrySize = 64;
}  // namespace

void SlotTable::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(kSlotEntriesOffset + slots.size() * kSlotEntrySize <= block.size(),
                 "slot table does not fit its block");
  Writer w = begin(block);
  w.u32(32, static_cast<uint32_t>(slots.size()));
  size_t off = kSlotEntriesOffset;
  for (const SlotEntry& e : slots) {
    w.u32(off, static_cast<uint32_t>(e.state));
    w.u32(off + 4, e.node_id);
    w.bytes(off + 8, e.host_id.data(), e.host_id.size());
    w.u64(off + 24, e.reservation_key);
    w.u64(off + 32, e.mount_generation);
    w.u64(off + 40, e.mounted_ns);
    off += kSlotEntrySize;
  }
  seal_block(block, BlockType::kSlotTable, ctx, seq);
}

Result<SlotTable> SlotTable::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  SlotTable t;
  ASSIGN_OR_RETURN(t.seq, check_block(block, BlockType::kSlotTable, ctx));
  Reader r(block);
  const uint32_t n = r.u32(32);
  if (n > kMaxSlots || kSlotEntriesOffset + n * kSlotEntrySize > block.size()) {
    return corrupt(BlockType::kSlotTable, ctx.blkno, fmt::format("slot count {} invalid", n));
  }
  size_t off = kSlotEntriesOffset;
  for (uint32_t i = 0; i < n; ++i, off += kSlotEntrySize) {
    SlotEntry e;
    const uint32_t state = r.u32(off);
    if (state > static_cast<uint32_t>(SlotState::kInUse)) {
      return corrupt(BlockType::kSlotTable, ctx.blkno,
                     fmt::format("slot {} has invalid state {}", i, state));
    }
    e.state = static_cast<SlotState>(state);
    e.node_id = r.u32(off + 4);
    r.bytes(off + 8, e.host_id.data(), e.host_id.size());
    e.reservation_key = r.u64(off + 24);
    e.mount_generation = r.u64(off + 32);
    e.mounted_ns = r.u64(off + 40);
    t.slots.push_back(e);
  }
  return t;
}

void Heartbeat::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  Writer w = begin(block);
  w.u32(32, slot);
  w.u32(36, node_id);
  w.u64(40, counter);
  w.u64(48, timestamp_ns);
  w.u64(56, mount_generation);
  w.u32(64, static_cast<uint32_t>(state));
  w.u32(68, interval_ms);
  w.u32(72, by_node);
  seal_block(block, BlockType::kHeartbeat, ctx, seq);
}

Result<Heartbeat> Heartbeat::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  Heartbeat h;
  ASSIGN_OR_RETURN(h.seq, check_block(block, BlockType::kHeartbeat, ctx));
  Reader r(block);
  h.slot = r.u32(32);
  h.node_id = r.u32(36);
  h.counter = r.u64(40);
  h.timestamp_ns = r.u64(48);
  h.mount_generation = r.u64(56);
  const uint32_t state = r.u32(64);
  if (state > static_cast<uint32_t>(HeartbeatState::kRecovered)) {
    return corrupt(BlockType::kHeartbeat, ctx.blkno, fmt::format("invalid state {}", state));
  }
  h.state = static_cast<HeartbeatState>(state);
  h.interval_ms = r.u32(68);
  h.by_node = r.u32(72);
  return h;
}

std::string_view heartbeat_state_name(HeartbeatState state) {
  switch (state) {
    case HeartbeatState::kIdle: return "idle";
    case HeartbeatState::kMounted: return "mounted";
    case HeartbeatState::kWithdrawn: return "withdrawn";
    case HeartbeatState::kFenced: return "fenced";
    case HeartbeatState::kRecovered: return "recovered";
  }
  return "?";
}

void OrphanList::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  Writer w = begin(block);
  w.u32(32, slot);
  w.u32(36, count);
  w.u64(40, head);
  seal_block(block, BlockType::kOrphanList, ctx, seq);
}

Result<OrphanList> OrphanList::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  OrphanList o;
  ASSIGN_OR_RETURN(o.seq, check_block(block, BlockType::kOrphanList, ctx));
  Reader r(block);
  o.slot = r.u32(32);
  o.count = r.u32(36);
  o.head = r.u64(40);
  if ((o.head == 0) != (o.count == 0)) {
    return corrupt(BlockType::kOrphanList, ctx.blkno, "head and count disagree");
  }
  return o;
}

void JournalHeader::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  Writer w = begin(block);
  w.u32(32, slot);
  w.u32(36, static_cast<uint32_t>(state));
  w.u64(40, region_start);
  w.u64(48, region_blocks);
  w.u64(56, tail_block);
  w.u64(64, tail_sequence);
  seal_block(block, BlockType::kJournalHeader, ctx, seq);
}

Result<JournalHeader> JournalHeader::decode(std::span<const std::byte> block,
                                            const BlockContext& ctx) {
  JournalHeader j;
  ASSIGN_OR_RETURN(j.seq, check_block(block, BlockType::kJournalHeader, ctx));
  Reader r(block);
  j.slot = r.u32(32);
  const uint32_t state = r.u32(36);
  j.region_start = r.u64(40);
  j.region_blocks = r.u64(48);
  j.tail_block = r.u64(56);
  j.tail_sequence = r.u64(64);
  if (state > static_cast<uint32_t>(JournalState::kDirty)) {
    return corrupt(BlockType::kJournalHeader, ctx.blkno, fmt::format("invalid state {}", state));
  }
  j.state = static_cast<JournalState>(state);
  if (j.region_start != ctx.blkno || j.tail_block <= j.region_start ||
      j.tail_block >= j.region_start + j.region_blocks) {
    return corrupt(BlockType::kJournalHeader, ctx.blkno, "tail outside the journal region");
  }
  return j;
}

void AgHeader::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  Writer w = begin(block);
  w.u32(32, ag_index);
  w.u32(36, bitmap_blocks);
  w.u64(40, ag_blocks);
  w.u64(48, free_blocks);
  w.u64(56, inode_count);
  seal_block(block, BlockType::kAgHeader, ctx, seq);
}

Result<AgHeader> AgHeader::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  AgHeader h;
  ASSIGN_OR_RETURN(h.seq, check_block(block, BlockType::kAgHeader, ctx));
  Reader r(block);
  h.ag_index = r.u32(32);
  h.bitmap_blocks = r.u32(36);
  h.ag_blocks = r.u64(40);
  h.free_blocks = r.u64(48);
  h.inode_count = r.u64(56);
  if (h.free_blocks > h.ag_blocks) {
    return corrupt(BlockType::kAgHeader, ctx.blkno, "more free blocks than blocks");
  }
  return h;
}

uint64_t BitmapBlock::count_set(size_t nbits) const {
  uint64_t n = 0;
  const size_t full = nbits / 8;
  for (size_t i = 0; i < full; ++i) n += std::popcount(bits[i]);
  for (size_t i = full * 8; i < nbits; ++i) n += test(i) ? 1 : 0;
  return n;
}

void BitmapBlock::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(bits.size() == block.size() - kBitsOffset, "bitmap size mismatch");
  Writer w = begin(block);
  w.u32(32, ag_index);
  w.u32(36, index);
  w.u64(40, first_bit);
  w.bytes(kBitsOffset, bits.data(), bits.size());
  seal_block(block, BlockType::kBitmap, ctx, seq);
}

Result<BitmapBlock> BitmapBlock::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  BitmapBlock b;
  ASSIGN_OR_RETURN(b.seq, check_block(block, BlockType::kBitmap, ctx));
  Reader r(block);
  b.ag_index = r.u32(32);
  b.index = r.u32(36);
  b.first_bit = r.u64(40);
  b.bits.resize(block.size() - kBitsOffset);
  r.bytes(kBitsOffset, b.bits.data(), b.bits.size());
  return b;
}

// ---------------------------------------------------------------------------------------
// Extent nodes and inodes

namespace {
constexpr size_t kExtentNodeEntries = 64;
}

size_t ExtentNode::capacity(uint32_t block_size) {
  return (block_size - kExtentNodeEntries) / kExtentSize;
}

void ExtentNode::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(entries.size() <= capacity(static_cast<uint32_t>(block.size())),
                 "extent node overfull");
  Writer w = begin(block);
  w.u64(32, owner);
  w.u16(40, static_cast<uint16_t>(entries.size()));
  w.u16(42, depth);
  encode_extents(w, kExtentNodeEntries, entries);
  seal_block(block, BlockType::kExtentNode, ctx, seq);
}

Result<ExtentNode> ExtentNode::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  ExtentNode n;
  ASSIGN_OR_RETURN(n.seq, check_block(block, BlockType::kExtentNode, ctx));
  Reader r(block);
  n.owner = r.u64(32);
  const uint16_t count = r.u16(40);
  n.depth = r.u16(42);
  if (count > capacity(static_cast<uint32_t>(block.size()))) {
    return corrupt(BlockType::kExtentNode, ctx.blkno, fmt::format("entry count {}", count));
  }
  n.entries = decode_extents(r, kExtentNodeEntries, count);
  return n;
}

size_t Inode::extent_root_capacity(uint32_t block_size) {
  return (block_size - kBodyOffset) / kExtentSize;
}

void Inode::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  const auto bs = static_cast<uint32_t>(block.size());
  Writer w = begin(block);
  w.u64(32, generation);
  w.u32(40, mode);
  w.u32(44, uid);
  w.u32(48, gid);
  w.u32(52, nlink);
  w.u64(56, size);
  w.u64(64, atime_ns);
  w.u64(72, mtime_ns);
  w.u64(80, ctime_ns);
  w.u64(88, btime_ns);
  w.u64(96, blocks);
  w.u32(104, flags);
  w.u32(108, rdev);
  w.u64(112, parent);
  w.u64(120, next_orphan);
  w.u64(128, xattr_block);
  w.u64(136, dir_entries);
  w.u32(144, dir_depth);
  if (flags & kInlineData) {
    SHAREDFS_CHECK(inline_data.size() <= inline_capacity(bs), "inline data overfull");
    w.u16(148, static_cast<uint16_t>(inline_data.size()));
    w.bytes(kBodyOffset, inline_data.data(), inline_data.size());
  } else {
    SHAREDFS_CHECK(extent_root.size() <= extent_root_capacity(bs), "extent root overfull");
    w.u16(150, static_cast<uint16_t>(extent_root.size()));
    w.u16(152, extent_depth);
    encode_extents(w, kBodyOffset, extent_root);
  }
  seal_block(block, BlockType::kInode, ctx, seq);
}

Result<Inode> Inode::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  const auto bs = static_cast<uint32_t>(block.size());
  Inode n;
  ASSIGN_OR_RETURN(n.seq, check_block(block, BlockType::kInode, ctx));
  Reader r(block);
  n.generation = r.u64(32);
  n.mode = r.u32(40);
  n.uid = r.u32(44);
  n.gid = r.u32(48);
  n.nlink = r.u32(52);
  n.size = r.u64(56);
  n.atime_ns = r.u64(64);
  n.mtime_ns = r.u64(72);
  n.ctime_ns = r.u64(80);
  n.btime_ns = r.u64(88);
  n.blocks = r.u64(96);
  n.flags = r.u32(104);
  n.rdev = r.u32(108);
  n.parent = r.u64(112);
  n.next_orphan = r.u64(120);
  n.xattr_block = r.u64(128);
  n.dir_entries = r.u64(136);
  n.dir_depth = r.u32(144);
  if (n.flags & kInlineData) {
    const uint16_t len = r.u16(148);
    if (len > inline_capacity(bs)) {
      return corrupt(BlockType::kInode, ctx.blkno, fmt::format("inline length {}", len));
    }
    n.inline_data.resize(len);
    r.bytes(kBodyOffset, n.inline_data.data(), len);
  } else {
    const uint16_t count = r.u16(150);
    if (count > extent_root_capacity(bs)) {
      return corrupt(BlockType::kInode, ctx.blkno, fmt::format("extent count {}", count));
    }
    n.extent_depth = r.u16(152);
    n.extent_root = decode_extents(r, kBodyOffset, count);
  }
  return n;
}

// ---------------------------------------------------------------------------------------
// Directories

size_t dir_entry_size(size_t name_len) { return (kDirEntryHeader + name_len + 7) / 8 * 8; }

uint32_t dir_name_hash(std::string_view name) {
  // crc32c mixes well enough for bucketing and is hardware-accelerated. The low bit is
  // forced so no name hashes to 0, which stays free as the readdir cookie of "the start".
  return crc32c(std::as_bytes(std::span(name.data(), name.size())), 0x53464448) | 1u;
}

Status encode_dir_entries(std::span<std::byte> area, const std::vector<DirEntry>& entries) {
  size_t need = 0;
  for (const DirEntry& e : entries) need += dir_entry_size(e.name.size());
  if (need > area.size()) {
    return make_status(Code::kNoSpace, "{} bytes of entries do not fit in {}", need, area.size());
  }
  if (!area.empty()) std::memset(area.data(), 0, area.size());  // data() may be null when empty
  Writer w(area);
  size_t off = 0;
  for (const DirEntry& e : entries) {
    SHAREDFS_CHECK(!e.name.empty() && e.name.size() <= kMaxNameLength, "bad entry name");
    const size_t rec = dir_entry_size(e.name.size());
    w.u64(off, e.ino);
    w.u32(off + 8, e.hash);
    w.u16(off + 12, static_cast<uint16_t>(rec));
    w.u8(off + 14, static_cast<uint8_t>(e.name.size()));
    w.u8(off + 15, static_cast<uint8_t>(e.type));
    w.bytes(off + kDirEntryHeader, e.name.data(), e.name.size());
    off += rec;
  }
  // A zero rec_len, or the end of the area, ends the list (the area was zeroed).
  return Status::ok();
}

Result<std::vector<DirEntry>> decode_dir_entries(std::span<const std::byte> area) {
  Reader r(area);
  std::vector<DirEntry> out;
  size_t off = 0;
  while (off + kDirEntryHeader <= area.size()) {
    const uint16_t rec = r.u16(off + 12);
    if (rec == 0) break;
    const uint8_t name_len = r.u8(off + 14);
    if (name_len == 0 || rec != dir_entry_size(name_len) || off + rec > area.size()) {
      return make_status(Code::kCorruption, "directory entry at offset {} is malformed", off);
    }
    DirEntry e;
    e.ino = r.u64(off);
    e.hash = r.u32(off + 8);
    e.type = static_cast<FileType>(r.u8(off + 15));
    e.name.assign(reinterpret_cast<const char*>(area.data() + off + kDirEntryHeader), name_len);
    if (e.name.find('/') != std::string::npos || e.name.find('\0') != std::string::npos) {
      return make_status(Code::kCorruption, "directory entry at offset {} has an invalid name",
                         off);
    }
    out.push_back(std::move(e));
    off += rec;
  }
  return out;
}

void DirLeaf::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  Writer w = begin(block);
  w.u64(32, owner);
  w.u16(40, depth);
  w.u16(42, static_cast<uint16_t>(entries.size()));
  w.u64(48, next_leaf);
  Status st = encode_dir_entries(block.subspan(kEntriesOffset), entries);
  SHAREDFS_CHECK(st.is_ok(), "directory leaf overfull");
  seal_block(block, BlockType::kDirLeaf, ctx, seq);
}

Result<DirLeaf> DirLeaf::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  DirLeaf l;
  ASSIGN_OR_RETURN(l.seq, check_block(block, BlockType::kDirLeaf, ctx));
  Reader r(block);
  l.owner = r.u64(32);
  l.depth = r.u16(40);
  const uint16_t count = r.u16(42);
  l.next_leaf = r.u64(48);
  auto entries = decode_dir_entries(block.subspan(kEntriesOffset));
  if (!entries) return entries.status().with_context(fmt::format("directory leaf {}", ctx.blkno));
  if (entries->size() != count) {
    return corrupt(BlockType::kDirLeaf, ctx.blkno,
                   fmt::format("holds {} entries, header says {}", entries->size(), count));
  }
  l.entries = std::move(*entries);
  return l;
}

size_t XattrBlock::bytes_for(const std::vector<Entry>& entries) {
  size_t n = 0;
  for (const auto& e : entries) n += kEntryHeader + e.name.size() + e.value.size();
  return n;
}

void XattrBlock::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(bytes_for(entries) <= area(static_cast<uint32_t>(block.size())),
                 "xattr block overfull");
  Writer w = begin(block);
  w.u64(32, owner);
  w.u32(40, static_cast<uint32_t>(entries.size()));
  size_t off = kEntriesOffset;
  for (const auto& e : entries) {
    SHAREDFS_CHECK(!e.name.empty() && e.name.size() <= 255, "xattr name length");
    w.u8(off, static_cast<uint8_t>(e.name.size()));
    w.u16(off + 2, static_cast<uint16_t>(e.value.size()));
    w.bytes(off + kEntryHeader, e.name.data(), e.name.size());
    w.bytes(off + kEntryHeader + e.name.size(), e.value.data(), e.value.size());
    off += kEntryHeader + e.name.size() + e.value.size();
  }
  seal_block(block, BlockType::kXattr, ctx, seq);
}

Result<XattrBlock> XattrBlock::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  XattrBlock x;
  ASSIGN_OR_RETURN(x.seq, check_block(block, BlockType::kXattr, ctx));
  Reader r(block);
  x.owner = r.u64(32);
  const uint32_t count = r.u32(40);
  size_t off = kEntriesOffset;
  for (uint32_t i = 0; i < count; ++i) {
    if (off + kEntryHeader > block.size()) {
      return corrupt(BlockType::kXattr, ctx.blkno, fmt::format("entry {} past the block", i));
    }
    Entry e;
    const size_t name_len = r.u8(off);
    const size_t value_len = r.u16(off + 2);
    if (name_len == 0 || off + kEntryHeader + name_len + value_len > block.size()) {
      return corrupt(BlockType::kXattr, ctx.blkno, fmt::format("entry {} has a bad length", i));
    }
    e.name.resize(name_len);
    r.bytes(off + kEntryHeader, e.name.data(), name_len);
    e.value.resize(value_len);
    r.bytes(off + kEntryHeader + name_len, e.value.data(), value_len);
    off += kEntryHeader + name_len + value_len;
    x.entries.push_back(std::move(e));
  }
  return x;
}

void DirIndex::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(leaves.size() <= capacity(static_cast<uint32_t>(block.size())),
                 "directory index overfull");
  Writer w = begin(block);
  w.u64(32, owner);
  w.u32(40, first_index);
  w.u32(44, static_cast<uint32_t>(leaves.size()));
  for (size_t i = 0; i < leaves.size(); ++i) w.u64(kPointersOffset + 8 * i, leaves[i]);
  seal_block(block, BlockType::kDirIndex, ctx, seq);
}

Result<DirIndex> DirIndex::decode(std::span<const std::byte> block, const BlockContext& ctx) {
  DirIndex d;
  ASSIGN_OR_RETURN(d.seq, check_block(block, BlockType::kDirIndex, ctx));
  Reader r(block);
  d.owner = r.u64(32);
  d.first_index = r.u32(40);
  const uint32_t count = r.u32(44);
  if (count > capacity(static_cast<uint32_t>(block.size()))) {
    return corrupt(BlockType::kDirIndex, ctx.blkno, fmt::format("pointer count {}", count));
  }
  d.leaves.resize(count);
  for (uint32_t i = 0; i < count; ++i) d.leaves[i] = r.u64(kPointersOffset + 8 * i);
  return d;
}

// ---------------------------------------------------------------------------------------
// Journal log blocks

void JournalDescriptor::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(entries.size() <= capacity(static_cast<uint32_t>(block.size())),
                 "journal descriptor overfull");
  Writer w = begin(block);
  w.u32(32, static_cast<uint32_t>(entries.size()));
  size_t off = kEntriesOffset;
  for (const Entry& e : entries) {
    w.u64(off, e.target);
    w.u32(off + 8, e.image_crc);
    off += kEntrySize;
  }
  seal_block(block, BlockType::kJournalDescriptor, ctx, seq);
}

Result<JournalDescriptor> JournalDescriptor::decode(std::span<const std::byte> block,
                                                    const BlockContext& ctx) {
  JournalDescriptor d;
  ASSIGN_OR_RETURN(d.seq, check_block(block, BlockType::kJournalDescriptor, ctx));
  Reader r(block);
  const uint32_t count = r.u32(32);
  if (count == 0 || count > capacity(static_cast<uint32_t>(block.size()))) {
    return corrupt(BlockType::kJournalDescriptor, ctx.blkno, fmt::format("entry count {}", count));
  }
  d.entries.resize(count);
  size_t off = kEntriesOffset;
  for (Entry& e : d.entries) {
    e.target = r.u64(off);
    e.image_crc = r.u32(off + 8);
    off += kEntrySize;
  }
  return d;
}

void JournalRevoke::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  SHAREDFS_CHECK(blocks.size() <= capacity(static_cast<uint32_t>(block.size())),
                 "journal revoke block overfull");
  Writer w = begin(block);
  w.u32(32, static_cast<uint32_t>(blocks.size()));
  for (size_t i = 0; i < blocks.size(); ++i) w.u64(kEntriesOffset + 8 * i, blocks[i]);
  seal_block(block, BlockType::kJournalRevoke, ctx, seq);
}

Result<JournalRevoke> JournalRevoke::decode(std::span<const std::byte> block,
                                            const BlockContext& ctx) {
  JournalRevoke v;
  ASSIGN_OR_RETURN(v.seq, check_block(block, BlockType::kJournalRevoke, ctx));
  Reader r(block);
  const uint32_t count = r.u32(32);
  if (count == 0 || count > capacity(static_cast<uint32_t>(block.size()))) {
    return corrupt(BlockType::kJournalRevoke, ctx.blkno, fmt::format("entry count {}", count));
  }
  v.blocks.resize(count);
  for (uint32_t i = 0; i < count; ++i) v.blocks[i] = r.u64(kEntriesOffset + 8 * i);
  return v;
}

void JournalCommit::encode(std::span<std::byte> block, const BlockContext& ctx) const {
  Writer w = begin(block);
  w.u32(32, log_blocks);
  w.u32(36, image_count);
  w.u64(40, commit_ns);
  seal_block(block, BlockType::kJournalCommit, ctx, seq);
}

Result<JournalCommit> JournalCommit::decode(std::span<const std::byte> block,
                                            const BlockContext& ctx) {
  JournalCommit c;
  ASSIGN_OR_RETURN(c.seq, check_block(block, BlockType::kJournalCommit, ctx));
  Reader r(block);
  c.log_blocks = r.u32(32);
  c.image_count = r.u32(36);
  c.commit_ns = r.u64(40);
  if (c.image_count > c.log_blocks) {
    return corrupt(BlockType::kJournalCommit, ctx.blkno, "more images than log blocks");
  }
  return c;
}

FileType file_type_of_mode(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return FileType::kRegular;
    case S_IFDIR:
      return FileType::kDirectory;
    case S_IFCHR:
      return FileType::kCharDev;
    case S_IFBLK:
      return FileType::kBlockDev;
    case S_IFIFO:
      return FileType::kFifo;
    case S_IFSOCK:
      return FileType::kSocket;
    case S_IFLNK:
      return FileType::kSymlink;
    default:
      return FileType::kUnknown;
  }
}

}  // namespace sharedfs::format
