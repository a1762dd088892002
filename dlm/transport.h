// dlm/transport.h — how a LockManager's messages reach other nodes.
//
// The DLM state machine never opens a socket: it hands encoded messages to a Transport and
// is handed received ones through LockManager::receive(). The simulator implements this
// interface over a seeded in-memory network; the ZeroMQ transport over tcp.
//
// A transport may drop, delay, duplicate and reorder messages: the LockManager's link layer
// (sequence numbers, acknowledgements, retransmission per epoch) makes up for it.
//
// Thread-safety: send() is called with the LockManager's caller-held serialization; an
// implementation must not call back into the LockManager from send().
#pragma once

#include <cstddef>
#include <vector>

#include "common/types.h"

namespace sharedfs::dlm {

class Transport {
 public:
  virtual ~Transport() = default;
  // Best effort: may return before delivery and may lose the message.
  virtual void send(NodeId to, std::vector<std::byte> bytes) = 0;
};

}  // namespace sharedfs::dlm
