#include "tools/control_socket.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

namespace sharedfs::tools {
namespace {

// A request is one short line; anything longer is not one of ours.
constexpr size_t kMaxRequest = 64 * 1024;
// How long the daemon waits for a connected client to send its request.
constexpr int kRequestTimeoutMs = 2000;

Result<sockaddr_un> address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return make_status(Code::kInvalidArgument,
                       "control socket path {} is too long for a Unix socket ({} bytes at most): "
                       "set SHAREDFS_RUN_DIR to a shorter directory",
                       path, sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

int64_t ms_left(std::chrono::steady_clock::time_point deadline) {
  return std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                  deadline - std::chrono::steady_clock::now())
                                  .count());
}

// Writes all of `data` (the peer may read slowly); false when the peer went away.
bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

std::string run_dir() {
  const char* dir = std::getenv("SHAREDFS_RUN_DIR");
  return dir != nullptr && *dir != '\0' ? std::string(dir) : std::string("/run/sharedfs");
}

std::string control_socket_path(uint64_t cluster_id, uint32_t node) {
  return fmt::format("{}/cluster-{}/node-{}.sock", run_dir(), cluster_id, node);
}

namespace {

// The number in `name` between `prefix` and `suffix`, all digits; nullopt otherwise.
std::optional<uint64_t> number_between(const std::string& name, std::string_view prefix,
                                       std::string_view suffix) {
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix)) {
    return std::nullopt;
  }
  const std::string digits =
      name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 20 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) {
    return std::nullopt;
  }
  try {
    return std::stoull(digits);
  } catch (const std::exception&) {
    return std::nullopt;  // above 2^64
  }
}

}  // namespace

std::vector<ControlSocket> find_control_sockets() {
  std::vector<ControlSocket> out;
  std::error_code ec;
  for (const auto& dir : std::filesystem::directory_iterator(run_dir(), ec)) {
    const auto cluster = number_between(dir.path().filename().string(), "cluster-", "");
    if (!dir.is_directory(ec) || !cluster) continue;
    for (const auto& f : std::filesystem::directory_iterator(dir.path(), ec)) {
      const auto node = number_between(f.path().filename().string(), "node-", ".sock");
      if (!node || *node > UINT32_MAX) continue;
      out.push_back({f.path().string(), *cluster, static_cast<uint32_t>(*node)});
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a.cluster_id, a.node) < std::tie(b.cluster_id, b.node);
  });
  return out;
}

Result<std::string> control_request(const std::string& path, const std::string& request,
                                    std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(auto addr, address_of(path));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status(errno, "socket");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    if (err == ECONNREFUSED || err == ENOENT) {
      return make_status(Code::kNotFound, "no daemon answers on {} (stale socket?)", path);
    }
    return errno_status(err, fmt::format("connecting to {}", path));
  }
  if (!write_all(fd, request + "\n")) {
    return make_status(Code::kIoError, "{} closed before taking the request", path);
  }
  ::shutdown(fd, SHUT_WR);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string answer;
  char buf[65536];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(ms_left(deadline)));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      return make_status(Code::kBusy, "the daemon on {} did not answer within {} ms", path,
                         timeout.count());
    }
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_status(errno, fmt::format("reading from {}", path));
    if (n == 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  return answer;
}

Result<std::string> ask_any_daemon(std::optional<uint64_t> cluster_id, const std::string& request,
                                   std::chrono::milliseconds timeout) {
  auto sockets = find_control_sockets();
  if (!cluster_id) {
    std::set<uint64_t> ids;
    for (const auto& s : sockets) ids.insert(s.cluster_id);
    if (ids.size() > 1) {
      return make_status(Code::kInvalidArgument,
                         "daemons of {} clusters run here (ids {}): name one with --config",
                         ids.size(), fmt::join(ids, ", "));
    }
  }
  Status last =
      make_status(Code::kNotFound,
                  "no sharedfs daemon{} runs on this host (no control socket under {}): "
                  "mount a node here first, or run the command where one is mounted",
                  cluster_id ? fmt::format(" of cluster {}", *cluster_id) : "", run_dir());
  for (const auto& s : sockets) {
    if (cluster_id && s.cluster_id != *cluster_id) continue;
    auto answer = control_request(s.path, request, timeout);
    if (answer) return answer;
    last = answer.status();
  }
  return last;
}

Result<std::unique_ptr<ControlServer>> ControlServer::start(std::string path, Handler handler) {
  ASSIGN_OR_RETURN(auto addr, address_of(path));
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) {
    return make_status(Code::kIoError, "creating {}: {}",
                       std::filesystem::path(path).parent_path().string(), ec.message());
  }
  // A socket file left by a daemon that died is replaced; a live one is not.
  if (std::filesystem::exists(path, ec)) {
    auto probe = control_request(path, R"({"query": "ping"})", std::chrono::milliseconds(500));
    if (probe.is_ok()) {
      return make_status(Code::kBusy, "another daemon answers on {}: is this node mounted twice?",
                         path);
    }
    std::filesystem::remove(path, ec);
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return errno_status(errno, "socket");
  const mode_t old = ::umask(0077);  // root's tools only: the answers describe the cluster
  const int b = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::umask(old);
  if (b != 0 || ::listen(fd, 16) != 0) {
    ::close(fd);
    return errno_status(b != 0 ? err : errno, fmt::format("listening on {}", path));
  }
  const int stop = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop < 0) {
    ::close(fd);
    return errno_status(errno, "eventfd");
  }
  return std::unique_ptr<ControlServer>(
      new ControlServer(std::move(path), fd, stop, std::move(handler)));
}

ControlServer::ControlServer(std::string path, int listen_fd, int stop_fd, Handler handler)
    : path_(std::move(path)),
      listen_fd_(listen_fd),
      stop_fd_(stop_fd),
      handler_(std::move(handler)),
      thread_([this] { run(); }) {}

ControlServer::~ControlServer() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_fd_, &one, sizeof one);
  thread_.join();
  ::close(listen_fd_);
  ::close(stop_fd_);
  std::error_code ec;
  std::filesystem::remove(path_, ec);
  std::filesystem::remove(std::filesystem::path(path_).parent_path(), ec);  // only if empty
}

void ControlServer::run() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("control socket {}: poll: {}", path_, std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;  // EAGAIN, a client that went away, EMFILE: try again later
    serve(fd);
    ::close(fd);
  }
}

// One request: read a line (bounded in size and time), answer, close.
void ControlServer::serve(int fd) {
  std::string request;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kRequestTimeoutMs);
  char buf[4096];
  while (request.find('\n') == std::string::npos && request.size() < kMaxRequest) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(ms_left(deadline)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  if (const auto nl = request.find('\n'); nl != std::string::npos) request.resize(nl);
  (void)write_all(fd, handler_(request));
}

}  // namespace sharedfs::tools
