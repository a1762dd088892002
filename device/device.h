// device/ — the raw shared device and its persistent reservations.
//
// Everything above this layer reads and writes the shared disk only through BlockDevice,
// and takes part in fencing only through Reservations. Backends:
//   file   a regular file or a loop device; NVMe reservations emulated in state shared by
//          every process that opens the same device, and enforced on this backend's I/O
//          path (see docs/device.md).
//   nvme   a /dev/nvmeXnY namespace: direct I/O on the block device, reservations through
//          libnvme's nvme_resv_* calls.
//   faulty a decorator over any backend for tests: EIO, latency, crash points.
//
// Thread-safety: BlockDevice and Reservations methods may be called concurrently from any
// thread. Ownership: open_* returns a unique owner; a decorator owns what it wraps.
//
// I/O rules: offsets and lengths are multiples of sector_size(); buffers are aligned to
// kIoAlignment (use AlignedBuffer). Errors come back as Status: kReservationConflict when
// the reservation forbids the access (for a write by a fenced node: withdraw), kIoError
// with retryable() when trying again may help, kCrashed from a faulty device past its
// crash point.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/types.h"

namespace sharedfs::device {

// Direct I/O buffers are aligned to this (the largest logical block size we support).
inline constexpr size_t kIoAlignment = 4096;

// A heap buffer aligned for direct I/O, zero-filled on creation.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size);
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

struct ReadOptions {};

struct WriteOptions {
  // Force unit access: the write is durable when it returns (it need not wait for flush).
  bool fua = false;
};

struct FlushOptions {};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Granularity of offsets and lengths (512 for files, the logical block size for block
  // devices). Writes of one sector are atomic; larger writes may tear at sector bounds.
  virtual uint32_t sector_size() const = 0;
  virtual uint64_t size_bytes() const = 0;
  // A short description for logs and errors ("file:/path", "nvme:/dev/nvme0n1").
  virtual std::string describe() const = 0;

  virtual Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) = 0;
  virtual Status write(uint64_t offset, std::span<const std::byte> buf,
                       const WriteOptions& opts) = 0;
  // Makes every write that completed before this call durable.
  virtual Status flush(const FlushOptions& opts) = 0;

  Status read(uint64_t offset, std::span<std::byte> buf) { return read(offset, buf, {}); }
  Status write(uint64_t offset, std::span<const std::byte> buf) { return write(offset, buf, {}); }
  Status flush() { return flush({}); }
};

// ---------------------------------------------------------------------------------------
// Persistent reservations with NVMe semantics (NVMe Base Specification, "Reservations").

// Reservation types; values are NVMe's RTYPE codes.
enum class ReservationType : uint8_t {
  kNone = 0,  // no reservation held
  kWriteExclusive = 1,
  kExclusiveAccess = 2,
  kWriteExclusiveRegistrantsOnly = 3,
  kExclusiveAccessRegistrantsOnly = 4,
  kWriteExclusiveAllRegistrants = 5,
  kExclusiveAccessAllRegistrants = 6,
};
std::string_view reservation_type_name(ReservationType type);
// Parses "we", "ea", "wero", "earo", "wear", "eaar" (and NVMe's numeric codes).
std::optional<ReservationType> parse_reservation_type(std::string_view text);

// NVMe Host Identifier (128-bit extended form). Reservations belong to a host: every node
// needs a distinct, stable, non-zero Host ID.
struct HostId {
  std::array<uint8_t, 16> bytes{};
  bool is_zero() const;
  std::string to_string() const;  // 32 hex digits
  static std::optional<HostId> parse(std::string_view hex);
  // Deterministic Host ID for an emulated host (tests, file backend): cluster id + node id.
  static HostId for_node(uint64_t cluster_id, uint32_t node_id);
  auto operator<=>(const HostId&) const = default;
};

using ReservationKey = uint64_t;

// The key a node registers, in fence_scsi's scheme (its default "id" key_value) so that
// the key the daemon registers at mount, the key fence_sharedfs acts on for that node and
// the key fence_scsi would use for the same cluster name and node id are one and the
// same: the first 4 hex digits of md5(cluster name), then the node id as (at least) 4
// decimal digits, the whole read as a hex number. Cluster "prod", node 3: 0xd6e40003. The
// node id reads off the key in decimal; clusters sharing a SAN differ in the md5 prefix
// (16 bits, as with fence_scsi). See docs/device.md.
ReservationKey node_reservation_key(std::string_view cluster_name, uint32_t node_id);

// Parses a key as fence_scsi and sg_persist take it: hex digits with or without "0x"
// ("d6e40003", "0xd6e40003"), at most 16 digits, not zero.
std::optional<ReservationKey> parse_reservation_key(std::string_view text);

struct Registrant {
  HostId host;
  ReservationKey key = 0;
  bool holds_reservation = false;
};

struct ReservationReport {
  uint32_t generation = 0;  // bumped by register/unregister/replace, preempt, clear
  ReservationType type = ReservationType::kNone;
  std::vector<Registrant> registrants;

  const Registrant* find_key(ReservationKey key) const;
  const Registrant* holder() const;
};

struct RegisterOptions {
  // NVMe IEKEY: ignore the current key (register or replace without knowing it).
  bool ignore_existing_key = false;
};

// Reservation commands as issued by this opener's host. Each returns kReservationConflict
// where NVMe completes the command with Reservation Conflict, kInvalidArgument where it
// completes with Invalid Field in Command.
class Reservations {
 public:
  virtual ~Reservations() = default;

  // The Host ID on whose behalf this opener issues commands.
  virtual HostId host_id() const = 0;

  virtual Status register_key(ReservationKey new_key, const RegisterOptions& opts) = 0;
  virtual Status unregister_key(ReservationKey current_key, const RegisterOptions& opts) = 0;
  virtual Status replace_key(ReservationKey current_key, ReservationKey new_key,
                             const RegisterOptions& opts) = 0;
  virtual Status acquire(ReservationKey current_key, ReservationType type) = 0;
  // Removes the registrations of `victim_key` and, where the victim held the reservation,
  // takes it over with `type`. victim_key 0 on an all-registrants reservation preempts
  // every other registrant.
  virtual Status preempt(ReservationKey current_key, ReservationKey victim_key,
                         ReservationType type) = 0;
  // As preempt, and also aborts the victims' commands in flight: once this returns, no
  // write issued by a victim lands on the device.
  virtual Status preempt_and_abort(ReservationKey current_key, ReservationKey victim_key,
                                   ReservationType type) = 0;
  virtual Status release(ReservationKey current_key, ReservationType type) = 0;
  // Releases any reservation and removes every registration.
  virtual Status clear(ReservationKey current_key) = 0;
  virtual Result<ReservationReport> report() = 0;

  Status register_key(ReservationKey new_key) { return register_key(new_key, {}); }
  Status unregister_key(ReservationKey current_key) { return unregister_key(current_key, {}); }
  Status replace_key(ReservationKey current_key, ReservationKey new_key) {
    return replace_key(current_key, new_key, {});
  }
};

// A device opened for use: its I/O and its reservations, opened together because both
// act on behalf of the same host.
struct OpenDevice {
  std::unique_ptr<BlockDevice> io;
  std::unique_ptr<Reservations> reservations;
};

struct FileOpenOptions {
  // Host on whose behalf this process reads, writes and issues reservation commands. On a
  // real NVMe namespace this is the controller's Host ID; here each node passes its own.
  HostId host;
  bool read_only = false;
  // Where the emulated reservation state lives. Empty: "<file>.pr" beside a regular file,
  // /run/sharedfs/pr-<major>-<minor> for a block device (see docs/device.md).
  std::string reservation_state_path;
  // Use O_DIRECT where the file system under the file supports it.
  bool direct_io = true;
};

// Opens a regular file or a block device (e.g. a loop device) with emulated reservations.
Result<OpenDevice> open_file_device(const std::string& path, const FileOpenOptions& opts);

struct NvmeOpenOptions {
  bool read_only = false;
  // The Host ID this host must have; empty: read it from the controller (Get Features,
  // Host Identifier) and require it to be non-zero.
  std::optional<HostId> expected_host;
};

// Opens an NVMe namespace block device. Refuses a controller whose Host ID is zero (NVMe
// reservations need a distinct, stable Host ID on every node) or differs from
// `expected_host`.
Result<OpenDevice> open_nvme_device(const std::string& path, const NvmeOpenOptions& opts);

// Opens `path` with the backend its name implies: /dev/nvme<c>n<n> through the nvme backend
// (the host is the controller's Host ID; `host`, when not zero, must match it), anything
// else through the file backend as `host`.
Result<OpenDevice> open_device(const std::string& path, const HostId& host, bool read_only);

// Whether `path` is an NVMe namespace (/dev/nvme*), symbolic links such as
// /dev/disk/by-id/nvme-... followed: open_device() chooses the NVMe backend for those, the
// file emulation (reservations within one host only) for anything else.
bool is_nvme_path(const std::string& path);

// The Host ID node `node` of cluster `cluster_id` acts as on `path`, for open_device(): an
// NVMe namespace speaks with its controller's own Host ID (zero here: whatever it is), the
// emulation, which has no host identity, with the node's derived one (HostId::for_node).
HostId node_host_id(const std::string& path, uint64_t cluster_id, uint32_t node);

// ---------------------------------------------------------------------------------------
// Fault injection for tests.

enum class FaultOp : uint8_t { kRead = 1, kWrite = 2, kAny = 3 };

struct FaultConfig {
  // Blocks (in units of `fault_block_size` bytes) on which matching I/O fails with EIO.
  std::set<uint64_t> eio_blocks;
  FaultOp eio_blocks_op = FaultOp::kAny;
  uint32_t fault_block_size = 4096;
  // Fail the k-th I/O (1-based, reads and writes counted together) with EIO; 0 = never.
  uint64_t eio_on_io = 0;
  // Added to every read and write.
  std::chrono::microseconds latency{0};
  // Crash after the k-th write (1-based) has been accepted; 0 = never. At the crash every
  // write not yet flushed is dropped, the device fails all further I/O with kCrashed.
  uint64_t crash_after_write = 0;
  // At the crash, keep the first `tear_sectors` 512-byte sectors of the last write.
  uint32_t tear_sectors = 0;
};

// The fault-injecting decorator. Unflushed writes are buffered in memory (reads see them)
// and reach the wrapped device on flush or with FUA, so a crash can drop them exactly.
class FaultyDevice : public BlockDevice {
 public:
  struct Counters {
    uint64_t reads = 0;
    uint64_t writes = 0;
    uint64_t flushes = 0;
    uint64_t injected_errors = 0;
  };

  FaultyDevice(std::unique_ptr<BlockDevice> base, FaultConfig config);
  ~FaultyDevice() override;

  uint32_t sector_size() const override;
  uint64_t size_bytes() const override;
  std::string describe() const override;
  Status read(uint64_t offset, std::span<std::byte> buf, const ReadOptions& opts) override;
  Status write(uint64_t offset, std::span<const std::byte> buf, const WriteOptions& opts) override;
  Status flush(const FlushOptions& opts) override;
  using BlockDevice::flush;
  using BlockDevice::read;
  using BlockDevice::write;

  void set_config(FaultConfig config);
  // Crashes now (as if the crash point had been reached by the last write).
  void crash();
  bool crashed() const;
  Counters counters() const;

 private:
  struct State;
  std::unique_ptr<BlockDevice> base_;
  std::unique_ptr<State> state_;
};

}  // namespace sharedfs::device
