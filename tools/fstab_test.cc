#include "tools/fstab.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/test_util.h"

namespace sharedfs::tools {
namespace {

namespace stdfs = std::filesystem;

FstabEntry cluster_entry(const std::string& mnt = "/mnt/shared") {
  return fstab_entry_for_mount("/dev/nvme1n1", mnt, "/etc/sharedfs/cluster.toml", 2, {"noatime"});
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(Fstab, EntryForAClusterMountNeedsTheNetworkAndNamesConfigAndNode) {
  EXPECT_EQ(format_fstab_line(cluster_entry()),
            "/dev/nvme1n1 /mnt/shared fuse.sharedfs "
            "_netdev,config=/etc/sharedfs/cluster.toml,node=2,noatime 0 0");
}

TEST(Fstab, EntryKeepsUserOptionsInOrderWithoutRepeatingWhatItWrites) {
  // config= and node= given as -o are written once, from the values the mount used.
  auto e = fstab_entry_for_mount("/dev/sdb", "/srv/a", "/etc/c.toml", 3,
                                 {"ro,config=/etc/c.toml", "_netdev,node=3,defaults", "commit=2"});
  EXPECT_EQ(e.options, "_netdev,config=/etc/c.toml,node=3,ro,commit=2");
  EXPECT_EQ(e.type, "fuse.sharedfs");
  EXPECT_EQ(e.pass, 0);  // never fsck'd at boot: other nodes may have it mounted
}

TEST(Fstab, EntryForALoneNodeNeedsNoNetwork) {
  auto e = fstab_entry_for_mount("/var/tmp/disk.img", "/mnt/x", "", 1, {});
  EXPECT_EQ(format_fstab_line(e), "/var/tmp/disk.img /mnt/x fuse.sharedfs node=1 0 0");
}

TEST(Fstab, BlanksAndBackslashesAreOctalEscapes) {
  EXPECT_EQ(escape_fstab_field("/mnt/my disk\\x\t#"), "/mnt/my\\040disk\\134x\\011\\043");
  EXPECT_EQ(unescape_fstab_field("/mnt/my\\040disk\\134x\\011\\043"), "/mnt/my disk\\x\t#");
  // Not an escape: kept as it is.
  EXPECT_EQ(unescape_fstab_field("a\\9b\\04"), "a\\9b\\04");
  auto e = fstab_entry_for_mount("/dev/x", "/mnt/my disk", "", 1, {});
  EXPECT_EQ(format_fstab_line(e), "/dev/x /mnt/my\\040disk fuse.sharedfs node=1 0 0");
}

TEST(Fstab, AppendsWhenNoLineMountsThere) {
  const std::string old =
      "# /etc/fstab: static file system information.\n"
      "UUID=abc / ext4 errors=remount-ro 0 1\n"
      "\n"
      "  # an indented comment mentioning /mnt/shared\n"
      "/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\n";
  const std::string now = fstab_with_entry(old, cluster_entry());
  EXPECT_EQ(now, old + format_fstab_line(cluster_entry()) + "\n");
}

TEST(Fstab, ReplacesTheLineForTheMountPointInPlaceKeepingEveryOtherByte) {
  const std::string before = "# comment\r\nUUID=abc\t/\text4\tdefaults\t0 1\n";
  const std::string after = "tmpfs /tmp tmpfs   size=1G 0 0\n# trailing comment";
  const std::string old = before + "/dev/old   /mnt/shared/  fuse.sharedfs node=1 0 0\n" + after;
  const std::string now = fstab_with_entry(old, cluster_entry());
  EXPECT_EQ(now, before + format_fstab_line(cluster_entry()) + "\n" + after);
  // Twice is the same as once.
  EXPECT_EQ(fstab_with_entry(now, cluster_entry()), now);
}

TEST(Fstab, MountPointsCompareAsPathsAndEscaped) {
  const std::string old = "/dev/a /mnt/my\\040disk fuse.sharedfs node=1 0 0\n";
  auto e = cluster_entry("/mnt//my disk/");
  EXPECT_EQ(fstab_with_entry(old, e), format_fstab_line(e) + "\n");
  // A mount point below or beside it is another line.
  const std::string other = "/dev/a /mnt/my\\040disk2 fuse.sharedfs node=1 0 0\n";
  EXPECT_EQ(fstab_with_entry(other, e), other + format_fstab_line(e) + "\n");
}

TEST(Fstab, LaterLinesForTheSameMountPointAreDroppedCommentedOnesKept) {
  const std::string old =
      "#/dev/b /mnt/shared fuse.sharedfs node=4 0 0\n"
      "/dev/a /mnt/shared fuse.sharedfs node=1 0 0\n"
      "/dev/c /other ext4 defaults 0 2\n"
      "/dev/b /mnt/shared fuse.sharedfs node=3 0 0\n";
  EXPECT_EQ(fstab_with_entry(old, cluster_entry()),
            "#/dev/b /mnt/shared fuse.sharedfs node=4 0 0\n" + format_fstab_line(cluster_entry()) +
                "\n/dev/c /other ext4 defaults 0 2\n");
}

TEST(Fstab, AppendsANewlineToALastLineWithoutOne) {
  EXPECT_EQ(fstab_with_entry("/dev/c /other ext4 defaults 0 2", cluster_entry()),
            "/dev/c /other ext4 defaults 0 2\n" + format_fstab_line(cluster_entry()) + "\n");
  EXPECT_EQ(fstab_with_entry("", cluster_entry()), format_fstab_line(cluster_entry()) + "\n");
}

class FstabFile : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::scratch_dir("fstab"); }
  void TearDown() override { stdfs::remove_all(dir_); }
  // Files in the directory other than `keep`: temporaries left behind.
  std::vector<std::string> others(const std::string& keep) {
    std::vector<std::string> out;
    for (const auto& e : stdfs::directory_iterator(dir_)) {
      if (e.path().filename() != keep) out.push_back(e.path().filename());
    }
    return out;
  }
  stdfs::path dir_;
};

TEST_F(FstabFile, UpdateRewritesAtomicallyKeepingModeAndLeavesNoTemporary) {
  const std::string path = (dir_ / "fstab").string();
  const std::string old = "# keep me\nUUID=abc / ext4 defaults 0 1\n";
  std::ofstream(path) << old;
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  struct stat before {};
  ASSERT_EQ(stat(path.c_str(), &before), 0);
  ASSERT_OK(check_fstab_updatable(path));
  ASSERT_OK(update_fstab(path, cluster_entry()));
  EXPECT_EQ(read_all(path), old + format_fstab_line(cluster_entry()) + "\n");
  struct stat after {};
  ASSERT_EQ(stat(path.c_str(), &after), 0);
  EXPECT_EQ(after.st_mode & 07777, 0640u);
  EXPECT_NE(after.st_ino, before.st_ino);  // a new file renamed over the old, not rewritten
  EXPECT_TRUE(others("fstab").empty());
}

TEST_F(FstabFile, UpdateCreatesAMissingFstabAndFollowsASymlink) {
  const std::string real = (dir_ / "fstab.real").string();
  ASSERT_OK(update_fstab(real, cluster_entry()));
  struct stat st {};
  ASSERT_EQ(stat(real.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  const std::string link = (dir_ / "fstab").string();
  stdfs::create_symlink("fstab.real", link);
  auto other = cluster_entry("/mnt/other");
  ASSERT_OK(update_fstab(link, other));
  EXPECT_TRUE(stdfs::is_symlink(link));  // the link stays; its target has both lines
  EXPECT_EQ(read_all(real),
            format_fstab_line(cluster_entry()) + "\n" + format_fstab_line(other) + "\n");
}

TEST_F(FstabFile, UpdateOfAnUnwritableDirectoryFailsAndLeavesTheFile) {
  if (geteuid() == 0) {
    // Root writes anywhere: a directory that is not a directory stands in.
    const std::string path = (dir_ / "not-a-dir" / "fstab").string();
    std::ofstream((dir_ / "not-a-dir").string()) << "x";
    EXPECT_FALSE(check_fstab_updatable(path).is_ok());
    EXPECT_FALSE(update_fstab(path, cluster_entry()).is_ok());
    EXPECT_EQ(read_all((dir_ / "not-a-dir").string()), "x");
    return;
  }
  const std::string path = (dir_ / "fstab").string();
  std::ofstream(path) << "x\n";
  ASSERT_EQ(chmod(dir_.c_str(), 0555), 0);
  EXPECT_FALSE(check_fstab_updatable(path).is_ok());
  EXPECT_FALSE(update_fstab(path, cluster_entry()).is_ok());
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  EXPECT_EQ(read_all(path), "x\n");
}

}  // namespace
}  // namespace sharedfs::tools
