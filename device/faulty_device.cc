// FaultyDevice: see device/device.h.
//
// Model. The wrapped ("base") device plays the durable medium; this decorator plays the
// device's volatile write cache. A write without FUA is only remembered here, per sector,
// until flush() copies every remembered sector to the base; a FUA write goes to the base at
// once. At a crash the remembered sectors are forgotten, which is exactly "every write not
// yet flushed is lost"; optionally a prefix of the last write survives, as when power fails
// while the device is writing a multi-sector command.
//
// Counting. `eio_on_io` and `crash_after_write` count from the moment the configuration
// took effect (construction or set_config), so a test can prepare a device and then set a
// crash point "k writes from now". counters() are cumulative. Requests refused for bad
// arguments or because the device has crashed are not counted.
//
// Since a non-FUA write does not reach the base until flush, errors of the base for it
// (a reservation conflict after fencing, say) surface at flush(), not at write().
//
// Concurrency. One mutex guards the whole state and is held across the base I/O of a call:
// a read overlays cached sectors on base data, which no concurrent flush may change
// meanwhile. Tests are not about throughput. Injected latency is slept before taking the
// mutex, so concurrent callers wait in parallel as on a real device.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "device/device.h"

namespace sharedfs::device {

struct FaultyDevice::State {
  explicit State(FaultConfig c) : config(std::move(c)) {}

  std::mutex mu;
  FaultConfig config;                         // GUARDED_BY(mu)
  Counters counters;                          // GUARDED_BY(mu)
  uint64_t ios_since_config = 0;              // GUARDED_BY(mu)
  uint64_t accepted_writes_since_config = 0;  // GUARDED_BY(mu)
  bool crashed = false;                       // GUARDED_BY(mu)
  // Unflushed data, one entry per sector of the base (key: byte offset; value: sector_size
  // bytes). Per-sector entries make overlapping writes right without bookkeeping: the
  // newest write of a sector replaces the older one.
  std::map<uint64_t, std::vector<std::byte>> cache;  // GUARDED_BY(mu)
  // The last write while it exists only in `cache` (not FUA, not flushed since): the one a
  // crash may tear. Nothing was written after it, so all of its data is in `cache`.
  std::optional<std::pair<uint64_t, uint64_t>> last_unflushed_write;  // GUARDED_BY(mu)

  // Outside the mutex, so that concurrent callers wait in parallel.
  void sleep_latency() {
    std::chrono::microseconds latency;
    {
      std::lock_guard lock(mu);
      latency = config.latency;
    }
    if (latency.count() > 0) std::this_thread::sleep_for(latency);
  }

  // Decides whether to fail a read or write that passed the argument checks with an
  // injected EIO, and counts it.
  Status inject(uint64_t offset, size_t len, FaultOp op) {
    ++ios_since_config;
    const char* what = op == FaultOp::kRead ? "read" : "write";
    if (config.eio_on_io != 0 && ios_since_config == config.eio_on_io) {
      ++counters.injected_errors;
      // A one-off failure: the same request would succeed if tried again.
      return Status(
          Code::kIoError,
          fmt::format("injected EIO on I/O #{} ({} at {})", ios_since_config, what, offset), EIO,
          /*retryable=*/true);
    }
    if (len > 0 && (static_cast<uint8_t>(config.eio_blocks_op) & static_cast<uint8_t>(op))) {
      const uint64_t bs = std::max<uint64_t>(config.fault_block_size, 1);  // 0: bytes
      auto it = config.eio_blocks.lower_bound(offset / bs);
      if (it != config.eio_blocks.end() && *it <= (offset + len - 1) / bs) {
        ++counters.injected_errors;
        // A bad block stays bad: retrying does not help.
        return Status(
            Code::kIoError,
            fmt::format("injected EIO on block {} ({} at {} of {} bytes)", *it, what, offset, len),
            EIO, /*retryable=*/false);
      }
    }
    return Status::ok();
  }

  // Writes every cached sector to the base, in runs of adjacent sectors. A sector leaves
  // the cache only once its run is written, so after an error the rest is still cached.
  Status write_back(BlockDevice& base) {
    // Whatever happens below, the last write is no longer only in the cache in full.
    last_unflushed_write.reset();
    const uint32_t sector = base.sector_size();
    while (!cache.empty()) {
      auto first = cache.begin();
      auto end = std::next(first);
      uint64_t run_end = first->first + sector;
      while (end != cache.end() && end->first == run_end) {
        run_end += sector;
        ++end;
      }
      AlignedBuffer buf(run_end - first->first);  // the base may need aligned buffers
      for (auto it = first; it != end; ++it) {
        std::memcpy(buf.data() + (it->first - first->first), it->second.data(), sector);
      }
      RETURN_IF_ERROR(base.write(first->first, buf.span(), WriteOptions{}));
      cache.erase(first, end);
    }
    return Status::ok();
  }

  // The crash: keep the torn prefix of the last write, if asked to, and drop the rest.
  void crash(BlockDevice& base) {
    if (crashed) return;
    crashed = true;
    const uint32_t sector = base.sector_size();
    // Tearing happens at the device's sector granularity; on a base with sectors larger
    // than 512 bytes, only whole base sectors survive.
    if (last_unflushed_write) {
      const auto [offset, len] = *last_unflushed_write;
      uint64_t keep = std::min(uint64_t{config.tear_sectors} * 512, len);
      keep -= keep % sector;
      if (keep > 0) {
        AlignedBuffer buf(keep);
        for (uint64_t done = 0; done < keep; done += sector) {
          std::memcpy(buf.data() + done, cache.at(offset + done).data(), sector);
        }
        // What survives a crash is whatever reached the medium; a base that fails here
        // just makes the tear shorter, also a possible outcome of a power failure.
        (void)base.write(offset, buf.span(), WriteOptions{});
      }
    }
    cache.clear();
    last_unflushed_write.reset();
  }
};

namespace {

Status crashed_status(const std::string& device) {
  return Status(Code::kCrashed, fmt::format("{} has crashed (fault injection)", device), EIO);
}

Status check_request(const BlockDevice& dev, uint64_t offset, size_t len, const char* what) {
  const uint64_t sector = dev.sector_size();
  const uint64_t size = dev.size_bytes();
  if (offset % sector != 0 || len % sector != 0) {
    return make_status(Code::kInvalidArgument, "{} at {} of {} bytes is not {}-byte aligned", what,
                       offset, len, sector);
  }
  if (offset > size || len > size - offset) {
    return make_status(Code::kInvalidArgument, "{} at {} of {} bytes is past the end ({})", what,
                       offset, len, size);
  }
  return Status::ok();
}

}  // namespace

FaultyDevice::FaultyDevice(std::unique_ptr<BlockDevice> base, FaultConfig config)
    : base_(std::move(base)), state_(std::make_unique<State>(std::move(config))) {}

// Destruction without a crash is a clean shutdown: the cache reaches the medium, as on a
// real device that is closed and stays powered. Errors have nobody to go to; a test that
// wants unflushed data dropped calls crash() first.
FaultyDevice::~FaultyDevice() {
  std::lock_guard lock(state_->mu);
  if (!state_->crashed) (void)state_->write_back(*base_);
}

uint32_t FaultyDevice::sector_size() const { return base_->sector_size(); }
uint64_t FaultyDevice::size_bytes() const { return base_->size_bytes(); }
std::string FaultyDevice::describe() const { return "faulty:" + base_->describe(); }

Status FaultyDevice::read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) {
  state_->sleep_latency();
  std::lock_guard lock(state_->mu);
  State& s = *state_;
  if (s.crashed) return crashed_status(describe());
  RETURN_IF_ERROR(check_request(*this, offset, buf.size(), "read"));
  ++s.counters.reads;
  RETURN_IF_ERROR(s.inject(offset, buf.size(), FaultOp::kRead));
  RETURN_IF_ERROR(base_->read(offset, buf, opts));
  // Overlay what is newer than the medium.
  const uint32_t sector = sector_size();
  for (auto it = s.cache.lower_bound(offset);
       it != s.cache.end() && it->first < offset + buf.size(); ++it) {
    std::memcpy(buf.data() + (it->first - offset), it->second.data(), sector);
  }
  return Status::ok();
}

Status FaultyDevice::write(uint64_t offset, std::span<const std::byte> buf,
                           const WriteOptions& opts) {
  state_->sleep_latency();
  std::lock_guard lock(state_->mu);
  State& s = *state_;
  if (s.crashed) return crashed_status(describe());
  RETURN_IF_ERROR(check_request(*this, offset, buf.size(), "write"));
  ++s.counters.writes;
  RETURN_IF_ERROR(s.inject(offset, buf.size(), FaultOp::kWrite));
  const uint32_t sector = sector_size();
  if (opts.fua) {
    RETURN_IF_ERROR(base_->write(offset, buf, opts));
    // The FUA data is newer than any cached copy of these sectors: a later read must not
    // see, nor a later flush write back, the older data.
    s.cache.erase(s.cache.lower_bound(offset), s.cache.lower_bound(offset + buf.size()));
    s.last_unflushed_write.reset();
  } else {
    for (uint64_t done = 0; done < buf.size(); done += sector) {
      s.cache.insert_or_assign(
          offset + done, std::vector<std::byte>(buf.data() + done, buf.data() + done + sector));
    }
    s.last_unflushed_write = std::pair<uint64_t, uint64_t>(offset, buf.size());
  }
  ++s.accepted_writes_since_config;
  // The write is accepted (it returns OK); the machine goes down right after it.
  if (s.config.crash_after_write != 0 &&
      s.accepted_writes_since_config == s.config.crash_after_write) {
    s.crash(*base_);
  }
  return Status::ok();
}

Status FaultyDevice::flush(const FlushOptions& opts) {
  std::lock_guard lock(state_->mu);
  State& s = *state_;
  if (s.crashed) return crashed_status(describe());
  ++s.counters.flushes;
  RETURN_IF_ERROR(s.write_back(*base_));
  return base_->flush(opts);
}

void FaultyDevice::set_config(FaultConfig config) {
  std::lock_guard lock(state_->mu);
  state_->config = std::move(config);
  state_->ios_since_config = 0;
  state_->accepted_writes_since_config = 0;
}

void FaultyDevice::crash() {
  std::lock_guard lock(state_->mu);
  state_->crash(*base_);
}

bool FaultyDevice::crashed() const {
  std::lock_guard lock(state_->mu);
  return state_->crashed;
}

FaultyDevice::Counters FaultyDevice::counters() const {
  std::lock_guard lock(state_->mu);
  return state_->counters;
}

}  // namespace sharedfs::device
