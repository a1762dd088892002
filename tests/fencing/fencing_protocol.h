// What the fencing test and its writer process share: the layout of the blocks the writer
// writes and the messages it sends back over its status pipe.
//
// Blocks. The writer's write number `seq` (1, 2, ...) goes to block seq % kBlocks of the
// range. Every 32-byte record of a block carries the trial and the sequence number, so a
// block that mixes two writes (a torn write) or holds anything else is detected.
//
// Pipes. The test writes one byte to the control pipe to stop the writer; EOF there means
// the test died and the writer exits. The writer answers on the status pipe with
//   'R'                once registered and its first write has succeeded,
//   'D' WriterReport   after it has been told to stop,
//   'E' text           when it cannot go on (then it exits non-zero).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

namespace sharedfs::fencing {

inline constexpr size_t kBlockSize = 4096;
inline constexpr uint64_t kBlocks = 64;                    // the range the writer cycles over
inline constexpr uint64_t kRangeOffset = 16 * kBlockSize;  // where the range starts
inline constexpr uint64_t kImageSize = 1 << 20;
inline constexpr uint64_t kClusterId = 0xfe4ce;           // for Host IDs
inline constexpr const char* kClusterName = "fencetest";  // for reservation keys
// Once told to stop, the writer still goes on until this many of its writes have been
// refused (or a second has passed), so that every trial checks writes issued well after
// the preempt returned, however the two processes happen to be scheduled.
inline constexpr uint64_t kMinRefusedWrites = 20;

struct Record {
  uint64_t magic;
  uint64_t trial;
  uint64_t seq;
  uint64_t check;  // ~(magic ^ trial ^ seq)
};
inline constexpr uint64_t kRecordMagic = 0x5346'4645'4e43'4531;  // "SFFENCE1"
static_assert(kBlockSize % sizeof(Record) == 0);

inline void fill_block(std::span<std::byte> block, uint64_t trial, uint64_t seq) {
  const Record r{kRecordMagic, trial, seq, ~(kRecordMagic ^ trial ^ seq)};
  for (size_t off = 0; off < block.size(); off += sizeof(Record)) {
    std::memcpy(block.data() + off, &r, sizeof(r));
  }
}

// The sequence number a block holds: 0 for a block never written in this trial (all
// zero), nullopt for anything that is not one whole write of `trial`.
inline std::optional<uint64_t> parse_block(std::span<const std::byte> block, uint64_t trial) {
  Record first;
  std::memcpy(&first, block.data(), sizeof(first));
  bool all_zero = first.magic == 0 && first.trial == 0 && first.seq == 0 && first.check == 0;
  if (!all_zero && (first.magic != kRecordMagic || first.trial != trial ||
                    first.check != ~(kRecordMagic ^ trial ^ first.seq) || first.seq == 0)) {
    return std::nullopt;
  }
  for (size_t off = sizeof(Record); off < block.size(); off += sizeof(Record)) {
    if (std::memcmp(block.data() + off, &first, sizeof(first)) != 0) return std::nullopt;
  }
  return all_zero ? 0 : first.seq;
}

// What the writer saw, sent back as raw bytes (both ends are the same build).
struct WriterReport {
  uint64_t attempts = 0;
  uint64_t last_ok_seq = 0;       // the last write that returned success
  uint64_t last_ok_start_ns = 0;  // CLOCK_MONOTONIC just before that write was issued
  uint64_t failures = 0;
  uint64_t first_fail_seq = 0;
  int32_t first_fail_code = 0;   // sharedfs::Code
  int32_t first_fail_errno = 0;  // Status::to_errno()
  uint64_t first_fail_start_ns = 0;
  uint64_t first_fail_end_ns = 0;  // CLOCK_MONOTONIC just after that write returned
  uint64_t other_failures = 0;     // failures that were not a reservation conflict (EBADE)
  uint64_t ok_after_failure = 0;   // successes after the first failure: must stay 0
};

}  // namespace sharedfs::fencing
