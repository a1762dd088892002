// mkfs.sharedfs, fsck.sharedfs and sharedfs as a user runs them.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/test_util.h"
#include "format/format.h"

namespace sharedfs {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kGiB = uint64_t{1} << 30;

using CmdResult = testing::CommandResult;
using testing::run_command;

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A real file system under the image (not tmpfs) so O_DIRECT is exercised.
    dir_ = fs::path("/var/tmp") / ("sharedfs-cli-test-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    image_ = (dir_ / "disk.img").string();
  }
  void TearDown() override {
    if (!loop_.empty()) run_command("losetup -d " + loop_);
    fs::remove_all(dir_);
  }

  void make_image(uint64_t size) {
    std::ofstream(image_).close();
    fs::resize_file(image_, size);
  }

  std::string attach_loop() {
    CmdResult r = run_command("losetup --find --show " + image_);
    EXPECT_EQ(r.rc, 0) << r.out;
    loop_ = r.out.substr(0, r.out.find('\n'));
    return loop_;
  }

  void flip_byte(uint64_t offset) {
    std::fstream f(image_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x21);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
  }

  format::Superblock superblock() {
    std::ifstream f(image_, std::ios::binary);
    std::vector<std::byte> buf(4096);
    f.read(reinterpret_cast<char*>(buf.data()), 4096);
    auto sb = format::Superblock::decode(buf, 0);
    EXPECT_TRUE(sb.is_ok()) << sb.status().to_string();
    return *sb;
  }

  fs::path dir_;
  std::string image_;
  std::string loop_;
};

TEST_F(CliTest, MkfsThenFsckIsCleanOnImageFile) {
  make_image(kGiB);
  CmdResult mk = run_command(std::string(MKFS_BIN) + " --label data " + image_);
  ASSERT_EQ(mk.rc, 0) << mk.out;
  EXPECT_NE(mk.out.find("node slots:         16"), std::string::npos) << mk.out;
  EXPECT_NE(mk.out.find("allocation groups"), std::string::npos);
  CmdResult ck = run_command(std::string(FSCK_BIN) + " -n " + image_);
  EXPECT_EQ(ck.rc, 0) << ck.out;
  EXPECT_NE(ck.out.find("clean"), std::string::npos) << ck.out;
}

TEST_F(CliTest, MkfsThenFsckIsCleanOnLoopDevice) {
  make_image(kGiB);
  const std::string loop = attach_loop();
  ASSERT_FALSE(loop.empty());
  CmdResult mk = run_command(std::string(MKFS_BIN) + " -q " + loop);
  ASSERT_EQ(mk.rc, 0) << mk.out;
  CmdResult ck = run_command(std::string(FSCK_BIN) + " -n " + loop);
  EXPECT_EQ(ck.rc, 0) << ck.out;
  // Through the loop device and the file: one file system, one reservation state.
  run_command("sync");
  CmdResult ck2 = run_command(std::string(FSCK_BIN) + " -n " + image_);
  EXPECT_EQ(ck2.rc, 0) << ck2.out;
  CmdResult reg = run_command(std::string(SHAREDFS_BIN) + " reservation register " + loop +
                      " --node 3 --cluster-id 9 --key 0x33");
  ASSERT_EQ(reg.rc, 0) << reg.out;
  CmdResult rep = run_command(std::string(SHAREDFS_BIN) + " reservation report " + image_);
  EXPECT_NE(rep.out.find("0x0000000000000033"), std::string::npos) << rep.out;
}

TEST_F(CliTest, FlippedByteMakesFsckExit4NamingTheBlock) {
  make_image(kGiB);
  ASSERT_EQ(run_command(std::string(MKFS_BIN) + " -q " + image_).rc, 0);
  const format::Superblock sb = superblock();
  const auto& g = sb.geo;
  const uint64_t bs = g.block_size;
  // One block of every kind of metadata.
  const std::vector<uint64_t> blocks = {0,
                                        g.slot_table_blkno,
                                        g.heartbeat_blkno(5),
                                        g.orphan_blkno(15),
                                        g.journal_header_blkno(7),
                                        g.ag_header_blkno(0),
                                        g.bitmap_blkno(g.ag_count - 1, 0),
                                        sb.root_inode,
                                        g.backup_superblock()};
  for (uint64_t blk : blocks) {
    const uint64_t off = blk * bs + 123;
    flip_byte(off);
    CmdResult ck = run_command(std::string(FSCK_BIN) + " -n " + image_);
    EXPECT_EQ(ck.rc, 4) << "block " << blk << "\n" << ck.out;
    EXPECT_NE(ck.out.find("block " + std::to_string(blk) + ":"), std::string::npos)
        << "block " << blk << "\n"
        << ck.out;
    flip_byte(off);
  }
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " -n " + image_).rc, 0);
}

TEST_F(CliTest, FsckRepairsPrimarySuperblockExit1ThenClean) {
  make_image(kGiB);
  ASSERT_EQ(run_command(std::string(MKFS_BIN) + " -q " + image_).rc, 0);
  flip_byte(40);  // the block size field of the primary
  CmdResult fix = run_command(std::string(FSCK_BIN) + " -y " + image_);
  EXPECT_EQ(fix.rc, 1) << fix.out;
  EXPECT_NE(fix.out.find("[FIXED]"), std::string::npos);
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " -n " + image_).rc, 0);
}

TEST_F(CliTest, FsckUsageAndOperationalErrors) {
  make_image(64 << 20);
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " " + image_).rc, 8);  // no file system
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " -n -y " + image_).rc, 16);
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " -n /nonexistent/device").rc, 8);
}

TEST_F(CliTest, MkfsRefusesExt4WithoutForce) {
  make_image(kGiB);
  ASSERT_EQ(run_command("mkfs.ext4 -q -F " + image_).rc, 0);
  CmdResult mk = run_command(std::string(MKFS_BIN) + " " + image_);
  EXPECT_NE(mk.rc, 0);
  EXPECT_NE(mk.out.find("ext4"), std::string::npos) << mk.out;
  EXPECT_NE(mk.out.find("--force"), std::string::npos) << mk.out;
  CmdResult forced = run_command(std::string(MKFS_BIN) + " -q --force " + image_);
  EXPECT_EQ(forced.rc, 0) << forced.out;
  EXPECT_EQ(run_command("blkid -p " + image_).out.find("ext4"), std::string::npos);
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " -n " + image_).rc, 0);
  // And an existing sharedfs is refused too.
  CmdResult again = run_command(std::string(MKFS_BIN) + " " + image_);
  EXPECT_NE(again.rc, 0);
  EXPECT_NE(again.out.find("sharedfs"), std::string::npos) << again.out;
}

// Other file systems' signatures, found by libblkid, are refused the same way.
class OtherFilesystemTest : public CliTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(OtherFilesystemTest, MkfsRefusesWithoutForceAndWipesWithForce) {
  const std::string type = GetParam();
  make_image(kGiB);
  CmdResult made = run_command("mkfs." + type + " -q -f " + image_);
  ASSERT_EQ(made.rc, 0) << made.out;
  CmdResult mk = run_command(std::string(MKFS_BIN) + " " + image_);
  EXPECT_NE(mk.rc, 0);
  EXPECT_NE(mk.out.find(type), std::string::npos) << mk.out;
  ASSERT_EQ(run_command(std::string(MKFS_BIN) + " -q -f " + image_).rc, 0);
  EXPECT_EQ(run_command("blkid -p " + image_).out.find(type), std::string::npos);
  EXPECT_EQ(run_command(std::string(FSCK_BIN) + " -n " + image_).rc, 0);
}

INSTANTIATE_TEST_SUITE_P(Signatures, OtherFilesystemTest, ::testing::Values("xfs", "btrfs"));

TEST_F(CliTest, MkfsRefusesTooSmallDeviceSayingWhatFits) {
  make_image(48 << 20);
  CmdResult mk = run_command(std::string(MKFS_BIN) + " --journal-size 4M " + image_);
  EXPECT_NE(mk.rc, 0);
  EXPECT_NE(mk.out.find("too small"), std::string::npos) << mk.out;
  EXPECT_NE(mk.out.find("--nodes"), std::string::npos) << mk.out;
}

TEST_F(CliTest, OneTebibyteSparseImageFormatsInUnderTenSeconds) {
  make_image(1024 * kGiB);
  const auto start = std::chrono::steady_clock::now();
  CmdResult mk = run_command(std::string(MKFS_BIN) + " -q " + image_);
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start);
  ASSERT_EQ(mk.rc, 0) << mk.out;
  EXPECT_LT(secs.count(), 10.0);
  std::printf("mkfs of a 1 TiB sparse image: %.2f s\n", secs.count());
  CmdResult ck = run_command(std::string(FSCK_BIN) + " -n " + image_);
  EXPECT_EQ(ck.rc, 0) << ck.out;
}

TEST_F(CliTest, DebugCommandsReadTheDevice) {
  make_image(256 << 20);
  ASSERT_EQ(run_command(std::string(MKFS_BIN) + " -q -N 4 --cluster-name prod " + image_).rc, 0);
  CmdResult sb = run_command(std::string(SHAREDFS_BIN) + " debug superblock " + image_);
  EXPECT_EQ(sb.rc, 0) << sb.out;
  EXPECT_NE(sb.out.find("prod"), std::string::npos);
  CmdResult slots = run_command(std::string(SHAREDFS_BIN) + " debug slots " + image_);
  EXPECT_EQ(slots.rc, 0) << slots.out;
  CmdResult hb = run_command(std::string(SHAREDFS_BIN) + " debug heartbeats " + image_);
  EXPECT_EQ(hb.rc, 0) << hb.out;
  EXPECT_NE(hb.out.find("idle"), std::string::npos);
}

}  // namespace
}  // namespace sharedfs
