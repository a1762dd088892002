#include "dlm/message.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <cstring>
#include <string>

#include "common/types.h"

namespace sharedfs::dlm {

std::string_view message_type_name(MessageType type) {
  switch (type) {
    case MessageType::kAck:
      return "ack";
    case MessageType::kRequest:
      return "request";
    case MessageType::kReply:
      return "reply";
    case MessageType::kBlocking:
      return "blocking";
    case MessageType::kReport:
      return "report";
    case MessageType::kRecord:
      return "record";
    case MessageType::kReportsDone:
      return "reports-done";
    case MessageType::kHeartbeat:
      return "heartbeat";
    case MessageType::kRangeRequest:
      return "range-request";
    case MessageType::kRangeReply:
      return "range-reply";
    case MessageType::kRangeReport:
      return "range-report";
    case MessageType::kQuery:
      return "query";
    case MessageType::kQueryReply:
      return "query-reply";
  }
  return "?";
}

namespace {

constexpr uint8_t kNoMode = 0xFF;

class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(static_cast<std::byte>(v)); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) u8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) u8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  void name(const ResourceName& n) {
    u8(n.type);
    u64(n.id);
    bytes(n.tag.data(), n.tag.size());
  }
  void lvb(const LockValueBlock& v) {
    bytes(v.bytes.data(), v.bytes.size());
    u8(v.valid ? 1 : 0);
    u64(v.seq);
  }
  void member(const Member& m) {
    u32(m.id.value);
    u64(m.incarnation);
  }
  void members(const std::vector<Member>& ms) {
    SHAREDFS_CHECK(ms.size() <= kMaxListedMembers, "member list too long to encode");
    u8(static_cast<uint8_t>(ms.size()));
    for (const Member& m : ms) member(m);
  }
  void range(const RecordLock& r) {
    u8(r.write ? 1 : 0);
    u64(r.start);
    u64(r.end);
    u64(r.owner);
    u32(r.pid);
    u32(r.node);
  }
  void optional_range(const std::optional<RecordLock>& r) {
    u8(r ? 1 : 0);
    if (r) range(*r);
  }
  void text(const std::string& t) {
    SHAREDFS_CHECK(t.size() <= kMaxQueryText, "query text too long to encode");
    u32(static_cast<uint32_t>(t.size()));
    bytes(t.data(), t.size());
  }

 private:
  std::vector<std::byte>& out_;
};

// Reads little-endian fields; the first read past the end sets `ok_` false and every later
// read returns zeros, so decoders check once at the end.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == in_.size(); }
  void fail() { ok_ = false; }
  uint8_t u8() {
    if (!need(1)) return 0;
    return static_cast<uint8_t>(in_[pos_++]);
  }
  uint32_t u32() {
    if (!need(4)) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(in_[pos_++]) << (8 * i);
    return v;
  }
  uint64_t u64() {
    if (!need(8)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(in_[pos_++]) << (8 * i);
    return v;
  }
  void bytes(void* p, size_t n) {
    if (!need(n)) return;
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
  }
  bool flag() {
    const uint8_t v = u8();
    if (v > 1) ok_ = false;
    return v == 1;
  }
  LockMode mode() {
    const uint8_t v = u8();
    if (v > static_cast<uint8_t>(LockMode::kEX)) ok_ = false;
    return static_cast<LockMode>(v);
  }
  ResourceName name() {
    ResourceName n;
    n.type = u8();
    n.id = u64();
    bytes(n.tag.data(), n.tag.size());
    return n;
  }
  LockValueBlock lvb() {
    LockValueBlock v;
    bytes(v.bytes.data(), v.bytes.size());
    v.valid = flag();
    v.seq = u64();
    return v;
  }
  Member member() {
    Member m;
    m.id = NodeId(u32());
    m.incarnation = u64();
    return m;
  }
  std::vector<Member> members() {
    const uint8_t n = u8();
    std::vector<Member> ms;
    if (!need(size_t{n} * 12)) return ms;
    ms.reserve(n);
    for (uint8_t i = 0; i < n; ++i) ms.push_back(member());
    return ms;
  }
  RecordLock range() {
    RecordLock l;
    l.write = flag();
    l.start = u64();
    l.end = u64();
    l.owner = u64();
    l.pid = u32();
    l.node = u32();
    if (l.end < l.start) ok_ = false;
    return l;
  }
  std::optional<RecordLock> optional_range() {
    if (!flag()) return std::nullopt;
    return range();
  }
  std::string text() {
    const uint32_t n = u32();
    if (n > kMaxQueryText || !need(n)) {
      ok_ = false;
      return {};
    }
    std::string t(n, '\0');
    bytes(t.data(), n);
    return t;
  }

 private:
  bool need(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    return true;
  }
  std::span<const std::byte> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// The fields a request and a report of it (at recovery) share, in this order.
void write_request_fields(const Message& m, Writer& w) {
  w.u64(m.lock_id);
  w.u64(m.req_id);
  w.name(m.name);
  w.u8(static_cast<uint8_t>(m.op));
  w.u8(m.flags);
  w.u8(static_cast<uint8_t>(m.mode));
}

void write_body(const Message& m, Writer& w) {
  switch (m.type) {
    case MessageType::kAck:
      break;
    case MessageType::kRequest:
      write_request_fields(m, w);
      w.u8(m.has_lvb ? 1 : 0);
      if (m.has_lvb) w.lvb(m.lvb);
      break;
    case MessageType::kReply:
      w.u64(m.lock_id);
      w.u64(m.req_id);
      w.u8(static_cast<uint8_t>(m.result));
      w.u8(static_cast<uint8_t>(m.mode));
      w.lvb(m.lvb);
      break;
    case MessageType::kBlocking:
      w.u64(m.lock_id);
      w.u8(static_cast<uint8_t>(m.mode));
      break;
    case MessageType::kReport:
      write_request_fields(m, w);
      w.u8(m.granted ? static_cast<uint8_t>(*m.granted) : kNoMode);
      w.u8(m.has_lvb ? 1 : 0);
      w.lvb(m.lvb);
      break;
    case MessageType::kRecord:
      w.name(m.name);
      w.lvb(m.lvb);
      w.u8(m.ex_holder ? 1 : 0);
      if (m.ex_holder) w.member(*m.ex_holder);
      w.members(m.members);
      break;
    case MessageType::kReportsDone:
      w.members(m.members);
      w.members(m.replayed);
      break;
    case MessageType::kHeartbeat:
      w.u8(m.flags);
      w.members(m.members);
      w.members(m.replayed);
      break;
    case MessageType::kRangeRequest:
      w.u64(m.req_id);
      w.name(m.name);
      w.u8(static_cast<uint8_t>(m.op));
      w.u8(m.flags);
      w.optional_range(m.range);
      break;
    case MessageType::kRangeReply:
      w.u64(m.req_id);
      w.u8(static_cast<uint8_t>(m.result));
      w.optional_range(m.range);
      break;
    case MessageType::kRangeReport:
      w.name(m.name);
      w.optional_range(m.range);
      break;
    case MessageType::kQuery:
    case MessageType::kQueryReply:
      w.u64(m.req_id);
      w.text(m.text);
      break;
  }
}

Op read_op(Reader& r, Op last = Op::kUnlock) {
  const uint8_t v = r.u8();
  if (v > static_cast<uint8_t>(last)) r.fail();
  return static_cast<Op>(v);
}

void read_request_fields(Message& m, Reader& r) {
  m.lock_id = r.u64();
  m.req_id = r.u64();
  m.name = r.name();
  m.op = read_op(r);
  m.flags = r.u8();
  m.mode = r.mode();
}

void read_body(Message& m, Reader& r) {
  switch (m.type) {
    case MessageType::kAck:
      break;
    case MessageType::kRequest:
      read_request_fields(m, r);
      if (m.op == Op::kNone) r.fail();  // a report may carry no operation, a request not
      m.has_lvb = r.flag();
      if (m.has_lvb) m.lvb = r.lvb();
      break;
    case MessageType::kReply: {
      m.lock_id = r.u64();
      m.req_id = r.u64();
      const uint8_t res = r.u8();
      if (res > static_cast<uint8_t>(ReplyResult::kDeadlock)) r.fail();
      m.result = static_cast<ReplyResult>(res);
      m.mode = r.mode();
      m.lvb = r.lvb();
      break;
    }
    case MessageType::kBlocking:
      m.lock_id = r.u64();
      m.mode = r.mode();
      break;
    case MessageType::kReport: {
      read_request_fields(m, r);
      const uint8_t g = r.u8();
      if (g == kNoMode) {
        m.granted.reset();
      } else if (g <= static_cast<uint8_t>(LockMode::kEX)) {
        m.granted = static_cast<LockMode>(g);
      } else {
        r.fail();
      }
      m.has_lvb = r.flag();
      m.lvb = r.lvb();
      break;
    }
    case MessageType::kRecord:
      m.name = r.name();
      m.lvb = r.lvb();
      if (r.flag()) m.ex_holder = r.member();
      m.members = r.members();
      break;
    case MessageType::kReportsDone:
      m.members = r.members();
      m.replayed = r.members();
      break;
    case MessageType::kHeartbeat:
      m.flags = r.u8();
      if ((m.flags & ~kFlagLeaving) != 0) r.fail();
      m.members = r.members();
      m.replayed = r.members();
      break;
    case MessageType::kRangeRequest:
      m.req_id = r.u64();
      m.name = r.name();
      m.op = read_op(r, Op::kCancel);
      if (m.op == Op::kNone || m.op == Op::kConvert) r.fail();
      m.flags = r.u8();
      if ((m.flags & ~kFlagTry) != 0) r.fail();
      m.range = r.optional_range();
      if (!m.range && m.op != Op::kCancel) r.fail();  // only a cancel names no range
      break;
    case MessageType::kRangeReply: {
      m.req_id = r.u64();
      const uint8_t res = r.u8();
      if (res > static_cast<uint8_t>(ReplyResult::kNotGranted)) r.fail();
      m.result = static_cast<ReplyResult>(res);
      m.range = r.optional_range();
      break;
    }
    case MessageType::kRangeReport:
      m.name = r.name();
      m.range = r.optional_range();
      if (!m.range) r.fail();
      break;
    case MessageType::kQuery:
    case MessageType::kQueryReply:
      m.req_id = r.u64();
      m.text = r.text();
      break;
  }
}

}  // namespace

MessageCodec::MessageCodec(std::string_view cluster_secret) {
  hmac_ = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  SHAREDFS_CHECK(hmac_ != nullptr, "OpenSSL has no HMAC");
  keyed_ = EVP_MAC_CTX_new(hmac_);
  SHAREDFS_CHECK(keyed_ != nullptr, "EVP_MAC_CTX_new failed");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  // An empty secret is allowed (tests, a single node) but still goes through the HMAC.
  static const unsigned char kEmpty = 0;
  const auto* key = cluster_secret.empty()
                        ? &kEmpty
                        : reinterpret_cast<const unsigned char*>(cluster_secret.data());
  SHAREDFS_CHECK(EVP_MAC_init(keyed_, key, cluster_secret.size(), params) == 1,
                 "EVP_MAC_init failed");
}

MessageCodec::~MessageCodec() {
  EVP_MAC_CTX_free(keyed_);
  EVP_MAC_free(hmac_);
}

void MessageCodec::mac(std::span<const std::byte> data, uint8_t out[kMacSize]) const {
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_dup(keyed_);
  SHAREDFS_CHECK(ctx != nullptr, "EVP_MAC_CTX_dup failed");
  size_t len = 0;
  const bool ok =
      EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1 &&
      EVP_MAC_final(ctx, out, &len, kMacSize) == 1 && len == kMacSize;
  EVP_MAC_CTX_free(ctx);
  SHAREDFS_CHECK(ok, "HMAC-SHA256 failed");
}

std::vector<std::byte> MessageCodec::encode(const Message& m) const {
  std::vector<std::byte> out;
  out.reserve(kHeaderSize + 96 + m.text.size() + kMacSize);
  Writer w(out);
  w.u32(kMessageMagic);
  w.u8(kMessageVersion);
  w.u8(static_cast<uint8_t>(m.type));
  w.u8(0);
  w.u8(0);
  w.u64(m.epoch);
  w.member(m.from);
  w.u32(m.to.value);
  w.u64(m.seq);
  w.u64(m.ack);
  w.u32(0);  // body length, patched below
  write_body(m, w);
  const auto body_len = static_cast<uint32_t>(out.size() - kHeaderSize);
  for (int i = 0; i < 4; ++i) {
    out[kHeaderSize - 4 + i] = static_cast<std::byte>(body_len >> (8 * i));
  }
  uint8_t tag[kMacSize];
  mac(out, tag);
  w.bytes(tag, kMacSize);
  return out;
}

std::vector<std::byte> MessageCodec::seal(std::span<const std::byte> header_and_body) const {
  std::vector<std::byte> out(header_and_body.begin(), header_and_body.end());
  uint8_t tag[kMacSize];
  mac(header_and_body, tag);
  const auto* t = reinterpret_cast<const std::byte*>(tag);
  out.insert(out.end(), t, t + kMacSize);
  return out;
}

Result<Message> MessageCodec::decode(std::span<const std::byte> bytes) const {
  if (bytes.size() < kHeaderSize + kMacSize) {
    return make_status(Code::kCorruption, "dlm message of {} bytes is shorter than a header",
                       bytes.size());
  }
  Reader h(bytes.first(kHeaderSize));
  if (h.u32() != kMessageMagic) return Status(Code::kCorruption, "not a dlm message (magic)");
  const uint8_t version = h.u8();
  if (version != kMessageVersion) {
    return make_status(Code::kCorruption, "dlm message version {} (we speak {})", version,
                       kMessageVersion);
  }
  Message m;
  const uint8_t type = h.u8();
  if (type < static_cast<uint8_t>(MessageType::kAck) ||
      type > static_cast<uint8_t>(MessageType::kQueryReply)) {
    return make_status(Code::kCorruption, "dlm message of unknown type {}", type);
  }
  m.type = static_cast<MessageType>(type);
  if (h.u8() != 0 || h.u8() != 0) return Status(Code::kCorruption, "dlm header reserved != 0");
  m.epoch = h.u64();
  m.from = h.member();
  m.to = NodeId(h.u32());
  m.seq = h.u64();
  m.ack = h.u64();
  const uint32_t body_len = h.u32();
  if (body_len != bytes.size() - kHeaderSize - kMacSize) {
    return make_status(Code::kCorruption, "dlm body length {} but {} bytes arrived", body_len,
                       bytes.size() - kHeaderSize - kMacSize);
  }
  uint8_t tag[kMacSize];
  mac(bytes.first(bytes.size() - kMacSize), tag);
  if (CRYPTO_memcmp(tag, bytes.data() + bytes.size() - kMacSize, kMacSize) != 0) {
    return Status(Code::kCorruption, "dlm message fails authentication (wrong cluster secret?)");
  }
  Reader r(bytes.subspan(kHeaderSize, body_len));
  read_body(m, r);
  if (!r.ok() || !r.at_end()) {
    return make_status(Code::kCorruption, "malformed dlm {} body", message_type_name(m.type));
  }
  return m;
}

}  // namespace sharedfs::dlm
