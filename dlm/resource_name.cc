#include "dlm/resource_name.h"

#include <fmt/format.h>

#include <cassert>
#include <cstring>

namespace sharedfs::dlm {

namespace {
// splitmix64's finalizer: cheap, and every input bit affects every output bit.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

ResourceName ResourceName::make(uint8_t type, uint64_t id, std::string_view tag) {
  assert(tag.size() <= kTagSize);
  ResourceName n;
  n.type = type;
  n.id = id;
  // An empty string_view may have a null data(): no memcpy from it (UBSan).
  if (!tag.empty()) std::memcpy(n.tag.data(), tag.data(), std::min(tag.size(), kTagSize));
  return n;
}

std::string_view ResourceName::tag_view() const {
  size_t len = 0;
  while (len < kTagSize && tag[len] != '\0') ++len;
  return {tag.data(), len};
}

std::string ResourceName::to_string() const {
  if (tag[0] == '\0') return fmt::format("{}:{}", type, id);
  return fmt::format("{}:{}:{}", type, id, tag_view());
}

uint64_t ResourceName::hash() const {
  uint64_t t = 0;
  std::memcpy(&t, tag.data(), sizeof(t));
  return mix(mix(mix(type) ^ id) ^ t);
}

}  // namespace sharedfs::dlm
