#include "tools/mount_command.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <syslog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <mutex>
#include <optional>

#include "cluster/cluster_config.h"
#include "cluster/failure_manager.h"
#include "device/counting_device.h"
#include "device/device.h"
#include "device/fence_guard.h"
#include "journal/journal.h"
#include "dlm/cluster_lock_service.h"
#include "fs/fs.h"
#include "fs/fuse/fuse_frontend.h"
#include "tools/command_error.h"
#include "tools/control_socket.h"
#include "tools/metrics_endpoint.h"
#include "tools/node_report.h"
#include "tools/fstab.h"
#include "tools/sd_notify.h"
#include "tools/stats_file.h"
#include "tools/status_command.h"

namespace sharedfs::tools {
namespace {

// Options the file system itself understands; the rest go to the kernel mount.
struct ParsedOptions {
  fs::fuse::FuseOptions fuse;
  fs::MountOptions mount;
  std::string config;
  std::optional<uint32_t> node;
  std::string stats_file;  // stats_file=PATH: counters as JSON on SIGUSR1 (tools/stats_file.h)
  std::string metrics;     // metrics=HOST:PORT: the Prometheus endpoint (tools/metrics_endpoint.h)
};

Result<ParsedOptions> parse_options(const MountArgs& args) {
  ParsedOptions p;
  for (const auto& group : args.options) {
    std::stringstream ss(group);
    std::string opt;
    while (std::getline(ss, opt, ',')) {
      if (opt.empty()) continue;
      const auto eq = opt.find('=');
      const std::string key = opt.substr(0, eq);
      const std::string val = eq == std::string::npos ? "" : opt.substr(eq + 1);
      try {
        if (key == "writeback_cache") {
          p.fuse.writeback_cache = true;
        } else if (key == "no_writeback_cache") {
          p.fuse.writeback_cache = false;
        } else if (key == "entry_timeout") {
          p.fuse.entry_timeout_s = std::stod(val);
        } else if (key == "attr_timeout") {
          p.fuse.attr_timeout_s = std::stod(val);
        } else if (key == "read_ahead_kb") {
          p.fuse.read_ahead_kb = static_cast<unsigned>(std::stoul(val));
        } else if (key == "threads") {
          p.fuse.max_threads = static_cast<unsigned>(std::stoul(val));
        } else if (key == "commit") {
          p.mount.commit_interval = std::chrono::milliseconds(std::stoul(val) * 1000);
        } else if (key == "metrics") {
          if (val.find(':') == std::string::npos) throw std::invalid_argument("HOST:PORT");
          p.metrics = val;
        } else if (key == "stats_file") {
          p.stats_file = std::filesystem::absolute(val).lexically_normal().string();
        } else if (key == "config") {
          p.config = val;  // config=PATH in fstab lines, same as --config
        } else if (key == "node") {
          p.node = static_cast<uint32_t>(std::stoul(val));  // node=N in fstab, as --node
        } else if (key == "rw" || key == "defaults" || key == "dev" || key == "suid" ||
                   key == "exec" || key == "auto" || key == "noauto" || key == "_netdev" ||
                   key == "nofail" || key == "user" || key == "nouser") {
          // mount(8) and fstab words that mean nothing more to a FUSE mount
        } else {
          p.fuse.mount_opts.push_back(opt);
        }
      } catch (const std::exception&) {
        return make_status(Code::kInvalidArgument, "bad value in mount option \"{}\"", opt);
      }
    }
  }
  if (!args.config.empty()) p.config = args.config;
  return p;
}

// A cluster mount's DLM: started and admitted to the cluster before the file system
// mounts (every metadata lock goes through it), and leaving it only after the file system
// is unmounted and its journal clean.
struct ClusterMembership {
  std::shared_ptr<fs::LockFlushTarget> target = std::make_shared<fs::LockFlushTarget>();
  std::shared_ptr<dlm::ClusterLockService> locks;
  std::chrono::milliseconds leave_timeout{0};
};

Result<ClusterMembership> join_cluster(const cluster::ClusterConfig& config, uint32_t node) {
  ClusterMembership c;
  dlm::DlmNodeOptions o;
  // A restarted node is a new member: its incarnation only grows (wall clock, µs).
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  o.self = dlm::Member{NodeId(node),
                       static_cast<uint64_t>(
                           std::chrono::duration_cast<std::chrono::microseconds>(now).count())};
  for (const auto& n : config.nodes) o.peers.push_back(dlm::Peer{NodeId(n.id), n.endpoint()});
  o.cluster_secret = config.secret;
  auto target = c.target;
  ASSIGN_OR_RETURN(c.locks,
                   dlm::ClusterLockService::start(
                       o, [target](const dlm::LockName& name, dlm::LockMode mode)
                              -> std::optional<dlm::ValueBlockBytes> {
                         auto value = target->flush(name, mode);
                         if (value) return *value;
                         // The value block keeps what it was granted with: for an AG lock a
                         // hint, which the allocator checks against the header it reads.
                         spdlog::error("flush before giving up {}: {}", name.to_string(),
                                       value.status().to_string());
                         return std::nullopt;
                       }));
  dlm::MembershipAgentOptions m;
  m.self = o.self;
  m.cluster_name = config.name;  // in the agent's state-change lines (docs/logging.md)
  for (const auto& n : config.nodes) m.configured.push_back(NodeId(n.id));
  m.heartbeat_interval_ms = static_cast<uint64_t>(config.heartbeat_interval.count());
  m.dead_after_ms = static_cast<uint64_t>(config.heartbeat_timeout.count());
  // ZeroMQ connects each direction on its own and drops what it cannot queue yet: give the
  // other nodes a second at least to be heard before forming a cluster without them.
  m.join_wait_ms = std::max<uint64_t>(3 * m.heartbeat_interval_ms, 1000);
  c.leave_timeout = config.heartbeat_timeout;
  spdlog::info("node {}: joining cluster \"{}\"", node, config.name);
  RETURN_IF_ERROR(c.locks->node().join(
      m, std::chrono::milliseconds(m.join_wait_ms) + 2 * config.heartbeat_timeout));
  const auto st = c.locks->node().membership_status();
  // The agent logged the join itself ("node N joined cluster ..."): this one is detail.
  spdlog::debug("node {}: joined cluster \"{}\" at epoch {} with {} member(s)", node,
               config.name, st.view.membership.epoch, st.view.membership.members.size());
  return c;
}

// A node that finds itself fenced (or dropped from the cluster) withdraws: one line for the
// operator, no more writes, every lock and file operation fails with EIO, no more
// heartbeats. Runs at most once, from whichever thread noticed first; it only sets flags.
class Withdrawal {
 public:
  // `fs`: the mounted file system while there is one (also what recovery uses).
  Withdrawal(uint32_t node, std::string cluster, uint64_t cluster_id, device::FenceGuard& guard,
             const std::atomic<fs::FileSystem*>& fs)
      : node_(node), cluster_(std::move(cluster)), state_file_(node_state_path(cluster_id, node)),
        guard_(guard), fs_(fs) {}
  ~Withdrawal() {
    std::error_code ec;
    if (happened()) std::filesystem::remove(state_file_, ec);
  }
  void attach(dlm::ClusterLockService* locks) { locks_.store(locks); }
  bool happened() const { return done_.load(); }
  std::string reason() const {
    std::lock_guard l(mu_);
    return reason_;
  }

  void operator()(const std::string& reason) {
    if (done_.exchange(true)) return;
    {
      std::lock_guard l(mu_);
      reason_ = reason;
    }
    spdlog::critical("node {} withdraws from cluster \"{}\": {}. It writes nothing more and "
                     "every file operation fails with EIO; unmount it, then mount again to rejoin",
                     node_, cluster_, reason);
    // For `sharedfs status` on this host: the device no longer takes our word.
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(state_file_).parent_path(), ec);
    std::ofstream(state_file_) << "withdrawn " << reason << "\n";
    guard_.stop_writes(reason);
    if (auto* f = fs_.load()) f->withdraw();
    if (auto* l = locks_.load()) {
      l->withdraw();
      l->node().withdraw();
    }
  }

 private:
  const uint32_t node_;
  const std::string cluster_;
  const std::string state_file_;
  device::FenceGuard& guard_;
  const std::atomic<fs::FileSystem*>& fs_;
  std::atomic<bool> done_{false};
  std::atomic<dlm::ClusterLockService*> locks_{nullptr};
  mutable std::mutex mu_;
  std::string reason_;  // GUARDED_BY(mu_)
};

// After joining: a configured node that is not in our view but whose disk heartbeat
// advances is alive on the device and unheard on the network (a wrong secret or address
// on one side): mounting beside it would be a split brain.
Status check_no_unheard_live_node(device::BlockDevice& dev, const format::Superblock& sb,
                                  const cluster::ClusterConfig& config, uint32_t self,
                                  const dlm::View& view) {
  std::vector<uint32_t> outside;
  for (const auto& n : config.nodes) {
    const bool member = std::any_of(view.membership.members.begin(), view.membership.members.end(),
                                    [&](const dlm::Member& m) { return m.id.value == n.id; });
    if (n.id != self && !member) outside.push_back(n.id);
  }
  cluster::DiskHeartbeats beats;
  RETURN_IF_ERROR(beats.sample(dev, sb, std::chrono::steady_clock::now()));
  const bool any_mounted = std::any_of(outside.begin(), outside.end(), [&](uint32_t id) {
    const auto& s = beats.slots().at(id - 1);
    return s.readable && s.beat.state == format::HeartbeatState::kMounted;
  });
  if (!any_mounted) return Status::ok();
  RETURN_IF_ERROR(beats.sample_after_beats(dev, sb, config.heartbeat_interval));
  for (uint32_t id : outside) {
    if (beats.moved(id - 1)) {
      return make_status(Code::kBusy,
                         "node {} is alive on the device (its disk heartbeat advances) but this "
                         "node cannot hear it over the network: check the cluster secret and the "
                         "addresses in the config on both nodes",
                         id);
    }
  }
  return Status::ok();
}

// Reservation keys are per node, not per mount: a node restarted before the running nodes
// fenced its previous mount would be fenced with it (its new key is the old one). So a
// node whose slot says its last mount died (mounted and still, or fenced and not yet
// recovered) waits for the others to finish, as long as some other node is alive on the
// disk to do it; with nobody else alive it replays its own journal as after any crash.
// A slot whose heartbeat still advances belongs to a live mount: prepare_own_slot refuses.
Status wait_until_previous_mount_recovered(device::BlockDevice& dev, const format::Superblock& sb,
                                           const cluster::ClusterConfig& config, uint32_t self) {
  const uint32_t own = self - 1;
  cluster::DiskHeartbeats beats;
  RETURN_IF_ERROR(beats.sample(dev, sb, std::chrono::steady_clock::now()));
  auto state = [&] { return beats.slots().at(own).beat.state; };
  auto unrecovered = [&] {
    const auto& s = beats.slots().at(own);
    return s.readable && (s.beat.state == format::HeartbeatState::kMounted ||
                          s.beat.state == format::HeartbeatState::kFenced);
  };
  if (!unrecovered()) return Status::ok();
  RETURN_IF_ERROR(beats.sample_after_beats(dev, sb, config.heartbeat_interval));
  if (beats.moved(own)) return Status::ok();
  bool others_alive = false;
  for (const auto& n : config.nodes) {
    if (n.id != self && n.id - 1 < beats.slots().size() && beats.moved(n.id - 1)) others_alive = true;
  }
  if (!others_alive) return Status::ok();
  const auto limit = 3 * config.heartbeat_timeout + std::chrono::seconds(10);
  spdlog::info("node {}: its previous mount died and the running nodes have not recovered it yet "
               "(slot {} is {}); waiting for them, up to {} ms",
               self, own, format::heartbeat_state_name(state()), limit.count());
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (unrecovered()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return make_status(Code::kBusy,
                         "node {}'s previous mount is not fenced and recovered by the running "
                         "nodes after {} ms (slot {} is {}): see `sharedfs status`, and mount "
                         "again once it shows node {} recovered",
                         self, limit.count(), own, format::heartbeat_state_name(state()), self);
    }
    std::this_thread::sleep_for(config.heartbeat_interval);
    RETURN_IF_ERROR(beats.sample(dev, sb, std::chrono::steady_clock::now()));
  }
  spdlog::info("node {}: the running nodes recovered its previous mount", self);
  return Status::ok();
}

// --update-fstab: the line that mounts this again, written once the mount is up.
Status record_in_fstab(const MountArgs& args) {
  if (!args.update_fstab) return Status::ok();
  Status st = update_fstab(args.fstab, fstab_entry_for_mount(args.device, args.mountpoint,
                                                             args.config, args.node, args.options));
  if (!st) {
    return st.with_context(fmt::format("{} is mounted, but the line for it is not in {}",
                                       args.mountpoint, args.fstab));
  }
  return st;
}

// mount -f: what mounting would check before touching the device: the config, and that the
// device holds a sharedfs this node may mount.
Status check_mount(const MountArgs& args, const ParsedOptions& p) {
  std::error_code ec;
  if (!std::filesystem::is_directory(args.mountpoint, ec)) {
    return make_status(Code::kInvalidArgument, "mount point {} is not a directory",
                       args.mountpoint);
  }
  auto dev = device::open_device(args.device, {}, /*read_only=*/true);
  if (!dev) return dev.status();
  ASSIGN_OR_RETURN(auto sb, fs::read_superblock(*dev->io));
  if (p.config.empty()) return Status::ok();
  ASSIGN_OR_RETURN(auto config, cluster::load_cluster_config(p.config));
  return cluster::check_config_for_mount(config, args.node, sb.cluster_id, sb.geo.slots);
}

int serve_mount(const MountArgs& args, const ParsedOptions& p, int ready_fd) {
  auto report = [&](const std::string& msg) {
    if (ready_fd >= 0) {
      (void)!::write(ready_fd, msg.data(), msg.size());
      ::close(ready_fd);
      ready_fd = -1;
    } else if (!msg.empty()) {
      fmt::print(stderr, "{}", msg);
    }
  };
  const uint32_t slot = args.node - 1;
  // A daemon that detaches (fstab, mount -t, the OCF agent) loses its stderr once mounted:
  // its lines go to syslog too (ident sharedfs-nodeN), so "suspect", "fenced", "withdraws"
  // reach the journal. Set before any thread logs. Foreground daemons (systemd, tests) keep
  // stderr alone.
  if (!args.foreground) {
    std::vector<spdlog::sink_ptr> sinks{
        std::make_shared<spdlog::sinks::stderr_sink_mt>(),
        std::make_shared<spdlog::sinks::syslog_sink_mt>(fmt::format("sharedfs-node{}", args.node),
                                                        LOG_PID, LOG_DAEMON,
                                                        /*enable_formatting=*/false)};
    auto logger = std::make_shared<spdlog::logger>("sharedfs", sinks.begin(), sinks.end());
    logger->set_level(spdlog::default_logger()->level());
    spdlog::set_default_logger(std::move(logger));
  }
  // Before any thread starts: SIGUSR1 is for the stats thread alone.
  if (!p.stats_file.empty()) StatsFile::block_signal();
  std::optional<cluster::ClusterConfig> config;
  if (!p.config.empty()) {
    auto c = cluster::load_cluster_config(p.config);
    if (!c) {
      report(fmt::format("sharedfs: {}\n", c.status().to_string()));
      return 1;
    }
    config = std::move(*c);
  }
  // The node's Host ID derives from the cluster id in the superblock: peek at it first.
  format::Superblock sb;
  {
    auto peek = device::open_device(args.device, {}, /*read_only=*/true);
    if (!peek) {
      report(fmt::format("sharedfs: {}\n", peek.status().to_string()));
      return 1;
    }
    auto peeked = fs::read_superblock(*peek->io);
    if (!peeked) {
      report(fmt::format("sharedfs: {}\n", peeked.status().to_string()));
      return 1;
    }
    sb = std::move(*peeked);
    if (config) {
      Status st = cluster::check_config_for_mount(*config, args.node, sb.cluster_id,
                                                  sb.geo.slots);
      if (!st) {
        report(fmt::format("sharedfs: {}\n", st.to_string()));
        return 1;
      }
    }
  }
  // The node's reservation key is the same whichever Host ID speaks for it.
  auto dev = device::open_device(args.device,
                                 device::node_host_id(args.device, sb.cluster_id, args.node),
                                 /*read_only=*/false);
  if (!dev) {
    report(fmt::format("sharedfs: {}\n", dev.status().to_string()));
    return 1;
  }
  // Every write of this node goes through the guard: once fenced, nothing more lands.
  device::FenceGuard guard(*dev->io);
  std::atomic<fs::FileSystem*> mounted_fs{nullptr};
  Withdrawal withdrawal(args.node, config ? config->name : std::string(), sb.cluster_id, guard,
                        mounted_fs);
  guard.set_on_fenced([&withdrawal](const std::string& why) { withdrawal(why); });
  device::CountingDevice counted(guard);
  fs::MountOptions mo = p.mount;
  mo.slot = slot;
  mo.node_id = args.node;
  std::optional<ClusterMembership> membership;
  std::unique_ptr<cluster::FailureManager> failures;
  if (config) {
    mo.heartbeat_interval = config->heartbeat_interval;
    Status st = wait_until_previous_mount_recovered(guard, sb, *config, args.node);
    const auto key = device::node_reservation_key(config->name, args.node);
    if (st) st = cluster::register_node(*dev->reservations, key);
    if (st) st = fs::prepare_own_slot(guard, sb, slot, /*check_live=*/true);
    if (st) {
      auto joined = join_cluster(*config, args.node);
      if (joined) membership = std::move(*joined);
      st = joined.status();
    }
    if (st) {
      withdrawal.attach(membership->locks.get());
      st = check_no_unheard_live_node(guard, sb, *config, args.node,
                                      membership->locks->node().membership_status().view);
    }
    if (!st) {
      report(fmt::format("sharedfs: {}\n", st.to_string()));
      if (membership) (void)membership->locks->leave(membership->leave_timeout);
      return 1;
    }
    // Recovery of failed nodes starts before our own mount: it may need locks that a node
    // which died meanwhile held.
    cluster::FailureManagerOptions fo;
    fo.node_id = args.node;
    fo.cluster_name = config->name;
    fo.heartbeat_interval = config->heartbeat_interval;
    fo.dead_after = config->heartbeat_timeout;
    if (const char* d = std::getenv("SHAREDFS_TEST_REPLAY_WRITE_DELAY_MS")) {
      fo.replay_write_delay = std::chrono::milliseconds(std::atoi(d));
    }
    cluster::FailureHooks hooks;
    hooks.replay_journal = [&sb](device::BlockDevice& d, uint32_t s) -> Result<uint64_t> {
      ASSIGN_OR_RETURN(auto r, journal::replay(d, sb, s));
      return r.transactions;
    };
    hooks.recover_slot = [&mounted_fs](uint32_t s, uint32_t dead) -> Status {
      fs::FileSystem* f = mounted_fs.load();
      if (f == nullptr) return Status::ok();  // not mounted yet: its next mount frees them
      return f->recover_slot(s, dead);
    };
    hooks.withdraw = [&withdrawal](const std::string& why) { withdrawal(why); };
    failures = std::make_unique<cluster::FailureManager>(fo, sb, guard, *dev->reservations,
                                                         membership->locks->node(), hooks);
    failures->start();
    mo.slot_prepared = true;
    mo.locks = membership->locks;
    mo.flush_target = membership->target;
    mo.ag_locks = true;
    mo.open_locks = true;
  }
  // Leaves the cluster once the file system is unmounted (journal clean) or never mounted,
  // and takes the node's reservation key away with it; a withdrawn node has neither.
  auto leave = [&](bool clean) {
    if (!membership) return;
    failures.reset();
    if (!withdrawal.happened()) {
      Status st = membership->locks->leave(membership->leave_timeout);
      if (!st) spdlog::warn("leaving the cluster: {}", st.to_string());
      if (clean) {
        st = cluster::unregister_node(*dev->reservations,
                                      device::node_reservation_key(config->name, args.node));
        if (!st) spdlog::warn("{}", st.to_string());
      }
    }
    membership.reset();
  };
  auto filesystem = fs::FileSystem::mount(counted, mo);
  if (!filesystem) {
    report(fmt::format("sharedfs: mounting {}: {}\n", args.device,
                       filesystem.status().to_string()));
    leave(/*clean=*/false);
    return 1;
  }
  mounted_fs.store(filesystem->get());
  if (withdrawal.happened()) (*filesystem)->withdraw();
  std::optional<StatsFile> stats;
  if (!p.stats_file.empty()) {
    fs::FileSystem* f = filesystem->get();
    std::shared_ptr<dlm::ClusterLockService> locks = membership ? membership->locks : nullptr;
    stats.emplace(p.stats_file, args.node, [f, locks, &counted] {
      dlm::LockManagerStats dlm_stats;
      uint64_t fast_hits = 0;
      if (locks) {
        locks->node().call([&](dlm::LockManager& lm, dlm::LockCache&) { dlm_stats = lm.stats(); });
        fast_hits = locks->fast_path_hits();
      }
      const auto io = counted.counts();
      return fmt::format(
          "\"dlm\": {{\"sent\": {}, \"received\": {}, \"lock_requests\": {}, "
          "\"range_requests\": {}, \"fast_path_hits\": {}}}, "
          "\"device\": {{\"reads\": {}, \"read_bytes\": {}, \"writes\": {}, "
          "\"write_bytes\": {}}}, "
          "\"fs\": {{\"commits\": {}, \"lock_flushes\": {}, \"ag_lock_flushes\": {}}}",
          dlm_stats.sent, dlm_stats.received, dlm_stats.requests, dlm_stats.range_requests,
          fast_hits, io.reads,
          io.read_bytes, io.writes, io.write_bytes, f->stats().commits, f->lock_flushes(),
          f->ag_lock_flushes());
    });
    stats->start();
  }
  // The operator's commands ask this node (and, through it, the others) over a local
  // socket and over the DLM (tools/node_report.h).
  fs::fuse::RequestMetrics request_metrics;
  DaemonState daemon;
  daemon.node = args.node;
  daemon.cluster = config ? config->name : std::string();
  daemon.cluster_id = sb.cluster_id;
  daemon.device = args.device;
  daemon.mountpoint = args.mountpoint;
  daemon.fs = &mounted_fs;
  daemon.locks = membership ? membership->locks.get() : nullptr;
  daemon.io = &counted;
  daemon.requests = &request_metrics;
  daemon.withdrawn_reason = [&withdrawal] { return withdrawal.reason(); };
  daemon.recoveries = [&failures]() -> uint64_t { return failures ? failures->recoveries() : 0; };
  auto reporter = std::make_shared<NodeReporter>(std::move(daemon));
  if (membership) {
    membership->locks->node().set_query_responder(
        [reporter](const std::string& q, dlm::LockManager& lm, dlm::LockCache& cache) {
          return reporter->answer(q, &lm, &cache);
        });
  }
  std::unique_ptr<ControlServer> control;
  {
    auto server = ControlServer::start(control_socket_path(sb.cluster_id, args.node),
                                       [reporter](const std::string& r) { return reporter->handle(r); });
    if (server) {
      control = std::move(*server);
    } else {
      // The file system works without it; only the operator's view of this node is lost.
      spdlog::warn("node {}: no control socket: {}", args.node, server.status().to_string());
    }
  }
  std::unique_ptr<MetricsEndpoint> metrics;
  if (!p.metrics.empty()) {
    auto endpoint = MetricsEndpoint::start(p.metrics, reporter->state());
    if (endpoint) {
      metrics = std::move(*endpoint);
      spdlog::info("node {}: Prometheus metrics on http://{}/metrics (port {})", args.node,
                   p.metrics, metrics->port());
    } else {
      spdlog::error("node {}: {}", args.node, endpoint.status().to_string());
    }
  }
  fs::fuse::FuseOptions fo = p.fuse;
  fo.metrics = &request_metrics;
  fo.cluster = config.has_value();
  // flock and fcntl locks conflict across the cluster's nodes.
  std::unique_ptr<dlm::NodeLockGate> lock_gate;
  std::unique_ptr<dlm::RangeLockGate> range_gate;
  std::unique_ptr<dlm::AdvisoryLocks> advisory_locks;
  if (membership) {
    lock_gate = dlm::make_dlm_lock_gate(membership->locks->node());
    range_gate = dlm::make_dlm_range_gate(membership->locks->node());
    advisory_locks = std::make_unique<dlm::AdvisoryLocks>(*lock_gate, *range_gate);
    fo.advisory_locks = advisory_locks.get();
  }
  fo.mountpoint = args.mountpoint;
  // The device itself, as for a kernel file system: mount -a then finds an fstab line's
  // mount already up (it compares sources), and umount DEVICE and findmnt DEVICE work.
  fo.fsname = args.device;
  fo.debug = args.debug;
  bool mounted = false;
  Status st = fs::fuse::serve(**filesystem, fo, [&] {
    mounted = true;
    report(ready_fd >= 0 ? "OK" : "");
    if (args.foreground) {
      // Detached, the parent records it once it has the answer.
      if (Status f = record_in_fstab(args); !f) spdlog::error("{}", f.to_string());
    }
    if (Status n = notify_systemd("READY=1"); !n) spdlog::warn("{}", n.to_string());
    if (!args.foreground) {
      // Detach from the terminal now that the parent has its answer.
      int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(null, 2);
        if (null > 2) ::close(null);
      }
    }
  });
  if (!st && !mounted) report(fmt::format("sharedfs: {}\n", st.to_string()));
  // Unmounted: nothing more to tell (the reporter reads what goes away below).
  metrics.reset();
  control.reset();
  if (membership) membership->locks->node().set_query_responder({});
  advisory_locks.reset();  // the session is over: nobody holds or waits for one
  range_gate.reset();
  // Requests in flight that will never be answered (we withdrew): not waited for; the
  // gate is left to the process's exit (its completions never run once the DLM stops).
  if (lock_gate && (withdrawal.happened() || !lock_gate->wait_idle(membership->leave_timeout))) {
    (void)lock_gate.release();
  }
  lock_gate.reset();
  // Recovery of other nodes uses the file system: stopped before it goes.
  failures.reset();
  mounted_fs.store(nullptr);
  Status un = (*filesystem)->unmount();
  if (!un) spdlog::error("unmount of {}: {}", args.device, un.to_string());
  if (stats) {
    if (auto w = stats->write(); !w) spdlog::warn("stats file: {}", w.to_string());
    stats.reset();
  }
  filesystem->reset();  // detaches the flush target: later revocations only release
  leave(/*clean=*/un.is_ok());
  return st && un ? 0 : 1;
}

}  // namespace

int run_mount(const MountArgs& given) {
  MountArgs args = given;
  for (const auto& group : args.options) {
    // node=N and config=PATH from fstab weigh like --node and --config.
    auto pre = parse_options(MountArgs{.options = {group}});
    if (pre && pre->node) args.node = *pre->node;
    if (pre && !pre->config.empty() && args.config.empty()) args.config = pre->config;
  }
  // The daemon works from / : relative paths are taken from where the command ran.
  for (std::string* path : {&args.device, &args.mountpoint, &args.config}) {
    if (!path->empty()) *path = std::filesystem::absolute(*path).lexically_normal().string();
  }
  if (args.node == 0) {
    fmt::print(stderr, "sharedfs: node ids start at 1\n");
    return 1;
  }
  auto parsed = parse_options(args);
  if (!parsed) return fail(parsed.status());
  if (args.update_fstab) {
    if (Status st = check_fstab_updatable(args.fstab); !st) {
      fmt::print(stderr, "sharedfs: --update-fstab: {}\n", st.to_string());
      return 1;
    }
  }
  if (args.fake) {
    Status st = check_mount(args, *parsed);
    return st ? 0 : fail(st);
  }
  if (args.foreground) return serve_mount(args, *parsed, -1);
  // Fork before anything starts threads; the parent waits for the child's verdict.
  int pipefd[2];
  if (::pipe(pipefd) != 0) {
    fmt::print(stderr, "sharedfs: pipe: {}\n", std::strerror(errno));
    return 1;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    fmt::print(stderr, "sharedfs: fork: {}\n", std::strerror(errno));
    return 1;
  }
  if (pid == 0) {
    ::close(pipefd[0]);
    ::setsid();
    if (::chdir("/") != 0) {
      // keep the current directory; nothing depends on it
    }
    ::_exit(serve_mount(args, *parsed, pipefd[1]));
  }
  ::close(pipefd[1]);
  // The child answers "OK" once mounted, or an error message, and closes the pipe.
  std::string msg;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    msg.append(buf, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  if (msg == "OK") {
    Status st = record_in_fstab(args);
    return st ? 0 : fail(st);
  }
  fmt::print(stderr, "{}", msg.empty() ? "sharedfs: the daemon exited before mounting\n" : msg);
  ::waitpid(pid, nullptr, 0);
  return 1;
}

}  // namespace sharedfs::tools
