#include <gtest/gtest.h>

#include <cstring>
#include <string_view>

#include "common/status.h"
#include "common/types.h"

namespace sharedfs {
namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(Crc32c, MatchesStandardCheckValue) {
  EXPECT_EQ(crc32c(bytes("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c(bytes("")), 0u);
}

TEST(Crc32c, ChainsAcrossPieces) {
  const uint32_t whole = crc32c(bytes("hello, shared world"));
  const uint32_t first = crc32c(bytes("hello, "));
  EXPECT_EQ(crc32c(bytes("shared world"), first), whole);
}

TEST(Status, CarriesCodeErrnoAndContext) {
  Status st = errno_status(EBADE, "write at 4096");
  EXPECT_FALSE(st.is_ok());
  EXPECT_EQ(st.code(), Code::kReservationConflict);
  EXPECT_EQ(st.to_errno(), EBADE);
  Status ctx = st.with_context("journal commit");
  EXPECT_EQ(ctx.code(), Code::kReservationConflict);
  EXPECT_NE(ctx.to_string().find("journal commit: write at 4096"), std::string::npos);
  EXPECT_TRUE(errno_status(EAGAIN, "x").retryable());
  EXPECT_EQ(Status(Code::kNoSpace, "full").to_errno(), ENOSPC);
}

Result<int> half(int x) {
  if (x % 2 != 0) return make_status(Code::kInvalidArgument, "{} is odd", x);
  return x / 2;
}

Status quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, half(x));
  ASSIGN_OR_RETURN(*out, half(h));
  return Status::ok();
}

TEST(Result, PropagatesErrorsThroughMacros) {
  int out = 0;
  EXPECT_TRUE(quarter(8, &out).is_ok());
  EXPECT_EQ(out, 2);
  Status st = quarter(6, &out);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_EQ(st.message(), "3 is odd");
}

TEST(Result, OkStatusIsNotAValue) {
  Result<int> r{Status::ok()};
  EXPECT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
}

TEST(StrongId, ComparesAndHashes) {
  BlockNo a{5}, b{7};
  EXPECT_LT(a, b);
  EXPECT_EQ(a, BlockNo{5});
  EXPECT_EQ(std::hash<BlockNo>{}(a), std::hash<uint64_t>{}(5));
}

}  // namespace
}  // namespace sharedfs
