// A fresh file system on a sparse image, for fs/ tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/test_util.h"
#include "fs/fs.h"
#include "mkfs/mkfs.h"

namespace sharedfs::fs::testing {

inline std::span<const std::byte> bytes_of(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}
inline std::string string_of(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

class FsTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kMiB = 1 << 20;

  void SetUp() override {
    dir_ = std::filesystem::path("/var/tmp") /
           ("sharedfs-fs-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    image_ = (dir_ / "disk.img").string();
    std::ofstream(image_).close();
    std::filesystem::resize_file(image_, image_bytes());
    auto dev = device::open_file_device(image_, {});
    ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
    dev_ = std::move(dev->io);
    auto sb = mkfs::make_filesystem(*dev_, {.slots = 2, .journal_bytes = journal_bytes()});
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
    mount();
  }

  void TearDown() override {
    if (fs_) EXPECT_OK(fs_->unmount());
    fs_.reset();
    if (dev_ && !::testing::Test::HasFailure()) {
      // Every test leaves a file system fsck finds clean.
      auto report = mkfs::check_filesystem(*dev_, {});
      ASSERT_TRUE(report.is_ok()) << report.status().to_string();
      for (const auto& p : report->problems) ADD_FAILURE() << p.structure << ": " << p.what;
    }
    dev_.reset();
    std::filesystem::remove_all(dir_);
  }

  virtual uint64_t image_bytes() const { return 1024 * kMiB; }
  virtual uint64_t journal_bytes() const { return 8 * kMiB; }

  MountOptions mount_options() const {
    MountOptions o;
    o.check_live_slot = false;
    return o;
  }

  void mount() {
    auto fs = FileSystem::mount(*dev_, mount_options());
    ASSERT_TRUE(fs.is_ok()) << fs.status().to_string();
    fs_ = std::move(*fs);
  }
  void remount() {
    ASSERT_OK(fs_->unmount());
    fs_.reset();
    mount();
  }

  Ino create(Ino parent, std::string_view name, uint32_t mode = S_IFREG | 0644) {
    auto a = fs_->mknod(parent, name, mode, 0, caller_);
    EXPECT_TRUE(a.is_ok()) << name << ": " << a.status().to_string();
    return a.is_ok() ? a->ino : 0;
  }
  Ino mkdir(Ino parent, std::string_view name) {
    auto a = fs_->mkdir(parent, name, 0755, caller_);
    EXPECT_TRUE(a.is_ok()) << name << ": " << a.status().to_string();
    return a.is_ok() ? a->ino : 0;
  }
  int err(const Status& st) { return st.is_ok() ? 0 : st.to_errno(); }
  template <typename T>
  int err(const Result<T>& r) {
    return r.is_ok() ? 0 : r.status().to_errno();
  }

  std::filesystem::path dir_;
  std::string image_;
  std::unique_ptr<device::BlockDevice> dev_;
  std::unique_ptr<FileSystem> fs_;
  Caller caller_{1000, 1000, 022};
};

}  // namespace sharedfs::fs::testing
