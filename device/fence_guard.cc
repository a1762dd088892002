#include "device/fence_guard.h"

namespace sharedfs::device {

void FenceGuard::stop_writes(const std::string& reason) {
  {
    std::lock_guard l(mu_);
    if (stopped_.load(std::memory_order_relaxed)) return;
    reason_ = reason;
    stopped_.store(true, std::memory_order_release);
  }
  if (on_fenced_) on_fenced_(reason);
}

std::string FenceGuard::reason() const {
  std::lock_guard l(mu_);
  return reason_;
}

Status FenceGuard::refused() const {
  return make_status(Code::kIoError, "withdrawn, nothing more is written: {}", reason());
}

Status FenceGuard::check(Status st, std::string_view what) {
  if (st.code() != Code::kReservationConflict) return st;
  stop_writes(fmt::format("the device refused a {} ({}): this node's reservation key was "
                          "removed, another node fenced it",
                          what, st.to_string()));
  return st;
}

Status FenceGuard::write(uint64_t offset, std::span<const std::byte> buf, const WriteOptions& opts) {
  if (writes_stopped()) return refused();
  return check(base_.write(offset, buf, opts), "write");
}

Status FenceGuard::flush(const FlushOptions& opts) {
  if (writes_stopped()) return refused();
  return check(base_.flush(opts), "flush");
}

}  // namespace sharedfs::device
