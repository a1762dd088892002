// libFuzzer target for MessageCodec::decode (built and run by message_fuzz.sh).
//
// Random bytes almost never pass the HMAC, so inputs whose first byte is odd are framed
// first: a valid header for the type in byte 1 around the rest as the body, sealed with
// the key. Even inputs go to decode() as they are. Whatever decodes must encode back to
// the same bytes: the format has one encoding per message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "dlm/message.h"

namespace {

void put_le(std::vector<std::byte>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sharedfs::dlm;
  static const MessageCodec codec("fuzz-secret");
  if (size == 0) return 0;
  std::vector<std::byte> bytes;
  if ((data[0] & 1) == 0) {
    bytes.assign(reinterpret_cast<const std::byte*>(data + 1),
                 reinterpret_cast<const std::byte*>(data + size));
  } else {
    const uint8_t type = size > 1 ? data[1] % 9 : 0;  // 0 and 8 are invalid types
    const size_t body = size > 2 ? size - 2 : 0;
    put_le(bytes, kMessageMagic, 4);
    put_le(bytes, kMessageVersion, 1);
    put_le(bytes, type, 1);
    put_le(bytes, 0, 2);
    put_le(bytes, 7, 8);  // epoch
    put_le(bytes, 1, 4);  // from id
    put_le(bytes, 1, 8);  // from incarnation
    put_le(bytes, 2, 4);  // to
    put_le(bytes, 3, 8);  // seq
    put_le(bytes, 2, 8);  // ack
    put_le(bytes, body, 4);
    for (size_t i = 2; i < size; ++i) bytes.push_back(static_cast<std::byte>(data[i]));
    bytes = codec.seal(bytes);
  }
  auto decoded = codec.decode(bytes);
  if (decoded.is_ok() && codec.encode(*decoded) != bytes) std::abort();
  return 0;
}
