// format/ — the on-disk layout of sharedfs. docs/on-disk-format.md describes every
// structure byte by byte; keep the two in step.
//
// Every metadata block starts with a 32-byte BlockHeader: magic, crc32c of the whole block
// (computed with the crc field zero), the block's own number, a sequence number (the
// journal sequence of its last change), the file system's tag (crc32c of its uuid: a block
// left by an earlier mkfs does not validate) and a format version. Decoding checks all of
// them and returns Code::kCorruption naming the block; it never trusts a field before the
// checksum has passed.
//
// All integers are little-endian. Each structure is encoded into, and decoded from, a
// whole block buffer of the file system's block size.
//
// Thread-safety: pure functions over caller-owned buffers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/types.h"

namespace sharedfs::format {

inline constexpr uint16_t kFormatVersion = 1;
inline constexpr uint32_t kDefaultBlockSize = 4096;
inline constexpr uint32_t kMinBlockSize = 4096;
inline constexpr uint32_t kMaxBlockSize = 65536;
inline constexpr uint32_t kMaxSlots = 32;
inline constexpr uint32_t kDefaultSlots = 16;
inline constexpr size_t kHeaderSize = 32;
inline constexpr size_t kLabelSize = 64;
inline constexpr size_t kClusterNameSize = 64;
inline constexpr char kSignature[8] = {'S', 'H', 'A', 'R', 'E', 'D', 'F', 'S'};

// Magic numbers; as bytes on disk they read "SFSB", "SFST", ... in a hex dump.
enum class BlockType : uint32_t {
  kSuperblock = 0x42534653,         // "SFSB"
  kSlotTable = 0x54534653,          // "SFST"
  kHeartbeat = 0x42484653,          // "SFHB"
  kOrphanList = 0x524f4653,         // "SFOR"
  kJournalHeader = 0x484a4653,      // "SFJH"
  kAgHeader = 0x47414653,           // "SFAG"
  kBitmap = 0x4d424653,             // "SFBM"
  kInode = 0x4e494653,              // "SFIN"
  kExtentNode = 0x58454653,         // "SFEX"
  kDirLeaf = 0x4c444653,            // "SFDL"
  kDirIndex = 0x49444653,           // "SFDI"
  kJournalDescriptor = 0x444a4653,  // "SFJD"
  kJournalRevoke = 0x524a4653,      // "SFJR"
  kJournalCommit = 0x434a4653,      // "SFJC"
  kXattr = 0x41584653,              // "SFXA"
};
std::string_view block_type_name(BlockType type);

// Where a block lives and which file system it belongs to: what decode checks against.
struct BlockContext {
  uint64_t blkno = 0;
  uint32_t fs_tag = 0;
};

uint32_t fs_tag_of(const std::array<uint8_t, 16>& uuid);
// "0123abcd-..." as blkid and mkfs print a uuid.
std::string uuid_to_string(const std::array<uint8_t, 16>& uuid);

// Writes the header (magic, self block number, seq, tag, version) and the checksum. The
// structure's fields must already be in `block`; call this last.
void seal_block(std::span<std::byte> block, BlockType type, const BlockContext& ctx, uint64_t seq);
// Validates magic, checksum, self block number, tag and version; returns the seq.
Result<uint64_t> check_block(std::span<const std::byte> block, BlockType type,
                             const BlockContext& ctx);
// The magic found in a block, whatever it is (for fsck and debug tools).
uint32_t peek_magic(std::span<const std::byte> block);

// ---------------------------------------------------------------------------------------
// Geometry: where everything is. Fixed at mkfs; recorded in the superblock.
//
//   block 0                      primary superblock
//   block 1                      slot table
//   heartbeat_start + s          heartbeat block of slot s
//   orphan_start + s             orphan-list block of slot s
//   journal_start + s * journal_blocks   journal region of slot s (first block: header)
//   ag_start + a * ag_blocks     allocation group a: header, bitmap blocks, data
//   total_blocks - 1             backup superblock
struct Geometry {
  uint32_t block_size = kDefaultBlockSize;
  uint32_t slots = kDefaultSlots;
  uint64_t total_blocks = 0;  // device size in blocks, backup superblock included
  uint64_t slot_table_blkno = 1;
  uint64_t heartbeat_start = 0;
  uint64_t orphan_start = 0;
  uint64_t journal_start = 0;
  uint64_t journal_blocks = 0;  // per slot, header included
  uint64_t ag_start = 0;
  uint64_t ag_blocks = 0;  // blocks per full AG
  uint32_t ag_count = 0;
  uint64_t last_ag_blocks = 0;    // blocks in the last AG (== ag_blocks unless partial)
  uint32_t ag_bitmap_blocks = 0;  // bitmap blocks per full AG

  uint64_t backup_superblock() const { return total_blocks - 1; }
  uint64_t heartbeat_blkno(uint32_t slot) const { return heartbeat_start + slot; }
  uint64_t orphan_blkno(uint32_t slot) const { return orphan_start + slot; }
  uint64_t journal_header_blkno(uint32_t slot) const {
    return journal_start + uint64_t{slot} * journal_blocks;
  }
  uint64_t ag_header_blkno(uint32_t ag) const { return ag_start + uint64_t{ag} * ag_blocks; }
  uint64_t ag_size(uint32_t ag) const { return ag + 1 == ag_count ? last_ag_blocks : ag_blocks; }
  // Bitmap blocks of AG `ag` follow its header.
  uint32_t bitmap_blocks(uint32_t ag) const;
  uint64_t bitmap_blkno(uint32_t ag, uint32_t index) const {
    return ag_header_blkno(ag) + 1 + index;
  }
  // First block of AG `ag` that is not header or bitmap.
  uint64_t ag_first_data_block(uint32_t ag) const {
    return ag_header_blkno(ag) + 1 + bitmap_blocks(ag);
  }
  // Number of bits one bitmap block carries.
  uint64_t bits_per_bitmap_block() const;
  // The AG containing `blkno`, if any.
  std::optional<uint32_t> ag_of(uint64_t blkno) const;
};

struct LayoutRequest {
  uint64_t device_bytes = 0;
  uint32_t block_size = kDefaultBlockSize;
  uint32_t slots = kDefaultSlots;
  uint64_t journal_bytes = 0;  // per slot; 0 = default for the device size
  uint64_t ag_bytes = 0;       // 0 = default for the device size
};

// Plans the geometry for a device, or explains (kNoSpace/kInvalidArgument) why it cannot,
// naming what would fit.
Result<Geometry> plan_geometry(const LayoutRequest& req);
// Smallest AG we create: below this the per-AG header and bitmap overhead dominates.
inline constexpr uint64_t kMinAgBlocks = 1024;
inline constexpr uint64_t kMinJournalBlocks = 256;  // 1 MiB at 4 KiB blocks

// ---------------------------------------------------------------------------------------
// Structures.

struct Superblock {
  uint64_t seq = 0;
  Geometry geo;
  std::array<uint8_t, 16> uuid{};
  uint64_t cluster_id = 0;
  uint64_t created_ns = 0;  // CLOCK_REALTIME at mkfs
  uint32_t compat_features = 0;
  uint32_t incompat_features = 0;  // a reader refuses any bit it does not know
  uint32_t ro_compat_features = 0;
  // tunefs.sharedfs is rewriting the slot area (slot table, heartbeats, orphan lists,
  // journal headers) for a new slot count or journal size: the superblock already
  // describes the new layout, the blocks may not yet. Nothing may mount or check the device
  // until tunefs, run again, has finished (mkfs/tunefs.h).
  static constexpr uint32_t kIncompatSlotAreaRewrite = 1u << 0;
  static constexpr uint32_t kKnownIncompatFeatures = kIncompatSlotAreaRewrite;
  // While kIncompatSlotAreaRewrite is set: the tail sequence the rewritten journal headers
  // get, above every sequence any log block of the old layout carries. Zero otherwise.
  uint64_t rewrite_sequence = 0;
  uint64_t root_inode = 0;
  std::string label;         // up to 63 bytes
  std::string cluster_name;  // up to 63 bytes

  uint32_t fs_tag() const { return fs_tag_of(uuid); }
  // Encodes into `block` for block number `blkno` (0 for the primary, the backup's).
  void encode(std::span<std::byte> block, uint64_t blkno) const;
  // Decodes and validates: header, signature, geometry consistency.
  static Result<Superblock> decode(std::span<const std::byte> block, uint64_t blkno);
  // Compares everything but the block number; used to check primary against backup.
  bool same_contents(const Superblock& other) const;
};

// Reads the block size out of a superblock buffer of at least 4096 bytes without
// validating anything else, so a reader can size its next read. 0 if not a superblock.
uint32_t sniff_block_size(std::span<const std::byte> first_4k);

enum class SlotState : uint32_t { kFree = 0, kInUse = 1 };

struct SlotEntry {
  SlotState state = SlotState::kFree;
  uint32_t node_id = 0;
  std::array<uint8_t, 16> host_id{};
  uint64_t reservation_key = 0;
  uint64_t mount_generation = 0;
  uint64_t mounted_ns = 0;
};

struct SlotTable {
  uint64_t seq = 0;
  std::vector<SlotEntry> slots;  // exactly Geometry::slots entries

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<SlotTable> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

// kFenced and kRecovered are written into a dead node's block by the survivor that fenced
// it (`by_node`): fenced, its journal not yet replayed; replayed and its slot given back.
enum class HeartbeatState : uint32_t {
  kIdle = 0,
  kMounted = 1,
  kWithdrawn = 2,
  kFenced = 3,
  kRecovered = 4,
};
std::string_view heartbeat_state_name(HeartbeatState state);

struct Heartbeat {
  uint64_t seq = 0;
  uint32_t slot = 0;
  uint32_t node_id = 0;
  uint64_t counter = 0;       // bumped on every beat; a still-advancing counter = alive
  uint64_t timestamp_ns = 0;  // writer's CLOCK_REALTIME, informational only
  uint64_t mount_generation = 0;
  HeartbeatState state = HeartbeatState::kIdle;
  uint32_t interval_ms = 0;
  uint32_t by_node = 0;  // kFenced, kRecovered: the node that fenced / recovered this slot

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<Heartbeat> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

struct OrphanList {
  uint64_t seq = 0;
  uint32_t slot = 0;
  uint32_t count = 0;
  uint64_t head = 0;  // first orphan inode (linked through Inode::next_orphan); 0 = empty

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<OrphanList> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

enum class JournalState : uint32_t { kClean = 0, kDirty = 1 };

struct JournalHeader {
  uint64_t seq = 0;
  uint32_t slot = 0;
  JournalState state = JournalState::kClean;
  uint64_t region_start = 0;   // this block
  uint64_t region_blocks = 0;  // header included
  uint64_t tail_block = 0;     // first log block to replay from (region_start + 1 when empty)
  uint64_t tail_sequence = 1;  // sequence of the transaction expected at tail_block

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<JournalHeader> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

struct AgHeader {
  uint64_t seq = 0;
  uint32_t ag_index = 0;
  uint32_t bitmap_blocks = 0;
  uint64_t ag_blocks = 0;    // blocks in this AG, header and bitmaps included
  uint64_t free_blocks = 0;  // zero bits in this AG's bitmap
  uint64_t inode_count = 0;  // allocated inodes in this AG

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<AgHeader> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

// One bitmap block: bit i (LSB first within each byte) is block first_bit + i of the AG
// (counted from the AG header); 1 = in use. Bits past the AG's end are set.
struct BitmapBlock {
  static constexpr size_t kBitsOffset = 64;
  uint64_t seq = 0;
  uint32_t ag_index = 0;
  uint32_t index = 0;         // position among the AG's bitmap blocks
  uint64_t first_bit = 0;     // AG-relative block number of bit 0
  std::vector<uint8_t> bits;  // (block_size - kBitsOffset) bytes

  static size_t bits_per_block(uint32_t block_size) { return (block_size - kBitsOffset) * 8; }
  bool test(size_t i) const { return (bits[i / 8] >> (i % 8)) & 1; }
  void set(size_t i, bool v) {
    if (v) {
      bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    } else {
      bits[i / 8] &= static_cast<uint8_t>(~(1u << (i % 8)));
    }
  }
  uint64_t count_set(size_t nbits) const;

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<BitmapBlock> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

struct Extent {
  uint64_t logical = 0;   // file block
  uint64_t physical = 0;  // device block (for an index entry: the child node)
  uint32_t length = 0;    // blocks (0 in index entries)
  uint32_t flags = 0;     // kExtentUnwritten
  static constexpr uint32_t kUnwritten = 1;
  bool operator==(const Extent&) const = default;
};
inline constexpr size_t kExtentSize = 24;

// Root (in the inode) or node (own block) of an extent tree. depth 0: entries are leaf
// extents; depth > 0: entries index child nodes by first logical block.
struct ExtentNode {
  uint64_t seq = 0;
  uint64_t owner = 0;  // inode number
  uint16_t depth = 0;
  std::vector<Extent> entries;

  static size_t capacity(uint32_t block_size);  // entries per node block
  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<ExtentNode> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

enum class FileType : uint8_t {
  kUnknown = 0,
  kRegular = 1,
  kDirectory = 2,
  kCharDev = 3,
  kBlockDev = 4,
  kFifo = 5,
  kSocket = 6,
  kSymlink = 7,
};
// The directory-entry type of an inode mode (its S_IFMT bits); kUnknown for anything else.
FileType file_type_of_mode(uint32_t mode);

struct Inode {
  // flags
  static constexpr uint32_t kInlineData = 1u << 0;  // data (or dir entries) in the inode
  static constexpr uint32_t kOrphan = 1u << 1;      // on its slot's orphan list
  static constexpr uint32_t kHashedDir = 1u << 2;   // directory with a hash index

  static constexpr size_t kBodyOffset = 256;  // inline data / extent root start here

  uint64_t seq = 0;
  uint64_t generation = 0;
  uint32_t mode = 0;  // S_IFMT bits and permissions, as st_mode
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t nlink = 0;
  uint64_t size = 0;
  uint64_t atime_ns = 0;
  uint64_t mtime_ns = 0;
  uint64_t ctime_ns = 0;
  uint64_t btime_ns = 0;
  uint64_t blocks = 0;  // data and tree blocks owned, in fs blocks
  uint32_t flags = 0;
  uint32_t rdev = 0;
  uint64_t parent = 0;  // directories: the parent directory's inode
  uint64_t next_orphan = 0;
  uint64_t xattr_block = 0;
  uint64_t dir_entries = 0;  // directories: live entries
  uint32_t dir_depth = 0;    // hashed directories: global depth of the hash table
  // Body: inline bytes when kInlineData, else the extent tree root.
  std::vector<uint8_t> inline_data;
  uint16_t extent_depth = 0;
  std::vector<Extent> extent_root;

  static size_t inline_capacity(uint32_t block_size) { return block_size - kBodyOffset; }
  static size_t extent_root_capacity(uint32_t block_size);
  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<Inode> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

// A directory entry as stored in leaf blocks and inline directories.
struct DirEntry {
  uint64_t ino = 0;
  uint32_t hash = 0;  // dir_name_hash(name)
  FileType type = FileType::kUnknown;
  std::string name;  // 1..255 bytes, no '/' or NUL
  bool operator==(const DirEntry&) const = default;
};
inline constexpr size_t kMaxNameLength = 255;
inline constexpr size_t kDirEntryHeader = 16;  // ino, hash, rec_len, name_len, type
// Bytes an entry takes (header + name, padded to 8).
size_t dir_entry_size(size_t name_len);
uint32_t dir_name_hash(std::string_view name);

// Packs entries back to back; returns kNoSpace if they do not fit in `area`.
Status encode_dir_entries(std::span<std::byte> area, const std::vector<DirEntry>& entries);
Result<std::vector<DirEntry>> decode_dir_entries(std::span<const std::byte> area);

struct DirLeaf {
  static constexpr size_t kEntriesOffset = 64;
  uint64_t seq = 0;
  uint64_t owner = 0;
  uint16_t depth = 0;             // local depth of this leaf in the hash table
  uint64_t next_leaf = 0;         // overflow chain for entries sharing one hash prefix
  std::vector<DirEntry> entries;  // sorted by (hash, name)

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<DirLeaf> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

// A block of the directory's hash table: leaf pointers for table slots
// [first_index, first_index + leaves.size()).
struct DirIndex {
  static constexpr size_t kPointersOffset = 64;
  uint64_t seq = 0;
  uint64_t owner = 0;
  uint32_t first_index = 0;
  std::vector<uint64_t> leaves;

  static size_t capacity(uint32_t block_size) { return (block_size - kPointersOffset) / 8; }
  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<DirIndex> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

// An inode's extended attributes (Inode::xattr_block): name/value pairs packed back to back
// from kEntriesOffset, sorted by name. Each entry: u8 name length, u8 reserved, u16 value
// length, then the name (with its namespace prefix, e.g. "user.") and the value.
struct XattrBlock {
  static constexpr size_t kEntriesOffset = 64;
  static constexpr size_t kEntryHeader = 4;
  struct Entry {
    std::string name;  // 1..255 bytes
    std::vector<uint8_t> value;
    bool operator==(const Entry&) const = default;
  };
  uint64_t seq = 0;
  uint64_t owner = 0;  // inode number
  std::vector<Entry> entries;

  // Bytes the entries take; they fit when this is <= area(block_size).
  static size_t bytes_for(const std::vector<Entry>& entries);
  static size_t area(uint32_t block_size) { return block_size - kEntriesOffset; }
  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<XattrBlock> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

// ---------------------------------------------------------------------------------------
// Journal log blocks (journal/ writes and replays them). A transaction in the log is one or
// more descriptor and revoke blocks, each descriptor followed by the images it lists, then
// one commit block; all carry the transaction's sequence number as their header seq and
// their own log position as their block number. A transaction counts only if its commit
// block is valid and every image matches the checksum its descriptor recorded.

struct JournalDescriptor {
  static constexpr size_t kEntriesOffset = 64;
  static constexpr size_t kEntrySize = 16;
  struct Entry {
    uint64_t target = 0;     // where the image belongs on the device
    uint32_t image_crc = 0;  // crc32c of the image as logged
    bool operator==(const Entry&) const = default;
  };
  uint64_t seq = 0;
  std::vector<Entry> entries;  // the images that follow this block, in order

  static size_t capacity(uint32_t block_size) { return (block_size - kEntriesOffset) / kEntrySize; }
  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<JournalDescriptor> decode(std::span<const std::byte> block,
                                          const BlockContext& ctx);
};

// Blocks whose images in this or earlier transactions must not be replayed: their newer
// contents went to the device in place (checkpointed before a lock was released) and may
// since have been changed by another node.
struct JournalRevoke {
  static constexpr size_t kEntriesOffset = 64;
  uint64_t seq = 0;
  std::vector<uint64_t> blocks;

  static size_t capacity(uint32_t block_size) { return (block_size - kEntriesOffset) / 8; }
  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<JournalRevoke> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

struct JournalCommit {
  uint64_t seq = 0;
  uint32_t log_blocks = 0;  // blocks of this transaction before the commit block
  uint32_t image_count = 0;
  uint64_t commit_ns = 0;  // CLOCK_REALTIME, informational

  void encode(std::span<std::byte> block, const BlockContext& ctx) const;
  static Result<JournalCommit> decode(std::span<const std::byte> block, const BlockContext& ctx);
};

}  // namespace sharedfs::format
