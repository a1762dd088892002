#include "dlm/zmq_transport.h"

#include <spdlog/spdlog.h>

#include <bit>
#include <zmq.hpp>

namespace sharedfs::dlm {

struct ZmqTransport::Sockets {
  zmq::context_t context{1};
  zmq::socket_t in{context, zmq::socket_type::pull};
  std::map<NodeId, zmq::socket_t> out;
  std::map<NodeId, std::vector<std::byte>> batch;  // framed messages not sent yet
};

// A batch bigger than this is sent at once rather than at the next flush().
constexpr size_t kMaxBatch = 256 * 1024;

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
  if (!sockets_->out.contains(to)) {
    ++dropped_sends_;
    return;
  }
  auto& batch = sockets_->batch[to];
  const auto len = static_cast<uint32_t>(bytes.size());
  for (int i = 0; i < 4; ++i) batch.push_back(static_cast<std::byte>(len >> (8 * i)));
  batch.insert(batch.end(), bytes.begin(), bytes.end());
  if (batch.size() >= kMaxBatch) flush();
}

void ZmqTransport::flush() {
  for (auto& [to, batch] : sockets_->batch) {
    if (batch.empty()) continue;
    try {
      auto sent = sockets_->out.at(to).send(zmq::buffer(batch.data(), batch.size()),
                                            zmq::send_flags::dontwait);
      if (!sent) ++dropped_sends_;
    } catch (const zmq::error_t&) {
      ++dropped_sends_;
    }
    batch.clear();
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
      std::span<const std::byte> rest(static_cast<const std::byte*>(msg.data()), msg.size());
      while (!rest.empty()) {
        uint32_t len = 0;
        if (rest.size() >= 4) {
          for (int b = 0; b < 4; ++b) len |= static_cast<uint32_t>(rest[b]) << (8 * b);
        }
        if (rest.size() < 4 || rest.size() - 4 < len) {
          ++malformed_batches_;  // a stray sender: what follows cannot be framed
          if (std::has_single_bit(malformed_batches_)) {
            spdlog::warn("dlm transport: dropped a badly framed batch ({} so far)",
                         malformed_batches_);
          }
          break;
        }
        on_message(rest.subspan(4, len));
        rest = rest.subspan(4 + len);
      }
    }
    return Status::ok();
  } catch (const zmq::error_t& e) {
    return make_status(Code::kIoError, "zeromq: {}", e.what());
  }
}

}  // namespace sharedfs::dlm
