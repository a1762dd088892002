// Strong types for identifiers, so a block number cannot be passed where a node id is
// expected, and small helpers every module uses (checksums, always-on checks).
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <span>

namespace sharedfs {

template <typename Tag, typename Rep>
struct StrongId {
  Rep value{};

  constexpr StrongId() = default;
  constexpr explicit StrongId(Rep v) : value(v) {}
  constexpr auto operator<=>(const StrongId&) const = default;
};

using BlockNo = StrongId<struct BlockNoTag, uint64_t>;  // device block number
using InodeNo = StrongId<struct InodeNoTag, uint64_t>;  // = block number of the inode block
using NodeId = StrongId<struct NodeIdTag, uint32_t>;    // cluster node id == slot number
using Generation = StrongId<struct GenerationTag, uint64_t>;
using Lsn = StrongId<struct LsnTag, uint64_t>;  // journal sequence number

// CRC-32C (Castagnoli), the standard variant (init ~0, final xor ~0): crc32c("123456789")
// == 0xE3069283. Uses the SSE4.2/PCLMUL code of ISA-L. `seed` continues an earlier crc.
uint32_t crc32c(std::span<const std::byte> data, uint32_t seed = 0);

[[noreturn]] void check_failed(const char* expr, const char* file, int line, const char* msg);

}  // namespace sharedfs

template <typename Tag, typename Rep>
struct std::hash<sharedfs::StrongId<Tag, Rep>> {
  size_t operator()(const sharedfs::StrongId<Tag, Rep>& id) const noexcept {
    return std::hash<Rep>{}(id.value);
  }
};

// Always-on check for on-disk and cluster-safety invariants: on a shared disk one crashed
// node is better than corrupt metadata that every node reads. Use assert() for cheap
// programmer errors that only debug builds need to catch.
#define SHAREDFS_CHECK(expr, msg)                                          \
  do {                                                                     \
    if (!(expr)) ::sharedfs::check_failed(#expr, __FILE__, __LINE__, msg); \
  } while (0)
