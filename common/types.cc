#include "common/types.h"

#include <isa-l/crc.h>

namespace sharedfs {

uint32_t crc32c(std::span<const std::byte> data, uint32_t seed) {
  // ISA-L's crc32_iscsi takes and returns the raw register (no inversion); the standard
  // CRC-32C inverts on the way in and out, which also makes seeds chain naturally.
  uint32_t reg = ~seed;
  reg = crc32_iscsi(reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data())),
                    static_cast<int>(data.size()), reg);
  return ~reg;
}

void check_failed(const char* expr, const char* file, int line, const char* msg) {
  std::fprintf(stderr, "sharedfs: invariant violated at %s:%d: %s (%s)\n", file, line, msg, expr);
  std::fflush(stderr);
  std::abort();
}

}  // namespace sharedfs
