// dlm/zmq_transport.h — the DLM's Transport over ZeroMQ (tcp by default, ipc for one host).
//
// Each node binds one PULL socket at its own endpoint and connects one PUSH socket to each
// peer's. send() only appends to a per-peer batch; flush() sends each batch as one ZeroMQ
// message of frames [u32 little-endian length][DLM message] (docs/dlm.md), which divides
// ZeroMQ's per-message cost among everything one driver-loop iteration produced. A
// received batch whose framing does not add up is dropped from the bad frame on and
// counted. Sends never block: a message that ZeroMQ cannot queue (peer not connected yet,
// high-water mark reached) is dropped and counted; the LockManager's links retransmit.
// Messages carry their sender in the DLM header, so sockets need no identities. cppzmq's
// exceptions stay inside this file and become Status values.
//
// Thread-safety: ZeroMQ sockets belong to one thread: call everything from the thread
// that drives the LockManager (DlmNode's).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/types.h"
#include "dlm/transport.h"

namespace sharedfs::dlm {

struct Peer {
  NodeId id;
  std::string endpoint;  // "tcp://127.0.0.1:7001", "ipc:///run/sharedfs/dlm-1"
};

class ZmqTransport final : public Transport {
 public:
  // Binds `self`'s endpoint from `peers` and connects to all the others.
  static Result<std::unique_ptr<ZmqTransport>> open(NodeId self, const std::vector<Peer>& peers);
  ~ZmqTransport() override;

  void send(NodeId to, std::vector<std::byte> bytes) override;
  // Sends what send() batched since the last flush.
  void flush();
  // Waits up to `timeout_ms` for a message or for `wake_fd` (an eventfd; -1: none) to
  // become readable, then hands every queued message to `on_message`.
  Status poll(int timeout_ms, int wake_fd,
              const std::function<void(std::span<const std::byte>)>& on_message);

  uint64_t dropped_sends() const { return dropped_sends_; }
  uint64_t malformed_batches() const { return malformed_batches_; }

 private:
  struct Sockets;
  explicit ZmqTransport(std::unique_ptr<Sockets> sockets);
  std::unique_ptr<Sockets> sockets_;
  uint64_t dropped_sends_ = 0;
  uint64_t malformed_batches_ = 0;
};

}  // namespace sharedfs::dlm
