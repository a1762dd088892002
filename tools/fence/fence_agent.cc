#include "tools/fence/fence_agent.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <thread>

#include "cluster/cluster_config.h"
#include "cluster/failure_manager.h"

namespace sharedfs::fence {

namespace {

constexpr auto kWero = device::ReservationType::kWriteExclusiveRegistrantsOnly;

Status usage_error(std::string message) {
  return Status(Code::kInvalidArgument, std::move(message));
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// fence_scsi takes devices "comma or space separated".
std::vector<std::string> split_devices(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

bool truthy(std::string_view v) {
  std::string s(v);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s == "1" || s == "yes" || s == "on" || s == "true";
}

std::optional<uint32_t> parse_u32(std::string_view s) {
  uint32_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// Sets the option `name` (already canonical: '_' for '-'). Returns false for a name the
// agent does not know. `nodename` is kept aside: it overrides plug whatever the order.
Result<bool> apply_option(AgentOptions& o, std::optional<std::string>& nodename,
                          const std::string& name, std::string_view value) {
  if (name == "action" || name == "option") {
    o.action = std::string(trim(value));
  } else if (name == "devices") {
    o.devices = split_devices(value);
  } else if (name == "plug" || name == "port") {
    o.plug = std::string(trim(value));
  } else if (name == "nodename") {
    nodename = std::string(trim(value));
  } else if (name == "key") {
    auto k = device::parse_reservation_key(trim(value));
    if (!k) {
      return usage_error(fmt::format(
          "Failed: key '{}' is not a reservation key (hex digits, as fence_scsi's \"d6e40003\", "
          "not zero)",
          value));
    }
    o.key = *k;
  } else if (name == "config") {
    o.config = std::string(trim(value));
  } else if (name == "local_node") {
    o.local_node = std::string(trim(value));
  } else if (name == "delay") {
    auto d = parse_u32(trim(value));
    if (!d) return usage_error(fmt::format("Failed: delay '{}' is not a number of seconds", value));
    o.delay_seconds = static_cast<int>(*d);
  } else if (name == "verbose") {
    o.verbose = truthy(value);
  } else if (name == "help") {
    o.help = truthy(value);
  } else if (name == "version") {
    o.version = truthy(value);
  } else {
    return false;
  }
  return true;
}

std::string canonical_name(std::string_view name) {
  std::string n(trim(name));
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

// ----- what an action needs: config, keys, nodes, devices

struct Context {
  const AgentOptions& opts;
  std::optional<cluster::ClusterConfig> config;
  AgentResult result;

  void log(const std::string& line) { result.err += line + "\n"; }
  void verbose(const std::string& line) {
    if (opts.verbose) log(line);
  }
};

int failed(Context& ctx, const std::string& message) {
  ctx.log(message);
  return kExitError;
}

Result<std::optional<cluster::ClusterConfig>> load_config(const AgentOptions& o) {
  std::string path = o.config;
  if (path.empty()) {
    // Without config= the standard place is used only when it is there: an agent given
    // key= (and an NVMe device) needs no config at all.
    std::error_code ec;
    if (!std::filesystem::exists(kDefaultConfig, ec)) {
      return std::optional<cluster::ClusterConfig>();
    }
    path = kDefaultConfig;
  }
  auto cfg = cluster::load_cluster_config(path);
  if (!cfg) return cfg.status().with_context("Failed: reading the cluster config");
  return std::optional<cluster::ClusterConfig>(std::move(*cfg));
}

// "host-a" matches "host-a" and "host-a.example.com" (Pacemaker may know nodes by either).
bool same_host_name(std::string_view a, std::string_view b) {
  if (a == b) return true;
  auto shorten = [](std::string_view s) { return s.substr(0, s.find('.')); };
  return shorten(a) == shorten(b);
}

// A node given by id or by its name in the config.
Result<uint32_t> resolve_node(const Context& ctx, const std::string& text) {
  if (auto id = parse_u32(text)) {
    if (*id == 0) return usage_error("Failed: node id 0 does not exist (ids start at 1)");
    if (ctx.config && ctx.config->node(*id) == nullptr) {
      return usage_error(fmt::format("Failed: node {} is not in the config of cluster '{}'", *id,
                                     ctx.config->name));
    }
    return *id;
  }
  if (!ctx.config) {
    return usage_error(fmt::format(
        "Failed: '{}' is a node name; mapping it to a node id needs the cluster config (config=)",
        text));
  }
  for (const auto& n : ctx.config->nodes) {
    if (same_host_name(n.name, text)) return n.id;
  }
  return usage_error(
      fmt::format("Failed: no node named '{}' in the config of cluster '{}' (names: see "
                  "`fence_sharedfs -o list`, or use the node id)",
                  text, ctx.config->name));
}

// The key of the node acted on: key=, or the node's key in fence_scsi's scheme.
Result<device::ReservationKey> target_key(const Context& ctx) {
  if (ctx.opts.key) return *ctx.opts.key;
  if (ctx.opts.plug.empty()) return usage_error("Failed: nodename or key is required");
  ASSIGN_OR_RETURN(const uint32_t id, resolve_node(ctx, ctx.opts.plug));
  if (!ctx.config) {
    return usage_error(
        "Failed: a node's key derives from the cluster name in the cluster config: give config= "
        "(or key=)");
  }
  return device::node_reservation_key(ctx.config->name, id);
}

// The node this agent runs on, when it can be told: local_node=, or the config's node
// named like this host.
Result<std::optional<uint32_t>> local_node(const Context& ctx) {
  if (!ctx.opts.local_node.empty()) {
    ASSIGN_OR_RETURN(const uint32_t id, resolve_node(ctx, ctx.opts.local_node));
    return std::optional<uint32_t>(id);
  }
  if (!ctx.config) return std::optional<uint32_t>();
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) return std::optional<uint32_t>();
  for (const auto& n : ctx.config->nodes) {
    if (same_host_name(n.name, host)) return std::optional<uint32_t>(n.id);
  }
  return std::optional<uint32_t>();
}

// Opens `path` to issue reservation commands as this host. An NVMe namespace speaks for the
// controller's Host ID; the emulated reservations of an image file need to be told which
// node's host we are.
Result<device::OpenDevice> open_as_host(const Context& ctx, const std::string& path,
                                        std::optional<uint32_t> node) {
  if (device::is_nvme_path(path)) return device::open_device(path, {}, /*read_only=*/false);
  if (!node || !ctx.config) {
    return usage_error(fmt::format(
        "Failed: {} has emulated reservations (it is not an NVMe namespace), where the agent acts "
        "as a node's emulated host: give config= and local_node= (the node it runs on)",
        path));
  }
  return device::open_device(path, device::node_host_id(path, ctx.config->id, *node),
                             /*read_only=*/false);
}

// Whether `key` is registered on each device.
Result<std::vector<bool>> registered_on(const Context& ctx, device::ReservationKey key) {
  std::vector<bool> out;
  for (const auto& path : ctx.opts.devices) {
    auto dev = device::open_device(path, {}, /*read_only=*/true);
    if (!dev) return dev.status().with_context(fmt::format("Failed: opening {}", path));
    auto rep = dev->reservations->report();
    if (!rep) {
      return rep.status().with_context(fmt::format("Failed: reservation report of {}", path));
    }
    out.push_back(rep->find_key(key) != nullptr);
  }
  return out;
}

Status need_devices(const Context& ctx) {
  if (ctx.opts.devices.empty()) {
    return usage_error("Failed: no devices given (devices=/dev/nvme0n1[,...])");
  }
  return Status::ok();
}

// ----- actions

int action_status(Context& ctx) {
  auto key = target_key(ctx);
  if (!key) return failed(ctx, key.status().message());
  auto on = registered_on(ctx, *key);
  if (!on) return failed(ctx, on.status().to_string());
  // ON while the key is left on any device: the fence is not complete until it is gone
  // from all of them (fence_scsi's rule).
  const bool any = std::find(on->begin(), on->end(), true) != on->end();
  ctx.result.out += any ? "Status: ON\n" : "Status: OFF\n";
  return any ? kExitOk : kExitStatusOff;
}

// Unfence: register the key of the host the agent runs on (Pacemaker runs `on` on the
// node being unfenced: on_target in the metadata) and make sure the device holds the
// cluster's reservation.
int action_on(Context& ctx) {
  auto key = target_key(ctx);
  if (!key) return failed(ctx, key.status().message());
  auto local = local_node(ctx);
  if (!local) return failed(ctx, local.status().message());
  std::optional<uint32_t> node = *local;
  if (!ctx.opts.plug.empty()) {
    auto target = resolve_node(ctx, ctx.opts.plug);
    if (!target) return failed(ctx, target.status().message());
    if (node && *node != *target) {
      ctx.log(fmt::format(
          "Failed: `on` registers the host it runs on, which is node {}, not node {}: run it on "
          "node {} (Pacemaker does: the action is on_target)",
          *node, *target, *target));
      return kExitError;
    }
    node = *target;
  }
  auto before = registered_on(ctx, *key);
  if (!before) return failed(ctx, before.status().to_string());
  if (std::find(before->begin(), before->end(), false) == before->end()) {
    ctx.result.out += "Success: Already ON\n";
    return kExitOk;
  }
  int failures = 0;
  for (const auto& path : ctx.opts.devices) {
    auto dev = open_as_host(ctx, path, node);
    Status st = dev ? cluster::register_node(*dev->reservations, *key) : dev.status();
    if (!st) {
      ctx.log(fmt::format("Failed: registering key {:#x} on {}: {}", *key, path, st.to_string()));
      ++failures;
      continue;
    }
    ctx.verbose(fmt::format("registered key {:#x} on {} as host {}", *key, path,
                            dev->reservations->host_id().to_string()));
  }
  auto after = registered_on(ctx, *key);
  if (!after) return failed(ctx, after.status().to_string());
  if (failures > 0 || std::find(after->begin(), after->end(), false) != after->end()) {
    ctx.log(fmt::format("Failed: key {:#x} is not registered on every device", *key));
    return kExitError;
  }
  ctx.result.out += "Success: Powered ON\n";
  return kExitOk;
}

// Fences the victim on one device: preempt-and-abort of its key by this host's key, which
// the device only accepts from a registered host. Once it returns, no write of the victim
// lands (the controller aborts its commands; the emulation checks every write).
Status fence_on_device(Context& ctx, const std::string& path, std::optional<uint32_t> local,
                       device::ReservationKey victim) {
  ASSIGN_OR_RETURN(auto dev, open_as_host(ctx, path, local));
  device::Reservations& resv = *dev.reservations;
  ASSIGN_OR_RETURN(auto rep, resv.report());
  if (rep.find_key(victim) == nullptr) return Status::ok();
  std::optional<device::ReservationKey> mine;
  for (const auto& r : rep.registrants) {
    if (r.host == resv.host_id()) mine = r.key;
  }
  if (!mine) {
    if (!local || !ctx.config) {
      return usage_error(fmt::format(
          "Failed: this host ({}) has no key on {}, and the device takes a preempt only from a "
          "registered host: unfence this node first (`on`, or mount sharedfs here), or give "
          "config= and local_node= so that the agent registers this node's key",
          resv.host_id().to_string(), path));
    }
    mine = device::node_reservation_key(ctx.config->name, *local);
    RETURN_IF_ERROR(cluster::register_node(resv, *mine));
    ctx.verbose(fmt::format("registered this node's key {:#x} on {} to fence", *mine, path));
    ASSIGN_OR_RETURN(rep, resv.report());
  }
  if (*mine == victim) {
    return usage_error("Failed: keys cannot be same. You can not fence yourself.");
  }
  // Without a reservation every host may write, registered or not: take it first, or the
  // preempt would cut nobody off.
  if (rep.type == device::ReservationType::kNone) (void)resv.acquire(*mine, kWero);
  RETURN_IF_ERROR(resv.preempt_and_abort(*mine, victim, kWero));
  ctx.verbose(
      fmt::format("preempt-and-abort of key {:#x} on {} by key {:#x}", victim, path, *mine));
  return Status::ok();
}

int action_off(Context& ctx) {
  auto key = target_key(ctx);
  if (!key) return failed(ctx, key.status().message());
  auto local = local_node(ctx);
  if (!local) return failed(ctx, local.status().message());
  auto before = registered_on(ctx, *key);
  if (!before) return failed(ctx, before.status().to_string());
  if (std::find(before->begin(), before->end(), true) == before->end()) {
    ctx.result.out += "Success: Already OFF\n";
    return kExitOk;
  }
  if (ctx.opts.delay_seconds > 0) {
    std::this_thread::sleep_for(std::chrono::seconds(ctx.opts.delay_seconds));
  }
  int failures = 0;
  for (const auto& path : ctx.opts.devices) {
    Status st = fence_on_device(ctx, path, *local, *key);
    if (!st) {
      ctx.log(st.code() == Code::kInvalidArgument
                  ? st.message()
                  : fmt::format("Failed: fencing key {:#x} on {}: {}", *key, path, st.to_string()));
      ++failures;
    }
  }
  // Verify as fence_scsi does: the key is gone everywhere and a reservation keeps the
  // unregistered from writing.
  for (const auto& path : ctx.opts.devices) {
    auto dev = device::open_device(path, {}, /*read_only=*/true);
    auto rep = dev ? dev->reservations->report() : Result<device::ReservationReport>(dev.status());
    if (!rep) {
      ctx.log(fmt::format("Failed: verifying {}: {}", path, rep.status().to_string()));
      ++failures;
    } else if (rep->find_key(*key) != nullptr) {
      ctx.log(fmt::format("Failed: key {:#x} is still registered on {}", *key, path));
      ++failures;
    } else if (rep->type == device::ReservationType::kNone) {
      ctx.log(
          fmt::format("Failed: no reservation on {}: unregistered hosts may still write", path));
      ++failures;
    }
  }
  if (failures > 0) {
    ctx.log(fmt::format("Failed to verify {} device(s)", failures));
    return kExitError;
  }
  ctx.result.out += "Success: Powered OFF\n";
  return kExitOk;
}

int action_monitor(Context& ctx) {
  for (const auto& path : ctx.opts.devices) {
    auto dev = device::open_device(path, {}, /*read_only=*/true);
    auto rep = dev ? dev->reservations->report() : Result<device::ReservationReport>(dev.status());
    if (!rep) {
      ctx.log(fmt::format("Failed: Unable to access {}: {}", path, rep.status().to_string()));
      return kExitError;
    }
    ctx.verbose(fmt::format("{}: {} registrants, generation {}", path, rep->registrants.size(),
                            rep->generation));
  }
  return kExitOk;
}

// One line per configured node, "name,id" (the plug first: Pacemaker's dynamic-list takes
// it as the node it may fence), with ",ON" or ",OFF" for list-status.
int action_list(Context& ctx, bool with_status) {
  if (!ctx.config) {
    ctx.log("Failed: listing nodes needs the cluster config (config=)");
    return kExitError;
  }
  for (const auto& n : ctx.config->nodes) {
    std::string line = fmt::format("{},{}", n.name, n.id);
    if (with_status) {
      auto on = registered_on(ctx, device::node_reservation_key(ctx.config->name, n.id));
      if (!on) return failed(ctx, on.status().to_string());
      line += std::find(on->begin(), on->end(), true) != on->end() ? ",ON" : ",OFF";
    }
    ctx.result.out += line + "\n";
  }
  return kExitOk;
}

int action_validate(Context& ctx) {
  int bad = 0;
  for (const Status& st : {need_devices(ctx), target_key(ctx).status(), local_node(ctx).status()}) {
    if (!st) {
      ctx.log(st.message());
      ++bad;
    }
  }
  if (bad > 0) {
    ctx.log("validate-all failed");
    return kExitError;
  }
  return kExitOk;
}

// ----- metadata

struct ParamDoc {
  const char* name;
  const char* getopt;
  const char* type;  // string, integer, second, boolean
  const char* default_value;
  bool required;
  const char* shortdesc;
  const char* deprecated_for = nullptr;  // an alias: name of the parameter that obsoletes it
};

constexpr ParamDoc kParams[] = {
    {"action", "-o, --action=[action]", "string", "off", true,
     "Fencing action: on (unfence), off (fence), status, list, list-status, monitor, metadata, "
     "validate-all"},
    {"devices", "-d, --devices=[devices]", "string", nullptr, true,
     "Shared devices, comma or space separated: NVMe namespaces (/dev/nvmeXnY) that support "
     "reservations and preempt-and-abort, or sharedfs image files and loop devices (emulated "
     "reservations)"},
    {"plug", "-n, --plug=[nodename]", "string", nullptr, false,
     "The node to act on: its name in the sharedfs cluster config or its node id. Its key is "
     "fence_scsi's for that cluster name and node id. Ignored when key is given."},
    {"port", "-n, --plug=[nodename]", "string", nullptr, false,
     "The node to act on (alias of plug)", "plug"},
    {"key", "-k, --key=[key]", "string", nullptr, false,
     "Reservation key of the node to act on, hex (as fence_scsi's \"d6e40003\"), instead of the "
     "one derived from the cluster config"},
    {"config", "-c, --config=[path]", "string", "/etc/sharedfs/cluster.toml", false,
     "The sharedfs cluster config: cluster name (keys), cluster id and node names"},
    {"local_node", "--local-node=[node]", "string", nullptr, false,
     "The node this agent runs on (name or id); default: the config's node named like this "
     "host. Needed on image files, and for off when this host has no key yet"},
    {"delay", "--delay=[seconds]", "second", "0", false,
     "Wait X seconds before fencing is started"},
    {"verbose", "-v, --verbose", "boolean", nullptr, false, "Verbose mode"},
    {"version", "-V, --version", "boolean", nullptr, false, "Display version information and exit"},
    {"help", "-h, --help", "boolean", nullptr, false, "Display help and exit"},
};

std::string xml_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

Result<AgentOptions> parse_stdin_options(std::string_view text) {
  AgentOptions o;
  std::optional<std::string> nodename;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    const size_t eq = line.find('=');
    const std::string name = canonical_name(line.substr(0, eq));
    std::string_view value =
        eq == std::string_view::npos ? std::string_view() : trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    ASSIGN_OR_RETURN(const bool known, apply_option(o, nodename, name, value));
    if (!known)
      o.warnings.push_back(fmt::format("Parse error: Ignoring unknown option '{}'", line));
  }
  if (nodename && !nodename->empty()) o.plug = *nodename;
  return o;
}

Result<AgentOptions> parse_command_line(const std::vector<std::string>& args) {
  static constexpr std::pair<char, const char*> kShort[] = {
      {'o', "action"}, {'d', "devices"}, {'n', "plug"}, {'k', "key"},
      {'c', "config"}, {'v', "verbose"}, {'h', "help"}, {'V', "version"}};
  auto is_flag = [](const std::string& n) {
    return n == "verbose" || n == "help" || n == "version";
  };
  AgentOptions o;
  std::optional<std::string> nodename;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    std::string name;
    std::optional<std::string> value;
    if (a.starts_with("--") && a.size() > 2) {
      const size_t eq = a.find('=');
      name = canonical_name(a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2));
      if (eq != std::string::npos) value = a.substr(eq + 1);
    } else if (a.size() == 2 && a[0] == '-') {
      for (const auto& [c, n] : kShort) {
        if (a[1] == c) name = n;
      }
      if (name.empty()) return usage_error(fmt::format("Parse error: unknown option '{}'", a));
    } else {
      return usage_error(fmt::format("Parse error: unexpected argument '{}'", a));
    }
    if (is_flag(name)) {
      if (value) return usage_error(fmt::format("Parse error: {} takes no value", a));
      value = "1";
    } else if (!value) {
      if (i + 1 >= args.size()) return usage_error(fmt::format("Parse error: {} needs a value", a));
      value = args[++i];
    }
    ASSIGN_OR_RETURN(const bool known, apply_option(o, nodename, name, *value));
    if (!known) return usage_error(fmt::format("Parse error: unknown option '{}'", a));
  }
  if (nodename && !nodename->empty()) o.plug = *nodename;
  return o;
}

std::string metadata_xml() {
  std::string x;
  x += "<?xml version=\"1.0\" ?>\n";
  x += "<resource-agent name=\"fence_sharedfs\" shortdesc=\"Fence agent for NVMe persistent "
       "reservations (sharedfs)\" >\n";
  x += "<longdesc>fence_sharedfs is an I/O fencing agent for shared NVMe namespaces (and "
       "sharedfs image files with emulated reservations). Each node registers a reservation key "
       "on the device(s) (at unfencing, and when it mounts sharedfs); one holds a Write "
       "Exclusive - Registrants Only reservation, so only registered nodes may write. Fencing a "
       "node is a preempt-and-abort of its key: its commands in flight are aborted and every "
       "later write fails with a reservation conflict. Keys follow fence_scsi's scheme: the "
       "first 4 hex digits of md5(cluster name), then the node id as 4 decimal digits. A manual "
       "restart of the fenced node (or an unfence) is required.</longdesc>\n";
  x += "<vendor-url></vendor-url>\n";
  x += "<parameters>\n";
  for (const auto& p : kParams) {
    x += fmt::format("\t<parameter name=\"{}\" unique=\"0\" required=\"{}\"{}>\n", p.name,
                     p.required ? 1 : 0, p.deprecated_for ? " deprecated=\"1\"" : "");
    x += fmt::format("\t\t<getopt mixed=\"{}\" />\n", xml_escape(p.getopt));
    x += fmt::format("\t\t<content type=\"{}\" {}/>\n", p.type,
                     p.default_value ? fmt::format("default=\"{}\" ", xml_escape(p.default_value))
                                     : std::string());
    x += fmt::format("\t\t<shortdesc lang=\"en\">{}</shortdesc>\n", xml_escape(p.shortdesc));
    x += "\t</parameter>\n";
  }
  x += "</parameters>\n";
  x += "<actions>\n";
  // Unfencing runs on the node itself (it registers that host) and automatically, as for
  // fence_scsi: a fenced node rejoins only through an unfence.
  x += "\t<action name=\"on\" on_target=\"1\" automatic=\"1\"/>\n";
  for (const char* a :
       {"off", "status", "list", "list-status", "monitor", "metadata", "validate-all"}) {
    x += fmt::format("\t<action name=\"{}\" />\n", a);
  }
  x += "</actions>\n";
  x += "</resource-agent>\n";
  return x;
}

std::string usage_text() {
  std::string u = "Usage:\n\tfence_sharedfs [options]\n\tfence_sharedfs < options-on-stdin\n";
  u += "Options:\n";
  for (const auto& p : kParams) {
    if (p.deprecated_for) continue;
    u += fmt::format("   {:<28} {}\n", p.getopt, p.shortdesc);
  }
  u += "Examples:\n"
       "   fence_sharedfs -o status -d /dev/nvme0n1 -n host-b\n"
       "   fence_sharedfs -o off -d /dev/nvme0n1 -n 2 --config /etc/sharedfs/cluster.toml\n"
       "   printf 'action=on\\ndevices=/dev/nvme0n1\\nplug=host-a\\n' | fence_sharedfs\n";
  return u;
}

AgentResult run_agent(const AgentOptions& opts) {
  Context ctx{opts, std::nullopt, {}};
  std::string action = opts.action;
  std::transform(action.begin(), action.end(), action.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (action == "meta-data") action = "metadata";  // OCF's name for it
  if (action == "enable") action = "on";           // fence-agents' fabric-fencing aliases
  if (action == "disable") action = "off";
  if (opts.help) {
    ctx.result.out = usage_text();
    return ctx.result;
  }
  if (action == "metadata") {
    ctx.result.out = metadata_xml();
    return ctx.result;
  }
  static constexpr const char* kActions[] = {"on",   "off",         "status",      "monitor",
                                             "list", "list-status", "validate-all"};
  if (std::find_if(std::begin(kActions), std::end(kActions),
                   [&](const char* a) { return action == a; }) == std::end(kActions)) {
    ctx.log(fmt::format("Failed: Unrecognised action '{}'", opts.action));
    ctx.result.exit_code = kExitError;
    return ctx.result;
  }
  auto config = load_config(opts);
  if (!config) {
    ctx.log(config.status().message());
    ctx.result.exit_code = kExitError;
    return ctx.result;
  }
  ctx.config = std::move(*config);
  if (action == "validate-all") {
    ctx.result.exit_code = action_validate(ctx);
    return ctx.result;
  }
  if (action != "list") {
    if (Status st = need_devices(ctx); !st) {
      ctx.log(st.message());
      ctx.result.exit_code = kExitError;
      return ctx.result;
    }
  }
  int rc = kExitError;
  if (action == "on") rc = action_on(ctx);
  if (action == "off") rc = action_off(ctx);
  if (action == "status") rc = action_status(ctx);
  if (action == "monitor") rc = action_monitor(ctx);
  if (action == "list") rc = action_list(ctx, false);
  if (action == "list-status") rc = action_list(ctx, true);
  ctx.result.exit_code = rc;
  return ctx.result;
}

}  // namespace sharedfs::fence
