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

// Every name in `dir` (with . and ..), in readdir order, read a few entries per call so
// that cookies are exercised.
inline std::vector<std::string> names_in(FileSystem& fs, Ino dir) {
  std::vector<std::string> out;
  uint64_t cookie = 0;
  for (;;) {
    auto page = fs.readdir(dir, cookie, 7);
    EXPECT_TRUE(page.is_ok());
    if (!page.is_ok() || page->empty()) break;
    for (auto& e : *page) {
      out.push_back(e.name);
      cookie = e.cookie;
    }
  }
  return out;
}

// A sparse image under /var/tmp, formatted with 2 slots; fs/ test fixtures build on it.
class ImageTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kMiB = 1 << 20;

  void SetUp() override {
    dir_ = sharedfs::testing::scratch_dir("fs-test");
    image_ = (dir_ / "disk.img").string();
    sharedfs::testing::make_sparse_file(image_, image_bytes());
    auto dev = device::open_file_device(image_, {});
    ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
    dev_ = std::move(dev->io);
    auto sb = mkfs::make_filesystem(*dev_, {.slots = 2, .journal_bytes = journal_bytes()});
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
    sb_ = *sb;
  }

  void TearDown() override {
    dev_.reset();
    std::filesystem::remove_all(dir_);
  }

  virtual uint64_t image_bytes() const { return 1024 * kMiB; }
  virtual uint64_t journal_bytes() const { return 8 * kMiB; }

  std::filesystem::path dir_;
  std::string image_;
  std::unique_ptr<device::BlockDevice> dev_;
  format::Superblock sb_;
};

// One freshly allocated inode with the journal, transaction manager and allocator of slot
// 0 around it: for the internal structures (extent trees, directories) without a
// FileSystem. The inode's fields live in `inode_`; its block is never written.
class InodeTest : public ImageTest {
 protected:
  void SetUp() override {
    ImageTest::SetUp();
    if (HasFatalFailure()) return;
    auto j = journal::Journal::open(*dev_, sb_, 0);
    ASSERT_TRUE(j.is_ok()) << j.status().to_string();
    journal_ = std::move(*j);
    tm_ = std::make_unique<journal::TransactionManager>(*dev_, *journal_, sb_.geo.block_size);
    auto a = allocator::Allocator::open(*tm_, sb_, 0);
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    alloc_ = std::move(*a);
    journal::Handle h = tm_->begin();
    auto ino = alloc_->allocate_inode(h, 0);
    ASSERT_TRUE(ino.is_ok()) << ino.status().to_string();
    ino_ = *ino;
    baseline_free_ = alloc_->usage().free_blocks;
  }

  void TearDown() override {
    alloc_.reset();
    tm_.reset();
    journal_.reset();
    ImageTest::TearDown();
  }

  std::unique_ptr<journal::Journal> journal_;
  std::unique_ptr<journal::TransactionManager> tm_;
  std::unique_ptr<allocator::Allocator> alloc_;
  uint64_t ino_ = 0;
  format::Inode inode_;
  uint64_t baseline_free_ = 0;
};

// A mounted FileSystem on a fresh image; the image must be fsck-clean at the end.
class FsTest : public ImageTest {
 protected:
  void SetUp() override {
    ImageTest::SetUp();
    if (HasFatalFailure()) return;
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
    ImageTest::TearDown();
  }

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

  std::unique_ptr<FileSystem> fs_;
  Caller caller_{1000, 1000, 022};
};

}  // namespace sharedfs::fs::testing
