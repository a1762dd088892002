#include "tools/mount_helper.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

namespace sharedfs::tools {

bool invoked_as_mount_helper(std::string_view argv0) {
  const size_t slash = argv0.rfind('/');
  const std::string_view name = slash == std::string_view::npos ? argv0 : argv0.substr(slash + 1);
  return name == "mount.sharedfs";
}

Result<MountHelperCall> parse_mount_helper_args(const std::vector<std::string>& args) {
  MountHelperCall call;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() < 2 || a[0] != '-') {
      positional.push_back(a);
      continue;
    }
    // Options with a value: "-o VALUE" or "-oVALUE".
    if (a[1] == 'o' || a[1] == 'N' || a[1] == 't') {
      std::string value = a.substr(2);
      if (value.empty()) {
        if (i + 1 == args.size()) {
          return make_status(Code::kInvalidArgument, "option {} needs a value", a);
        }
        value = args[++i];
      }
      if (a[1] == 'o') {
        call.mount.options.push_back(value);
      } else if (a[1] == 'N') {
        call.mount_namespace = value;
      } else if (value != "sharedfs" && value != "fuse.sharedfs") {
        return make_status(Code::kInvalidArgument, "mount.sharedfs mounts sharedfs, not {}", value);
      }
      continue;
    }
    for (char c : a.substr(1)) {
      switch (c) {
        case 'f':
          call.mount.fake = true;
          break;
        case 'v':
          call.verbose = true;
          break;
        case 'n':  // nothing to leave out: mount(8) keeps the mount table, we write none
        case 's':  // sloppy: unknown options are refused by the kernel or FUSE anyway
          break;
        default:
          return make_status(Code::kInvalidArgument, "unknown option -{} (in {})", c, a);
      }
    }
  }
  if (positional.size() != 2) {
    return make_status(Code::kInvalidArgument,
                       "usage: mount.sharedfs DEVICE MOUNTPOINT [-sfnv] [-N NS] "
                       "[-o config=PATH,node=N,...]");
  }
  call.mount.device = positional[0];
  call.mount.mountpoint = positional[1];
  return call;
}

namespace {

// mount -N: the mount is made in that mount namespace; the daemon forked afterwards lives
// there too, as a FUSE daemon must to serve it.
Status enter_mount_namespace(const std::string& ns) {
  const bool pid = ns.find_first_not_of("0123456789") == std::string::npos;
  const std::string path = pid ? "/proc/" + ns + "/ns/mnt" : ns;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "mount namespace " + path);
  const int rc = ::setns(fd, CLONE_NEWNS);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return errno_status(err, "entering mount namespace " + path);
  return Status::ok();
}

}  // namespace

int run_mount_helper(const std::vector<std::string>& args,
                     const std::function<int(const MountArgs&)>& mount) {
  auto call = parse_mount_helper_args(args);
  if (!call) {
    fmt::print(stderr, "mount.sharedfs: {}\n", call.status().to_string());
    return 1;
  }
  if (!call->mount_namespace.empty()) {
    if (Status st = enter_mount_namespace(call->mount_namespace); !st) {
      fmt::print(stderr, "mount.sharedfs: {}\n", st.to_string());
      return 32;
    }
  }
  if (call->verbose) {
    std::string opts;
    for (const auto& o : call->mount.options) opts += (opts.empty() ? "" : ",") + o;
    fmt::print("mount.sharedfs: {}mounting {} on {}{}\n",
               call->mount.fake ? "checking (-f), not " : "", call->mount.device,
               call->mount.mountpoint, opts.empty() ? "" : " with -o " + opts);
  }
  return mount(call->mount) == 0 ? 0 : 32;
}

std::vector<std::string> with_implied_mount(
    std::vector<std::string> words, const std::function<bool(const std::string&)>& is_subcommand) {
  if (words.size() < 3 || words[1].empty() || words[1][0] == '-' || is_subcommand(words[1])) {
    return words;
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(words[2], ec)) return words;
  words.insert(words.begin() + 1, "mount");
  return words;
}

}  // namespace sharedfs::tools
