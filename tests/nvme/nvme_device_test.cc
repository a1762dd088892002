// The `nvme` backend end to end: open_nvme_device and its real libnvme calls, answered by
// the emulated controller of libsharedfs_nvme_shim.so (LD_PRELOAD, set by ctest) on a
// regular stand-in file. A second host is a forked child with its own Host ID; the file
// backend opened on the same stand-in shares the emulated reservation state.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>

#include "device/device.h"

namespace sharedfs::device {
namespace {

constexpr uint64_t kCluster = 0xc1u;
const HostId kHostA = HostId::for_node(kCluster, 1);
const HostId kHostB = HostId::for_node(kCluster, 2);
const ReservationKey kKeyA = node_reservation_key("nvmetest", 1);
const ReservationKey kKeyB = node_reservation_key("nvmetest", 2);
constexpr auto kWero = ReservationType::kWriteExclusiveRegistrantsOnly;
constexpr uint64_t kDeviceSize = 1 << 20;
constexpr uint64_t kBlock = 4096;
// Where the second host writes, apart from what the first host writes.
constexpr uint64_t kOtherHostOffset = 128 * kBlock;

void set_host(const std::optional<HostId>& host) {
  if (host) {
    ASSERT_EQ(setenv("SHAREDFS_NVME_SHIM_HOSTID", host->to_string().c_str(), 1), 0);
  } else {
    ASSERT_EQ(unsetenv("SHAREDFS_NVME_SHIM_HOSTID"), 0);
  }
}

AlignedBuffer pattern(size_t size, uint8_t seed) {
  AlignedBuffer buf(size);
  for (size_t i = 0; i < size; ++i) {
    buf.data()[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  }
  return buf;
}

bool same_bytes(const AlignedBuffer& a, const AlignedBuffer& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

bool write_all(int fd, const void* p, size_t n) {
  return write(fd, p, n) == static_cast<ssize_t>(n);
}
bool read_all(int fd, void* p, size_t n) { return read(fd, p, n) == static_cast<ssize_t>(n); }

// ---------------------------------------------------------------------------------------
// A second host: a child process whose shim answers with another Host ID. It opens the
// stand-in through the nvme backend once and keeps it open, as a live node would, then
// runs one command per request.

enum class Op : uint8_t { kRegister, kAcquire, kWrite, kRead, kQuit };

struct Request {
  Op op;
  ReservationKey key;
  ReservationType type;
};

struct Reply {
  Code code;
  int sys_errno;
};

Reply reply_of(const Status& st) { return {st.code(), st.sys_errno()}; }

// Runs in the child; returns its exit status. No gtest here: results go to the parent.
int serve(const std::string& path, int in, int out) {
  auto dev = open_nvme_device(path, {});
  Reply opened = reply_of(dev.status());
  if (!write_all(out, &opened, sizeof(opened)) || !dev) return 1;
  for (;;) {
    Request req{};
    if (!read_all(in, &req, sizeof(req)) || req.op == Op::kQuit) return 0;
    Status st;
    switch (req.op) {
      case Op::kRegister:
        st = dev->reservations->register_key(req.key);
        break;
      case Op::kAcquire:
        st = dev->reservations->acquire(req.key, req.type);
        break;
      case Op::kWrite: {
        AlignedBuffer buf = pattern(kBlock, 0xbb);
        WriteOptions opts;
        opts.fua = true;
        st = dev->io->write(kOtherHostOffset, buf.span(), opts);
        break;
      }
      case Op::kRead: {
        AlignedBuffer buf(kBlock);
        st = dev->io->read(0, buf.span());
        break;
      }
      case Op::kQuit:
        return 0;
    }
    Reply reply = reply_of(st);
    if (!write_all(out, &reply, sizeof(reply))) return 1;
  }
}

class OtherHost {
 public:
  OtherHost(const std::string& path, HostId host) {
    int to_child[2];
    int from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      ::close(to_child[1]);
      ::close(from_child[0]);
      setenv("SHAREDFS_NVME_SHIM_HOSTID", host.to_string().c_str(), 1);
      _exit(serve(path, to_child[0], from_child[1]));
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    to_ = to_child[1];
    from_ = from_child[0];
    Reply opened{Code::kInternal, 0};
    if (pid_ > 0 && read_all(from_, &opened, sizeof(opened))) opened_ = opened;
  }
  OtherHost(const OtherHost&) = delete;
  OtherHost& operator=(const OtherHost&) = delete;

  ~OtherHost() {
    if (pid_ > 0) {
      Request quit{Op::kQuit, 0, ReservationType::kNone};
      (void)write_all(to_, &quit, sizeof(quit));
      int wstatus = 0;
      waitpid(pid_, &wstatus, 0);
    }
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
  }

  // The status of the child's open_nvme_device.
  Code opened() const { return opened_.code; }

  Reply call(Op op, ReservationKey key = 0, ReservationType type = ReservationType::kNone) {
    Request req{op, key, type};
    Reply reply{Code::kInternal, 0};
    if (!write_all(to_, &req, sizeof(req)) || !read_all(from_, &reply, sizeof(reply))) {
      return {Code::kInternal, 0};
    }
    return reply;
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  Reply opened_{Code::kInternal, 0};
};

// ---------------------------------------------------------------------------------------

class NvmeDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(dlsym(RTLD_DEFAULT, "sharedfs_nvme_shim_present"), nullptr)
        << "libsharedfs_nvme_shim.so is not preloaded; run this test through ctest";
    std::string tmpl = (std::filesystem::temp_directory_path() / "sharedfs-nvme-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    path_ = dir_ + "/namespace";
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    ASSERT_EQ(ftruncate(fd, kDeviceSize), 0);
    ::close(fd);
    ASSERT_EQ(setenv("SHAREDFS_NVME_SHIM_FILE", path_.c_str(), 1), 0);
    set_host(kHostA);
  }

  void TearDown() override {
    unsetenv("SHAREDFS_NVME_SHIM_FILE");
    unsetenv("SHAREDFS_NVME_SHIM_HOSTID");
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);  // the stand-in and its ".pr" sidecar
    }
  }

  Result<OpenDevice> open(const NvmeOpenOptions& opts = {}) {
    return open_nvme_device(path_, opts);
  }

  std::string dir_;
  std::string path_;
};

#define ASSERT_OK(expr)                                                    \
  do {                                                                     \
    const ::sharedfs::Status _s = ::sharedfs::internal::as_status((expr)); \
    ASSERT_TRUE(_s.is_ok()) << #expr << ": " << _s.to_string();            \
  } while (0)

TEST_F(NvmeDeviceTest, ReadsTheHostIdFromTheController) {
  auto dev = open();
  ASSERT_TRUE(dev) << dev.status().to_string();
  EXPECT_EQ(dev->reservations->host_id(), kHostA);

  NvmeOpenOptions opts;
  opts.expected_host = kHostA;
  auto expected = open(opts);
  ASSERT_TRUE(expected) << expected.status().to_string();
  EXPECT_EQ(expected->reservations->host_id(), kHostA);
}

TEST_F(NvmeDeviceTest, RefusesAZeroHostId) {
  set_host(HostId{});  // a controller reporting 00..00
  auto dev = open();
  ASSERT_FALSE(dev);
  EXPECT_EQ(dev.status().code(), Code::kInvalidArgument);
  EXPECT_NE(dev.status().message().find("Host ID is zero"), std::string::npos)
      << dev.status().to_string();
  EXPECT_NE(dev.status().message().find("distinct, stable NVMe Host ID"), std::string::npos);
  EXPECT_NE(dev.status().message().find("/etc/nvme/hostid"), std::string::npos);

  set_host(std::nullopt);  // a controller whose Host ID was never set
  auto unset = open();
  ASSERT_FALSE(unset);
  EXPECT_EQ(unset.status().code(), Code::kInvalidArgument);
}

TEST_F(NvmeDeviceTest, RefusesAHostIdOtherThanTheExpectedOne) {
  NvmeOpenOptions opts;
  opts.expected_host = kHostB;
  auto dev = open(opts);
  ASSERT_FALSE(dev);
  EXPECT_EQ(dev.status().code(), Code::kInvalidArgument);
  const std::string& msg = dev.status().message();
  EXPECT_NE(msg.find(kHostA.to_string()), std::string::npos) << msg;
  EXPECT_NE(msg.find(kHostB.to_string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("distinct, stable NVMe Host ID"), std::string::npos) << msg;
}

TEST_F(NvmeDeviceTest, RefusesAFileThatIsNotANamespace) {
  // The shim answers only for the stand-in; any other file gets the kernel's ENOTTY.
  const std::string other = dir_ + "/not-a-namespace";
  const int fd = ::open(other.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kDeviceSize), 0);
  ::close(fd);
  auto dev = open_nvme_device(other, {});
  ASSERT_FALSE(dev);
  EXPECT_EQ(dev.status().code(), Code::kInvalidArgument);
  EXPECT_NE(dev.status().message().find("not an NVMe namespace"), std::string::npos)
      << dev.status().to_string();
}

TEST_F(NvmeDeviceTest, ReadWriteFlushRoundTrip) {
  auto dev = open();
  ASSERT_TRUE(dev) << dev.status().to_string();
  BlockDevice& io = *dev->io;
  EXPECT_EQ(io.sector_size(), 512u);
  EXPECT_EQ(io.size_bytes(), kDeviceSize);
  EXPECT_EQ(io.describe(), "nvme:" + path_);

  const AlignedBuffer first = pattern(2 * kBlock, 1);
  const AlignedBuffer second = pattern(kBlock, 2);
  ASSERT_OK(io.write(kBlock, first.span()));
  WriteOptions fua;
  fua.fua = true;
  ASSERT_OK(io.write(kDeviceSize - kBlock, second.span(), fua));
  ASSERT_OK(io.flush());

  AlignedBuffer back(2 * kBlock);
  ASSERT_OK(io.read(kBlock, back.span()));
  EXPECT_TRUE(same_bytes(back, first));
  AlignedBuffer back2(kBlock);
  ASSERT_OK(io.read(kDeviceSize - kBlock, back2.span()));
  EXPECT_TRUE(same_bytes(back2, second));

  // The bytes are really in the stand-in, where the file backend will find them.
  std::string raw(2 * kBlock, '\0');
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pread(fd, raw.data(), raw.size(), kBlock), static_cast<ssize_t>(raw.size()));
  ::close(fd);
  EXPECT_EQ(std::memcmp(raw.data(), first.data(), raw.size()), 0);

  AlignedBuffer odd(kBlock);
  EXPECT_EQ(io.write(100, odd.span()).code(), Code::kInvalidArgument);
  EXPECT_EQ(io.read(0, odd.span().first(100)).code(), Code::kInvalidArgument);
  EXPECT_EQ(io.write(kDeviceSize, odd.span()).code(), Code::kInvalidArgument);
}

TEST_F(NvmeDeviceTest, ReservationLifecycleAcrossTwoHosts) {
  auto a = open();
  ASSERT_TRUE(a) << a.status().to_string();
  Reservations& res = *a->reservations;
  OtherHost b(path_, kHostB);
  ASSERT_EQ(b.opened(), Code::kOk);

  ASSERT_OK(res.register_key(kKeyA));
  ASSERT_EQ(b.call(Op::kRegister, kKeyB).code, Code::kOk);
  ASSERT_OK(res.acquire(kKeyA, kWero));

  auto report = res.report();
  ASSERT_TRUE(report) << report.status().to_string();
  EXPECT_EQ(report->generation, 2u);  // two registrations; acquire does not count
  EXPECT_EQ(report->type, kWero);
  ASSERT_EQ(report->registrants.size(), 2u);
  const Registrant* ra = report->find_key(kKeyA);
  const Registrant* rb = report->find_key(kKeyB);
  ASSERT_NE(ra, nullptr);
  ASSERT_NE(rb, nullptr);
  EXPECT_EQ(ra->host, kHostA);  // full 128-bit Host IDs from the extended structure
  EXPECT_EQ(rb->host, kHostB);
  EXPECT_TRUE(ra->holds_reservation);
  EXPECT_FALSE(rb->holds_reservation);
  ASSERT_NE(report->holder(), nullptr);
  EXPECT_EQ(report->holder()->host, kHostA);

  // Write Exclusive - Registrants Only: the registered non-holder still writes, but cannot
  // take the reservation.
  EXPECT_EQ(b.call(Op::kWrite).code, Code::kOk);
  const Reply taken = b.call(Op::kAcquire, kKeyB, kWero);
  EXPECT_EQ(taken.code, Code::kReservationConflict);
  EXPECT_EQ(taken.sys_errno, EBADE);

  // Fence B.
  ASSERT_OK(res.preempt_and_abort(kKeyA, kKeyB, kWero));
  report = res.report();
  ASSERT_TRUE(report) << report.status().to_string();
  EXPECT_EQ(report->generation, 3u);
  EXPECT_EQ(report->type, kWero);
  ASSERT_EQ(report->registrants.size(), 1u);
  EXPECT_EQ(report->find_key(kKeyB), nullptr);
  ASSERT_NE(report->holder(), nullptr);
  EXPECT_EQ(report->holder()->host, kHostA);
  EXPECT_EQ(report->holder()->key, kKeyA);

  // The victim's device, still open, now refuses its writes (the shim enforces what a
  // controller would); reads stay allowed under a write-exclusive type.
  const Reply fenced = b.call(Op::kWrite);
  EXPECT_EQ(fenced.code, Code::kReservationConflict);
  EXPECT_EQ(fenced.sys_errno, EBADE);
  EXPECT_EQ(b.call(Op::kRead).code, Code::kOk);
  EXPECT_EQ(b.call(Op::kAcquire, kKeyB, kWero).code, Code::kReservationConflict);
  const AlignedBuffer block = pattern(kBlock, 3);
  ASSERT_OK(a->io->write(0, block.span()));

  // Release keeps the registration (and the generation); clear drops everything.
  ASSERT_OK(res.release(kKeyA, kWero));
  report = res.report();
  ASSERT_TRUE(report);
  EXPECT_EQ(report->type, ReservationType::kNone);
  EXPECT_EQ(report->generation, 3u);
  EXPECT_EQ(report->registrants.size(), 1u);
  EXPECT_EQ(report->holder(), nullptr);

  ASSERT_OK(res.clear(kKeyA));
  report = res.report();
  ASSERT_TRUE(report);
  EXPECT_EQ(report->type, ReservationType::kNone);
  EXPECT_EQ(report->generation, 4u);
  EXPECT_TRUE(report->registrants.empty());

  // With no reservation anybody writes again; the fenced host can rejoin by registering.
  EXPECT_EQ(b.call(Op::kWrite).code, Code::kOk);
  EXPECT_EQ(b.call(Op::kRegister, kKeyB).code, Code::kOk);
  report = res.report();
  ASSERT_TRUE(report);
  ASSERT_EQ(report->registrants.size(), 1u);
  EXPECT_EQ(report->registrants[0].host, kHostB);
}

TEST_F(NvmeDeviceTest, CompletionStatusesMapToCodes) {
  auto a = open();
  ASSERT_TRUE(a) << a.status().to_string();
  Reservations& res = *a->reservations;

  // Invalid Field in Command.
  Status st = res.register_key(0);
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.to_string();
  EXPECT_EQ(st.sys_errno(), EINVAL);
  EXPECT_NE(st.message().find("NVMe status"), std::string::npos) << st.to_string();

  // Reservation Conflict.
  st = res.acquire(kKeyA, kWero);  // not registered
  EXPECT_EQ(st.code(), Code::kReservationConflict) << st.to_string();
  EXPECT_EQ(st.sys_errno(), EBADE);

  ASSERT_OK(res.register_key(kKeyA));
  ASSERT_OK(res.register_key(kKeyA));  // the same key again is a no-op
  EXPECT_EQ(res.register_key(kKeyB).code(), Code::kReservationConflict);
  ASSERT_OK(res.acquire(kKeyA, kWero));
  EXPECT_EQ(res.acquire(kKeyA, ReservationType::kExclusiveAccess).code(),
            Code::kReservationConflict);
  EXPECT_EQ(res.release(kKeyA, ReservationType::kWriteExclusive).code(), Code::kInvalidArgument);
  EXPECT_EQ(res.release(kKeyB, kWero).code(), Code::kReservationConflict);

  // Replace and unregister, with and without the current key.
  ASSERT_OK(res.replace_key(kKeyA, kKeyB));
  EXPECT_EQ(res.unregister_key(kKeyA).code(), Code::kReservationConflict);
  RegisterOptions ignore;
  ignore.ignore_existing_key = true;
  ASSERT_OK(res.unregister_key(0, ignore));
  auto report = res.report();
  ASSERT_TRUE(report);
  EXPECT_TRUE(report->registrants.empty());
  EXPECT_EQ(report->type, ReservationType::kNone);  // the holder's unregister released it
}

TEST_F(NvmeDeviceTest, SharesReservationStateWithTheFileBackend) {
  auto nvme = open();
  ASSERT_TRUE(nvme) << nvme.status().to_string();
  ASSERT_OK(nvme->reservations->register_key(kKeyA));
  ASSERT_OK(nvme->reservations->acquire(kKeyA, kWero));
  const AlignedBuffer data = pattern(kBlock, 4);
  ASSERT_OK(nvme->io->write(2 * kBlock, data.span()));

  FileOpenOptions fopts;
  fopts.host = kHostB;
  auto file = open_file_device(path_, fopts);
  ASSERT_TRUE(file) << file.status().to_string();

  // What the nvme backend did is what the file backend sees, and the other way round.
  auto seen = file->reservations->report();
  ASSERT_TRUE(seen) << seen.status().to_string();
  EXPECT_EQ(seen->generation, 1u);
  EXPECT_EQ(seen->type, kWero);
  ASSERT_EQ(seen->registrants.size(), 1u);
  EXPECT_EQ(seen->registrants[0].host, kHostA);
  EXPECT_EQ(seen->registrants[0].key, kKeyA);
  EXPECT_TRUE(seen->registrants[0].holds_reservation);
  AlignedBuffer back(kBlock);
  ASSERT_OK(file->io->read(2 * kBlock, back.span()));
  EXPECT_TRUE(same_bytes(back, data));

  ASSERT_OK(file->reservations->register_key(kKeyB));
  auto report = nvme->reservations->report();
  ASSERT_TRUE(report);
  EXPECT_EQ(report->generation, 2u);
  ASSERT_NE(report->find_key(kKeyB), nullptr);
  EXPECT_EQ(report->find_key(kKeyB)->host, kHostB);

  // The nvme host fences the file host: the file backend enforces it.
  ASSERT_OK(nvme->reservations->preempt_and_abort(kKeyA, kKeyB, kWero));
  EXPECT_EQ(file->io->write(3 * kBlock, data.span()).code(), Code::kReservationConflict);

  // The file host comes back and fences the nvme host: the shim enforces it.
  ASSERT_OK(file->reservations->register_key(kKeyB));
  ASSERT_OK(file->reservations->preempt_and_abort(kKeyB, kKeyA, kWero));
  const Status fenced = nvme->io->write(2 * kBlock, data.span());
  EXPECT_EQ(fenced.code(), Code::kReservationConflict) << fenced.to_string();
  EXPECT_EQ(fenced.sys_errno(), EBADE);
  report = nvme->reservations->report();
  ASSERT_TRUE(report);
  ASSERT_EQ(report->registrants.size(), 1u);
  ASSERT_NE(report->holder(), nullptr);
  EXPECT_EQ(report->holder()->host, kHostB);
  EXPECT_EQ(nvme->reservations->acquire(kKeyA, kWero).code(), Code::kReservationConflict);
  ASSERT_OK(file->io->write(3 * kBlock, data.span()));
}

}  // namespace
}  // namespace sharedfs::device
