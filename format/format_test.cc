#include "format/format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>

namespace sharedfs::format {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint64_t kGiB = uint64_t{1} << 30;

Superblock sample_superblock() {
  Superblock sb;
  auto g = plan_geometry({.device_bytes = kGiB});
  EXPECT_TRUE(g.is_ok()) << g.status().to_string();
  sb.geo = *g;
  for (int i = 0; i < 16; ++i) sb.uuid[i] = static_cast<uint8_t>(i * 7 + 1);
  sb.cluster_id = 0x1234567890abcdef;
  sb.created_ns = 1700000000000000000;
  sb.root_inode = sb.geo.ag_first_data_block(0);
  sb.label = "data";
  sb.cluster_name = "alpha";
  sb.seq = 3;
  return sb;
}

struct Buf {
  std::vector<std::byte> b = std::vector<std::byte>(kBs);
  std::span<std::byte> span() { return b; }
};

TEST(Superblock, RoundTrip) {
  Superblock sb = sample_superblock();
  Buf buf;
  sb.encode(buf.span(), 0);
  auto got = Superblock::decode(buf.span(), 0);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_TRUE(got->same_contents(sb));
  EXPECT_EQ(got->label, "data");
  EXPECT_EQ(got->cluster_name, "alpha");
  EXPECT_EQ(got->geo.total_blocks, kGiB / kBs);
  EXPECT_EQ(sniff_block_size(buf.span()), kBs);
}

TEST(Superblock, RejectsEveryFlippedByte) {
  Superblock sb = sample_superblock();
  Buf buf;
  sb.encode(buf.span(), 0);
  for (size_t i = 0; i < kBs; i += 37) {
    Buf copy = buf;
    copy.b[i] ^= std::byte{0x40};
    auto got = Superblock::decode(copy.span(), 0);
    ASSERT_FALSE(got.is_ok()) << "byte " << i;
    EXPECT_EQ(got.status().code(), Code::kCorruption);
  }
}

TEST(Superblock, RejectsWrongSelfBlockNumber) {
  Superblock sb = sample_superblock();
  Buf buf;
  sb.encode(buf.span(), 0);
  auto got = Superblock::decode(buf.span(), sb.geo.backup_superblock());
  ASSERT_FALSE(got.is_ok());
  EXPECT_NE(got.status().message().find("self block number"), std::string::npos);
}

TEST(Superblock, RejectsImpossibleGeometryEvenWithGoodChecksum) {
  Superblock sb = sample_superblock();
  sb.geo.ag_count += 5;
  Buf buf;
  sb.encode(buf.span(), 0);
  auto got = Superblock::decode(buf.span(), 0);
  ASSERT_FALSE(got.is_ok());
  EXPECT_EQ(got.status().code(), Code::kCorruption);
}

// Encodes a structure, decodes it back, and checks the common rejections: wrong magic
// (decoding as another type), wrong self block number, another file system's tag, a bad
// checksum and an unknown version.
template <typename T>
void check_common_rejections(const T& value, BlockType type) {
  const BlockContext ctx{.blkno = 77, .fs_tag = 0xfeedbeef};
  Buf buf;
  value.encode(buf.span(), ctx);
  auto ok = T::decode(buf.span(), ctx);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->seq, value.seq);

  EXPECT_FALSE(T::decode(buf.span(), {.blkno = 78, .fs_tag = ctx.fs_tag}).is_ok());
  EXPECT_FALSE(T::decode(buf.span(), {.blkno = 77, .fs_tag = 1}).is_ok());

  Buf bad_crc = buf;
  bad_crc.b[kBs - 1] ^= std::byte{1};
  auto r1 = T::decode(bad_crc.span(), ctx);
  ASSERT_FALSE(r1.is_ok());
  EXPECT_NE(r1.status().message().find("checksum"), std::string::npos);

  Buf bad_magic = buf;
  const uint32_t other = type == BlockType::kInode ? static_cast<uint32_t>(BlockType::kDirLeaf)
                                                   : static_cast<uint32_t>(BlockType::kInode);
  std::memcpy(bad_magic.b.data(), &other, 4);
  seal_block(bad_magic.span(), static_cast<BlockType>(other), ctx, 1);
  auto r2 = T::decode(bad_magic.span(), ctx);
  ASSERT_FALSE(r2.is_ok());
  EXPECT_NE(r2.status().message().find("magic"), std::string::npos);

  Buf bad_version = buf;
  bad_version.b[28] = std::byte{9};
  seal_block(bad_version.span(), type, ctx, value.seq);  // reseal rewrites version: undo
  bad_version.b[28] = std::byte{9};
  EXPECT_FALSE(T::decode(bad_version.span(), ctx).is_ok());
}

TEST(SlotTable, RoundTripAndRejections) {
  SlotTable t;
  t.seq = 9;
  t.slots.resize(16);
  t.slots[3] = {SlotState::kInUse, 3, {1, 2, 3}, 0x5346000000010003, 7, 123};
  Buf buf;
  t.encode(buf.span(), {1, 5});
  auto got = SlotTable::decode(buf.span(), {1, 5});
  ASSERT_TRUE(got.is_ok());
  ASSERT_EQ(got->slots.size(), 16u);
  EXPECT_EQ(got->slots[3].state, SlotState::kInUse);
  EXPECT_EQ(got->slots[3].reservation_key, 0x5346000000010003u);
  EXPECT_EQ(got->slots[3].host_id[2], 3);
  EXPECT_EQ(got->slots[3].mounted_ns, 123u);
  check_common_rejections(t, BlockType::kSlotTable);
}

TEST(Heartbeat, RoundTripAndRejections) {
  Heartbeat h{.seq = 1,
              .slot = 2,
              .node_id = 2,
              .counter = 99,
              .timestamp_ns = 5,
              .mount_generation = 4,
              .state = HeartbeatState::kMounted,
              .interval_ms = 500};
  Buf buf;
  h.encode(buf.span(), {10, 1});
  auto got = Heartbeat::decode(buf.span(), {10, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->counter, 99u);
  EXPECT_EQ(got->state, HeartbeatState::kMounted);
  EXPECT_EQ(got->interval_ms, 500u);
  check_common_rejections(h, BlockType::kHeartbeat);
}

TEST(OrphanList, RoundTripAndRejections) {
  OrphanList o{.seq = 4, .slot = 1, .count = 2, .head = 4242};
  Buf buf;
  o.encode(buf.span(), {3, 1});
  auto got = OrphanList::decode(buf.span(), {3, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->head, 4242u);
  check_common_rejections(o, BlockType::kOrphanList);
  OrphanList inconsistent{.count = 1, .head = 0};
  inconsistent.encode(buf.span(), {3, 1});
  EXPECT_FALSE(OrphanList::decode(buf.span(), {3, 1}).is_ok());
}

TEST(JournalHeader, RoundTripAndRejections) {
  JournalHeader j{.seq = 2,
                  .slot = 5,
                  .state = JournalState::kDirty,
                  .region_start = 77,
                  .region_blocks = 1024,
                  .tail_block = 100,
                  .tail_sequence = 42};
  Buf buf;
  j.encode(buf.span(), {77, 1});
  auto got = JournalHeader::decode(buf.span(), {77, 1});
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(got->state, JournalState::kDirty);
  EXPECT_EQ(got->tail_sequence, 42u);
  check_common_rejections(j, BlockType::kJournalHeader);
  j.tail_block = 77 + 1024;  // outside its region
  j.encode(buf.span(), {77, 1});
  EXPECT_FALSE(JournalHeader::decode(buf.span(), {77, 1}).is_ok());
}

TEST(AgHeader, RoundTripAndRejections) {
  AgHeader h{.seq = 1,
             .ag_index = 3,
             .bitmap_blocks = 2,
             .ag_blocks = 40000,
             .free_blocks = 39000,
             .inode_count = 5};
  Buf buf;
  h.encode(buf.span(), {12, 1});
  auto got = AgHeader::decode(buf.span(), {12, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->free_blocks, 39000u);
  check_common_rejections(h, BlockType::kAgHeader);
}

TEST(BitmapBlock, RoundTripAndCount) {
  BitmapBlock b{.seq = 1, .ag_index = 2, .index = 1, .first_bit = 32256};
  b.bits.assign(kBs - BitmapBlock::kBitsOffset, 0);
  b.set(0, true);
  b.set(9, true);
  b.set(100, true);
  b.set(9, false);
  EXPECT_EQ(b.count_set(BitmapBlock::bits_per_block(kBs)), 2u);
  EXPECT_EQ(b.count_set(50), 1u);
  Buf buf;
  b.encode(buf.span(), {14, 1});
  auto got = BitmapBlock::decode(buf.span(), {14, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_TRUE(got->test(100));
  EXPECT_FALSE(got->test(9));
  EXPECT_EQ(got->first_bit, 32256u);
  check_common_rejections(b, BlockType::kBitmap);
}

TEST(Inode, RoundTripExtentsAndInline) {
  Inode n;
  n.seq = 12;
  n.generation = 3;
  n.mode = 0100644;
  n.nlink = 1;
  n.size = uint64_t{1} << 40;  // 1 TiB
  n.extent_depth = 1;
  n.extent_root = {{0, 5000, 0, 0}, {1u << 20, 6000, 0, 0}};
  Buf buf;
  n.encode(buf.span(), {500, 1});
  auto got = Inode::decode(buf.span(), {500, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->size, uint64_t{1} << 40);
  EXPECT_EQ(got->extent_root, n.extent_root);
  EXPECT_EQ(got->extent_depth, 1);
  check_common_rejections(n, BlockType::kInode);

  Inode s;
  s.mode = 0120777;
  s.flags = Inode::kInlineData;
  s.inline_data.assign({'t', 'a', 'r', 'g', 'e', 't'});
  s.size = 6;
  s.encode(buf.span(), {501, 1});
  auto got2 = Inode::decode(buf.span(), {501, 1});
  ASSERT_TRUE(got2.is_ok());
  EXPECT_EQ(got2->inline_data, s.inline_data);
  EXPECT_EQ(Inode::extent_root_capacity(kBs), (kBs - Inode::kBodyOffset) / kExtentSize);
}

TEST(ExtentNode, RoundTripAndRejections) {
  ExtentNode n{.seq = 2, .owner = 500, .depth = 0};
  for (uint32_t i = 0; i < ExtentNode::capacity(kBs); ++i) {
    n.entries.push_back({uint64_t{i} * 100, 10000 + uint64_t{i} * 100, 100, i % 2});
  }
  Buf buf;
  n.encode(buf.span(), {900, 1});
  auto got = ExtentNode::decode(buf.span(), {900, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->entries, n.entries);
  check_common_rejections(n, BlockType::kExtentNode);
}

TEST(DirLeaf, RoundTripAndRejections) {
  DirLeaf l{.seq = 1, .owner = 500, .depth = 3, .next_leaf = 0};
  for (int i = 0; i < 50; ++i) {
    std::string name = "file-" + std::to_string(i);
    l.entries.push_back({uint64_t(1000 + i), dir_name_hash(name), FileType::kRegular, name});
  }
  l.entries.push_back(
      {2000, dir_name_hash(std::string(255, 'x')), FileType::kDirectory, std::string(255, 'x')});
  Buf buf;
  l.encode(buf.span(), {901, 1});
  auto got = DirLeaf::decode(buf.span(), {901, 1});
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(got->entries, l.entries);
  check_common_rejections(l, BlockType::kDirLeaf);
}

TEST(DirEntries, TooManyDoNotFitAndMalformedAreRejected) {
  std::vector<std::byte> area(256);
  std::vector<DirEntry> many(20, {1, 1, FileType::kRegular, "abcdefgh"});
  EXPECT_EQ(encode_dir_entries(area, many).code(), Code::kNoSpace);
  std::vector<DirEntry> two = {{1, 5, FileType::kRegular, "a"}, {2, 6, FileType::kFifo, "bb"}};
  ASSERT_TRUE(encode_dir_entries(area, two));
  auto got = decode_dir_entries(area);
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(*got, two);
  area[12] = std::byte{200};  // rec_len of the first entry
  EXPECT_EQ(decode_dir_entries(area).status().code(), Code::kCorruption);
}

TEST(DirIndex, RoundTripAndRejections) {
  DirIndex d{.seq = 1, .owner = 500, .first_index = 1024};
  for (uint64_t i = 0; i < DirIndex::capacity(kBs); ++i) d.leaves.push_back(7000 + i);
  Buf buf;
  d.encode(buf.span(), {902, 1});
  auto got = DirIndex::decode(buf.span(), {902, 1});
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->leaves, d.leaves);
  check_common_rejections(d, BlockType::kDirIndex);
}

TEST(JournalBlocks, RoundTripAndRejections) {
  JournalDescriptor d{.seq = 41};
  for (uint64_t i = 0; i < JournalDescriptor::capacity(kBs); ++i) {
    d.entries.push_back({1000 + i, static_cast<uint32_t>(i * 31)});
  }
  Buf buf;
  d.encode(buf.span(), {50, 9});
  auto gd = JournalDescriptor::decode(buf.span(), {50, 9});
  ASSERT_TRUE(gd.is_ok());
  EXPECT_EQ(gd->entries, d.entries);
  EXPECT_EQ(gd->seq, 41u);
  check_common_rejections(d, BlockType::kJournalDescriptor);

  JournalRevoke v{.seq = 41, .blocks = {7, 9, 11}};
  v.encode(buf.span(), {51, 9});
  auto gv = JournalRevoke::decode(buf.span(), {51, 9});
  ASSERT_TRUE(gv.is_ok());
  EXPECT_EQ(gv->blocks, v.blocks);
  check_common_rejections(v, BlockType::kJournalRevoke);

  JournalCommit c{.seq = 41, .log_blocks = 5, .image_count = 3, .commit_ns = 77};
  c.encode(buf.span(), {52, 9});
  auto gc = JournalCommit::decode(buf.span(), {52, 9});
  ASSERT_TRUE(gc.is_ok());
  EXPECT_EQ(gc->log_blocks, 5u);
  EXPECT_EQ(gc->image_count, 3u);
  check_common_rejections(c, BlockType::kJournalCommit);
}

TEST(DirNameHash, IsNeverZero) {
  EXPECT_NE(dir_name_hash(""), 0u);
  EXPECT_NE(dir_name_hash("a"), dir_name_hash("b"));
}

TEST(Geometry, DefaultsFor16NodesOn1GiB) {
  auto g = plan_geometry({.device_bytes = kGiB});
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(g->slots, 16u);
  EXPECT_EQ(g->journal_blocks * kBs, 4u << 20);  // small device: minimum default journal
  EXPECT_GE(g->ag_count, 16u);
  EXPECT_EQ(g->ag_start % 256, 0u);  // 1 MiB aligned
  EXPECT_LT(g->ag_header_blkno(g->ag_count - 1) + g->ag_size(g->ag_count - 1),
            g->backup_superblock() + 1);
  EXPECT_EQ(g->ag_of(g->ag_first_data_block(1)), 1u);
  EXPECT_FALSE(g->ag_of(5).has_value());
}

TEST(Geometry, DefaultsFor1TiB) {
  auto g = plan_geometry({.device_bytes = kGiB * 1024});
  ASSERT_TRUE(g.is_ok());
  EXPECT_EQ(g->journal_blocks * kBs, 128u << 20);
  EXPECT_EQ(g->ag_blocks * kBs, kGiB);
  EXPECT_GT(g->ag_count, 1000u);
  EXPECT_EQ(g->ag_bitmap_blocks,
            (g->ag_blocks + g->bits_per_bitmap_block() - 1) / g->bits_per_bitmap_block());
}

TEST(Geometry, TooSmallSaysWhatWouldFit) {
  auto g = plan_geometry({.device_bytes = 64u << 20, .slots = 16, .journal_bytes = 8u << 20});
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), Code::kNoSpace);
  EXPECT_NE(g.status().message().find("--nodes"), std::string::npos) << g.status().message();
  EXPECT_NE(g.status().message().find("--journal-size"), std::string::npos);
}

TEST(Geometry, RejectsBadParameters) {
  EXPECT_EQ(plan_geometry({.device_bytes = kGiB, .block_size = 3000}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(plan_geometry({.device_bytes = kGiB, .slots = 0}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(plan_geometry({.device_bytes = kGiB, .slots = kMaxSlots + 1}).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(plan_geometry({.device_bytes = kGiB, .journal_bytes = 4096}).status().code(),
            Code::kInvalidArgument);
}

TEST(Geometry, LargerBlockSizesGiveDecodableSuperblocks) {
  for (uint32_t bs : {8192u, 16384u, 32768u, 65536u}) {
    for (uint64_t size : {2 * kGiB, 64 * kGiB}) {
      auto g = plan_geometry({.device_bytes = size, .block_size = bs});
      ASSERT_TRUE(g.is_ok()) << bs << ": " << g.status().to_string();
      EXPECT_EQ(g->block_size, bs);
      EXPECT_GE(g->journal_blocks, kMinJournalBlocks);
      Superblock sb;
      sb.geo = *g;
      std::vector<std::byte> buf(bs);
      sb.encode(buf, 0);
      auto got = Superblock::decode(buf, 0);
      EXPECT_TRUE(got.is_ok()) << bs << "/" << size << ": " << got.status().to_string();
    }
  }
}

}  // namespace
}  // namespace sharedfs::format
