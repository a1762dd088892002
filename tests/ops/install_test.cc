// `cmake --install` puts the programs, the mount helper, the systemd unit and the man pages
// where packaging/CMakeLists.txt says, and what it installs runs; the unit passes
// `systemd-analyze verify`.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "common/test_util.h"

namespace sharedfs {
namespace {

namespace stdfs = std::filesystem;
using testing::CommandResult;
using testing::run_command;

class InstallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("install");
    prefix_ = dir_ / "prefix";
    CommandResult r = run_command(std::string(CMAKE_COMMAND) + " --install " + BUILD_DIR +
                                  " --prefix " + prefix_.string());
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  void TearDown() override { stdfs::remove_all(dir_); }

  std::string unit_text() {
    std::ifstream f(prefix_ / "lib/systemd/system/sharedfs@.service");
    return {std::istreambuf_iterator<char>(f), {}};
  }

  stdfs::path dir_;
  stdfs::path prefix_;
};

TEST_F(InstallTest, ProgramsHelperUnitAndManPagesAreInPlace) {
  const stdfs::path sbin = prefix_ / "sbin";
  for (const char* program : {"sharedfs", "mkfs.sharedfs", "fsck.sharedfs"}) {
    struct stat st {};
    ASSERT_EQ(stat((sbin / program).c_str(), &st), 0) << program;
    EXPECT_TRUE(S_ISREG(st.st_mode) && (st.st_mode & S_IXUSR)) << program;
  }
  // The helper is a link to sharedfs, which knows itself by the name.
  ASSERT_TRUE(stdfs::is_symlink(sbin / "mount.sharedfs"));
  EXPECT_EQ(stdfs::read_symlink(sbin / "mount.sharedfs"), "sharedfs");
  EXPECT_TRUE(stdfs::exists(prefix_ / "lib/systemd/system/sharedfs@.service"));
  // Every man page the source has, in its section.
  const stdfs::path man = stdfs::path(SOURCE_DIR) / "man";
  if (stdfs::is_directory(man)) {
    for (const auto& e : stdfs::directory_iterator(man)) {
      const std::string name = e.path().filename();
      std::smatch m;
      if (!std::regex_match(name, m, std::regex(R"(.*\.([1-8]))"))) continue;
      EXPECT_TRUE(stdfs::exists(prefix_ / "share/man" / ("man" + m[1].str()) / name)) << name;
    }
  }
}

TEST_F(InstallTest, InstalledProgramsRun) {
  const std::string sbin = (prefix_ / "sbin").string();
  CommandResult r = run_command(sbin + "/sharedfs --help");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("mount"), std::string::npos) << r.out;
  r = run_command(sbin + "/sharedfs mount --help");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("--update-fstab"), std::string::npos) << r.out;
  r = run_command(sbin + "/mkfs.sharedfs --help");
  EXPECT_EQ(r.rc, 0) << r.out;
  // The link runs as the mount helper: its usage, mount(8)'s exit code for bad usage.
  r = run_command(sbin + "/mount.sharedfs");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("usage: mount.sharedfs"), std::string::npos) << r.out;
}

TEST_F(InstallTest, UnitIsOrderedAfterTheNetworkAndRunsTheInstalledDaemon) {
  const std::string unit = unit_text();
  for (const char* line :
       {"\nWants=network-online.target\n", "\nAfter=network-online.target\n",
        "\nBefore=remote-fs.target\n", "\nType=notify\n", "\nRestart=on-failure\n",
        "\nEnvironmentFile=/etc/sharedfs/%i.env\n", "\nWantedBy=remote-fs.target\n"}) {
    EXPECT_NE(unit.find(line), std::string::npos) << line;
  }
  // The daemon in the foreground (Type=notify: it is the main process), from the sbin this
  // build was configured for.
  EXPECT_NE(unit.find("\nExecStart=" + std::string(CONFIGURED_SBIN_DIR) + "/sharedfs mount -f "),
            std::string::npos)
      << unit;
  EXPECT_NE(unit.find("\nExecStop="), std::string::npos);
}

TEST_F(InstallTest, UnitPassesSystemdAnalyzeVerify) {
  // The set-up installs it (package systemd, scripts/lib.sh); PID 1 need not be systemd.
  ASSERT_EQ(run_command("command -v systemd-analyze").rc, 0)
      << "systemd-analyze is missing: install the Debian package systemd (scripts/lib.sh has it)";
  // verify checks that the programs the unit runs exist: point it at the installed ones
  // (the unit names the configured prefix's sbin, not this temporary one).
  std::string unit = unit_text();
  const std::string configured = std::string(CONFIGURED_SBIN_DIR) + "/sharedfs";
  const auto at = unit.find(configured);
  ASSERT_NE(at, std::string::npos);
  unit.replace(at, configured.size(), (prefix_ / "sbin/sharedfs").string());
  const stdfs::path units = dir_ / "units";
  stdfs::create_directories(units);
  std::ofstream(units / "sharedfs@.service") << unit;
  CommandResult r =
      run_command("systemd-analyze verify --man=no " + (units / "sharedfs@node1.service").string());
  EXPECT_EQ(r.rc, 0) << r.out;
  // Warnings (unknown keys, bad values) do not change the exit code: none may be printed.
  EXPECT_EQ(r.out.find("sharedfs@"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace sharedfs
