// `sharedfs mount`: opens the device, mounts the file system and serves it over FUSE.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharedfs::tools {

struct MountArgs {
  std::string device;
  std::string mountpoint;
  bool foreground = false;
  bool debug = false;
  std::vector<std::string> options;  // -o, comma-separated lists allowed
  uint32_t node = 1;                 // node id; its slot is node - 1
  // Cluster config (TOML, cluster/cluster_config.h); empty: the node runs alone. Also
  // given as -o config=PATH (fstab).
  std::string config;
  // Check the arguments, the config and the device, mount nothing (mount -f).
  bool fake = false;
  // Once mounted, write the fstab line that mounts it again into `fstab`
  // (tools/fstab.h); checked before mounting, so that a mount is not left up for nothing.
  bool update_fstab = false;
  std::string fstab = "/etc/fstab";
};

// Returns the process exit code. Without `foreground` the daemon detaches once the mount
// is up, and the calling process exits 0 then, or 1 with the daemon's error (or when the
// mount is up but the fstab could not be updated). Once mounted the daemon tells systemd
// (READY=1, tools/sd_notify.h) when run by a Type=notify unit.
int run_mount(const MountArgs& args);

}  // namespace sharedfs::tools
