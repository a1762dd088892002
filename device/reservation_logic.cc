#include "device/reservation_logic.h"

#include <algorithm>

namespace sharedfs::device::internal {
namespace {

using RT = ReservationType;

bool is_all_registrants(uint8_t type) {
  return type == static_cast<uint8_t>(RT::kWriteExclusiveAllRegistrants) ||
         type == static_cast<uint8_t>(RT::kExclusiveAccessAllRegistrants);
}

bool valid_type(ReservationType type) {
  return type >= RT::kWriteExclusive && type <= RT::kExclusiveAccessAllRegistrants;
}

ReservationState::Entry* find_host(ReservationState& s, const HostId& host) {
  for (uint32_t i = 0; i < s.count; ++i) {
    if (s.entries[i].host == host) return &s.entries[i];
  }
  return nullptr;
}

const ReservationState::Entry* find_host(const ReservationState& s, const HostId& host) {
  return find_host(const_cast<ReservationState&>(s), host);
}

bool is_holder(const ReservationState& s, const HostId& host) {
  if (s.type == static_cast<uint8_t>(RT::kNone)) return false;
  if (is_all_registrants(s.type)) return find_host(s, host) != nullptr;
  return s.holder == host;
}

void release_reservation(ReservationState& s) {
  s.type = static_cast<uint8_t>(RT::kNone);
  s.holder = HostId{};
}

// Removes registrants matching `pred`; returns how many were removed. A single-holder
// reservation whose holder is removed is released; an all-registrants reservation is
// released when its last registrant goes.
template <typename Pred>
uint32_t remove_registrants(ReservationState& s, Pred pred) {
  uint32_t kept = 0;
  uint32_t removed = 0;
  bool holder_removed = false;
  for (uint32_t i = 0; i < s.count; ++i) {
    if (pred(s.entries[i])) {
      if (s.type != static_cast<uint8_t>(RT::kNone) && !is_all_registrants(s.type) &&
          s.entries[i].host == s.holder) {
        holder_removed = true;
      }
      ++removed;
    } else {
      s.entries[kept++] = s.entries[i];
    }
  }
  for (uint32_t i = kept; i < s.count; ++i) s.entries[i] = {};
  s.count = kept;
  if (holder_removed || (is_all_registrants(s.type) && s.count == 0)) release_reservation(s);
  return removed;
}

Status conflict(const char* why) { return Status(Code::kReservationConflict, why, EBADE); }
Status invalid_field(const char* why) { return Status(Code::kInvalidArgument, why, EINVAL); }

// Common check of every acquire/release command: the host is registered with current_key.
Status check_registered(const ReservationState& s, const HostId& host, ReservationKey key) {
  const auto* e = find_host(s, host);
  if (e == nullptr) return conflict("host is not registered");
  if (e->key != key) return conflict("current key does not match the host's registration");
  return Status::ok();
}

}  // namespace

Status apply_register(ReservationState& s, const HostId& host, RegisterAction action,
                      ReservationKey current_key, ReservationKey new_key, bool ignore_existing) {
  if (host.is_zero()) return invalid_field("host identifier is zero");
  auto* e = find_host(s, host);
  switch (action) {
    case RegisterAction::kRegister:
      if (new_key == 0) return invalid_field("new reservation key is zero");
      if (e != nullptr) {
        if (e->key == new_key) return Status::ok();
        return conflict("host is already registered with a different key");
      }
      if (s.count == kMaxRegistrants) {
        return Status(Code::kNoSpace, "registrant table full", ENOSPC);
      }
      s.entries[s.count++] = {host, new_key};
      ++s.generation;
      return Status::ok();
    case RegisterAction::kUnregister:
      if (e == nullptr) return conflict("host is not registered");
      if (!ignore_existing && e->key != current_key) {
        return conflict("current key does not match the host's registration");
      }
      remove_registrants(s, [&](const auto& x) { return x.host == host; });
      ++s.generation;
      return Status::ok();
    case RegisterAction::kReplace:
      if (new_key == 0) return invalid_field("new reservation key is zero");
      if (e == nullptr) return conflict("host is not registered");
      if (!ignore_existing && e->key != current_key) {
        return conflict("current key does not match the host's registration");
      }
      e->key = new_key;
      ++s.generation;
      return Status::ok();
  }
  return invalid_field("unknown register action");
}

Status apply_acquire(ReservationState& s, const HostId& host, AcquireAction action,
                     ReservationKey current_key, ReservationKey preempt_key, ReservationType type) {
  if (!valid_type(type)) return invalid_field("invalid reservation type");
  RETURN_IF_ERROR(check_registered(s, host, current_key));
  const auto new_type = static_cast<uint8_t>(type);

  if (action == AcquireAction::kAcquire) {
    if (s.type == static_cast<uint8_t>(RT::kNone)) {
      s.type = new_type;
      s.holder = is_all_registrants(new_type) ? HostId{} : host;
      return Status::ok();
    }
    if (is_holder(s, host) && s.type == new_type) return Status::ok();
    return conflict("the reservation is held by another host or with another type");
  }

  // Preempt and preempt-and-abort change the same state; the abort half (no victim write
  // lands afterwards) is the caller's job, done by holding its I/O gate exclusively.
  const bool none = s.type == static_cast<uint8_t>(RT::kNone);
  const auto not_self = [&](const auto& x) { return x.key == preempt_key && x.host != host; };

  if (!none && is_all_registrants(s.type)) {
    if (preempt_key == 0) {
      remove_registrants(s, [&](const auto& x) { return x.host != host; });
      s.type = new_type;
      s.holder = is_all_registrants(new_type) ? HostId{} : host;
      ++s.generation;
      return Status::ok();
    }
    if (remove_registrants(s, not_self) == 0 && find_host(s, host)->key != preempt_key) {
      return conflict("no registrant has the preempted key");
    }
    ++s.generation;
    return Status::ok();
  }

  if (preempt_key == 0) return invalid_field("preempt key is zero");
  const auto* holder_entry = none ? nullptr : find_host(s, s.holder);
  const bool preempts_holder = holder_entry != nullptr && holder_entry->key == preempt_key;
  const bool matches_any = std::any_of(s.entries, s.entries + s.count,
                                       [&](const auto& x) { return x.key == preempt_key; });
  if (!matches_any) return conflict("no registrant has the preempted key");

  // Keep the state machine simple: drop the victims (which may release the reservation),
  // then, where the holder was preempted, give the reservation to the preempting host.
  const uint32_t removed = remove_registrants(s, not_self);
  if (preempts_holder) {
    s.type = new_type;
    s.holder = is_all_registrants(new_type) ? HostId{} : host;
  }
  if (removed > 0) ++s.generation;
  return Status::ok();
}

Status apply_release(ReservationState& s, const HostId& host, ReleaseAction action,
                     ReservationKey current_key, ReservationType type) {
  RETURN_IF_ERROR(check_registered(s, host, current_key));
  if (action == ReleaseAction::kClear) {
    remove_registrants(s, [](const auto&) { return true; });
    release_reservation(s);
    ++s.generation;
    return Status::ok();
  }
  if (s.type == static_cast<uint8_t>(RT::kNone) || !is_holder(s, host)) return Status::ok();
  if (s.type != static_cast<uint8_t>(type)) {
    return invalid_field("release type does not match the reservation's type");
  }
  release_reservation(s);
  return Status::ok();
}

bool may_read(const ReservationState& s, const HostId& host) {
  switch (static_cast<RT>(s.type)) {
    case RT::kNone:
    case RT::kWriteExclusive:
    case RT::kWriteExclusiveRegistrantsOnly:
    case RT::kWriteExclusiveAllRegistrants:
      return true;
    case RT::kExclusiveAccess:
      return is_holder(s, host);
    case RT::kExclusiveAccessRegistrantsOnly:
    case RT::kExclusiveAccessAllRegistrants:
      return find_host(s, host) != nullptr;
  }
  return false;
}

bool may_write(const ReservationState& s, const HostId& host) {
  switch (static_cast<RT>(s.type)) {
    case RT::kNone:
      return true;
    case RT::kWriteExclusive:
    case RT::kExclusiveAccess:
      return is_holder(s, host);
    case RT::kWriteExclusiveRegistrantsOnly:
    case RT::kExclusiveAccessRegistrantsOnly:
    case RT::kWriteExclusiveAllRegistrants:
    case RT::kExclusiveAccessAllRegistrants:
      return find_host(s, host) != nullptr;
  }
  return false;
}

ReservationReport make_report(const ReservationState& s) {
  ReservationReport r;
  r.generation = s.generation;
  r.type = static_cast<RT>(s.type);
  for (uint32_t i = 0; i < s.count; ++i) {
    r.registrants.push_back({s.entries[i].host, s.entries[i].key, is_holder(s, s.entries[i].host)});
  }
  return r;
}

}  // namespace sharedfs::device::internal
