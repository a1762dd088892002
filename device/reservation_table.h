// Internal to device/: emulated NVMe reservation state shared by every process that opens
// one device, and the I/O gate that enforces it.
//
// The state lives in a small sidecar file mapped into each process. Two open-file-
// description (OFD) locks on that file order everything:
//   gate       readers and writers of the *device* hold it shared for the duration of
//              their access check and their I/O; a reservation command holds it
//              exclusively while it changes the state. So once preempt-and-abort returns,
//              every victim write either completed before it or fails its check.
//   turnstile  a reservation command holds it exclusively from before it waits for the
//              gate until it is done, and raises `pending` so that new I/O steps aside
//              (waiting on the turnstile) instead of starving the command.
// OFD locks are released by the kernel when a process dies, so a killed node never
// leaves the gate closed. The state is double-buffered (write the inactive copy, then
// flip) so a command killed half-way leaves the previous state intact.
//
// Thread-safety: all methods may be called concurrently. Each in-flight access uses its
// own descriptor of the sidecar (from a small pool), because OFD locks taken through one
// description merge.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "device/reservation_logic.h"

namespace sharedfs::device::internal {

class ReservationTable {
 public:
  static Result<std::unique_ptr<ReservationTable>> open(const std::string& path);
  ~ReservationTable();

  const std::string& path() const { return path_; }

  // Applies a command under the exclusive gate and returns its status.
  Status execute(const std::function<Status(ReservationState&)>& command);
  Result<ReservationReport> report();

  enum class Access { kRead, kWrite };
  // Runs `io` with the gate held shared if `host` may perform `access`; otherwise returns
  // kReservationConflict (EBADE) without running it.
  Status guarded_io(const HostId& host, Access access, const std::function<Status()>& io);

 private:
  struct Shared;
  ReservationTable(std::string path, int fd, Shared* shared);

  // A descriptor of the sidecar for one lock holder; returned to the pool after use.
  Result<int> take_fd();
  void return_fd(int fd);
  ReservationState read_state() const;

  std::string path_;
  int fd_;
  Shared* shared_;
  std::mutex pool_mu_;
  std::vector<int> pool_;  // GUARDED_BY(pool_mu_)
};

// Reservations issued by `host` against a shared table (the file backend's half).
std::unique_ptr<Reservations> make_emulated_reservations(std::shared_ptr<ReservationTable> table,
                                                         HostId host);

// The sidecar path for a device path (see docs/device.md): "<file>.pr" beside a regular
// file; for a loop device, beside its backing file, so the loop device and the file
// share one state; /run/sharedfs/pr-<major>-<minor> for other block devices.
Result<std::string> default_reservation_state_path(const std::string& device_path);

}  // namespace sharedfs::device::internal
