// Fencing enforcement across processes on the file backend: once preempt-and-abort of a
// node's key returns, no write of that node lands — not a later one, and not one that was
// in flight during the preempt.
//
// Each trial: a writer process (fencing_writer) registers its key and writes
// sequence-numbered blocks in a tight loop; this process, the fencer, holds the WERO
// reservation, lets it run a random few milliseconds, preempts-and-aborts its key,
// snapshots the device at once, lets the writer keep trying, then checks that
//   - every write of the writer after its last success was refused with a reservation
//     conflict (EBADE), the first of them included, and no success came after a refusal;
//   - the device holds exactly the writer's successful writes: the block of every success
//     has its data and no block holds a sequence number above the last success;
//   - the device did not change after the preempt returned;
//   - timing agrees: every success was issued before the preempt returned, every refusal
//     came after the preempt was issued.
//
// Environment: SHAREDFS_FENCING_TRIALS (default 100), SHAREDFS_FENCING_SEED (to replay the
// random delays), SHAREDFS_TEST_DIR (where the image goes; it must allow O_DIRECT).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.h"
#include "device/device.h"
#include "tests/fencing/fencing_protocol.h"

namespace sharedfs::fencing {
namespace {

using device::ReservationType;
using std::chrono::milliseconds;

constexpr uint32_t kFencerNode = 1;
constexpr uint32_t kWriterNode = 2;
const device::ReservationKey kFencerKey = device::node_reservation_key(kClusterName, kFencerNode);
const device::ReservationKey kWriterKey = device::node_reservation_key(kClusterName, kWriterNode);
constexpr auto kWero = ReservationType::kWriteExclusiveRegistrantsOnly;
// The writer runs unfenced for a random time up to this long.
constexpr int kMaxRunUs = 3000;
// After the preempt returns, the writer goes on trying at least this long (and until it
// has had kMinRefusedWrites refused).
constexpr auto kKeepTrying = milliseconds(3);
constexpr auto kPipeTimeout = milliseconds(10'000);

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t env_or(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 0) : fallback;
}

// A fresh directory on a file system that takes O_DIRECT: on tmpfs the page cache would be
// the "device" and direct I/O would not be exercised. Empty if there is none.
std::string make_test_dir() {
  std::vector<std::string> bases;
  for (const char* var : {"SHAREDFS_TEST_DIR", "TMPDIR"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') bases.emplace_back(v);
  }
  bases.insert(bases.end(), {"/var/tmp", "/tmp", std::filesystem::current_path().string()});
  for (const auto& base : bases) {
    struct statfs sf {};
    if (statfs(base.c_str(), &sf) != 0 || sf.f_type == TMPFS_MAGIC) continue;
    std::string dir = base + "/sharedfs-fencing-XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) continue;
    const std::string probe = dir + "/probe";
    const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::close(fd);
      ::unlink(probe.c_str());
      return dir;
    }
    std::filesystem::remove_all(dir);
  }
  return {};
}

// The writer process and the two pipes to it. The destructor kills it (by pid) if it is
// still there, so a failing trial never leaves it behind.
class WriterProcess {
 public:
  WriterProcess() = default;
  WriterProcess(const WriterProcess&) = delete;
  WriterProcess& operator=(const WriterProcess&) = delete;
  ~WriterProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    if (control_ >= 0) ::close(control_);
    if (status_ >= 0) ::close(status_);
  }

  // Starts `args` (args[0] is the program) with the pipe ends appended; "" or the error.
  std::string start(std::vector<std::string> args) {
    int control[2];
    int status[2];
    if (::pipe2(control, O_CLOEXEC) != 0) return std::string("pipe: ") + std::strerror(errno);
    if (::pipe2(status, O_CLOEXEC) != 0) {
      const int err = errno;
      ::close(control[0]);
      ::close(control[1]);
      return std::string("pipe: ") + std::strerror(err);
    }
    args.push_back(std::to_string(control[0]));
    args.push_back(std::to_string(status[1]));
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec. The child keeps its two ends;
      // everything else of ours (image, sidecar, other pipe ends) is close-on-exec.
      ::fcntl(control[0], F_SETFD, 0);
      ::fcntl(status[1], F_SETFD, 0);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(control[0]);
    ::close(status[1]);
    control_ = control[1];
    status_ = status[0];
    if (pid < 0) return std::string("fork: ") + std::strerror(fork_errno);
    pid_ = pid;
    return {};
  }

  // Reads exactly `len` bytes from the status pipe; false on EOF or timeout.
  bool read_exact(void* buf, size_t len, milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto* p = static_cast<char*>(buf);
    while (len > 0) {
      const auto left =
          std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd pfd{status_, POLLIN, 0};
      const int rc = ::poll(&pfd, 1, static_cast<int>(left.count()));
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) return false;
      const ssize_t n = ::read(status_, p, len);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      p += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }

  // The next message tag ('R', 'D', 'E'), or 0 on EOF or timeout.
  char read_tag(milliseconds timeout) {
    char tag = 0;
    return read_exact(&tag, 1, timeout) ? tag : 0;
  }

  // The rest of an 'E' message (the writer exits after it).
  std::string read_error() {
    std::string msg;
    char c;
    while (msg.size() < 4096 && read_exact(&c, 1, milliseconds(1000))) msg += c;
    return msg;
  }

  bool stop() {
    const char c = 's';
    return ::write(control_, &c, 1) == 1;
  }

  // The exit status once the writer has exited (128 + signal if killed), or -1 if it does
  // not exit within `timeout` (the destructor then kills it).
  int wait_exit(milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int status = 0;
      const pid_t rc = ::waitpid(pid_, &status, WNOHANG);
      if (rc == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (rc < 0 && errno != EINTR) return -1;
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

 private:
  pid_t pid_ = -1;
  int control_ = -1;  // our end: write to stop the writer
  int status_ = -1;   // our end: the writer's messages
};

struct Stats {
  uint64_t trials = 0;
  uint64_t writes = 0;
  uint64_t refused_in_flight = 0;  // the first refused write was issued before the preempt
                                   // returned: it raced with the preempt and lost
  uint64_t landed_during = 0;      // the last success was issued after the preempt was
                                   // issued: it raced with the preempt and won
  uint64_t max_preempt_ns = 0;
};

class FencingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A writer that dies early must fail the trial, not kill us with SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
    dir_ = make_test_dir();
    ASSERT_FALSE(dir_.empty()) << "no directory on a file system with O_DIRECT; set "
                                  "SHAREDFS_TEST_DIR";
    image_ = dir_ + "/image";
    std::ofstream(image_).close();
    std::filesystem::resize_file(image_, kImageSize);

    device::FileOpenOptions opts;
    opts.host = device::HostId::for_node(kClusterId, kFencerNode);
    opts.direct_io = true;
    auto dev = device::open_file_device(image_, opts);
    ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
    fencer_ = std::move(*dev);
    ASSERT_OK(fencer_.reservations->register_key(kFencerKey));
    ASSERT_OK(fencer_.reservations->acquire(kFencerKey, kWero));
  }

  void TearDown() override {
    writer_.reset();  // kills it if a trial failed half-way
    fencer_ = {};
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);  // image and its ".pr"
  }

  device::AlignedBuffer read_range() {
    device::AlignedBuffer buf(kBlocks * kBlockSize);
    const Status st = fencer_.io->read(kRangeOffset, buf.span());
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    return buf;
  }

  void run_trial(uint64_t trial, std::mt19937_64& rng, Stats& stats);

  std::string dir_;
  std::string image_;
  device::OpenDevice fencer_;
  std::unique_ptr<WriterProcess> writer_;
};

void FencingTest::run_trial(uint64_t trial, std::mt19937_64& rng, Stats& stats) {
  // A clean range: blocks left over from the previous trial would confuse the checks.
  device::AlignedBuffer zeros(kBlocks * kBlockSize);
  ASSERT_OK(fencer_.io->write(kRangeOffset, zeros.span(), {.fua = true}));

  writer_ = std::make_unique<WriterProcess>();
  const std::string err =
      writer_->start({SHAREDFS_FENCING_WRITER, image_, std::to_string(kWriterNode),
                      std::to_string(kWriterKey), std::to_string(trial)});
  ASSERT_EQ(err, "");
  char tag = writer_->read_tag(kPipeTimeout);
  if (tag == 'E') FAIL() << "writer failed: " << writer_->read_error();
  ASSERT_EQ(tag, 'R') << "the writer did not start writing";
  auto before = fencer_.reservations->report();
  ASSERT_TRUE(before.is_ok()) << before.status().to_string();
  ASSERT_NE(before->find_key(kWriterKey), nullptr);

  std::this_thread::sleep_for(
      std::chrono::microseconds(std::uniform_int_distribution<int>(0, kMaxRunUs)(rng)));
  const uint64_t call_ns = now_ns();
  const Status preempted = fencer_.reservations->preempt_and_abort(kFencerKey, kWriterKey, kWero);
  const uint64_t return_ns = now_ns();
  ASSERT_OK(preempted);
  const device::AlignedBuffer snapshot = read_range();

  std::this_thread::sleep_for(kKeepTrying);
  ASSERT_TRUE(writer_->stop()) << "writer gone: " << std::strerror(errno);
  tag = writer_->read_tag(kPipeTimeout);
  if (tag == 'E') FAIL() << "writer failed: " << writer_->read_error();
  ASSERT_EQ(tag, 'D') << "no report from the writer";
  WriterReport r;
  ASSERT_TRUE(writer_->read_exact(&r, sizeof(r), kPipeTimeout)) << "short report";
  EXPECT_EQ(writer_->wait_exit(kPipeTimeout), 0);
  writer_.reset();
  const device::AlignedBuffer later = read_range();

  // The reservation: the writer's key is gone, we still hold WERO.
  auto after = fencer_.reservations->report();
  ASSERT_TRUE(after.is_ok()) << after.status().to_string();
  EXPECT_EQ(after->generation, before->generation + 1);
  EXPECT_EQ(after->find_key(kWriterKey), nullptr);
  EXPECT_EQ(after->type, kWero);
  ASSERT_NE(after->holder(), nullptr);
  EXPECT_EQ(after->holder()->key, kFencerKey);

  // The writer: succeeded up to some write, then was refused with EBADE every time.
  EXPECT_GE(r.last_ok_seq, 1u);
  EXPECT_GE(r.failures, kMinRefusedWrites) << "the writer did not keep trying";
  EXPECT_EQ(r.first_fail_code, static_cast<int32_t>(Code::kReservationConflict));
  EXPECT_EQ(r.first_fail_errno, EBADE);
  EXPECT_EQ(r.other_failures, 0u) << "refusals other than a reservation conflict";
  EXPECT_EQ(r.ok_after_failure, 0u) << "writes succeeded after the writer was fenced";
  EXPECT_EQ(r.first_fail_seq, r.last_ok_seq + 1);
  EXPECT_EQ(r.attempts, r.last_ok_seq + r.failures);
  EXPECT_LT(r.last_ok_start_ns, return_ns) << "a write issued after the preempt returned "
                                              "succeeded";
  EXPECT_GT(r.first_fail_end_ns, call_ns) << "refused before the preempt was issued";

  // The device: nothing changed after the preempt returned...
  EXPECT_EQ(std::memcmp(snapshot.data(), later.data(), snapshot.size()), 0)
      << "the device changed after preempt-and-abort returned";
  // ...and it holds exactly the successful writes: for each block the newest successful
  // sequence number that maps to it, never one the writer did not see succeed.
  uint64_t max_seq = 0;
  for (uint64_t i = 0; i < kBlocks; ++i) {
    const auto seq = parse_block(snapshot.span().subspan(i * kBlockSize, kBlockSize), trial);
    ASSERT_TRUE(seq.has_value()) << "block " << i << " is torn or foreign";
    const uint64_t back = (r.last_ok_seq % kBlocks + kBlocks - i) % kBlocks;
    const uint64_t expected = r.last_ok_seq >= back ? r.last_ok_seq - back : 0;
    EXPECT_EQ(*seq, expected) << "block " << i;
    max_seq = std::max(max_seq, *seq);
  }
  EXPECT_EQ(max_seq, r.last_ok_seq) << "the device holds a write the writer did not see "
                                       "succeed, or lost its last success";

  ++stats.trials;
  stats.writes += r.attempts;
  if (r.first_fail_start_ns < return_ns) ++stats.refused_in_flight;
  if (r.last_ok_start_ns > call_ns) ++stats.landed_during;
  stats.max_preempt_ns = std::max(stats.max_preempt_ns, return_ns - call_ns);
}

TEST_F(FencingTest, PreemptAndAbortStopsEveryLaterWriteOfTheVictim) {
  const uint64_t trials = env_or("SHAREDFS_FENCING_TRIALS", 100);
  const uint64_t seed = env_or("SHAREDFS_FENCING_SEED", std::random_device{}());
  RecordProperty("seed", std::to_string(seed));
  std::cout << "[ fencing  ] seed " << seed << " (SHAREDFS_FENCING_SEED replays the delays), "
            << trials << " trials, image " << image_ << "\n";
  std::mt19937_64 rng(seed);
  Stats stats;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t trial = 1; trial <= trials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial) + ", seed " + std::to_string(seed));
    run_trial(trial, rng, stats);
    if (HasFailure()) break;  // the first failing trial tells the story
  }
  const auto elapsed =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0);
  std::cout << "[ fencing  ] " << stats.trials << " trials in " << elapsed.count() << " ms, "
            << stats.writes
            << " writes; refused while in flight during the preempt: " << stats.refused_in_flight
            << ", landed while the preempt was being issued: " << stats.landed_during
            << "; slowest preempt " << stats.max_preempt_ns / 1000 << " us\n";
  EXPECT_EQ(stats.trials, trials);
}

}  // namespace
}  // namespace sharedfs::fencing
