#include "mkfs/mkfs.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "common/test_util.h"
#include "journal/journal.h"

namespace sharedfs::mkfs {
namespace {

namespace fs = std::filesystem;
using device::AlignedBuffer;

constexpr uint64_t kMiB = 1 << 20;

class MkfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("mkfs-test");
    image_ = (dir_ / "disk.img").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  device::OpenDevice open_image(uint64_t size) {
    if (!fs::exists(image_)) testing::make_sparse_file(image_, size);
    auto dev = device::open_file_device(image_, {});
    EXPECT_TRUE(dev.is_ok()) << dev.status().to_string();
    return std::move(*dev);
  }

  format::Superblock format(device::BlockDevice& dev, MkfsOptions opts = {}) {
    auto sb = make_filesystem(dev, opts);
    EXPECT_TRUE(sb.is_ok()) << sb.status().to_string();
    return *sb;
  }

  FsckReport fsck(device::BlockDevice& dev, bool repair = false) {
    auto r = check_filesystem(dev, {.repair = repair});
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : FsckReport{};
  }

  static std::string describe(const FsckReport& r) {
    std::string s;
    for (const auto& p : r.problems) {
      s += std::to_string(p.blkno) + ": " + p.structure + ": " + p.what + "\n";
    }
    return s;
  }

  fs::path dir_;
  std::string image_;
};

// Every metadata block mkfs writes, by the geometry.
std::vector<uint64_t> metadata_blocks(const format::Superblock& sb) {
  const auto& g = sb.geo;
  std::vector<uint64_t> b = {0, g.backup_superblock(), g.slot_table_blkno, sb.root_inode};
  for (uint32_t s = 0; s < g.slots; ++s) {
    b.push_back(g.heartbeat_blkno(s));
    b.push_back(g.orphan_blkno(s));
    b.push_back(g.journal_header_blkno(s));
  }
  for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
    b.push_back(g.ag_header_blkno(ag));
    for (uint32_t i = 0; i < g.bitmap_blocks(ag); ++i) b.push_back(g.bitmap_blkno(ag, i));
  }
  return b;
}

void flip_byte(device::BlockDevice& dev, uint64_t blkno, uint32_t bs, size_t offset) {
  AlignedBuffer buf(bs);
  ASSERT_TRUE(dev.read(blkno * bs, buf.span()));
  buf.data()[offset] ^= std::byte{0x5a};
  ASSERT_TRUE(dev.write(blkno * bs, buf.span()));
}

TEST_F(MkfsTest, FreshFilesystemIsClean) {
  auto dev = open_image(256 * kMiB);
  auto sb =
      format(*dev.io, {.slots = 4, .label = "vol", .cluster_name = "c1", .cluster_id = 0xabc});
  EXPECT_EQ(sb.cluster_id, 0xabcu);
  auto r = fsck(*dev.io);
  EXPECT_TRUE(r.problems.empty()) << describe(r);
  EXPECT_EQ(r.exit_code(), 0);
  ASSERT_TRUE(r.superblock.has_value());
  EXPECT_EQ(r.superblock->label, "vol");
  // Free space: everything in the AGs but headers, bitmaps and the root inode.
  uint64_t expected_free = 0;
  for (uint32_t ag = 0; ag < sb.geo.ag_count; ++ag) {
    expected_free += sb.geo.ag_size(ag) - 1 - sb.geo.bitmap_blocks(ag);
  }
  EXPECT_EQ(r.free_blocks, expected_free - 1);
}

TEST_F(MkfsTest, EveryFlippedMetadataByteIsReportedWithItsBlock) {
  auto dev = open_image(128 * kMiB);
  auto sb = format(*dev.io, {.slots = 3});
  const uint32_t bs = sb.geo.block_size;
  std::mt19937 rng(42);
  for (uint64_t blk : metadata_blocks(sb)) {
    const size_t off = rng() % bs;
    flip_byte(*dev.io, blk, bs, off);
    auto r = fsck(*dev.io);
    EXPECT_EQ(r.exit_code(), 4) << "block " << blk << " offset " << off;
    bool named = false;
    for (const auto& p : r.problems) named |= p.blkno == blk;
    EXPECT_TRUE(named) << "block " << blk << " offset " << off << "\n" << describe(r);
    flip_byte(*dev.io, blk, bs, off);  // flip back
  }
  EXPECT_EQ(fsck(*dev.io).exit_code(), 0);
}

TEST_F(MkfsTest, RepairsSuperblockFromBackup) {
  auto dev = open_image(128 * kMiB);
  auto sb = format(*dev.io, {.slots = 2});
  flip_byte(*dev.io, 0, sb.geo.block_size, 100);
  auto r = fsck(*dev.io, /*repair=*/true);
  EXPECT_EQ(r.exit_code(), 1) << describe(r);
  EXPECT_EQ(fsck(*dev.io).exit_code(), 0);

  flip_byte(*dev.io, sb.geo.backup_superblock(), sb.geo.block_size, 7);
  EXPECT_EQ(fsck(*dev.io, true).exit_code(), 1);
  EXPECT_EQ(fsck(*dev.io).exit_code(), 0);
}

TEST_F(MkfsTest, RepairsHeartbeatSlotTableOrphansAndFreeCounts) {
  auto dev = open_image(128 * kMiB);
  auto sb = format(*dev.io, {.slots = 2});
  const auto& g = sb.geo;
  const uint32_t bs = g.block_size;
  flip_byte(*dev.io, g.heartbeat_blkno(1), bs, 50);
  flip_byte(*dev.io, g.slot_table_blkno, bs, 3000);
  flip_byte(*dev.io, g.orphan_blkno(0), bs, 40);
  // A well-formed AG header whose free count disagrees with its bitmap.
  {
    AlignedBuffer buf(bs);
    const uint64_t blk = g.ag_header_blkno(2);
    ASSERT_TRUE(dev.io->read(blk * bs, buf.span()));
    auto hdr = format::AgHeader::decode(buf.span(), {blk, sb.fs_tag()});
    ASSERT_TRUE(hdr.is_ok());
    hdr->free_blocks -= 10;
    hdr->encode(buf.span(), {blk, sb.fs_tag()});
    ASSERT_TRUE(dev.io->write(blk * bs, buf.span()));
  }
  auto check = fsck(*dev.io);
  EXPECT_EQ(check.exit_code(), 4);
  EXPECT_EQ(check.problems.size(), 4u) << describe(check);
  auto r = fsck(*dev.io, true);
  EXPECT_EQ(r.exit_code(), 1) << describe(r);
  auto again = fsck(*dev.io);
  EXPECT_EQ(again.exit_code(), 0) << describe(again);
}

TEST_F(MkfsTest, LeavesWhatCannotBeRepairedSafely) {
  auto dev = open_image(128 * kMiB);
  auto sb = format(*dev.io, {.slots = 2});
  const auto& g = sb.geo;
  flip_byte(*dev.io, g.bitmap_blkno(1, 0), g.block_size, 900);
  flip_byte(*dev.io, g.journal_header_blkno(1), g.block_size, 60);
  auto r = fsck(*dev.io, true);
  EXPECT_EQ(r.exit_code(), 4) << describe(r);
  EXPECT_EQ(r.problems.size(), 2u);
  for (const auto& p : r.problems) EXPECT_FALSE(p.fixed);
}

TEST_F(MkfsTest, DirtyJournalIsReportedAndReplayedWithRepair) {
  auto dev = open_image(128 * kMiB);
  auto sb = format(*dev.io, {.slots = 2});
  const uint64_t target = sb.geo.ag_first_data_block(1);
  {
    auto j = journal::Journal::open(*dev.io, sb, 1);
    ASSERT_TRUE(j.is_ok());
    journal::Transaction t;
    std::vector<std::byte> image(sb.geo.block_size, std::byte{0x77});
    t.write(target, image);
    ASSERT_TRUE((*j)->commit(std::move(t)).is_ok());
  }  // the node "crashes": no checkpoint, journal left dirty
  auto check = fsck(*dev.io);
  EXPECT_EQ(check.exit_code(), 4) << describe(check);
  auto fix = fsck(*dev.io, true);
  EXPECT_EQ(fix.exit_code(), 1) << describe(fix);
  EXPECT_EQ(fsck(*dev.io).exit_code(), 0);
  AlignedBuffer buf(sb.geo.block_size);
  ASSERT_TRUE(dev.io->read(target * sb.geo.block_size, buf.span()));
  EXPECT_EQ(buf.data()[100], std::byte{0x77});
}

TEST_F(MkfsTest, NoFilesystemIsAnOperationalError) {
  auto dev = open_image(64 * kMiB);
  auto r = check_filesystem(*dev.io, {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("holds no sharedfs"), std::string::npos);
}

TEST_F(MkfsTest, RefusesTooSmallDeviceSayingWhatFits) {
  auto dev = open_image(40 * kMiB);
  auto sb = make_filesystem(*dev.io, {.slots = 16, .journal_bytes = 4 * kMiB});
  ASSERT_FALSE(sb.is_ok());
  EXPECT_EQ(sb.status().code(), Code::kNoSpace);
  EXPECT_NE(sb.status().message().find("It would fit"), std::string::npos) << sb.status().message();
}

TEST_F(MkfsTest, DetectsAndWipesSignatures) {
  auto dev = open_image(64 * kMiB);
  auto none = detect_signature(image_);
  ASSERT_TRUE(none.is_ok());
  EXPECT_FALSE(none->has_value());
  format(*dev.io, {.slots = 1});
  auto ours = detect_signature(image_);
  ASSERT_TRUE(ours.is_ok());
  EXPECT_EQ(ours->value_or(""), "sharedfs");
}

TEST_F(MkfsTest, LargerBlockSize) {
  auto dev = open_image(512 * kMiB);
  auto sb = format(*dev.io, {.slots = 2, .block_size = 16384});
  EXPECT_EQ(sb.geo.block_size, 16384u);
  auto r = fsck(*dev.io);
  EXPECT_EQ(r.exit_code(), 0) << describe(r);
}

}  // namespace
}  // namespace sharedfs::mkfs
