// The two ways mount(8) runs sharedfs, both turned into `sharedfs mount` (tools/mount_command.h):
//
// - type fuse.sharedfs (an fstab line, or mount -t fuse.sharedfs): mount(8) runs
//   mount.fuse3, which drops _netdev, user, nofail, auto and noauto, adds dev,suid and runs
//   `sharedfs DEVICE MOUNTPOINT -o OPTIONS` through /bin/sh -c with PATH unset, so sharedfs
//   must be in the shell's default path (/usr/local/sbin ... /sbin). with_implied_mount
//   makes that command line mean `sharedfs mount ...`.
// - type sharedfs (mount -t sharedfs, or that type in fstab): mount(8) runs
//   `/sbin/mount.sharedfs DEVICE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`;
//   mount.sharedfs is a symbolic link to sharedfs, recognised by its name.
//
// Either way the options carry config=PATH and node=N, as --config and --node.
//
// Thread-safety: run_mount_helper forks (a daemon, as `sharedfs mount`): call it from a
// process that has not started threads.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tools/mount_command.h"

namespace sharedfs::tools {

// Whether the program runs as mount(8)'s helper: its name (argv[0], any directory) is
// mount.sharedfs.
bool invoked_as_mount_helper(std::string_view argv0);

struct MountHelperCall {
  MountArgs mount;       // always detaching: the helper returns once mounted, as mount(8) expects
  bool verbose = false;  // -v: say what is mounted
  std::string mount_namespace;  // -N: a /proc/PID/ns/mnt path or a pid; empty: ours
};

// Parses the words after argv[0] in mount(8)'s helper convention. -f (fake) sets
// mount.fake; -n (no mtab: there is none to write) and -s (sloppy) are accepted; -t must
// name sharedfs.
Result<MountHelperCall> parse_mount_helper_args(const std::vector<std::string>& args);

// Runs the helper, mounting with `mount` (run_mount; a parameter so that this module does
// not pull in the daemon); returns mount(8)'s exit codes: 0 mounted, 1 bad usage, 32 the
// mount failed.
int run_mount_helper(const std::vector<std::string>& args,
                     const std::function<int(const MountArgs&)>& mount);

// `sharedfs DEVICE MOUNTPOINT [OPTIONS]` (no subcommand, as mount.fuse3 runs it) means
// `sharedfs mount DEVICE MOUNTPOINT [OPTIONS]`: returns `words` (argv) with "mount"
// inserted after the program name when words[1] is neither an option nor a subcommand
// (is_subcommand) and words[2] is an existing directory; otherwise `words` unchanged, so
// a mistyped subcommand still gets the parser's error.
std::vector<std::string> with_implied_mount(
    std::vector<std::string> words, const std::function<bool(const std::string&)>& is_subcommand);

}  // namespace sharedfs::tools
