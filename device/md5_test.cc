// MD5 against RFC 1321's test suite, and reservation keys against fence_scsi's scheme
// (values computed with Python's hashlib and fence_scsi's "%.4s%.4d" formula).
#include "device/md5.h"

#include <gtest/gtest.h>

#include <string>

#include "device/device.h"

namespace sharedfs::device {
namespace {

TEST(Md5Test, Rfc1321TestSuite) {
  EXPECT_EQ(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(md5_hex("a"), "0cc175b9c0f1b6a831c399e269772661");
  EXPECT_EQ(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(md5_hex("message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
  EXPECT_EQ(md5_hex("abcdefghijklmnopqrstuvwxyz"), "c3fcd3d76192e4007dfb496cca67e13b");
  EXPECT_EQ(md5_hex("1234567890123456789012345678901234567890123456789012345678901234567890"
                    "1234567890"),
            "57edf4a22be3c955ac49da2e2107b67a");
}

TEST(Md5Test, PaddingBoundaries) {
  // 56 bytes needs a second padding block; 64 bytes is one whole block plus padding.
  EXPECT_EQ(md5_hex(std::string(56, 'A')), "a2f3e2024931bd470555002aa5ccc010");
  EXPECT_EQ(md5_hex(std::string(64, 'B')), "8e558437ffca99de04c18a63b55a4fad");
}

TEST(ReservationKeyTest, SameAsFenceScsiForClusterNameAndNodeId) {
  EXPECT_EQ(node_reservation_key("prod", 1), 0xd6e40001u);
  EXPECT_EQ(node_reservation_key("prod", 3), 0xd6e40003u);
  // The node id is written in decimal: node 12 is ...0012, not ...000c.
  EXPECT_EQ(node_reservation_key("prod", 12), 0xd6e40012u);
  EXPECT_EQ(node_reservation_key("test", 16), 0x098f0016u);
  EXPECT_EQ(node_reservation_key("hacluster", 2), 0xfb0c0002u);
  EXPECT_NE(node_reservation_key("prod", 1), node_reservation_key("test", 1));
}

TEST(ReservationKeyTest, ParsesFenceScsiAndPrefixedHex) {
  EXPECT_EQ(parse_reservation_key("d6e40003"), 0xd6e40003u);
  EXPECT_EQ(parse_reservation_key("0xD6E40003"), 0xd6e40003u);
  EXPECT_EQ(parse_reservation_key("000000000000abcd"), 0xabcdu);
  EXPECT_EQ(parse_reservation_key("ffffffffffffffff"), ~uint64_t{0});
  EXPECT_FALSE(parse_reservation_key(""));
  EXPECT_FALSE(parse_reservation_key("0x"));
  EXPECT_FALSE(parse_reservation_key("0"));  // zero is "no key"
  EXPECT_FALSE(parse_reservation_key("12g4"));
  EXPECT_FALSE(parse_reservation_key("1ffffffffffffffff"));  // 17 digits
}

}  // namespace
}  // namespace sharedfs::device
