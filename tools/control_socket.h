// tools/control_socket.h — how the operator's commands (`sharedfs status|locks|top`) talk to
// the daemons on this host.
//
// Each mounted daemon listens on a Unix stream socket,
// <run dir>/cluster-<id>/node-<N>.sock (run dir: /run/sharedfs, or $SHAREDFS_RUN_DIR).
// A client connects, writes one request (a JSON object on one line) and reads the answer
// (one JSON object) until the daemon closes the connection. Only root (the socket is mode
// 0600) may ask. Requests and answers are in docs/operations.md.
//
// Thread-safety: ControlServer runs its own thread; the handler is called on it, one
// request at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace sharedfs::tools {

// /run/sharedfs, or $SHAREDFS_RUN_DIR (tests).
std::string run_dir();
std::string control_socket_path(uint64_t cluster_id, uint32_t node);

// A daemon's socket found on this host.
struct ControlSocket {
  std::string path;
  uint64_t cluster_id = 0;
  uint32_t node = 0;
};
// Every control socket under run_dir(), whether or not a daemon still answers on it.
std::vector<ControlSocket> find_control_sockets();

// Sends `request` (one line, no newline needed) and returns the whole answer. kNotFound
// when nobody listens (a daemon that is gone left its socket file behind), kBusy when the
// daemon does not answer within `timeout`.
Result<std::string> control_request(const std::string& path, const std::string& request,
                                    std::chrono::milliseconds timeout);

// Sends `request` to a daemon of this host that answers: one of cluster `cluster_id`, or
// of the only cluster mounted here when it is nullopt. kNotFound when none answers,
// kInvalidArgument when several clusters are mounted and none was named.
Result<std::string> ask_any_daemon(std::optional<uint64_t> cluster_id, const std::string& request,
                                   std::chrono::milliseconds timeout);

class ControlServer {
 public:
  using Handler = std::function<std::string(const std::string& request)>;
  // Binds `path` (replacing a stale socket file; kBusy if a daemon answers on it).
  static Result<std::unique_ptr<ControlServer>> start(std::string path, Handler handler);
  ~ControlServer();  // stops the thread and removes the socket file
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  const std::string& path() const { return path_; }

 private:
  ControlServer(std::string path, int listen_fd, int stop_fd, Handler handler);
  void run();
  void serve(int fd);

  const std::string path_;
  const int listen_fd_;
  const int stop_fd_;
  Handler handler_;
  std::thread thread_;
};

}  // namespace sharedfs::tools
