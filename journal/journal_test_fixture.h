// A formatted scratch image with a small journal, shared by the journal/ tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/test_util.h"
#include "journal/journal.h"
#include "mkfs/mkfs.h"

namespace sharedfs::journal {

namespace fs = std::filesystem;
using device::AlignedBuffer;

constexpr uint64_t kMiB = 1 << 20;

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("journal-test");
    image_ = (dir_ / "disk.img").string();
    testing::make_sparse_file(image_, 64 * kMiB);
    dev_ = open_base();
    // The smallest journal (256 blocks) so tests wrap it quickly.
    auto sb = mkfs::make_filesystem(*dev_, {.slots = 2, .journal_bytes = kMiB});
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
    sb_ = *sb;
    bs_ = sb_.geo.block_size;
    first_target_ = sb_.geo.ag_first_data_block(1);
  }
  void TearDown() override {
    dev_.reset();
    fs::remove_all(dir_);
  }

  std::unique_ptr<device::BlockDevice> open_base() {
    auto d = device::open_file_device(image_, {});
    EXPECT_TRUE(d.is_ok()) << d.status().to_string();
    return std::move(d->io);
  }

  // A block image that says which block and version it is.
  std::vector<std::byte> image(uint64_t blkno, uint64_t version) const {
    std::vector<std::byte> b(bs_);
    for (size_t i = 0; i + 16 <= b.size(); i += 16) {
      std::memcpy(&b[i], &blkno, 8);
      std::memcpy(&b[i + 8], &version, 8);
    }
    return b;
  }

  // The version a block on `dev` holds (0 for never written: all zero).
  uint64_t version_on(device::BlockDevice& dev, uint64_t blkno) const {
    AlignedBuffer buf(bs_);
    EXPECT_OK(dev.read(blkno * bs_, buf.span()));
    uint64_t b = 0, v = 0;
    std::memcpy(&b, buf.data(), 8);
    std::memcpy(&v, buf.data() + 8, 8);
    if (b == 0 && v == 0) return 0;
    EXPECT_EQ(b, blkno) << "block " << blkno << " holds another block's image";
    EXPECT_EQ(std::vector<std::byte>(buf.data(), buf.data() + bs_), image(blkno, v))
        << "block " << blkno << " is torn";
    return v;
  }

  std::unique_ptr<Journal> open_journal(device::BlockDevice& dev, uint32_t slot = 0) {
    auto j = Journal::open(dev, sb_, slot);
    EXPECT_TRUE(j.is_ok()) << j.status().to_string();
    return j.is_ok() ? std::move(*j) : nullptr;
  }

  fs::path dir_;
  std::string image_;
  std::unique_ptr<device::BlockDevice> dev_;
  format::Superblock sb_;
  uint32_t bs_ = 0;
  uint64_t first_target_ = 0;
};

}  // namespace sharedfs::journal
