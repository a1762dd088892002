// FaultyDevice over the file backend: the write cache model (reads see unflushed writes,
// flush and FUA reach the medium, overlapping writes), the crash point and torn writes,
// injected EIO and latency, counters, and concurrent use.
//
// "The medium" is checked through a second, independent opener of the same image, so
// these tests see exactly what a node restarting after the crash would see.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.h"
#include "device/device.h"

namespace sharedfs::device {
namespace {

constexpr uint64_t kImageSize = 1 << 20;
constexpr size_t kBlock = 4096;
const HostId kHost = HostId::for_node(0xfa17, 1);

using Bytes = std::vector<uint8_t>;

// A buffer of `len` bytes, all `fill`, aligned for direct I/O.
AlignedBuffer filled(size_t len, uint8_t fill) {
  AlignedBuffer buf(len);
  std::memset(buf.data(), fill, len);
  return buf;
}

class FaultyDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sharedfs-faulty-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp: " << std::strerror(errno);
    dir_ = tmpl;
    image_ = dir_ + "/image";
    std::ofstream(image_).close();
    std::filesystem::resize_file(image_, kImageSize);
  }

  // Removes the image and the ".pr" reservation sidecar the file backend puts beside it.
  void TearDown() override {
    dev_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::unique_ptr<BlockDevice> open_base() {
    FileOpenOptions opts;
    opts.host = kHost;
    auto dev = open_file_device(image_, opts);
    EXPECT_TRUE(dev.is_ok()) << dev.status().to_string();
    return dev ? std::move(dev->io) : nullptr;
  }

  FaultyDevice& make(FaultConfig config = {}) {
    dev_ = std::make_unique<FaultyDevice>(open_base(), std::move(config));
    return *dev_;
  }

  // What the medium holds, read by an independent opener of the image.
  Bytes durable(uint64_t offset, size_t len) {
    auto base = open_base();
    if (!base) return {};
    return read(*base, offset, len);
  }

  static Bytes read(BlockDevice& dev, uint64_t offset, size_t len) {
    AlignedBuffer buf(len);
    const Status st = dev.read(offset, buf.span(), {});
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    const auto* p = reinterpret_cast<const uint8_t*>(buf.data());
    return Bytes(p, p + len);
  }

  static Status write(BlockDevice& dev, uint64_t offset, size_t len, uint8_t fill,
                      bool fua = false) {
    AlignedBuffer buf = filled(len, fill);
    WriteOptions opts;
    opts.fua = fua;
    return dev.write(offset, buf.span(), opts);
  }

  std::string dir_;
  std::string image_;
  std::unique_ptr<FaultyDevice> dev_;
};

Bytes same(size_t len, uint8_t fill) { return Bytes(len, fill); }

// Concatenation, to spell out expected contents: cat(same(512, 'a'), same(512, 0)).
template <typename... Parts>
Bytes cat(const Parts&... parts) {
  Bytes out;
  (out.insert(out.end(), parts.begin(), parts.end()), ...);
  return out;
}

TEST_F(FaultyDeviceTest, UnflushedWriteIsReadBackButNotDurable) {
  FaultyDevice& dev = make();
  ASSERT_OK(write(dev, kBlock, kBlock, 'a'));
  EXPECT_EQ(read(dev, kBlock, kBlock), same(kBlock, 'a'));
  EXPECT_EQ(durable(kBlock, kBlock), same(kBlock, 0));
  // A read wider than the cached range merges medium and cache.
  EXPECT_EQ(read(dev, 0, 3 * kBlock), cat(same(kBlock, 0), same(kBlock, 'a'), same(kBlock, 0)));
}

TEST_F(FaultyDeviceTest, FlushWritesCacheToBase) {
  FaultyDevice& dev = make();
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(write(dev, 3 * kBlock, 2 * kBlock, 'b'));
  ASSERT_OK(dev.flush({}));
  EXPECT_EQ(durable(0, 5 * kBlock),
            cat(same(kBlock, 'a'), same(2 * kBlock, 0), same(2 * kBlock, 'b')));
  EXPECT_EQ(read(dev, 0, 5 * kBlock), durable(0, 5 * kBlock));
  const auto c = dev.counters();
  EXPECT_EQ(c.writes, 2u);
  EXPECT_EQ(c.flushes, 1u);
  EXPECT_EQ(c.reads, 1u);
  EXPECT_EQ(c.injected_errors, 0u);
}

TEST_F(FaultyDeviceTest, OverlappingWritesNewestWins) {
  FaultyDevice& dev = make();
  ASSERT_OK(write(dev, 0, 2 * kBlock, 'a'));  // sectors 0..15
  ASSERT_OK(write(dev, 512, 512, 'b'));       // sector 1
  ASSERT_OK(write(dev, 2048, kBlock, 'c'));   // sectors 4..11
  ASSERT_OK(write(dev, 1024, 2048, 'd'));     // sectors 2..5, over both
  const Bytes expected = cat(same(512, 'a'), same(512, 'b'), same(2048, 'd'), same(3072, 'c'),
                             same(2 * kBlock - 6144, 'a'));
  EXPECT_EQ(read(dev, 0, 2 * kBlock), expected);
  ASSERT_OK(dev.flush({}));
  EXPECT_EQ(durable(0, 2 * kBlock), expected);
}

TEST_F(FaultyDeviceTest, FuaWriteIsDurableAndSupersedesCachedData) {
  FaultyDevice& dev = make();
  ASSERT_OK(write(dev, 0, 2 * kBlock, 'a'));
  ASSERT_OK(write(dev, 512, kBlock, 'f', /*fua=*/true));
  // Durable at once; the older cached 'a' around it is still only cached.
  EXPECT_EQ(durable(0, 2 * kBlock), cat(same(512, 0), same(kBlock, 'f'), same(kBlock - 512, 0)));
  const Bytes expected = cat(same(512, 'a'), same(kBlock, 'f'), same(kBlock - 512, 'a'));
  EXPECT_EQ(read(dev, 0, 2 * kBlock), expected);
  // Flushing must not write the older cached data over the FUA data.
  ASSERT_OK(dev.flush({}));
  EXPECT_EQ(durable(0, 2 * kBlock), expected);
}

TEST_F(FaultyDeviceTest, CrashAfterKthWriteDropsUnflushedWrites) {
  FaultConfig config;
  config.crash_after_write = 3;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(dev.flush({}));
  ASSERT_OK(write(dev, kBlock, kBlock, 'b'));
  EXPECT_FALSE(dev.crashed());
  ASSERT_OK(write(dev, 2 * kBlock, kBlock, 'c'));  // the 3rd write is accepted...
  EXPECT_TRUE(dev.crashed());                      // ...and then the machine goes down.
  EXPECT_EQ(durable(0, 3 * kBlock), cat(same(kBlock, 'a'), same(2 * kBlock, 0)));
}

TEST_F(FaultyDeviceTest, EveryCallFailsAfterCrash) {
  FaultConfig config;
  config.crash_after_write = 1;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_TRUE(dev.crashed());
  const auto before = dev.counters();
  AlignedBuffer buf(kBlock);
  EXPECT_EQ(dev.read(0, buf.span(), {}).code(), Code::kCrashed);
  EXPECT_EQ(dev.write(0, buf.span(), {}).code(), Code::kCrashed);
  EXPECT_EQ(write(dev, 0, kBlock, 'x', /*fua=*/true).code(), Code::kCrashed);
  EXPECT_EQ(dev.flush({}).code(), Code::kCrashed);
  // Even requests that would be refused for their arguments: the machine is down.
  EXPECT_EQ(dev.read(1, buf.span(), {}).code(), Code::kCrashed);
  const auto after = dev.counters();
  EXPECT_EQ(after.reads, before.reads);
  EXPECT_EQ(after.writes, before.writes);
  EXPECT_EQ(after.flushes, before.flushes);
  // Geometry is still known.
  EXPECT_EQ(dev.size_bytes(), kImageSize);
  EXPECT_EQ(dev.sector_size(), 512u);
  EXPECT_EQ(durable(0, kBlock), same(kBlock, 0));
}

TEST_F(FaultyDeviceTest, CrashKeepsTornPrefixOfLastWrite) {
  FaultConfig config;
  config.crash_after_write = 3;
  config.tear_sectors = 3;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(dev.flush({}));
  ASSERT_OK(write(dev, 2 * kBlock, kBlock, 'b'));  // unflushed, not the last: dropped
  ASSERT_OK(write(dev, 4 * kBlock, 2 * kBlock, 'c'));
  ASSERT_TRUE(dev.crashed());
  EXPECT_EQ(durable(0, 6 * kBlock), cat(same(kBlock, 'a'), same(3 * kBlock, 0), same(3 * 512, 'c'),
                                        same(2 * kBlock - 3 * 512, 0)));
}

TEST_F(FaultyDeviceTest, TearLongerThanLastWriteKeepsAllOfIt) {
  FaultConfig config;
  config.crash_after_write = 2;
  config.tear_sectors = 100;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));  // unflushed, not the last: dropped
  ASSERT_OK(write(dev, kBlock, 1024, 'b'));
  ASSERT_TRUE(dev.crashed());
  EXPECT_EQ(durable(0, 2 * kBlock), cat(same(kBlock, 0), same(1024, 'b'), same(3072, 0)));
}

TEST_F(FaultyDeviceTest, TornLastWriteShowsItsOwnDataNotOlderCachedData) {
  FaultConfig config;
  config.crash_after_write = 2;
  config.tear_sectors = 2;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(write(dev, 512, kBlock, 'b'));  // overlaps the first; torn after 2 sectors
  ASSERT_TRUE(dev.crashed());
  EXPECT_EQ(durable(0, 2 * kBlock), cat(same(512, 0), same(1024, 'b'), same(kBlock + 2560, 0)));
}

TEST_F(FaultyDeviceTest, FuaLastWriteIsNotTorn) {
  FaultConfig config;
  config.crash_after_write = 2;
  config.tear_sectors = 1;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(write(dev, kBlock, kBlock, 'f', /*fua=*/true));
  ASSERT_TRUE(dev.crashed());
  EXPECT_EQ(durable(0, 2 * kBlock), cat(same(kBlock, 0), same(kBlock, 'f')));
}

TEST_F(FaultyDeviceTest, CrashOnDemand) {
  FaultConfig config;
  config.tear_sectors = 1;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(write(dev, kBlock, kBlock, 'b'));
  EXPECT_FALSE(dev.crashed());
  dev.crash();
  EXPECT_TRUE(dev.crashed());
  EXPECT_EQ(write(dev, 0, kBlock, 'z').code(), Code::kCrashed);
  EXPECT_EQ(durable(0, 2 * kBlock), cat(same(kBlock, 0), same(512, 'b'), same(kBlock - 512, 0)));
}

TEST_F(FaultyDeviceTest, CrashAfterFlushTearsNothing) {
  FaultConfig config;
  config.tear_sectors = 8;
  FaultyDevice& dev = make(config);
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(dev.flush({}));
  dev.crash();
  dev.crash();  // idempotent
  EXPECT_EQ(durable(0, kBlock), same(kBlock, 'a'));
}

TEST_F(FaultyDeviceTest, EioOnBlocksForReadsOnly) {
  FaultConfig config;
  config.eio_blocks = {2};
  config.eio_blocks_op = FaultOp::kRead;
  FaultyDevice& dev = make(config);
  AlignedBuffer buf(kBlock);
  EXPECT_OK(write(dev, 2 * kBlock, kBlock, 'a'));  // writes to the block work
  const Status st = dev.read(2 * kBlock, buf.span(), {});
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_EQ(st.sys_errno(), EIO);
  EXPECT_FALSE(st.retryable());
  // Any read touching the block fails, even by one sector.
  AlignedBuffer wide(4 * kBlock);
  EXPECT_EQ(dev.read(0, wide.span(), {}).code(), Code::kIoError);
  AlignedBuffer sector(512);
  EXPECT_EQ(dev.read(3 * kBlock - 512, sector.span(), {}).code(), Code::kIoError);
  EXPECT_OK(dev.read(3 * kBlock, buf.span(), {}));
  EXPECT_OK(dev.read(kBlock, buf.span(), {}));
  EXPECT_EQ(dev.counters().injected_errors, 3u);
}

TEST_F(FaultyDeviceTest, EioOnBlocksForWritesOnly) {
  FaultConfig config;
  config.eio_blocks = {1, 5};
  config.eio_blocks_op = FaultOp::kWrite;
  FaultyDevice& dev = make(config);
  const Status st = write(dev, kBlock, kBlock, 'a');
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_EQ(st.sys_errno(), EIO);
  EXPECT_EQ(write(dev, 4 * kBlock, 2 * kBlock, 'a').code(), Code::kIoError);
  EXPECT_EQ(write(dev, 5 * kBlock, 512, 'a', /*fua=*/true).code(), Code::kIoError);
  EXPECT_OK(write(dev, 2 * kBlock, 3 * kBlock, 'b'));
  // The failed writes left nothing behind, cached or durable.
  EXPECT_EQ(read(dev, kBlock, kBlock), same(kBlock, 0));
  EXPECT_EQ(read(dev, 5 * kBlock, kBlock), same(kBlock, 0));
  ASSERT_OK(dev.flush({}));
  EXPECT_EQ(durable(kBlock, 5 * kBlock),
            cat(same(kBlock, 0), same(3 * kBlock, 'b'), same(kBlock, 0)));
  EXPECT_EQ(dev.counters().injected_errors, 3u);
}

TEST_F(FaultyDeviceTest, EioOnBlocksForAnyOpWithOwnBlockSize) {
  FaultConfig config;
  config.eio_blocks = {3};  // bytes [1536, 2048)
  config.fault_block_size = 512;
  FaultyDevice& dev = make(config);
  AlignedBuffer buf(kBlock);
  EXPECT_EQ(dev.read(0, buf.span(), {}).code(), Code::kIoError);
  EXPECT_EQ(dev.write(0, buf.span(), {}).code(), Code::kIoError);
  AlignedBuffer small(1536);
  EXPECT_OK(dev.read(0, small.span(), {}));
  EXPECT_OK(dev.write(2048, small.span(), {}));
  EXPECT_EQ(dev.counters().injected_errors, 2u);
}

TEST_F(FaultyDeviceTest, EioOnKthIoCountsReadsAndWrites) {
  FaultConfig config;
  config.eio_on_io = 3;
  FaultyDevice& dev = make(config);
  AlignedBuffer buf(kBlock);
  EXPECT_OK(dev.read(0, buf.span(), {}));             // 1
  EXPECT_OK(write(dev, 0, kBlock, 'a'));              // 2
  const Status st = write(dev, kBlock, kBlock, 'b');  // 3: fails
  EXPECT_EQ(st.code(), Code::kIoError);
  EXPECT_EQ(st.sys_errno(), EIO);
  EXPECT_TRUE(st.retryable());
  EXPECT_OK(write(dev, kBlock, kBlock, 'b'));  // 4: the retry works
  EXPECT_OK(dev.read(0, buf.span(), {}));      // 5
  // Refused requests are not I/O and do not count.
  EXPECT_EQ(dev.read(1, buf.span(), {}).code(), Code::kInvalidArgument);
  EXPECT_EQ(read(dev, 0, 2 * kBlock), cat(same(kBlock, 'a'), same(kBlock, 'b')));
  const auto c = dev.counters();
  EXPECT_EQ(c.injected_errors, 1u);
  EXPECT_EQ(c.reads, 3u);
  EXPECT_EQ(c.writes, 3u);
}

TEST_F(FaultyDeviceTest, SetConfigRestartsCountsButNotCounters) {
  FaultyDevice& dev = make();
  for (int i = 0; i < 5; ++i) ASSERT_OK(write(dev, 0, kBlock, 'a'));
  ASSERT_OK(dev.flush({}));
  FaultConfig config;
  config.crash_after_write = 2;
  config.eio_on_io = 1;
  dev.set_config(config);
  AlignedBuffer buf(kBlock);
  EXPECT_EQ(dev.read(0, buf.span(), {}).code(), Code::kIoError);  // I/O 1 from now
  ASSERT_OK(write(dev, kBlock, kBlock, 'b'));                     // write 1 from now
  EXPECT_FALSE(dev.crashed());
  ASSERT_OK(write(dev, 2 * kBlock, kBlock, 'c'));  // write 2 from now: crash
  EXPECT_TRUE(dev.crashed());
  const auto c = dev.counters();
  EXPECT_EQ(c.writes, 7u);
  EXPECT_EQ(c.reads, 1u);
  EXPECT_EQ(c.flushes, 1u);
  EXPECT_EQ(c.injected_errors, 1u);
  EXPECT_EQ(durable(0, 3 * kBlock), cat(same(kBlock, 'a'), same(2 * kBlock, 0)));
}

TEST_F(FaultyDeviceTest, LatencyIsAddedToReadsAndWrites) {
  FaultConfig config;
  config.latency = std::chrono::milliseconds(20);
  FaultyDevice& dev = make(config);
  AlignedBuffer buf(kBlock);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(dev.read(0, buf.span(), {}));
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_OK(dev.write(0, buf.span(), {}));
  const auto t2 = std::chrono::steady_clock::now();
  EXPECT_GE(t1 - t0, config.latency);
  EXPECT_GE(t2 - t1, config.latency);
  // Concurrent callers wait in parallel, not one after the other.
  const auto t3 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&dev, i] {
      AlignedBuffer b(kBlock);
      EXPECT_OK(dev.read(static_cast<uint64_t>(i) * kBlock, b.span(), {}));
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t3, 4 * config.latency);
}

TEST_F(FaultyDeviceTest, DestructionWithoutCrashWritesCacheBack) {
  FaultyDevice& dev = make();
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  dev_.reset();
  EXPECT_EQ(durable(0, kBlock), same(kBlock, 'a'));
}

TEST_F(FaultyDeviceTest, ErrorsOfTheBaseSurfaceAtFlushAndKeepTheCache) {
  // Another host takes a Write Exclusive reservation: the base refuses our writes, but
  // a cached write only meets the base at flush.
  FileOpenOptions other_opts;
  other_opts.host = HostId::for_node(0xfa17, 2);
  auto other = open_file_device(image_, other_opts);
  ASSERT_TRUE(other.is_ok()) << other.status().to_string();
  FaultyDevice& dev = make();
  ASSERT_OK(other->reservations->register_key(0x42));
  ASSERT_OK(other->reservations->acquire(0x42, ReservationType::kWriteExclusive));
  ASSERT_OK(write(dev, 0, kBlock, 'a'));
  const Status st = dev.flush({});
  EXPECT_EQ(st.code(), Code::kReservationConflict) << st.to_string();
  EXPECT_EQ(read(dev, 0, kBlock), same(kBlock, 'a'));  // still cached
  EXPECT_EQ(write(dev, kBlock, kBlock, 'f', /*fua=*/true).code(), Code::kReservationConflict);
  ASSERT_OK(other->reservations->release(0x42, ReservationType::kWriteExclusive));
  ASSERT_OK(dev.flush({}));
  EXPECT_EQ(durable(0, 2 * kBlock), cat(same(kBlock, 'a'), same(kBlock, 0)));
}

TEST_F(FaultyDeviceTest, ConcurrentWritersReadersAndFlushes) {
  FaultyDevice& dev = make();
  constexpr int kThreads = 4;
  constexpr int kRounds = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&dev, t] {
      const uint64_t offset = static_cast<uint64_t>(t) * kBlock;
      for (int r = 0; r < kRounds; ++r) {
        const auto fill = static_cast<uint8_t>(t * kRounds + r);
        EXPECT_OK(write(dev, offset, kBlock, fill, /*fua=*/r % 7 == 0));
        // Our own latest write is what we read back, whatever the others do.
        EXPECT_EQ(read(dev, offset, kBlock), same(kBlock, fill));
        if (r % 5 == 0) EXPECT_OK(dev.flush({}));
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_OK(dev.flush({}));
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(durable(static_cast<uint64_t>(t) * kBlock, kBlock),
              same(kBlock, static_cast<uint8_t>(t * kRounds + kRounds - 1)));
  }
}

}  // namespace
}  // namespace sharedfs::device
