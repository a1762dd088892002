#include "mkfs/tunefs.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/test_util.h"
#include "journal/journal.h"
#include "mkfs/mkfs.h"

namespace sharedfs::mkfs {
namespace {

namespace fs = std::filesystem;

class TunefsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("tunefs-test");
    const std::string image = (dir_ / "disk.img").string();
    testing::make_sparse_file(image, 256 << 20);
    auto dev = device::open_file_device(image, {});
    ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
    dev_ = std::move(*dev);
    // 4 slots of 1024-block journals: the first AG at block 4352.
    auto sb = make_filesystem(*dev_.io, {.slots = 4, .journal_bytes = 4 << 20});
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
    sb_ = *sb;
  }
  void TearDown() override { fs::remove_all(dir_); }

  FsckReport check() {
    auto r = check_filesystem(*dev_.io, {});
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    for (const auto& p : r->problems) ADD_FAILURE() << p.structure << ": " << p.what;
    return *r;
  }

  fs::path dir_;
  device::OpenDevice dev_;
  format::Superblock sb_;
};

TEST_F(TunefsTest, LayoutThatDoesNotFitSaysWhatWould) {
  auto plan = plan_tune(*dev_.io, {.add_slots = 1});
  ASSERT_FALSE(plan.is_ok());
  EXPECT_EQ(plan.status().code(), Code::kNoSpace);
  // (4352 - 2 - 10) / 5 = 868 blocks per journal for 5 slots; 4 slots at 1024.
  EXPECT_NE(plan.status().message().find("at most 868 blocks (--journal-size 3472K)"),
            std::string::npos)
      << plan.status().to_string();
  EXPECT_NE(plan.status().message().find("no slot can be added"), std::string::npos);
  auto too_many = plan_tune(*dev_.io, {.add_slots = 29});
  ASSERT_FALSE(too_many.is_ok());
  EXPECT_NE(too_many.status().message().find("--add-slots 28 at most"), std::string::npos)
      << too_many.status().to_string();
}

TEST_F(TunefsTest, RelayoutStartsJournalsAboveEveryOldSequence) {
  // Slot 2's journal runs to sequence 11 and closes cleanly; its blocks stay in the log.
  {
    auto j = journal::Journal::open(*dev_.io, sb_, 2);
    ASSERT_TRUE(j.is_ok()) << j.status().to_string();
    device::AlignedBuffer img(sb_.geo.block_size);
    for (int i = 0; i < 10; ++i) {
      journal::Transaction t;
      t.write(sb_.root_inode + 100 + i, img.span());
      ASSERT_TRUE((*j)->commit(std::move(t)).is_ok());
    }
    ASSERT_OK((*j)->close());
  }
  auto plan = plan_tune(*dev_.io, {.add_slots = 1, .journal_bytes = 3 << 20});
  ASSERT_TRUE(plan.is_ok()) << plan.status().to_string();
  EXPECT_TRUE(plan->relayout);
  EXPECT_EQ(plan->journal_sequence, 12u);
  ASSERT_OK(apply_tune(*dev_.io, *plan));
  FsckReport r = check();
  ASSERT_TRUE(r.superblock.has_value());
  EXPECT_EQ(r.superblock->geo.slots, 5u);
  EXPECT_EQ(r.superblock->geo.journal_blocks, 768u);
  EXPECT_EQ(r.superblock->seq, sb_.seq + 1);
  for (uint32_t s = 0; s < 5; ++s) {
    auto scan = journal::scan(*dev_.io, *r.superblock, s);
    ASSERT_TRUE(scan.is_ok()) << scan.status().to_string();
    EXPECT_EQ(scan->header.tail_sequence, 12u);
    EXPECT_TRUE(scan->transactions.empty());
  }
  // A journal of the new layout opens, commits and replays.
  auto j = journal::Journal::open(*dev_.io, *r.superblock, 4);
  ASSERT_TRUE(j.is_ok()) << j.status().to_string();
}

TEST_F(TunefsTest, LayoutChangeRefusesADirtyJournalWhateverElse) {
  auto j = journal::Journal::open(*dev_.io, sb_, 1);  // marks it dirty: as a crashed node
  ASSERT_TRUE(j.is_ok());
  auto plan = plan_tune(*dev_.io, {.add_slots = 1, .journal_bytes = 3 << 20});
  ASSERT_FALSE(plan.is_ok());
  EXPECT_EQ(plan.status().code(), Code::kBusy);
  EXPECT_NE(plan.status().message().find("journal of slot 1 is dirty"), std::string::npos)
      << plan.status().to_string();
  // A superblock-only change does not need the slot area quiet.
  auto label = plan_tune(*dev_.io, {.label = "x"});
  ASSERT_TRUE(label.is_ok()) << label.status().to_string();
  EXPECT_FALSE(label->relayout);
  ASSERT_OK(apply_tune(*dev_.io, *label));
}

}  // namespace
}  // namespace sharedfs::mkfs
