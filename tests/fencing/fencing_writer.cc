// The writer of the fencing test: a node that goes on writing until it is fenced and
// beyond. See fencing_protocol.h for the blocks it writes and how it talks to the test.
//
// Usage: fencing_writer IMAGE NODE_ID KEY TRIAL CONTROL_FD STATUS_FD
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "device/device.h"
#include "tests/fencing/fencing_protocol.h"

namespace sharedfs::fencing {
namespace {

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

bool write_all(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    const ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

int fail(int status_fd, const std::string& what) {
  const std::string msg = "E" + what;
  (void)write_all(status_fd, msg.data(), msg.size());
  return 2;
}

int run(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s IMAGE NODE_ID KEY TRIAL CONTROL_FD STATUS_FD\n", argv[0]);
    return 1;
  }
  const std::string image = argv[1];
  const auto node = static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 0));
  const device::ReservationKey key = std::strtoull(argv[3], nullptr, 0);
  const uint64_t trial = std::strtoull(argv[4], nullptr, 0);
  const int control_fd = std::atoi(argv[5]);
  const int status_fd = std::atoi(argv[6]);

  device::FileOpenOptions opts;
  opts.host = device::HostId::for_node(kClusterId, node);
  opts.direct_io = true;
  auto dev = device::open_file_device(image, opts);
  if (!dev) return fail(status_fd, "open: " + dev.status().to_string());
  if (Status st = dev->reservations->register_key(key); !st) {
    return fail(status_fd, "register: " + st.to_string());
  }
  // Polled between writes; the test's single byte means "stop", EOF means "test gone".
  if (fcntl(control_fd, F_SETFL, O_NONBLOCK) != 0) return fail(status_fd, "fcntl");

  device::AlignedBuffer block(kBlockSize);
  WriterReport r;
  bool ready_sent = false;
  uint64_t stop_requested_ns = 0;
  for (uint64_t seq = 1;; ++seq) {
    if (stop_requested_ns == 0) {
      char c;
      const ssize_t n = ::read(control_fd, &c, 1);
      if (n == 1) stop_requested_ns = now_ns();
      if (n == 0) return 3;
    }
    if (stop_requested_ns != 0 &&
        (r.failures >= kMinRefusedWrites || now_ns() - stop_requested_ns > 1'000'000'000u)) {
      break;
    }
    fill_block(block.span(), trial, seq);
    const uint64_t start = now_ns();
    const Status st = dev->io->write(kRangeOffset + (seq % kBlocks) * kBlockSize, block.span());
    const uint64_t end = now_ns();
    ++r.attempts;
    if (st) {
      r.last_ok_seq = seq;
      r.last_ok_start_ns = start;
      if (r.failures > 0) ++r.ok_after_failure;
      if (!ready_sent) {
        if (!write_all(status_fd, "R", 1)) return 4;
        ready_sent = true;
      }
      continue;
    }
    if (!ready_sent) return fail(status_fd, "write before being fenced: " + st.to_string());
    if (r.failures++ == 0) {
      r.first_fail_seq = seq;
      r.first_fail_code = static_cast<int32_t>(st.code());
      r.first_fail_errno = st.to_errno();
      r.first_fail_start_ns = start;
      r.first_fail_end_ns = end;
    }
    if (st.code() != Code::kReservationConflict || st.to_errno() != EBADE) ++r.other_failures;
  }
  const char tag = 'D';
  if (!write_all(status_fd, &tag, 1) || !write_all(status_fd, &r, sizeof(r))) return 4;
  return 0;
}

}  // namespace
}  // namespace sharedfs::fencing

int main(int argc, char** argv) { return sharedfs::fencing::run(argc, argv); }
