// The file backend: the BlockDevice contract (run also against FaultyDevice with no faults
// configured), emulated NVMe reservations between two openers with different Host IDs,
// their persistence in the sidecar, refusal of a foreign sidecar, and a loop device over
// an image sharing the image's reservation state.
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/test_util.h"
#include "device/device.h"
#include "device/fence_guard.h"

namespace sharedfs::device {
namespace {

// The status of a write refused because the reservation forbids it: what a fenced node
// sees, and what it must react to by withdrawing.
#define EXPECT_CONFLICT(expr)                                                              \
  do {                                                                                     \
    const ::sharedfs::Status _st = (expr);                                                 \
    EXPECT_EQ(_st.code(), Code::kReservationConflict) << #expr << ": " << _st.to_string(); \
    EXPECT_EQ(_st.to_errno(), EBADE) << #expr;                                             \
  } while (0)

constexpr uint64_t kImageSize = 1 << 20;
constexpr size_t kBlock = 4096;
constexpr uint64_t kCluster = 0xf11e;
const HostId kHostA = HostId::for_node(kCluster, 1);
const HostId kHostB = HostId::for_node(kCluster, 2);
const ReservationKey kKeyA = node_reservation_key("filetest", 1);
const ReservationKey kKeyB = node_reservation_key("filetest", 2);

using Bytes = std::vector<uint8_t>;
using RT = ReservationType;

// A temporary directory with an image of kImageSize zero bytes (plus `extra` bytes that
// are not a whole sector). Removing the directory also removes the ".pr" sidecar the file
// backend creates beside the image.
class ImageFixture : public ::testing::Test {
 protected:
  void SetUp() override { make_image(0); }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  void make_image(uint64_t extra) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sharedfs-file-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp: " << std::strerror(errno);
    // The loop driver reports its backing file by canonical path; use that form here too.
    dir_ = std::filesystem::canonical(tmpl).string();
    image_ = dir_ + "/image";
    std::ofstream(image_).close();
    std::filesystem::resize_file(image_, kImageSize + extra);
  }

  Result<OpenDevice> open(const HostId& host, const std::string& path = "") {
    FileOpenOptions opts;
    opts.host = host;
    return open_file_device(path.empty() ? image_ : path, opts);
  }

  static Bytes read(BlockDevice& dev, uint64_t offset, size_t len) {
    AlignedBuffer buf(len);
    const Status st = dev.read(offset, buf.span());
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    const auto* p = reinterpret_cast<const uint8_t*>(buf.data());
    return Bytes(p, p + len);
  }

  static Status write(BlockDevice& dev, uint64_t offset, size_t len, uint8_t fill,
                      bool fua = false) {
    AlignedBuffer buf(len);
    std::memset(buf.data(), fill, len);
    WriteOptions opts;
    opts.fua = fua;
    return dev.write(offset, buf.span(), opts);
  }

  static Bytes same(size_t len, uint8_t fill) { return Bytes(len, fill); }
  static Bytes cat(const Bytes& a, const Bytes& b) {
    Bytes out = a;
    out.insert(out.end(), b.begin(), b.end());
    return out;
  }

  std::string dir_;
  std::string image_;
};

// ---------------------------------------------------------------------------------------
// The BlockDevice contract, for every implementation over the file backend.

struct PlainFile {
  static std::unique_ptr<BlockDevice> wrap(std::unique_ptr<BlockDevice> base) { return base; }
};
struct FaultyWithoutFaults {
  static std::unique_ptr<BlockDevice> wrap(std::unique_ptr<BlockDevice> base) {
    return std::make_unique<FaultyDevice>(std::move(base), FaultConfig{});
  }
};

struct ImplName {
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, PlainFile>) return "File";
    return "FaultyOverFile";
  }
};

template <typename Impl>
class FileDeviceContract : public ImageFixture {
 protected:
  void SetUp() override {
    make_image(100);  // a tail shorter than a sector is not part of the device
    auto dev = open(kHostA);
    ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
    dev_ = Impl::wrap(std::move(dev->io));
  }
  void TearDown() override {
    dev_.reset();
    ImageFixture::TearDown();
  }

  // What another opener of the image reads.
  Bytes seen_by_other(uint64_t offset, size_t len) {
    auto other = open(kHostB);
    EXPECT_TRUE(other.is_ok()) << other.status().to_string();
    return other ? read(*other->io, offset, len) : Bytes{};
  }

  std::unique_ptr<BlockDevice> dev_;
};

using Implementations = ::testing::Types<PlainFile, FaultyWithoutFaults>;
TYPED_TEST_SUITE(FileDeviceContract, Implementations, ImplName);

TYPED_TEST(FileDeviceContract, Geometry) {
  EXPECT_EQ(this->dev_->size_bytes(), kImageSize);
  EXPECT_EQ(this->dev_->sector_size(), 512u);
  EXPECT_NE(this->dev_->describe().find(this->image_), std::string::npos) << this->dev_->describe();
}

TYPED_TEST(FileDeviceContract, AlignedRoundTrip) {
  BlockDevice& dev = *this->dev_;
  EXPECT_EQ(this->read(dev, 0, 2 * kBlock), this->same(2 * kBlock, 0));
  ASSERT_OK(this->write(dev, 0, kBlock, 'a'));
  ASSERT_OK(this->write(dev, kBlock + 512, 512, 'b'));            // one sector
  ASSERT_OK(this->write(dev, 3 * kBlock + 1536, 2048, 'c'));      // sector- but not 4K-aligned
  ASSERT_OK(this->write(dev, kImageSize - kBlock, kBlock, 'z'));  // the last block
  Bytes expected(4 * kBlock, 0);
  std::fill(expected.begin(), expected.begin() + kBlock, 'a');
  std::fill(expected.begin() + kBlock + 512, expected.begin() + kBlock + 1024, 'b');
  std::fill(expected.begin() + 3 * kBlock + 1536, expected.begin() + 3 * kBlock + 3584, 'c');
  EXPECT_EQ(this->read(dev, 0, 4 * kBlock), expected);
  EXPECT_EQ(this->read(dev, 3 * kBlock + 1536, 512), this->same(512, 'c'));
  EXPECT_EQ(this->read(dev, kImageSize - kBlock, kBlock), this->same(kBlock, 'z'));
  // Overwrite part of a range.
  ASSERT_OK(this->write(dev, 1024, 1024, 'd'));
  std::fill(expected.begin() + 1024, expected.begin() + 2048, 'd');
  EXPECT_EQ(this->read(dev, 0, 4 * kBlock), expected);
}

TYPED_TEST(FileDeviceContract, FlushMakesWritesVisibleToOthers) {
  ASSERT_OK(this->write(*this->dev_, kBlock, kBlock, 'f'));
  ASSERT_OK(this->dev_->flush());
  EXPECT_EQ(this->seen_by_other(kBlock, kBlock), this->same(kBlock, 'f'));
  ASSERT_OK(this->dev_->flush());  // with nothing to flush
}

TYPED_TEST(FileDeviceContract, FuaWriteIsVisibleToOthersWithoutFlush) {
  ASSERT_OK(this->write(*this->dev_, 2 * kBlock, kBlock, 'u', /*fua=*/true));
  EXPECT_EQ(this->seen_by_other(2 * kBlock, kBlock), this->same(kBlock, 'u'));
  EXPECT_EQ(this->read(*this->dev_, 2 * kBlock, kBlock), this->same(kBlock, 'u'));
}

TYPED_TEST(FileDeviceContract, MisalignedRequestsAreRefused) {
  BlockDevice& dev = *this->dev_;
  AlignedBuffer buf(2 * kBlock);
  std::memset(buf.data(), 'x', buf.size());
  const std::span<std::byte> sector = buf.span().first(512);
  EXPECT_EQ(dev.read(100, sector).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(100, sector).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.read(0, buf.span().first(700)).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(0, buf.span().first(700)).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(512, buf.span().first(100), {.fua = true}).code(), Code::kInvalidArgument);
  // Nothing of the refused writes landed.
  ASSERT_OK(dev.flush());
  EXPECT_EQ(this->read(dev, 0, 2 * kBlock), this->same(2 * kBlock, 0));
}

TYPED_TEST(FileDeviceContract, OutOfRangeRequestsAreRefused) {
  BlockDevice& dev = *this->dev_;
  AlignedBuffer buf(2 * kBlock);
  std::memset(buf.data(), 'x', buf.size());
  const uint64_t size = dev.size_bytes();
  EXPECT_EQ(dev.read(size, buf.span().first(512)).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(size, buf.span().first(512)).code(), Code::kInvalidArgument);
  // Starts inside, ends outside (including the sub-sector tail of the image).
  EXPECT_EQ(dev.read(size - kBlock, buf.span()).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(size - kBlock, buf.span()).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(size + kBlock, buf.span().first(512)).code(), Code::kInvalidArgument);
  // offset + length overflows 64 bits.
  const uint64_t huge = ~uint64_t{0} - 511;
  EXPECT_EQ(dev.read(huge, buf.span().first(1024)).code(), Code::kInvalidArgument);
  EXPECT_EQ(dev.write(huge, buf.span().first(1024)).code(), Code::kInvalidArgument);
  ASSERT_OK(dev.flush());
  EXPECT_EQ(this->read(dev, size - kBlock, kBlock), this->same(kBlock, 0));
}

// ---------------------------------------------------------------------------------------
// Emulated reservations: two openers of one image in one process, with different Host
// IDs, stand for two nodes.

class FileDeviceReservations : public ImageFixture {
 protected:
  void SetUp() override {
    ImageFixture::SetUp();
    reopen();
  }
  void TearDown() override {
    a_ = {};
    b_ = {};
    ImageFixture::TearDown();
  }

  void reopen() {
    a_ = {};
    b_ = {};
    auto a = open(kHostA);
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    auto b = open(kHostB);
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    a_ = std::move(*a);
    b_ = std::move(*b);
  }

  ReservationReport report(OpenDevice& dev) {
    auto r = dev.reservations->report();
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r ? *r : ReservationReport{};
  }

  // A registered with kKeyA holds a WERO reservation.
  void a_holds_wero() {
    ASSERT_OK(a_.reservations->register_key(kKeyA));
    ASSERT_OK(a_.reservations->acquire(kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  }

  OpenDevice a_;
  OpenDevice b_;
};

TEST_F(FileDeviceReservations, FreshStateHasNoReservation) {
  const ReservationReport r = report(b_);
  EXPECT_EQ(r.generation, 0u);
  EXPECT_EQ(r.type, RT::kNone);
  EXPECT_TRUE(r.registrants.empty());
  EXPECT_EQ(a_.reservations->host_id(), kHostA);
  EXPECT_EQ(b_.reservations->host_id(), kHostB);
  // Without a reservation everybody reads and writes.
  EXPECT_OK(write(*a_.io, 0, kBlock, 'a'));
  EXPECT_OK(write(*b_.io, kBlock, kBlock, 'b'));
}

TEST_F(FileDeviceReservations, WeroRefusesWritesOfUnregisteredHostOnly) {
  ASSERT_OK(a_.reservations->register_key(kKeyA));
  ReservationReport r = report(b_);
  EXPECT_EQ(r.generation, 1u);
  EXPECT_EQ(r.type, RT::kNone);
  ASSERT_OK(a_.reservations->acquire(kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  r = report(b_);
  EXPECT_EQ(r.generation, 1u);  // acquiring does not bump the generation
  EXPECT_EQ(r.type, RT::kWriteExclusiveRegistrantsOnly);
  ASSERT_NE(r.holder(), nullptr);
  EXPECT_EQ(r.holder()->host, kHostA);
  EXPECT_EQ(r.holder()->key, kKeyA);

  ASSERT_OK(write(*a_.io, 0, kBlock, 'a'));
  EXPECT_CONFLICT(write(*b_.io, 0, kBlock, 'b'));
  EXPECT_CONFLICT(write(*b_.io, kBlock, kBlock, 'b', /*fua=*/true));
  // Reads are not restricted by a write-exclusive type; the refused write left no trace.
  EXPECT_EQ(read(*b_.io, 0, 2 * kBlock), cat(same(kBlock, 'a'), same(kBlock, 0)));

  // Registrants of a registrants-only reservation may write.
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  EXPECT_EQ(report(a_).generation, 2u);
  EXPECT_OK(write(*b_.io, kBlock, kBlock, 'b'));
  EXPECT_EQ(read(*a_.io, kBlock, kBlock), same(kBlock, 'b'));
}

TEST_F(FileDeviceReservations, PreemptAndAbortFencesTheVictim) {
  a_holds_wero();
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  ASSERT_OK(write(*b_.io, 0, kBlock, 'b'));
  const uint32_t gen = report(a_).generation;

  ASSERT_OK(a_.reservations->preempt_and_abort(kKeyA, kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  const ReservationReport r = report(b_);
  EXPECT_EQ(r.generation, gen + 1);
  EXPECT_EQ(r.type, RT::kWriteExclusiveRegistrantsOnly);
  ASSERT_NE(r.holder(), nullptr);
  EXPECT_EQ(r.holder()->host, kHostA);
  EXPECT_EQ(r.find_key(kKeyB), nullptr);
  ASSERT_EQ(r.registrants.size(), 1u);

  // The victim is fenced: every write refused, reads still work, its reservation
  // commands with the lost key refused.
  EXPECT_CONFLICT(write(*b_.io, 0, kBlock, 'x'));
  EXPECT_CONFLICT(write(*b_.io, kBlock, kBlock, 'x', /*fua=*/true));
  EXPECT_EQ(read(*b_.io, 0, kBlock), same(kBlock, 'b'));
  EXPECT_CONFLICT(b_.reservations->acquire(kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  EXPECT_CONFLICT(
      b_.reservations->preempt_and_abort(kKeyB, kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  EXPECT_OK(write(*a_.io, 0, kBlock, 'a'));
  EXPECT_EQ(read(*b_.io, 0, kBlock), same(kBlock, 'a'));
}

// What a node's file system writes through: the first refused write stops every later
// one (without asking the device) and tells the node once why.
TEST_F(FileDeviceReservations, FenceGuardStopsWritesAtTheFirstConflict) {
  a_holds_wero();
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  FenceGuard guard(*b_.io);
  std::vector<std::string> reasons;
  guard.set_on_fenced([&](const std::string& why) { reasons.push_back(why); });
  ASSERT_OK(write(guard, 0, kBlock, 'b'));
  EXPECT_FALSE(guard.writes_stopped());

  ASSERT_OK(a_.reservations->preempt_and_abort(kKeyA, kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  EXPECT_CONFLICT(write(guard, kBlock, kBlock, 'x'));
  EXPECT_TRUE(guard.writes_stopped());
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_NE(reasons[0].find("fenced"), std::string::npos) << reasons[0];
  // Later writes never reach the device, even once it would take them again.
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  const Status again = write(guard, 0, kBlock, 'y');
  EXPECT_EQ(again.code(), Code::kIoError) << again.to_string();
  EXPECT_EQ(guard.flush().code(), Code::kIoError);
  EXPECT_EQ(reasons.size(), 1u);
  EXPECT_EQ(read(guard, 0, kBlock), same(kBlock, 'b'));
}

TEST_F(FileDeviceReservations, PreemptingTheHolderTakesTheReservationOver) {
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  ASSERT_OK(b_.reservations->acquire(kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  ASSERT_OK(a_.reservations->register_key(kKeyA));
  ASSERT_OK(a_.reservations->preempt_and_abort(kKeyA, kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  const ReservationReport r = report(a_);
  ASSERT_NE(r.holder(), nullptr);
  EXPECT_EQ(r.holder()->host, kHostA);
  EXPECT_EQ(r.type, RT::kWriteExclusiveRegistrantsOnly);
  EXPECT_CONFLICT(write(*b_.io, 0, kBlock, 'b'));
  EXPECT_OK(write(*a_.io, 0, kBlock, 'a'));
}

TEST_F(FileDeviceReservations, ReleaseAndClear) {
  a_holds_wero();
  EXPECT_CONFLICT(write(*b_.io, 0, kBlock, 'b'));
  // Release with the wrong type is refused; by a non-holder it is a no-op.
  EXPECT_EQ(a_.reservations->release(kKeyA, RT::kExclusiveAccess).code(), Code::kInvalidArgument);
  const uint32_t gen = report(a_).generation;
  ASSERT_OK(a_.reservations->release(kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  ReservationReport r = report(b_);
  EXPECT_EQ(r.type, RT::kNone);
  EXPECT_EQ(r.holder(), nullptr);
  EXPECT_NE(r.find_key(kKeyA), nullptr);  // still registered
  EXPECT_EQ(r.generation, gen);           // release does not bump the generation
  EXPECT_OK(write(*b_.io, 0, kBlock, 'b'));

  ASSERT_OK(a_.reservations->acquire(kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  EXPECT_EQ(b_.reservations->clear(kKeyA).code(), Code::kReservationConflict);  // not B's key
  ASSERT_OK(b_.reservations->clear(kKeyB));  // any registrant may clear
  r = report(a_);
  EXPECT_EQ(r.type, RT::kNone);
  EXPECT_TRUE(r.registrants.empty());
  EXPECT_EQ(r.generation, gen + 2);  // B's registration, then the clear
  EXPECT_OK(write(*b_.io, 0, kBlock, 'b'));
  EXPECT_OK(write(*a_.io, 0, kBlock, 'a'));
}

TEST_F(FileDeviceReservations, ExclusiveAccessRefusesReadsOfOthers) {
  ASSERT_OK(a_.reservations->register_key(kKeyA));
  ASSERT_OK(a_.reservations->acquire(kKeyA, RT::kExclusiveAccess));
  AlignedBuffer buf(kBlock);
  EXPECT_CONFLICT(b_.io->read(0, buf.span()));
  EXPECT_CONFLICT(write(*b_.io, 0, kBlock, 'b'));
  // Exclusive access excludes registrants too, unless they hold it.
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  EXPECT_CONFLICT(b_.io->read(0, buf.span()));
  EXPECT_OK(a_.io->read(0, buf.span()));
  EXPECT_OK(write(*a_.io, 0, kBlock, 'a'));

  // Registrants only: registered B reads and writes, an unregistered host does neither.
  ASSERT_OK(a_.reservations->release(kKeyA, RT::kExclusiveAccess));
  ASSERT_OK(a_.reservations->acquire(kKeyA, RT::kExclusiveAccessRegistrantsOnly));
  EXPECT_OK(b_.io->read(0, buf.span()));
  EXPECT_OK(write(*b_.io, 0, kBlock, 'b'));
  auto c = open(HostId::for_node(kCluster, 3));
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_CONFLICT(c->io->read(0, buf.span()));
  EXPECT_CONFLICT(write(*c->io, 0, kBlock, 'c'));
}

TEST_F(FileDeviceReservations, StatePersistsAcrossCloseAndReopen) {
  a_holds_wero();
  ASSERT_OK(b_.reservations->register_key(kKeyB));
  ASSERT_OK(a_.reservations->preempt_and_abort(kKeyA, kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  const ReservationReport before = report(a_);

  reopen();  // every opener closed, then new ones
  const ReservationReport after = report(b_);
  EXPECT_EQ(after.generation, before.generation);
  EXPECT_EQ(after.type, RT::kWriteExclusiveRegistrantsOnly);
  ASSERT_EQ(after.registrants.size(), 1u);
  EXPECT_EQ(after.registrants[0].host, kHostA);
  EXPECT_EQ(after.registrants[0].key, kKeyA);
  EXPECT_TRUE(after.registrants[0].holds_reservation);
  EXPECT_CONFLICT(write(*b_.io, 0, kBlock, 'b'));
  EXPECT_OK(write(*a_.io, 0, kBlock, 'a'));
}

TEST_F(FileDeviceReservations, ForeignSidecarIsRefused) {
  a_ = {};
  b_ = {};
  const std::string sidecar = image_ + ".pr";
  ASSERT_TRUE(std::filesystem::exists(sidecar));

  // Garbage larger than the state: bad magic.
  std::string garbage(16384, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 131 + 7);
  std::ofstream(sidecar, std::ios::binary | std::ios::trunc) << garbage;
  auto dev = open(kHostA);
  ASSERT_FALSE(dev.is_ok());
  EXPECT_EQ(dev.status().code(), Code::kCorruption) << dev.status().to_string();
  EXPECT_EQ(std::filesystem::file_size(sidecar), garbage.size());  // left alone

  // A short file that is not ours.
  std::ofstream(sidecar, std::ios::binary | std::ios::trunc) << "not a reservation state";
  dev = open(kHostA);
  ASSERT_FALSE(dev.is_ok());
  EXPECT_EQ(dev.status().code(), Code::kCorruption) << dev.status().to_string();

  // The same through an explicit state path.
  const std::string foreign = dir_ + "/foreign";
  std::ofstream(foreign, std::ios::binary) << garbage;
  FileOpenOptions opts;
  opts.host = kHostA;
  opts.reservation_state_path = foreign;
  dev = open_file_device(image_, opts);
  ASSERT_FALSE(dev.is_ok());
  EXPECT_EQ(dev.status().code(), Code::kCorruption) << dev.status().to_string();
}

TEST_F(FileDeviceReservations, ExplicitStatePathIsSharedByItsOpeners) {
  FileOpenOptions opts;
  opts.host = kHostA;
  opts.reservation_state_path = dir_ + "/state";
  auto a = open_file_device(image_, opts);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  opts.host = kHostB;
  auto b = open_file_device(image_, opts);
  ASSERT_TRUE(b.is_ok()) << b.status().to_string();
  ASSERT_OK(a->reservations->register_key(kKeyA));
  ASSERT_OK(a->reservations->acquire(kKeyA, RT::kWriteExclusive));
  EXPECT_CONFLICT(write(*b->io, 0, kBlock, 'b'));
  // The default sidecar is a different state: openers using it are not restricted.
  EXPECT_OK(write(*b_.io, 0, kBlock, 'b'));
  EXPECT_EQ(report(b_).type, RT::kNone);
}

// ---------------------------------------------------------------------------------------
// A loop device over the image shares the image's reservation state (the sidecar lies
// beside the loop device's backing file).

class FileDeviceLoop : public ImageFixture {
 protected:
  void SetUp() override {
    ImageFixture::SetUp();
    // losetup comes with the set-up (package mount) and the machine has loop devices.
    auto r = testing::run_command("losetup -f --show '" + image_ + "'");
    ASSERT_TRUE(r.rc == 0 && r.out.rfind("/dev/loop", 0) == 0) << "losetup: " << r.out;
    loop_ = r.out.substr(0, r.out.find('\n'));
  }
  void TearDown() override {
    if (!loop_.empty()) {
      auto r = testing::run_command("losetup -d " + loop_);
      EXPECT_EQ(r.rc, 0) << "detaching " << loop_ << ": " << r.out;
    }
    ImageFixture::TearDown();
  }

  std::string loop_;
};

TEST_F(FileDeviceLoop, SharesReservationStateAndDataWithTheImage) {
  auto file = open(kHostA);
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  auto loop = open(kHostB, loop_);
  ASSERT_TRUE(loop.is_ok()) << loop.status().to_string();
  EXPECT_EQ(loop->io->size_bytes(), kImageSize);
  EXPECT_EQ(loop->io->describe(), "file:" + loop_);

  ASSERT_OK(file->reservations->register_key(kKeyA));
  ASSERT_OK(file->reservations->acquire(kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  ReservationReport r = *loop->reservations->report();
  ASSERT_NE(r.holder(), nullptr);
  EXPECT_EQ(r.holder()->host, kHostA);

  // Data written through the file is read through the loop device and the other way.
  ASSERT_OK(write(*file->io, 0, kBlock, 'a'));
  EXPECT_EQ(read(*loop->io, 0, kBlock), same(kBlock, 'a'));
  EXPECT_CONFLICT(write(*loop->io, kBlock, kBlock, 'b'));

  ASSERT_OK(loop->reservations->register_key(kKeyB));
  ASSERT_OK(write(*loop->io, kBlock, kBlock, 'b'));
  ASSERT_OK(loop->io->flush());
  EXPECT_EQ(read(*file->io, kBlock, kBlock), same(kBlock, 'b'));

  ASSERT_OK(
      file->reservations->preempt_and_abort(kKeyA, kKeyB, RT::kWriteExclusiveRegistrantsOnly));
  EXPECT_CONFLICT(write(*loop->io, kBlock, kBlock, 'x'));
  EXPECT_EQ(read(*file->io, kBlock, kBlock), same(kBlock, 'b'));
  r = *loop->reservations->report();
  EXPECT_EQ(r.find_key(kKeyB), nullptr);
}

}  // namespace
}  // namespace sharedfs::device
