// device/fence_guard.h — a BlockDevice that notices this node has been fenced and from then
// on writes nothing (DESIGN.md §2: a host whose key is gone must withdraw).
//
// The first write or flush that the device refuses with kReservationConflict means another
// node removed our reservation key (preempt-and-abort): the guard stops all writes and
// calls the on_fenced hook once. stop_writes() does the same for a withdrawal decided
// above (an own-key check, an operator). After either, every write and flush fails with
// kIoError "withdrawn" without reaching the device; reads still pass (a registrants-only
// reservation lets anyone read), so a withdrawn node can still be inspected and unmounted.
//
// Thread-safety: like the device it wraps. The hook runs on the thread whose write was
// refused, possibly under the caller's locks: it must only record and wake, never block.
// Ownership: does not own the wrapped device, which must outlive it.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>

#include "device/device.h"

namespace sharedfs::device {

class FenceGuard final : public BlockDevice {
 public:
  using OnFenced = std::function<void(const std::string& reason)>;
  explicit FenceGuard(BlockDevice& base) : base_(base) {}

  // Set before the first write.
  void set_on_fenced(OnFenced hook) { on_fenced_ = std::move(hook); }
  // Stops every later write; the hook runs if this is the first stop.
  void stop_writes(const std::string& reason);
  bool writes_stopped() const { return stopped_.load(std::memory_order_acquire); }
  std::string reason() const;

  uint32_t sector_size() const override { return base_.sector_size(); }
  uint64_t size_bytes() const override { return base_.size_bytes(); }
  std::string describe() const override { return base_.describe(); }
  Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) override {
    return base_.read(offset, buf, opts);
  }
  Status write(uint64_t offset, std::span<const std::byte> buf, const WriteOptions& opts) override;
  Status flush(const FlushOptions& opts) override;
  using BlockDevice::flush;
  using BlockDevice::read;
  using BlockDevice::write;

 private:
  Status refused() const;
  // A kReservationConflict from the device: we are fenced.
  Status check(Status st, std::string_view what);

  BlockDevice& base_;
  OnFenced on_fenced_;
  std::atomic<bool> stopped_{false};
  mutable std::mutex mu_;
  std::string reason_;  // GUARDED_BY(mu_)
};

}  // namespace sharedfs::device
