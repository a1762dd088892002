// Two nodes in one process: two FileSystems over one image, each with its own cluster
// lock service (the DLM over ZeroMQ on 127.0.0.1) whose flush hook calls the file system's
// flush_for_lock. What one node changed, the other reads once it takes the lock: the
// daemon-side half of the coherence protocol (docs/cluster.md). The kernel's caches are
// not involved here (no FUSE).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <future>
#include <set>
#include <thread>

#include "dlm/cluster_test_util.h"
#include "fs/fs_model_driver.h"
#include "fs/fs_test_fixture.h"

namespace sharedfs::fs {
namespace {

using testing::bytes_of;
using testing::names_in;
using testing::string_of;
using sharedfs::testing::free_port;

template <typename T>
int err(const Result<T>& r) {
  return r.is_ok() ? 0 : r.status().to_errno();
}

class TwoNodeTest : public testing::ImageTest {
 protected:
  struct Node {
    std::unique_ptr<device::BlockDevice> dev;  // node 0 uses the fixture's
    std::shared_ptr<LockFlushTarget> target = std::make_shared<LockFlushTarget>();
    std::shared_ptr<dlm::ClusterLockService> locks;
    std::unique_ptr<FileSystem> fs;
  };

  void SetUp() override {
    ImageTest::SetUp();
    if (HasFatalFailure()) return;
    auto services = dlm::testing::start_two_lock_services([this](int i) -> dlm::ClusterLockService::FlushHook {
      return [target = node_[i].target](const dlm::LockName& name, dlm::LockMode mode)
                 -> std::optional<dlm::ValueBlockBytes> {
        auto value = target->flush(name, mode);
        if (value) return *value;
        ADD_FAILURE() << "flush of " << name.to_string() << ": " << value.status().to_string();
        return std::nullopt;
      };
    });
    for (int i = 0; i < 2; ++i) {
      ASSERT_NE(services[i], nullptr);
      node_[i].locks = std::move(services[i]);
    }
    auto dev = device::open_file_device(image_, {});
    ASSERT_OK(dev);
    node_[1].dev = std::move(dev->io);
    for (int i = 0; i < 2; ++i) {
      MountOptions o;
      o.slot = static_cast<uint32_t>(i);
      o.node_id = static_cast<uint32_t>(i + 1);
      o.check_live_slot = false;
      o.locks = node_[i].locks;
      o.flush_target = node_[i].target;
      o.ag_locks = true;
      o.open_locks = true;
      o.commit_interval = std::chrono::milliseconds(300);
      o.heartbeat_interval = std::chrono::milliseconds(100);
      auto fs = FileSystem::mount(i == 0 ? *dev_ : *node_[1].dev, o);
      ASSERT_OK(fs);
      node_[i].fs = std::move(*fs);
    }
  }

  void TearDown() override {
    for (auto& n : node_) {
      if (n.fs) EXPECT_OK(n.fs->unmount());
    }
    for (auto& n : node_) n.fs.reset();
    for (auto& n : node_) n.locks.reset();
    node_[1].dev.reset();
    if (dev_ && !HasFailure()) {
      auto report = mkfs::check_filesystem(*dev_, {});
      ASSERT_OK(report);
      for (const auto& p : report->problems) ADD_FAILURE() << p.structure << ": " << p.what;
    }
    ImageTest::TearDown();
  }

  FileSystem& a() { return *node_[0].fs; }
  FileSystem& b() { return *node_[1].fs; }

  Caller caller_{0, 0, 022};
  Node node_[2];
};

TEST_F(TwoNodeTest, WhatOneNodeChangesTheOtherReads) {
  const Ino root = a().root();
  ASSERT_EQ(b().root(), root);
  auto f = a().mknod(root, "f", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(f);
  ASSERT_OK(a().write(f->ino, 0, bytes_of("hello")));
  // B finds the name, the size and the data.
  auto seen = b().lookup(root, "f");
  ASSERT_OK(seen);
  EXPECT_EQ(seen->ino, f->ino);
  EXPECT_EQ(seen->st.st_size, 5);
  EXPECT_EQ(string_of(*b().read(f->ino, 0, 100)), "hello");
  // B appends; A, which had the inode cached, reads the new size and bytes.
  ASSERT_OK(b().write(f->ino, 5, bytes_of(" world")));
  EXPECT_EQ(a().getattr(f->ino)->st.st_size, 11);
  EXPECT_EQ(string_of(*a().read(f->ino, 0, 100)), "hello world");
  // Attributes.
  SetAttr chmod;
  chmod.mode = 0600;
  ASSERT_OK(b().setattr(f->ino, chmod, caller_));
  EXPECT_EQ(a().getattr(f->ino)->st.st_mode & 07777, 0600u);
  // Names: a directory made on A, filled on B, thinned on A, renamed on B.
  auto d = a().mkdir(root, "d", 0755, caller_);
  ASSERT_OK(d);
  for (int i = 0; i < 60; ++i) {
    auto c = b().mknod(d->ino, fmt::format("n{}", i), S_IFREG | 0644, 0, caller_);
    ASSERT_OK(c);
    b().forget(c->ino, 1);
  }
  EXPECT_EQ(names_in(a(), d->ino).size(), 62u);  // with . and ..
  for (int i = 0; i < 60; i += 2) ASSERT_OK(a().unlink(d->ino, fmt::format("n{}", i)));
  EXPECT_EQ(names_in(b(), d->ino).size(), 32u);
  ASSERT_OK(b().rename(d->ino, "n1", root, "moved", 0));
  EXPECT_EQ(err(a().lookup(d->ino, "n1")), ENOENT);
  auto moved = a().lookup(root, "moved");
  ASSERT_OK(moved);
  a().forget(moved->ino, 1);
  EXPECT_GE(a().lock_flushes() + b().lock_flushes(), 4u);
  a().forget(f->ino, 1);
  b().forget(f->ino, 1);
  a().forget(d->ino, 1);
}

TEST_F(TwoNodeTest, BothNodesCreateInOneDirectoryAtOnce) {
  const Ino root = a().root();
  auto d = a().mkdir(root, "shared", 0777, caller_);
  ASSERT_OK(d);
  std::atomic<int> failures{0};
  auto work = [&](FileSystem& fs, const char* prefix) {
    for (int i = 0; i < 100; ++i) {
      auto c = fs.mknod(d->ino, fmt::format("{}{}", prefix, i), S_IFREG | 0644, 0, caller_);
      if (!c) {
        ++failures;
        continue;
      }
      if (!fs.write(c->ino, 0, bytes_of(fmt::format("{}{} data", prefix, i)))) ++failures;
      fs.forget(c->ino, 1);
    }
  };
  std::thread ta(work, std::ref(a()), "a");
  std::thread tb(work, std::ref(b()), "b");
  ta.join();
  tb.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(names_in(a(), d->ino).size(), 202u);
  EXPECT_EQ(names_in(b(), d->ino).size(), 202u);
  // Each node reads what the other wrote.
  for (int i = 0; i < 100; i += 9) {
    auto x = a().lookup(d->ino, fmt::format("b{}", i));
    ASSERT_OK(x);
    EXPECT_EQ(string_of(*a().read(x->ino, 0, 100)), fmt::format("b{} data", i));
    a().forget(x->ino, 1);
    auto y = b().lookup(d->ino, fmt::format("a{}", i));
    ASSERT_OK(y);
    EXPECT_EQ(string_of(*b().read(y->ino, 0, 100)), fmt::format("a{} data", i));
    b().forget(y->ino, 1);
  }
  a().forget(d->ino, 1);
}

// DESIGN.md §4 "stale replay": node A changes a block and gives up its lock, node B
// changes the same block, A crashes. A's journal, replayed at its next mount, must not
// put A's old image back over B's change (the flush checkpointed and emptied A's log).
// Each node allocates in its own AGs (a % slots == slot), so creating and writing in two
// directories at once moves no AG lock between the nodes.
TEST_F(TwoNodeTest, EachNodeAllocatesInItsOwnAllocationGroups) {
  auto sb = read_superblock(*dev_);
  ASSERT_OK(sb);
  ASSERT_GE(sb->geo.ag_count, 2u);
  const Ino root = a().root();
  auto da = a().mkdir(root, "da", 0755, caller_);
  ASSERT_OK(da);
  auto db = b().mkdir(root, "db", 0755, caller_);
  ASSERT_OK(db);
  const uint64_t flushes_before = a().ag_lock_flushes() + b().ag_lock_flushes();
  std::atomic<int> failures{0};
  std::vector<Ino> made[2];
  auto work = [&](int node, Ino dir) {
    FileSystem& fs = node == 0 ? a() : b();
    for (int i = 0; i < 100; ++i) {
      auto c = fs.mknod(dir, fmt::format("f{}", i), S_IFREG | 0644, 0, caller_);
      if (!c) {
        ++failures;
        continue;
      }
      made[node].push_back(c->ino);
      if (!fs.write(c->ino, 0, bytes_of(std::string(20000, 'x')))) ++failures;
      fs.forget(c->ino, 1);
    }
  };
  std::thread ta(work, 0, da->ino);
  std::thread tb(work, 1, db->ino);
  ta.join();
  tb.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(a().ag_lock_flushes() + b().ag_lock_flushes(), flushes_before)
      << "an AG lock moved between the nodes";
  for (int node = 0; node < 2; ++node) {
    for (Ino ino : made[node]) {
      auto ag = sb->geo.ag_of(ino);
      ASSERT_TRUE(ag.has_value());
      EXPECT_EQ(*ag % sb->geo.slots, static_cast<uint32_t>(node)) << "inode " << ino;
    }
  }
  a().forget(da->ino, 1);
  b().forget(db->ino, 1);
}

// What a node gives the kernel stays cached while the node keeps at least PR: a reader on
// another node takes A's directory and file locks down to PR only, and A's kernel is told
// to forget nothing (dropping the directory's dentry would prune the dentries, inodes and
// pages below it). A change on the other node (EX) takes them to NL: then A's kernel
// forgets the names it was given in the directory, the directory's dentry, and the
// attributes of both.
TEST_F(TwoNodeTest, TheKernelForgetsOnlyWhatAnotherNodeMayChange) {
  std::mutex mu;
  std::multiset<std::string> names;  // "parent/name" of each entry invalidation
  std::multiset<Ino> attrs;          // each attribute invalidation
  a().set_entry_invalidator([&](Ino parent, const std::string& name) {
    std::lock_guard l(mu);
    names.insert(fmt::format("{}/{}", parent, name));
    std::promise<void> done;
    done.set_value();
    return done.get_future().share();
  });
  a().set_attr_invalidator([&](Ino ino) {
    std::lock_guard l(mu);
    attrs.insert(ino);
  });
  const Ino root = a().root();
  auto d = a().mkdir(root, "d", 0755, caller_);
  ASSERT_OK(d);
  auto f = a().mknod(d->ino, "f", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(f);
  ASSERT_OK(a().write(f->ino, 0, bytes_of("data")));
  // B reads: A's locks on d and f go from EX to PR.
  auto seen = b().lookup(d->ino, "f");
  ASSERT_OK(seen);
  EXPECT_EQ(string_of(*b().read(seen->ino, 0, 10)), "data");
  {
    std::lock_guard l(mu);
    EXPECT_TRUE(names.empty()) << names.size() << " names invalidated for a reader";
    EXPECT_TRUE(attrs.empty()) << attrs.size() << " attributes invalidated for a reader";
  }
  // B changes both: A's locks go to NL and A's kernel must ask again.
  ASSERT_OK(b().write(seen->ino, 0, bytes_of("DATA")));
  auto g = b().mknod(d->ino, "g", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(g);
  {
    std::lock_guard l(mu);
    EXPECT_EQ(attrs.count(f->ino), 1u);
    EXPECT_EQ(attrs.count(d->ino), 1u);
    EXPECT_EQ(names.count(fmt::format("{}/f", d->ino)), 1u) << "the name A created in d";
    EXPECT_EQ(names.count(fmt::format("{}/d", root)), 1u) << "d's own dentry";
  }
  a().set_entry_invalidator(nullptr);
  a().set_attr_invalidator(nullptr);
  b().forget(seen->ino, 1);
  b().forget(g->ino, 1);
  a().forget(f->ino, 1);
  a().forget(d->ino, 1);
}

// An AG's lock carries the AG's counts from holder to holder (docs/allocator.md): B takes
// the lock of the AG A allocated in and reads A's counts from the value block, equal to the
// AG header A wrote home; B's file system then takes them as its counts for the AG.
TEST_F(TwoNodeTest, AnAgLockCarriesItsCountsToTheNextHolder) {
  auto sb = read_superblock(*dev_);
  ASSERT_OK(sb);
  const Ino root = a().root();
  auto f = a().mknod(root, "big", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(f);
  ASSERT_OK(a().write(f->ino, 0, std::vector<std::byte>(4 << 20)));
  a().forget(f->ino, 1);
  const auto ag = sb->geo.ag_of(f->ino);
  ASSERT_TRUE(ag.has_value());
  const dlm::LockName name{dlm::LockSpace::kAllocGroup, *ag};
  {
    auto lock = node_[1].locks->lock(name, dlm::LockMode::kEX);  // A flushes and gives it up
    ASSERT_OK(lock);
    const auto bytes = node_[1].locks->value_block(*lock);
    ASSERT_TRUE(bytes.has_value()) << "A wrote no value block for " << name.to_string();
    const auto counts = allocator::decode_ag_counts(sb->fs_tag(), *ag, *bytes);
    ASSERT_TRUE(counts.has_value());
    // A committed and checkpointed before giving the lock up: its header is home.
    device::AlignedBuffer buf(sb->geo.block_size);
    const uint64_t blkno = sb->geo.ag_header_blkno(*ag);
    ASSERT_OK(dev_->read(blkno * sb->geo.block_size, buf.span()));
    auto hdr = format::AgHeader::decode(buf.span(), {blkno, sb->fs_tag()});
    ASSERT_OK(hdr);
    EXPECT_EQ(counts->free_blocks, hdr->free_blocks);
    EXPECT_EQ(counts->inodes, hdr->inode_count);
    EXPECT_LT(hdr->free_blocks + 1024, sb->geo.ag_size(*ag)) << "A's 4 MiB are counted";
  }
  // B frees in that AG (at the unlink, or from its orphan list once A lets go of the
  // inode): the change takes the AG's counts from the lock, not from the header.
  const uint64_t before = b().ag_counts_from_value_blocks();
  ASSERT_OK(b().unlink(root, "big"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (b().ag_counts_from_value_blocks() == before && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GT(b().ag_counts_from_value_blocks(), before);
}

// statfs counts what the other node allocated and freed (within a commit interval plus a
// heartbeat: the other node's AG headers are read from the device).
TEST_F(TwoNodeTest, StatfsCountsTheOtherNodesAllocations) {
  const Ino root = a().root();
  const uint64_t before = b().statfs().f_bfree;
  auto f = a().mknod(root, "big", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(f);
  ASSERT_OK(a().write(f->ino, 0, std::vector<std::byte>(8 << 20)));  // 2048 blocks
  auto wait_for = [&](auto done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return done();
  };
  EXPECT_TRUE(wait_for([&] { return b().statfs().f_bfree + 2048 <= before; }))
      << "B still sees " << b().statfs().f_bfree << " free blocks, " << before << " before";
  a().forget(f->ino, 1);
  ASSERT_OK(a().unlink(root, "big"));
  EXPECT_TRUE(wait_for([&] { return b().statfs().f_bfree + 16 >= before; }))
      << "B sees " << b().statfs().f_bfree << " free blocks after the unlink, " << before << " before";
}

// Issue 7: statfs never waits on a cluster lock. B holds every AG lock in EX (A gave its
// own up, and a thread of A waits for one to allocate); A's statfs still answers at once,
// from its in-memory counts and the headers read in the background, with A's allocations
// counted.
TEST_F(TwoNodeTest, StatfsAnswersWithin100MsWhileTheOtherNodeHoldsEveryAgLock) {
  using namespace std::chrono_literals;
  auto sb = read_superblock(*dev_);
  ASSERT_OK(sb);
  const Ino root = a().root();
  const struct statvfs empty = a().statfs();  // also starts A's background refresh
  auto f = a().mknod(root, "big", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(f);
  ASSERT_OK(a().write(f->ino, 0, std::vector<std::byte>(4 << 20)));  // 1024 blocks
  a().forget(f->ino, 1);
  const struct statvfs before = a().statfs();
  ASSERT_LE(before.f_bfree + 1024, empty.f_bfree);
  std::vector<dlm::Lock> held;
  for (uint32_t ag = 0; ag < sb->geo.ag_count; ++ag) {
    auto l = node_[1].locks->lock({dlm::LockSpace::kAllocGroup, ag}, dlm::LockMode::kEX);
    ASSERT_OK(l);
    held.push_back(std::move(*l));
  }
  // An allocation on A now waits for B (holding the root directory's lock meanwhile).
  std::atomic<bool> created{false};
  std::thread blocked([&] {
    auto g = a().mknod(root, "waits", S_IFREG | 0644, 0, caller_);
    EXPECT_OK(g);
    created = true;
    if (g) a().forget(g->ino, 1);
  });
  int answered = 0;
  for (int i = 0; i < 10; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto fut = std::async(std::launch::async, [&] { return a().statfs(); });
    if (fut.wait_for(2s) != std::future_status::ready) {
      ADD_FAILURE() << "statfs waits while B holds every AG lock";
      held.clear();  // lets it (and the test) finish
      fut.wait();
      break;
    }
    const struct statvfs s = fut.get();
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(took, 100ms) << "statfs " << i << " took "
                           << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                           << " ms";
    EXPECT_EQ(s.f_blocks, before.f_blocks);
    EXPECT_LE(s.f_bfree, s.f_blocks);
    // Nothing allocated since: the figure A had, its own 1024 blocks still counted (A's AGs
    // now come from their headers, which A's flush wrote home).
    EXPECT_LE(s.f_bfree + 1024, empty.f_bfree);
    EXPECT_NEAR(static_cast<double>(s.f_bfree), static_cast<double>(before.f_bfree), 16);
    ++answered;
    std::this_thread::sleep_for(50ms);  // background refreshes come in between
  }
  EXPECT_EQ(answered, 10);
  EXPECT_FALSE(created.load()) << "B did not hold the AG locks against A: the test proves nothing";
  held.clear();
  blocked.join();
  EXPECT_TRUE(created.load());
}

TEST_F(TwoNodeTest, ReplayAfterACrashDoesNotUndoTheOtherNodesChange) {
  const Ino root = a().root();
  auto f = a().mknod(root, "x", S_IFREG | 0644, 0, caller_);
  ASSERT_OK(f);
  ASSERT_OK(a().write(f->ino, 0, bytes_of("from a")));
  a().forget(f->ino, 1);
  SetAttr chmod;
  chmod.mode = 0600;
  ASSERT_OK(b().setattr(f->ino, chmod, caller_));  // A flushes; B changes the inode block
  ASSERT_OK(b().write(f->ino, 0, bytes_of("from b")));
  auto flushed = b().fsync(f->ino, false);        // B's change is durable in B's journal
  ASSERT_OK(flushed);
  // A dies without unmounting and comes back: its slot's journal is replayed.
  node_[0].fs->abandon();
  node_[0].fs.reset();
  MountOptions o;
  o.slot = 0;
  o.node_id = 1;
  o.check_live_slot = false;
  o.locks = node_[0].locks;
  o.flush_target = node_[0].target;
  o.ag_locks = true;
  auto again = FileSystem::mount(*dev_, o);
  ASSERT_OK(again);
  node_[0].fs = std::move(*again);
  auto st = a().lookup(root, "x");
  ASSERT_OK(st);
  EXPECT_EQ(st->st.st_mode & 07777, 0600u);
  EXPECT_EQ(string_of(*a().read(f->ino, 0, 100)), "from b");
  a().forget(f->ino, 1);
}

// The single-node model test's operations, each on a random node: every result must be
// what one file system would give, whichever node made the earlier changes.
TEST_F(TwoNodeTest, RandomOperationsOnEitherNodeMatchTheModel) {
  const char* env = std::getenv("SHAREDFS_TWO_NODE_SEED");  // replays a failure
  const uint64_t seed = env != nullptr ? std::strtoull(env, nullptr, 10) : 11;
  SCOPED_TRACE("seed " + std::to_string(seed) + " (SHAREDFS_TWO_NODE_SEED)");
  testing::ModelDriver model(seed, caller_);
  model.make_tops(a());
  ASSERT_FALSE(HasFatalFailure());
  const int kOps = 3000;
  for (int i = 1; i <= kOps; ++i) {
    FileSystem& fs = model.rng()() % 2 == 0 ? a() : b();
    model.step(fs, i);
    if (i % 500 == 0) {
      model.compare(a(), i);
      model.compare(b(), i);
    }
    if (HasFatalFailure()) return;
  }
  for (int k = 0; k < testing::ModelDriver::kKinds; ++k) EXPECT_GT(model.count(k), kOps / 16);
}

}  // namespace
}  // namespace sharedfs::fs
