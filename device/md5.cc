#include "device/md5.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include "common/types.h"

namespace sharedfs::device {

std::array<uint8_t, 16> md5(std::string_view data) {
  // "-fips": MD5 names a key here, it protects nothing, so a host whose default properties
  // ask for FIPS implementations still computes it (as fence_scsi's hashlib does).
  EVP_MD* md = EVP_MD_fetch(nullptr, "MD5", "-fips");
  SHAREDFS_CHECK(md != nullptr, "OpenSSL offers no MD5 (the default provider is not loaded)");
  std::array<uint8_t, 16> out{};
  unsigned int len = 0;
  const bool ok = EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr) == 1 &&
                  len == out.size();
  EVP_MD_free(md);
  SHAREDFS_CHECK(ok, "MD5 failed");
  return out;
}

std::string md5_hex(std::string_view data) {
  std::string hex;
  for (uint8_t b : md5(data)) hex += fmt::format("{:02x}", b);
  return hex;
}

}  // namespace sharedfs::device
