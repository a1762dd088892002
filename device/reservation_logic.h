// Internal to device/: the NVMe reservation state machine, as pure functions over a plain
// state struct. The emulated backends (the file backend and the NVMe test interposer)
// keep one ReservationState in shared memory and apply these under a cross-process lock;
// the unit tests check them against the NVMe specification's tables directly.
//
// Reference: NVMe Base Specification 2.0, section 8.19 "Reservations", and the figures
// "Reservation Acquire — Preempt" and "Command Behavior in the Presence of a Reservation".
#pragma once

#include <cstdint>

#include "common/status.h"
#include "device/device.h"

namespace sharedfs::device::internal {

// 64 registrants: every host of a 16-node cluster plus plenty for tools and tests.
inline constexpr uint32_t kMaxRegistrants = 64;

// Trivially copyable: it lives in a shared mapping and is copied whole.
struct ReservationState {
  struct Entry {
    HostId host;
    ReservationKey key;
  };
  uint32_t generation;
  uint8_t type;  // ReservationType; kNone when no reservation is held
  uint8_t reserved[3];
  // The holding host for the single-holder types; unused for the all-registrants types,
  // where every registrant holds the reservation.
  HostId holder;
  uint32_t count;
  uint32_t reserved2;
  Entry entries[kMaxRegistrants];
};

enum class RegisterAction : uint8_t { kRegister = 0, kUnregister = 1, kReplace = 2 };
enum class AcquireAction : uint8_t { kAcquire = 0, kPreempt = 1, kPreemptAndAbort = 2 };
enum class ReleaseAction : uint8_t { kRelease = 0, kClear = 1 };

Status apply_register(ReservationState& s, const HostId& host, RegisterAction action,
                      ReservationKey current_key, ReservationKey new_key, bool ignore_existing);
Status apply_acquire(ReservationState& s, const HostId& host, AcquireAction action,
                     ReservationKey current_key, ReservationKey preempt_key, ReservationType type);
Status apply_release(ReservationState& s, const HostId& host, ReleaseAction action,
                     ReservationKey current_key, ReservationType type);

bool may_read(const ReservationState& s, const HostId& host);
bool may_write(const ReservationState& s, const HostId& host);
ReservationReport make_report(const ReservationState& s);

}  // namespace sharedfs::device::internal
