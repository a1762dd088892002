// device/ internal — MD5 (OpenSSL's), only to derive reservation keys the way fence_scsi
// does (node_reservation_key). Not for security: nothing here resists an adversary.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace sharedfs::device {

std::array<uint8_t, 16> md5(std::string_view data);
// 32 lower-case hex digits, as Python's hashlib.md5(...).hexdigest().
std::string md5_hex(std::string_view data);

}  // namespace sharedfs::device
