#include "dlm/zmq_transport.h"

#include <zmq.hpp>

namespace sharedfs::dlm {

struct ZmqTransport::Sockets {
  zmq::context_t context{1};
  zmq::socket_t in{context, zmq::socket_type::pull};
  std::map<NodeId, zmq::socket_t> out;
};

ZmqTransport::ZmqTransport(std::unique_ptr<Sockets> sockets) : sockets_(std::move(sockets)) {}

ZmqTransport::~ZmqTransport() = default;

Result<std::unique_ptr<ZmqTransport>> ZmqTransport::open(NodeId self,
                                                         const std::vector<Peer>& peers) {
  try {
    auto s = std::make_unique<Sockets>();
    bool bound = false;
    for (const Peer& p : peers) {
      if (p.id == self) {
        s->in.set(zmq::sockopt::linger, 0);
        s->in.bind(p.endpoint);
        bound = true;
        continue;
      }
      zmq::socket_t out(s->context, zmq::socket_type::push);
      out.set(zmq::sockopt::linger, 0);
      // Queue nothing for a peer that is not connected: a dead peer must not fill memory,
      // and the links retransmit anyway.
      out.set(zmq::sockopt::immediate, 1);
      out.set(zmq::sockopt::sndhwm, 10000);
      out.set(zmq::sockopt::reconnect_ivl, 20);
      out.connect(p.endpoint);
      s->out.emplace(p.id, std::move(out));
    }
    if (!bound) {
      return make_status(Code::kInvalidArgument, "node {} has no endpoint in the peer list",
                         self.value);
    }
    return std::unique_ptr<ZmqTransport>(new ZmqTransport(std::move(s)));
  } catch (const zmq::error_t& e) {
    return make_status(Code::kIoError, "zeromq: {}", e.what());
  }
}

void ZmqTransport::send(NodeId to, std::vector<std::byte> bytes) {
  auto it = sockets_->out.find(to);
  if (it == sockets_->out.end()) {
    ++dropped_sends_;
    return;
  }
  try {
    auto sent = it->second.send(zmq::buffer(bytes.data(), bytes.size()), zmq::send_flags::dontwait);
    if (!sent) ++dropped_sends_;
  } catch (const zmq::error_t&) {
    ++dropped_sends_;
  }
}

Status ZmqTransport::poll(int timeout_ms, int wake_fd,
                          const std::function<void(std::span<const std::byte>)>& on_message) {
  try {
    zmq_pollitem_t items[2] = {{sockets_->in.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd, ZMQ_POLLIN, 0}};
    zmq::poll(items, wake_fd >= 0 ? 2 : 1, std::chrono::milliseconds(timeout_ms));
    if ((items[0].revents & ZMQ_POLLIN) == 0) return Status::ok();
    zmq::message_t msg;
    // Bounded, so a flood cannot starve the caller's other work (ticks, posted calls).
    for (int i = 0; i < 1024; ++i) {
      auto got = sockets_->in.recv(msg, zmq::recv_flags::dontwait);
      if (!got) break;
      on_message(std::span(static_cast<const std::byte*>(msg.data()), msg.size()));
    }
    return Status::ok();
  } catch (const zmq::error_t& e) {
    return make_status(Code::kIoError, "zeromq: {}", e.what());
  }
}

}  // namespace sharedfs::dlm
