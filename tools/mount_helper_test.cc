#include "tools/mount_helper.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/test_util.h"

namespace sharedfs::tools {
namespace {

using Words = std::vector<std::string>;

TEST(MountHelper, KnowsItselfByItsName) {
  EXPECT_TRUE(invoked_as_mount_helper("/sbin/mount.sharedfs"));
  EXPECT_TRUE(invoked_as_mount_helper("mount.sharedfs"));
  EXPECT_FALSE(invoked_as_mount_helper("/usr/sbin/sharedfs"));
  EXPECT_FALSE(invoked_as_mount_helper("/sbin/mount.sharedfs.old"));
}

TEST(MountHelper, ParsesMountsHelperConvention) {
  auto c = parse_mount_helper_args(
      {"/dev/nvme1n1", "/mnt/shared", "-n", "-v", "-o", "_netdev,config=/etc/c.toml,node=2"});
  ASSERT_OK(c);
  EXPECT_EQ(c->mount.device, "/dev/nvme1n1");
  EXPECT_EQ(c->mount.mountpoint, "/mnt/shared");
  EXPECT_EQ(c->mount.options, Words{"_netdev,config=/etc/c.toml,node=2"});
  EXPECT_TRUE(c->verbose);
  EXPECT_FALSE(c->mount.fake);
  EXPECT_FALSE(c->mount.foreground);  // the helper returns once mounted
  EXPECT_TRUE(c->mount_namespace.empty());
}

TEST(MountHelper, FlagsMayBeGroupedAndValuesJoined) {
  auto c = parse_mount_helper_args({"-sfnv", "/dev/x", "-ono_writeback_cache", "/mnt", "-N", "1234",
                                    "-t", "sharedfs", "-o", "ro"});
  ASSERT_OK(c);
  EXPECT_TRUE(c->mount.fake);
  EXPECT_TRUE(c->verbose);
  EXPECT_EQ(c->mount.options, (Words{"no_writeback_cache", "ro"}));
  EXPECT_EQ(c->mount_namespace, "1234");
  EXPECT_EQ(c->mount.device, "/dev/x");
  EXPECT_EQ(c->mount.mountpoint, "/mnt");
}

TEST(MountHelper, RefusesWhatItCannotMean) {
  EXPECT_FALSE(parse_mount_helper_args({"/dev/x"}).is_ok());
  EXPECT_FALSE(parse_mount_helper_args({"/dev/x", "/mnt", "/extra"}).is_ok());
  EXPECT_FALSE(parse_mount_helper_args({"/dev/x", "/mnt", "-o"}).is_ok());
  EXPECT_FALSE(parse_mount_helper_args({"/dev/x", "/mnt", "-x"}).is_ok());
  EXPECT_FALSE(parse_mount_helper_args({"/dev/x", "/mnt", "-t", "ext4"}).is_ok());
}

TEST(MountHelper, RunReturnsMountsExitCodes) {
  MountArgs seen;
  auto ok = [&](const MountArgs& a) {
    seen = a;
    return 0;
  };
  auto fails = [](const MountArgs&) { return 1; };
  EXPECT_EQ(run_mount_helper({"/dev/x", "/mnt", "-o", "node=3"}, ok), 0);
  EXPECT_EQ(seen.device, "/dev/x");
  EXPECT_EQ(seen.options, Words{"node=3"});
  EXPECT_EQ(run_mount_helper({"/dev/x", "/mnt"}, fails), 32);
  EXPECT_EQ(run_mount_helper({"/dev/x"}, ok), 1);
}

class ImpliedMount : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::scratch_dir("implied-mount"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static bool is_subcommand(const std::string& w) {
    return w == "mount" || w == "status" || w == "debug";
  }
  std::filesystem::path dir_;
};

TEST_F(ImpliedMount, DeviceAndDirectoryWithoutSubcommandMeanMount) {
  const std::string mnt = dir_.string();
  EXPECT_EQ(
      with_implied_mount({"sharedfs", "/dev/x", mnt, "-o", "rw,node=1,dev,suid"}, is_subcommand),
      (Words{"sharedfs", "mount", "/dev/x", mnt, "-o", "rw,node=1,dev,suid"}));
  EXPECT_EQ(with_implied_mount({"sharedfs", "/dev/x", mnt}, is_subcommand),
            (Words{"sharedfs", "mount", "/dev/x", mnt}));
}

TEST_F(ImpliedMount, SubcommandsOptionsAndTyposAreLeftToTheParser) {
  const std::string mnt = dir_.string();
  for (const Words& w :
       {Words{"sharedfs", "mount", "/dev/x", mnt},
        Words{"sharedfs", "debug", "superblock", "/dev/x"}, Words{"sharedfs", "--help"},
        Words{"sharedfs", "-o", "x", mnt}, Words{"sharedfs", "stauts", "--config", "c.toml"},
        Words{"sharedfs", "/dev/x", mnt + "/missing"}, Words{"sharedfs"},
        Words{"sharedfs", "/dev/x"}}) {
    EXPECT_EQ(with_implied_mount(w, is_subcommand), w) << w.at(w.size() > 1 ? 1 : 0);
  }
}

}  // namespace
}  // namespace sharedfs::tools
