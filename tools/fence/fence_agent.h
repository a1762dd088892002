// tools/fence/ — fence_sharedfs, a fence agent for NVMe namespaces (and for image files and
// loop devices with sharedfs's emulated reservations), for Pacemaker's fencer.
//
// It speaks the fence-agents protocol (ClusterLabs fence-agents, lib/fencing.py): options
// as "name=value" lines on standard input, or as long/short options on the command line;
// exit 0 on success, 1 on failure, and for `status` 0 = ON (the node's key is registered),
// 2 = OFF. Like fence_scsi it is a fabric-fencing agent: `off` cuts the node off the shared
// device (preempt-and-abort of its reservation key), `on` (unfence, run on the node itself)
// registers it again; there is no reboot. Keys are fence_scsi's (see
// device::node_reservation_key and docs/pacemaker.md).
//
// Thread-safety: none needed; one action per process. Nothing here throws.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "device/device.h"

namespace sharedfs::fence {

// Exit codes of fence-agents.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitStatusOff = 2;  // `status` of a node that is fenced

inline constexpr std::string_view kDefaultConfig = "/etc/sharedfs/cluster.toml";

struct AgentOptions {
  std::string action = "off";  // fabric fencing: no reboot, off is the default
  // Shared devices (comma or space separated in the input): /dev/nvmeXnY namespaces, or
  // image files / loop devices with emulated reservations.
  std::vector<std::string> devices;
  // The node to act on: its name in the cluster config or its node id. Pacemaker passes
  // it as port (or plug); nodename overrides it, as in fence_scsi.
  std::string plug;
  // An explicit key instead of the one derived from the config ("d6e40003", "0x..."):
  // for keys registered by fence_scsi's key_value=hash or by hand.
  std::optional<device::ReservationKey> key;
  // The sharedfs cluster config (cluster/cluster_config.h): cluster name (keys), cluster id
  // (emulated Host IDs) and node names. Empty: kDefaultConfig when that file exists.
  std::string config;
  // The node this agent runs on (name or id). Default: the config's node named like this
  // host. Needed on image files (the emulated Host ID), and by `off` when this host has no
  // key on the device yet.
  std::string local_node;
  int delay_seconds = 0;  // wait before `off` (two-node clusters: let one side win)
  bool verbose = false;
  bool help = false;
  bool version = false;
  // Unknown names on standard input are ignored with a warning (Pacemaker passes more than
  // an agent knows); the warnings are kept here for the caller to print.
  std::vector<std::string> warnings;
};

// "name=value" lines; '#' starts a comment line; '-' and '_' in names are alike; a value
// in double quotes loses them. Aliases: port and nodename for plug, option for action.
Result<AgentOptions> parse_stdin_options(std::string_view text);
// -o/--action, -d/--devices, -n/--plug, -k/--key, -c/--config, --local-node, --delay,
// -v/--verbose, -h/--help, -V/--version; "--name=value" or "--name value". Unknown
// options are an error here (a typo on a command line is the operator's to fix).
Result<AgentOptions> parse_command_line(const std::vector<std::string>& args);

// The agent's metadata, in fence-agents' XML format (Pacemaker's `stonith_admin
// --metadata`, `pcs stonith describe`).
std::string metadata_xml();
std::string usage_text();

struct AgentResult {
  int exit_code = kExitOk;
  std::string out;  // what the agent prints on standard output ("Status: ON", "Success: ...")
  std::string err;  // log lines for standard error ("Failed: ...")
};

// Runs opts.action: on, off (enable/disable are fence-agents' aliases), status, monitor,
// list, list-status, validate-all, metadata (meta-data).
AgentResult run_agent(const AgentOptions& opts);

}  // namespace sharedfs::fence
