// dlm/message.h — the DLM's wire messages and their versioned binary codec
// (docs/dlm.md, "Messages", describes every byte).
//
// Every message is a fixed header, a body whose layout depends on the type, and an
// HMAC-SHA256 over header and body keyed with the cluster secret. decode() checks length,
// magic, version, type, enum values and the HMAC; anything that fails is an error value,
// never a crash, so a stray or hostile sender can only get its message dropped.
//
// Thread-safety: MessageCodec is immutable after construction; encode/decode may run on
// several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "dlm/lock_service.h"
#include "dlm/membership.h"
#include "dlm/range_table.h"
#include "dlm/resource_name.h"

// OpenSSL's EVP_MAC_CTX and EVP_MAC, by their struct tags: this header does not pull
// OpenSSL into every user of the DLM.
struct evp_mac_ctx_st;
struct evp_mac_st;

namespace sharedfs::dlm {

inline constexpr uint32_t kMessageMagic = 0x4D4C4453;  // "SDLM" little-endian
inline constexpr uint8_t kMessageVersion = 1;
inline constexpr size_t kHeaderSize = 52;
inline constexpr size_t kMacSize = 32;
// Hold and pending lists name departed members; more than this is not a real cluster.
inline constexpr size_t kMaxListedMembers = 255;
// A query's or answer's text: a lock table dump of a busy node fits many times over.
inline constexpr size_t kMaxQueryText = size_t{64} << 20;

enum class MessageType : uint8_t {
  kAck = 1,          // link level: acknowledges everything up to `ack`; no body
  kRequest = 2,      // client -> master: lock, convert or unlock one lock
  kReply = 3,        // master -> client: the outcome of a request
  kBlocking = 4,     // master -> holder: a request that conflicts with your lock waits
  kReport = 5,       // recovery, client -> new master: one lock as the client sees it
  kRecord = 6,       // recovery, old master -> new master: a resource's value block and holds
  kReportsDone = 7,  // recovery: the sender has sent all its reports and records to you
  kHeartbeat = 8,    // membership (dlm/membership_agent.h), outside the link layer: seq 0
  // Range locks (POSIX record locks, dlm/range_table.h), mastered like other resources:
  kRangeRequest = 9,  // client -> master: lock, test, unlock a range, or cancel a wait
  kRangeReply = 10,   // master -> client: the outcome of a lock or test
  kRangeReport = 11,  // recovery, client -> new master: one range this node's owner holds
  // Operator tools (`sharedfs status|locks|top`, tools/control_socket.h), outside the link
  // layer like heartbeats (seq 0, any epoch): best effort, the asker times out.
  kQuery = 12,       // a question, as text (JSON)
  kQueryReply = 13,  // its answer, as text (JSON)
};
std::string_view message_type_name(MessageType type);

// kTest and kCancel: range requests only.
enum class Op : uint8_t { kNone = 0, kLock = 1, kConvert = 2, kUnlock = 3, kTest = 4, kCancel = 5 };

enum class ReplyResult : uint8_t {
  kOk = 0,          // granted (lock, up-convert) or done (down-convert, unlock)
  kNotGranted = 1,  // a try request that could not be granted at once
  kDeadlock = 2,    // an up-convert cancelled to break a conversion deadlock
};

inline constexpr uint8_t kFlagTry = 1;      // Request/Report flags
inline constexpr uint8_t kFlagLeaving = 1;  // Heartbeat flags: journal clean, leaving

// One struct for all types: each type's body uses the fields its comment names.
struct Message {
  // Header.
  MessageType type = MessageType::kAck;
  uint64_t epoch = 0;
  Member from;
  NodeId to;
  uint64_t seq = 0;  // link sequence number, 1, 2, ... per (epoch, sender, receiver); 0: Ack
  uint64_t ack = 0;  // highest sequence number received in order from `to`

  // Request, Reply, Blocking, Report.
  uint64_t lock_id = 0;
  // Request, Reply, Report (the request in progress on that lock); RangeRequest (kCancel:
  // the lock request to cancel), RangeReply; Query and QueryReply (which question).
  uint64_t req_id = 0;
  // Request, Report, Record, RangeRequest, RangeReport.
  ResourceName name;
  // Request, Report, RangeRequest.
  Op op = Op::kNone;
  // Request, Report, Heartbeat, RangeRequest.
  uint8_t flags = 0;
  // RangeRequest (kLock, kTest: the lock wanted; kUnlock: owner and range), RangeReport
  // (a lock held), RangeReply (the lock in the way, if any). `node` travels but the
  // receiver trusts the link's sender instead.
  std::optional<RecordLock> range;
  // Request, Report: the mode asked for. Reply: the mode granted. Blocking: the mode of
  // the request that waits.
  LockMode mode = LockMode::kNL;
  // Report: the mode the client holds, if any.
  std::optional<LockMode> granted;
  // Request (down-convert or unlock from EX), Report: a value block written back.
  bool has_lvb = false;
  // Reply, Record, Report (the client's copy) and Request when has_lvb.
  LockValueBlock lvb;
  // Reply, RangeReply.
  ReplyResult result = ReplyResult::kOk;
  // Record: the EX holder when the old master stopped serving the resource.
  std::optional<Member> ex_holder;
  // Record: departed members whose journals must be replayed before a grant.
  // ReportsDone: departed members whose journals are not replayed yet.
  // Heartbeat: the members of the sender's view (of epoch `epoch`).
  std::vector<Member> members;
  // ReportsDone: the newest replayed incarnation of each node that departed.
  // Heartbeat: the view's clean list (dlm/membership_agent.h).
  std::vector<Member> replayed;
  // Query, QueryReply: the question or the answer.
  std::string text;
};

// Signs and checks messages with HMAC-SHA256 keyed by the cluster secret.
class MessageCodec {
 public:
  explicit MessageCodec(std::string_view cluster_secret);
  ~MessageCodec();
  MessageCodec(const MessageCodec&) = delete;
  MessageCodec& operator=(const MessageCodec&) = delete;

  std::vector<std::byte> encode(const Message& m) const;
  // kCorruption for anything malformed, truncated, of another version or with a bad MAC.
  Result<Message> decode(std::span<const std::byte> bytes) const;
  // `header_and_body` with our MAC appended, whatever it contains: lets the fuzzer reach
  // the body parser behind the authentication.
  std::vector<std::byte> seal(std::span<const std::byte> header_and_body) const;

 private:
  void mac(std::span<const std::byte> data, uint8_t out[kMacSize]) const;
  // The keyed context (EVP_MAC_CTX); each mac() duplicates it so the key schedule is
  // computed once.
  ::evp_mac_ctx_st* keyed_ = nullptr;
  ::evp_mac_st* hmac_ = nullptr;
};

}  // namespace sharedfs::dlm
