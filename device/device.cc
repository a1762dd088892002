// Shared pieces of device/: buffers, host ids, keys, reservation type names.
#include "device/device.h"

#include <filesystem>

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <new>

#include "device/md5.h"

namespace sharedfs::device {

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  const size_t rounded = (size + kIoAlignment - 1) / kIoAlignment * kIoAlignment;
  data_ = static_cast<std::byte*>(std::aligned_alloc(kIoAlignment, rounded));
  if (data_ == nullptr) throw std::bad_alloc();
  std::memset(data_, 0, rounded);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

std::string_view reservation_type_name(ReservationType type) {
  switch (type) {
    case ReservationType::kNone:
      return "none";
    case ReservationType::kWriteExclusive:
      return "write-exclusive";
    case ReservationType::kExclusiveAccess:
      return "exclusive-access";
    case ReservationType::kWriteExclusiveRegistrantsOnly:
      return "write-exclusive-registrants-only";
    case ReservationType::kExclusiveAccessRegistrantsOnly:
      return "exclusive-access-registrants-only";
    case ReservationType::kWriteExclusiveAllRegistrants:
      return "write-exclusive-all-registrants";
    case ReservationType::kExclusiveAccessAllRegistrants:
      return "exclusive-access-all-registrants";
  }
  return "unknown";
}

std::optional<ReservationType> parse_reservation_type(std::string_view text) {
  static constexpr std::pair<std::string_view, ReservationType> kNames[] = {
      {"we", ReservationType::kWriteExclusive},
      {"ea", ReservationType::kExclusiveAccess},
      {"wero", ReservationType::kWriteExclusiveRegistrantsOnly},
      {"earo", ReservationType::kExclusiveAccessRegistrantsOnly},
      {"wear", ReservationType::kWriteExclusiveAllRegistrants},
      {"eaar", ReservationType::kExclusiveAccessAllRegistrants},
  };
  for (const auto& [name, type] : kNames) {
    if (text == name || text == reservation_type_name(type)) return type;
  }
  if (text.size() == 1 && text[0] >= '1' && text[0] <= '6') {
    return static_cast<ReservationType>(text[0] - '0');
  }
  return std::nullopt;
}

bool HostId::is_zero() const {
  for (uint8_t b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

std::string HostId::to_string() const {
  std::string s;
  s.reserve(32);
  for (uint8_t b : bytes) s += fmt::format("{:02x}", b);
  return s;
}

std::optional<HostId> HostId::parse(std::string_view hex) {
  std::string digits;
  for (char c : hex) {
    if (c == '-') continue;  // accept UUID form
    digits += c;
  }
  if (digits.size() != 32) return std::nullopt;
  HostId id;
  for (size_t i = 0; i < 16; ++i) {
    char* end = nullptr;
    const std::string byte = digits.substr(2 * i, 2);
    const unsigned long v = std::strtoul(byte.c_str(), &end, 16);
    if (end != byte.c_str() + 2) return std::nullopt;
    id.bytes[i] = static_cast<uint8_t>(v);
  }
  return id;
}

HostId HostId::for_node(uint64_t cluster_id, uint32_t node_id) {
  // "sfhost" marker, then cluster id and node id, big-endian, so it reads well in hex.
  HostId id;
  const uint8_t prefix[4] = {0x53, 0x46, 0x48, 0x49};  // "SFHI"
  std::memcpy(id.bytes.data(), prefix, 4);
  for (int i = 0; i < 8; ++i) id.bytes[4 + i] = static_cast<uint8_t>(cluster_id >> (56 - 8 * i));
  for (int i = 0; i < 4; ++i) id.bytes[12 + i] = static_cast<uint8_t>(node_id >> (24 - 8 * i));
  return id;
}

ReservationKey node_reservation_key(std::string_view cluster_name, uint32_t node_id) {
  // fence_scsi: "%.4s%.4d" % (md5(cluster name).hexdigest(), node id), used as a hex key.
  const std::string text = md5_hex(cluster_name).substr(0, 4) + fmt::format("{:04d}", node_id);
  return std::stoull(text, nullptr, 16);
}

std::optional<ReservationKey> parse_reservation_key(std::string_view text) {
  if (text.starts_with("0x") || text.starts_with("0X")) text.remove_prefix(2);
  if (text.empty() || text.size() > 16) return std::nullopt;
  ReservationKey key = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, key, 16);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  if (key == 0) return std::nullopt;  // NVMe and SCSI both treat key 0 as "no key"
  return key;
}

const Registrant* ReservationReport::find_key(ReservationKey key) const {
  for (const auto& r : registrants) {
    if (r.key == key) return &r;
  }
  return nullptr;
}

const Registrant* ReservationReport::holder() const {
  for (const auto& r : registrants) {
    if (r.holds_reservation) return &r;
  }
  return nullptr;
}

bool is_nvme_path(const std::string& path) {
  std::error_code ec;
  const auto real = std::filesystem::canonical(path, ec);
  return (ec ? path : real.string()).starts_with("/dev/nvme");
}

HostId node_host_id(const std::string& path, uint64_t cluster_id, uint32_t node) {
  return is_nvme_path(path) ? HostId{} : HostId::for_node(cluster_id, node);
}

Result<OpenDevice> open_device(const std::string& path, const HostId& host, bool read_only) {
  if (is_nvme_path(path)) {
    NvmeOpenOptions opts{.read_only = read_only};
    if (!host.is_zero()) opts.expected_host = host;
    return open_nvme_device(path, opts);
  }
  return open_file_device(path, {.host = host, .read_only = read_only});
}

}  // namespace sharedfs::device
