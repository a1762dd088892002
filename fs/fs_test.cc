// FileSystem without a mount: names, data, xattrs, orphans, persistence, ENOSPC.
#include "fs/fs.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "device/device.h"
#include "fs/fs_test_fixture.h"

namespace sharedfs::fs {
namespace {

using testing::bytes_of;
using testing::names_in;
using testing::FsTest;
using testing::string_of;

TEST_F(FsTest, CreateLookupStatUnlink) {
  const Ino root = fs_->root();
  const Ino f = create(root, "a.txt");
  auto a = fs_->lookup(root, "a.txt");
  ASSERT_OK(a);
  EXPECT_EQ(a->ino, f);
  EXPECT_TRUE(S_ISREG(a->st.st_mode));
  EXPECT_EQ(a->st.st_mode & 0777, 0644u);
  EXPECT_EQ(a->st.st_uid, 1000u);
  EXPECT_EQ(a->st.st_nlink, 1u);
  EXPECT_EQ(err(fs_->mknod(root, "a.txt", S_IFREG | 0644, 0, caller_)), EEXIST);
  EXPECT_EQ(err(fs_->lookup(root, "missing")), ENOENT);
  EXPECT_EQ(err(fs_->lookup(root, std::string(256, 'x'))), ENAMETOOLONG);
  EXPECT_EQ(err(fs_->mknod(root, std::string(256, 'x'), S_IFREG, 0, caller_)), ENAMETOOLONG);
  EXPECT_EQ(err(fs_->mknod(root, "a/b", S_IFREG, 0, caller_)), EINVAL);
  EXPECT_EQ(names_in(*fs_, root), (std::vector<std::string>{".", "..", "a.txt"}));
  ASSERT_OK(fs_->unlink(root, "a.txt"));
  EXPECT_EQ(err(fs_->lookup(root, "a.txt")), ENOENT);
  EXPECT_EQ(err(fs_->unlink(root, "a.txt")), ENOENT);
  // The kernel still knows it (two lookups): orphan until forgotten.
  EXPECT_OK(fs_->getattr(f));
  fs_->forget(f, 2);
  EXPECT_NE(err(fs_->getattr(f)), 0);
}

TEST_F(FsTest, DirectoriesCountLinksAndRefuseWrongRemoval) {
  const Ino root = fs_->root();
  const Ino d = mkdir(root, "d");
  const Ino sub = mkdir(d, "sub");
  create(d, "f");
  EXPECT_EQ(fs_->getattr(root)->st.st_nlink, 3u);
  EXPECT_EQ(fs_->getattr(d)->st.st_nlink, 3u);
  EXPECT_EQ(fs_->getattr(sub)->st.st_nlink, 2u);
  EXPECT_EQ(fs_->lookup(sub, "..")->ino, d);
  EXPECT_EQ(fs_->lookup(d, ".")->ino, d);
  EXPECT_EQ(err(fs_->rmdir(root, "d")), ENOTEMPTY);
  EXPECT_EQ(err(fs_->unlink(root, "d")), EISDIR);
  EXPECT_EQ(err(fs_->rmdir(d, "f")), ENOTDIR);
  EXPECT_EQ(err(fs_->mknod(fs_->lookup(d, "f")->ino, "x", S_IFREG, 0, caller_)), ENOTDIR);
  ASSERT_OK(fs_->unlink(d, "f"));
  ASSERT_OK(fs_->rmdir(d, "sub"));
  ASSERT_OK(fs_->rmdir(root, "d"));
  EXPECT_EQ(fs_->getattr(root)->st.st_nlink, 2u);
  EXPECT_EQ(err(fs_->mknod(d, "late", S_IFREG, 0, caller_)), ENOENT);  // removed directory
}

TEST_F(FsTest, SetgidDirectoryPassesGroupOn) {
  const Ino d = mkdir(fs_->root(), "shared");
  SetAttr c;
  c.mode = 02775;
  c.gid = 4242;
  ASSERT_OK(fs_->setattr(d, c, Caller{0, 0, 0}));
  auto f = fs_->mknod(d, "f", S_IFREG | 0666, 0, caller_);
  ASSERT_OK(f);
  EXPECT_EQ(f->st.st_gid, 4242u);
  EXPECT_EQ(f->st.st_mode & 0777, 0644u);  // umask 022
  auto sub = fs_->mkdir(d, "sub", 0777, caller_);
  ASSERT_OK(sub);
  EXPECT_TRUE(sub->st.st_mode & S_ISGID);
}

TEST_F(FsTest, WriteReadPartialBlocksHolesAndLargeOffsets) {
  const Ino f = create(fs_->root(), "data");
  std::string text(10000, '\0');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
  ASSERT_EQ(*fs_->write(f, 100, bytes_of(text)), text.size());
  auto back = fs_->read(f, 100, text.size());
  ASSERT_OK(back);
  EXPECT_EQ(string_of(*back), text);
  // The 100 bytes before are a hole inside block 0: zeros.
  EXPECT_EQ(string_of(*fs_->read(f, 0, 100)), std::string(100, '\0'));
  // Overwrite inside, unaligned, across a block boundary.
  ASSERT_OK(fs_->write(f, 4090, bytes_of("XYZXYZXYZXYZ")));
  text.replace(3990, 12, "XYZXYZXYZXYZ");
  EXPECT_EQ(string_of(*fs_->read(f, 100, text.size())), text);
  EXPECT_EQ(fs_->getattr(f)->st.st_size, 10100);
  // Sparse: a byte at 1 TiB; the file stays small on disk.
  const uint64_t tib = uint64_t{1} << 40;
  ASSERT_OK(fs_->write(f, tib - 1, bytes_of("!")));
  auto st = fs_->getattr(f)->st;
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), tib);
  EXPECT_LE(st.st_blocks, 8 * 5);
  EXPECT_EQ(string_of(*fs_->read(f, tib - 2, 10)), std::string("\0!", 2));
  EXPECT_EQ(string_of(*fs_->read(f, uint64_t{1} << 39, 3)), std::string(3, '\0'));
  EXPECT_EQ(*fs_->lseek(f, 20000, SEEK_DATA), tib - 4096);
  EXPECT_EQ(*fs_->lseek(f, 0, SEEK_HOLE), 12288u);
  EXPECT_EQ(err(fs_->lseek(f, tib, SEEK_DATA)), ENXIO);
  remount();
  EXPECT_EQ(string_of(*fs_->read(f, 100, text.size())), text);
  EXPECT_EQ(string_of(*fs_->read(f, tib - 1, 1)), "!");
}

// Reads go straight into an aligned caller buffer by whole blocks and through a bounce
// buffer otherwise; both must give the same bytes at any offset and length, across
// extents, holes and the partial last block.
TEST_F(FsTest, ReadsIntoAlignedAndUnalignedBuffersAgree) {
  const Ino f = create(fs_->root(), "mixed");
  std::string want(3 * 1024 * 1024 + 777, '\0');
  std::mt19937 rng(7);
  for (auto& c : want) c = static_cast<char>('A' + rng() % 26);
  ASSERT_OK(fs_->write(f, 0, bytes_of(want)));
  // A hole in the middle (two blocks), and a second extent laid out by a later write.
  ASSERT_OK(fs_->fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 40960, 8192));
  std::fill_n(want.begin() + 40960, 8192, '\0');
  device::AlignedBuffer aligned(want.size() + 8192);
  struct Case {
    uint64_t off;
    size_t len;
  };
  for (Case c : {Case{0, want.size()}, Case{0, 4096}, Case{4096, 65536}, Case{40000, 20000},
                 Case{1 << 20, 1 << 20}, Case{want.size() - 5000, 5000}, Case{3, 4096},
                 Case{(1 << 20) - 100, (1 << 20) + 300}, Case{want.size() - 777, 10000}}) {
    const size_t expect = std::min<size_t>(c.len, want.size() - c.off);
    for (size_t shift : {size_t{0}, size_t{1}}) {  // aligned, then one byte off
      std::span<std::byte> out(aligned.data() + shift, c.len);
      auto n = fs_->read_into(f, c.off, out);
      ASSERT_OK(n);
      ASSERT_EQ(*n, expect) << c.off << "+" << c.len;
      EXPECT_TRUE(std::memcmp(out.data(), want.data() + c.off, expect) == 0)
          << "offset " << c.off << " length " << c.len << " shift " << shift;
    }
  }
}

TEST_F(FsTest, TruncateFreesBlocksAndZeroesTheTail) {
  const Ino f = create(fs_->root(), "t");
  const auto free0 = fs_->statfs().f_bfree;
  std::string big(1 << 20, 'q');
  ASSERT_OK(fs_->write(f, 0, bytes_of(big)));
  EXPECT_EQ(fs_->statfs().f_bfree, free0 - 256);
  SetAttr c;
  c.size = 5000;
  ASSERT_OK(fs_->setattr(f, c, caller_));
  EXPECT_EQ(fs_->getattr(f)->st.st_blocks, 2 * 8);
  c.size = 9000;  // grow again: the bytes between read as zeros
  ASSERT_OK(fs_->setattr(f, c, caller_));
  auto r = fs_->read(f, 4990, 100);
  EXPECT_EQ(string_of(*r), std::string(10, 'q') + std::string(90, '\0'));
  c.size = 0;
  ASSERT_OK(fs_->setattr(f, c, caller_));
  ASSERT_OK(fs_->sync());
  EXPECT_EQ(fs_->statfs().f_bfree, free0);
  EXPECT_EQ(err(fs_->setattr(fs_->root(), c, caller_)), EISDIR);
}

TEST_F(FsTest, FallocatePunchZeroAndKeepSize) {
  const Ino f = create(fs_->root(), "fa");
  ASSERT_OK(fs_->fallocate(f, 0, 0, 64 * 4096));
  EXPECT_EQ(fs_->getattr(f)->st.st_size, 64 * 4096);
  EXPECT_EQ(fs_->getattr(f)->st.st_blocks, 64 * 8);
  EXPECT_EQ(string_of(*fs_->read(f, 0, 10)), std::string(10, '\0'));  // unwritten: zeros
  ASSERT_OK(fs_->write(f, 4096 * 10 + 5, bytes_of("hello")));
  EXPECT_EQ(string_of(*fs_->read(f, 4096 * 10, 10)), std::string(5, '\0') + "hello");
  ASSERT_OK(fs_->fallocate(f, FALLOC_FL_KEEP_SIZE, 64 * 4096, 16 * 4096));
  EXPECT_EQ(fs_->getattr(f)->st.st_size, 64 * 4096);
  EXPECT_EQ(fs_->getattr(f)->st.st_blocks, 80 * 8);
  std::string ones(64 * 4096, '1');
  ASSERT_OK(fs_->write(f, 0, bytes_of(ones)));
  // Punch blocks 2..5 plus partial edges.
  ASSERT_OK(fs_->fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * 4096 - 10,
                           4 * 4096 + 20));
  auto r = fs_->read(f, 2 * 4096 - 20, 4 * 4096 + 40);
  std::string expect = std::string(10, '1') + std::string(4 * 4096 + 20, '\0') + std::string(10, '1');
  EXPECT_EQ(string_of(*r), expect);
  EXPECT_EQ(fs_->getattr(f)->st.st_blocks, 76 * 8);
  EXPECT_EQ(*fs_->lseek(f, 2 * 4096, SEEK_HOLE), 2u * 4096);
  EXPECT_EQ(*fs_->lseek(f, 2 * 4096, SEEK_DATA), 6u * 4096);
  ASSERT_OK(fs_->fallocate(f, FALLOC_FL_ZERO_RANGE, 40 * 4096, 4096));
  EXPECT_EQ(string_of(*fs_->read(f, 40 * 4096, 4)), std::string(4, '\0'));
  EXPECT_EQ(err(fs_->fallocate(f, FALLOC_FL_PUNCH_HOLE, 0, 4096)), EOPNOTSUPP);
  EXPECT_EQ(err(fs_->fallocate(f, FALLOC_FL_COLLAPSE_RANGE, 0, 4096)), EOPNOTSUPP);
}

TEST_F(FsTest, RenameReplaceNoreplaceExchangeAndLoops) {
  const Ino root = fs_->root();
  const Ino a = mkdir(root, "a");
  const Ino b = mkdir(root, "b");
  const Ino f = create(a, "f");
  const Ino g = create(b, "g");
  ASSERT_OK(fs_->rename(a, "f", b, "f2", 0));
  EXPECT_EQ(fs_->lookup(b, "f2")->ino, f);
  EXPECT_EQ(err(fs_->lookup(a, "f")), ENOENT);
  EXPECT_EQ(err(fs_->rename(b, "f2", b, "g", RENAME_NOREPLACE)), EEXIST);
  ASSERT_OK(fs_->rename(b, "f2", b, "g", RENAME_EXCHANGE));
  EXPECT_EQ(fs_->lookup(b, "g")->ino, f);
  EXPECT_EQ(fs_->lookup(b, "f2")->ino, g);
  // Replace: g's inode loses its last link.
  ASSERT_OK(fs_->rename(b, "g", b, "f2", 0));
  EXPECT_EQ(fs_->lookup(b, "f2")->ino, f);
  // Directories: move a into b, counts follow.
  ASSERT_OK(fs_->rename(root, "a", b, "a", 0));
  EXPECT_EQ(fs_->getattr(root)->st.st_nlink, 3u);
  EXPECT_EQ(fs_->getattr(b)->st.st_nlink, 3u);
  EXPECT_EQ(fs_->lookup(a, "..")->ino, b);
  EXPECT_EQ(err(fs_->rename(root, "b", a, "b", 0)), EINVAL);  // into its own subtree
  const Ino c = mkdir(root, "c");
  create(c, "x");
  EXPECT_EQ(err(fs_->rename(b, "a", root, "c", 0)), ENOTEMPTY);
  EXPECT_EQ(err(fs_->rename(b, "f2", root, "c", 0)), EISDIR);
  EXPECT_EQ(err(fs_->rename(root, "c", b, "f2", 0)), ENOTDIR);
  // Exchange a directory and a file across directories.
  ASSERT_OK(fs_->rename(root, "c", b, "f2", RENAME_EXCHANGE));
  EXPECT_EQ(fs_->lookup(b, "f2")->ino, c);
  EXPECT_EQ(fs_->lookup(c, "..")->ino, b);
  EXPECT_EQ(fs_->lookup(root, "c")->ino, f);
  EXPECT_EQ(fs_->getattr(root)->st.st_nlink, 3u);  // b only
  EXPECT_EQ(fs_->getattr(b)->st.st_nlink, 4u);     // a, f2
  EXPECT_EQ(err(fs_->rename(root, "c", root, "c", 0)), 0);
  remount();
  EXPECT_EQ(fs_->lookup(b, "f2")->ino, c);
}

TEST_F(FsTest, HardLinksSymlinksAndSpecialFiles) {
  const Ino root = fs_->root();
  const Ino f = create(root, "f");
  auto l = fs_->link(f, root, "f.link");
  ASSERT_OK(l);
  EXPECT_EQ(l->st.st_nlink, 2u);
  EXPECT_EQ(err(fs_->link(root, root, "dirlink")), EPERM);
  ASSERT_OK(fs_->unlink(root, "f"));
  EXPECT_EQ(fs_->getattr(f)->st.st_nlink, 1u);
  auto s = fs_->symlink(root, "sym", "some/where/else", caller_);
  ASSERT_OK(s);
  EXPECT_TRUE(S_ISLNK(s->st.st_mode));
  EXPECT_EQ(s->st.st_size, 15);
  EXPECT_EQ(*fs_->readlink(s->ino), "some/where/else");
  EXPECT_EQ(err(fs_->readlink(f)), EINVAL);
  EXPECT_EQ(err(fs_->symlink(root, "long", std::string(5000, 'p'), caller_)), ENAMETOOLONG);
  auto fifo = fs_->mknod(root, "fifo", S_IFIFO | 0600, 0, caller_);
  ASSERT_OK(fifo);
  EXPECT_TRUE(S_ISFIFO(fifo->st.st_mode));
  auto dev = fs_->mknod(root, "null", S_IFCHR | 0666, makedev(1, 3), caller_);
  ASSERT_OK(dev);
  EXPECT_EQ(dev->st.st_rdev, makedev(1, 3));
  auto sock = fs_->mknod(root, "sock", S_IFSOCK | 0600, 0, caller_);
  ASSERT_OK(sock);
  remount();
  EXPECT_EQ(*fs_->readlink(s->ino), "some/where/else");
  EXPECT_EQ(fs_->lookup(root, "null")->st.st_rdev, makedev(1, 3));
}

TEST_F(FsTest, XattrsWithFlagsAndLimits) {
  const Ino f = create(fs_->root(), "x");
  const std::vector<uint8_t> v{1, 2, 3};
  EXPECT_EQ(err(fs_->getxattr(f, "user.a")), ENODATA);
  ASSERT_OK(fs_->setxattr(f, "user.a", v, 0));
  ASSERT_OK(fs_->setxattr(f, "trusted.t", v, 0));
  ASSERT_OK(fs_->setxattr(f, "security.s", {}, 0));
  EXPECT_EQ(*fs_->getxattr(f, "user.a"), v);
  EXPECT_EQ(err(fs_->setxattr(f, "user.a", v, XATTR_CREATE)), EEXIST);
  EXPECT_EQ(err(fs_->setxattr(f, "user.b", v, XATTR_REPLACE)), ENODATA);
  EXPECT_EQ(err(fs_->setxattr(f, "os2.x", v, 0)), EOPNOTSUPP);
  EXPECT_EQ(*fs_->listxattr(f), std::string("security.s\0trusted.t\0user.a\0", 28));
  EXPECT_EQ(err(fs_->setxattr(f, "user.big", std::vector<uint8_t>(5000), 0)), ENOSPC);
  ASSERT_OK(fs_->removexattr(f, "user.a"));
  EXPECT_EQ(err(fs_->removexattr(f, "user.a")), ENODATA);
  remount();
  EXPECT_EQ(*fs_->listxattr(f), std::string("security.s\0trusted.t\0", 21));
  ASSERT_OK(fs_->removexattr(f, "trusted.t"));
  ASSERT_OK(fs_->removexattr(f, "security.s"));
  EXPECT_EQ(fs_->getattr(f)->st.st_blocks, 0);  // the xattr block went with the last one
}

std::vector<uint8_t> acl(std::initializer_list<std::array<uint32_t, 3>> entries) {
  std::vector<uint8_t> v{2, 0, 0, 0};
  for (auto [tag, perm, id] : entries) {
    v.push_back(static_cast<uint8_t>(tag));
    v.push_back(0);
    v.push_back(static_cast<uint8_t>(perm));
    v.push_back(0);
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(id >> (8 * i)));
  }
  return v;
}

TEST_F(FsTest, PosixAclsSetModeAndAreInherited) {
  const Ino d = mkdir(fs_->root(), "acl");
  // Access ACL with a named user and mask r-x: group bits of the mode become the mask.
  ASSERT_OK(fs_->setxattr(d, "system.posix_acl_access",
                          acl({{0x01, 7, 0}, {0x02, 5, 2000}, {0x04, 4, 0}, {0x10, 5, 0}, {0x20, 0, 0}}),
                          0));
  EXPECT_EQ(fs_->getattr(d)->st.st_mode & 0777, 0750u);
  SetAttr c;
  c.mode = 0700;
  ASSERT_OK(fs_->setattr(d, c, caller_));
  auto after = fs_->getxattr(d, "system.posix_acl_access");
  ASSERT_OK(after);
  EXPECT_EQ((*after)[4 + 8 * 3 + 2], 0);  // the mask entry follows chmod
  EXPECT_EQ(err(fs_->setxattr(d, "system.posix_acl_access", std::vector<uint8_t>{1, 2, 3}, 0)),
            EINVAL);
  // Default ACL: new files take it (not the umask), directories inherit it too.
  ASSERT_OK(fs_->setxattr(d, "system.posix_acl_default",
                          acl({{0x01, 7, 0}, {0x02, 7, 2000}, {0x04, 5, 0}, {0x10, 7, 0}, {0x20, 5, 0}}),
                          0));
  auto f = fs_->mknod(d, "f", S_IFREG | 0666, 0, Caller{1000, 1000, 077});
  ASSERT_OK(f);
  EXPECT_EQ(f->st.st_mode & 0777, 0664u);  // 0666 & (owner 7, mask 7, other 5)
  EXPECT_OK(fs_->getxattr(f->ino, "system.posix_acl_access"));
  EXPECT_EQ(err(fs_->getxattr(f->ino, "system.posix_acl_default")), ENODATA);
  auto sub = fs_->mkdir(d, "sub", 0777, Caller{1000, 1000, 077});
  ASSERT_OK(sub);
  EXPECT_OK(fs_->getxattr(sub->ino, "system.posix_acl_default"));
  EXPECT_EQ(err(fs_->setxattr(f->ino, "system.posix_acl_default",
                              acl({{0x01, 7, 0}, {0x04, 5, 0}, {0x20, 5, 0}}), 0)),
            EACCES);
  // A minimal ACL is the mode: nothing stored.
  ASSERT_OK(fs_->setxattr(f->ino, "system.posix_acl_access",
                          acl({{0x01, 6, 0}, {0x04, 4, 0}, {0x20, 0, 0}}), 0));
  EXPECT_EQ(fs_->getattr(f->ino)->st.st_mode & 0777, 0640u);
  EXPECT_EQ(err(fs_->getxattr(f->ino, "system.posix_acl_access")), ENODATA);
}

TEST_F(FsTest, UnlinkedButOpenLivesUntilForgetAndCrashLeavesOrphanForMount) {
  const Ino root = fs_->root();
  const Ino f = create(root, "open");  // lookup count 1: "open"
  std::string data(100000, 'z');
  ASSERT_OK(fs_->write(f, 0, bytes_of(data)));
  const auto free_before = fs_->statfs().f_bfree;
  ASSERT_OK(fs_->unlink(root, "open"));
  EXPECT_EQ(string_of(*fs_->read(f, 0, data.size())), data);  // still readable
  ASSERT_OK(fs_->write(f, 0, bytes_of("still writable")));
  EXPECT_EQ(fs_->statfs().f_bfree, free_before);
  fs_->forget(f, 1);
  EXPECT_EQ(fs_->statfs().f_bfree, free_before + 25 + 1);

  // Now "crash" with an unlinked, open file: the orphan list carries it to the next mount.
  const Ino g = create(root, "g");
  ASSERT_OK(fs_->write(g, 0, bytes_of(data)));
  create(root, "h");
  ASSERT_OK(fs_->unlink(root, "g"));
  ASSERT_OK(fs_->unlink(root, "h"));
  ASSERT_OK(fs_->sync());
  const auto free_crash = fs_->statfs().f_bfree;
  fs_->abandon();  // a crash: the journal stays dirty, the orphans stay
  fs_.reset();
  // A second mount of the slot replays and frees both orphans.
  auto dev2 = device::open_file_device(image_, {});
  ASSERT_OK(dev2);
  {
    MountOptions o = mount_options();
    auto fs2 = FileSystem::mount(*dev2->io, o);
    ASSERT_OK(fs2);
    EXPECT_EQ((*fs2)->stats().orphans_freed_at_mount, 2u);
    EXPECT_EQ((*fs2)->statfs().f_bfree, free_crash + 25 + 2);
    EXPECT_OK((*fs2)->unmount());
  }
  mount();
}

TEST_F(FsTest, PersistsAcrossRemountAndStatfsCounts) {
  const Ino root = fs_->root();
  const auto s0 = fs_->statfs();
  const Ino d = mkdir(root, "dir");
  for (int i = 0; i < 500; ++i) create(d, "file-" + std::to_string(i));
  const auto s1 = fs_->statfs();
  EXPECT_LT(s1.f_bfree, s0.f_bfree - 500);
  EXPECT_EQ(s1.f_files - s1.f_ffree, s0.f_files - s0.f_ffree + 501);
  remount();
  EXPECT_EQ(names_in(*fs_, d).size(), 502u);
  EXPECT_EQ(fs_->statfs().f_bfree, s1.f_bfree);
  for (int i = 0; i < 500; ++i) ASSERT_OK(fs_->unlink(d, "file-" + std::to_string(i)));
  ASSERT_OK(fs_->rmdir(root, "dir"));
  ASSERT_OK(fs_->sync());
  // The lookup counts of create were not forgotten, so the inodes are orphans until the
  // unmount forgets everything; then inodes and directory blocks are all back.
  remount();
  EXPECT_EQ(fs_->statfs().f_bfree, s0.f_bfree);
}

TEST_F(FsTest, ConcurrentCreatesInOneDirectoryAndDataInManyFiles) {
  const Ino d = mkdir(fs_->root(), "par");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        auto a = fs_->mknod(d, fmt::format("t{}-{}", t, i), S_IFREG | 0644, 0, caller_);
        if (!a) {
          ++failures;
          continue;
        }
        std::string body = fmt::format("thread {} file {}", t, i);
        if (!fs_->write(a->ino, 0, bytes_of(body))) ++failures;
        if (i % 3 == 0 && !fs_->unlink(d, fmt::format("t{}-{}", t, i))) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(names_in(*fs_, d).size(), 2u + 4 * 200);
  auto a = fs_->lookup(d, "t2-5");
  ASSERT_OK(a);
  EXPECT_EQ(string_of(*fs_->read(a->ino, 0, 100)), "thread 2 file 5");
}

class SmallFsTest : public FsTest {
 protected:
  uint64_t image_bytes() const override { return 64 * kMiB; }
  uint64_t journal_bytes() const override { return 2 * kMiB; }
};

TEST_F(SmallFsTest, FullDeviceGivesEnospcAndLosesNothing) {
  const Ino root = fs_->root();
  const Ino keep = create(root, "keep");
  std::string mark(50000, 'k');
  ASSERT_OK(fs_->write(keep, 0, bytes_of(mark)));
  ASSERT_OK(fs_->fsync(keep, false));
  const Ino big = create(root, "big");
  std::string chunk(1 << 20, 'b');
  uint64_t off = 0;
  int error = 0;
  for (int i = 0; i < 200; ++i) {
    auto n = fs_->write(big, off, bytes_of(chunk));
    if (!n) {
      error = n.status().to_errno();
      break;
    }
    off += *n;
  }
  EXPECT_EQ(error, ENOSPC) << "wrote " << off << " bytes";
  EXPECT_GT(off, 40u << 20);
  EXPECT_EQ(fs_->getattr(big)->st.st_size, static_cast<off_t>(off));
  // Creating needs an inode block: also ENOSPC, and nothing half-made remains.
  int create_err = 0;
  for (int i = 0; i < 100 && create_err == 0; ++i) {
    create_err = err(fs_->mknod(root, "n" + std::to_string(i), S_IFREG | 0644, 0, caller_));
  }
  EXPECT_EQ(create_err, ENOSPC);
  remount();
  EXPECT_EQ(string_of(*fs_->read(keep, 0, mark.size())), mark);
  EXPECT_EQ(string_of(*fs_->read(big, off - 10, 10)), std::string(10, 'b'));
  ASSERT_OK(fs_->unlink(root, "big"));
  fs_->forget(big, 1);
  ASSERT_OK(fs_->write(keep, 50000, bytes_of(chunk)));  // space is back
}

}  // namespace
}  // namespace sharedfs::fs
