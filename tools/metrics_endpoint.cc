#include "tools/metrics_endpoint.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <limits>
#include <map>

#include "dlm/lock_manager.h"

namespace sharedfs::tools {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void add_value(MetricFamily& f, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

// A family of one value without labels, appended to `out`.
void add_single(std::vector<MetricFamily>& out, std::string name, std::string help, MetricType type,
                double value) {
  MetricFamily f = family(std::move(name), std::move(help), type);
  add_value(f, value);
  out.push_back(std::move(f));
}

void add_histogram(MetricFamily& f, const LatencyHistogram& h,
                   std::vector<ClientMetric::Label> labels = {}) {
  const auto s = h.snapshot();
  ClientMetric m;
  m.label = std::move(labels);
  m.histogram.sample_count = s.count;
  m.histogram.sample_sum = static_cast<double>(s.sum_ns) / 1e9;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
    cumulative += s.buckets[i];
    const double bound = i < LatencyHistogram::kBoundsNs.size()
                             ? static_cast<double>(LatencyHistogram::kBoundsNs[i]) / 1e9
                             : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back({cumulative, bound});
  }
  f.metric.push_back(std::move(m));
}

}  // namespace

class MetricsEndpoint::Collector : public prometheus::Collectable {
 public:
  explicit Collector(const DaemonState& state) : st_(state) {}

  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out;
    auto info = family("sharedfs_build_info", "Version of the running daemon (value 1).",
                       MetricType::Gauge);
    add_value(info, 1,
              {{"cluster", st_.cluster},
               {"node", std::to_string(st_.node)},
               {"version", SHAREDFS_VERSION}});
    out.push_back(std::move(info));
    add_single(out, "sharedfs_withdrawn",
               "1 once this node withdrew (fenced or expelled): every operation "
               "fails with EIO until it is remounted.",
               MetricType::Gauge, st_.withdrawn_reason && !st_.withdrawn_reason().empty() ? 1 : 0);
    collect_requests(out);
    collect_device(out);
    collect_fs(out);
    collect_dlm(out);
    return out;
  }

 private:
  void collect_requests(std::vector<MetricFamily>& out) const {
    if (st_.requests == nullptr) return;
    auto lat = family("sharedfs_fuse_request_duration_seconds",
                      "Time from a FUSE request's arrival to its reply, by operation.",
                      MetricType::Histogram);
    for (size_t i = 0; i < static_cast<size_t>(fs::fuse::FuseOp::kCount); ++i) {
      const auto op = static_cast<fs::fuse::FuseOp>(i);
      if (st_.requests->latency[i].snapshot().count == 0) continue;
      add_histogram(lat, st_.requests->latency[i],
                    {{"op", std::string(fs::fuse::fuse_op_name(op))}});
    }
    out.push_back(std::move(lat));
    auto bytes = family("sharedfs_fuse_bytes_total", "File data read and written through FUSE.",
                        MetricType::Counter);
    add_value(bytes, static_cast<double>(st_.requests->read_bytes.load()), {{"direction", "read"}});
    add_value(bytes, static_cast<double>(st_.requests->write_bytes.load()),
              {{"direction", "write"}});
    out.push_back(std::move(bytes));
    add_single(out, "sharedfs_page_cache_keeps_total",
               "Opens that let the kernel keep the file's cached pages.", MetricType::Counter,
               static_cast<double>(st_.requests->keep_cache_opens.load()));
    add_single(out, "sharedfs_dentry_invalidations_total",
               "Names dropped from the kernel's cache because another node took the "
               "directory's lock.",
               MetricType::Counter, static_cast<double>(st_.requests->entry_invalidations.load()));
    add_single(out, "sharedfs_attr_invalidations_total",
               "Inodes whose attributes the kernel was told to forget because "
               "another node took the inode's lock.",
               MetricType::Counter, static_cast<double>(st_.requests->attr_invalidations.load()));
  }

  void collect_device(std::vector<MetricFamily>& out) const {
    if (st_.io == nullptr) return;
    const auto c = st_.io->counts();
    auto lat =
        family("sharedfs_device_io_duration_seconds",
               "Latency of the shared device's reads, writes and flushes.", MetricType::Histogram);
    add_histogram(lat, st_.io->read_latency(), {{"op", "read"}});
    add_histogram(lat, st_.io->write_latency(), {{"op", "write"}});
    add_histogram(lat, st_.io->flush_latency(), {{"op", "flush"}});
    out.push_back(std::move(lat));
    auto bytes = family("sharedfs_device_bytes_total", "Bytes read from and written to the device.",
                        MetricType::Counter);
    add_value(bytes, static_cast<double>(c.read_bytes), {{"direction", "read"}});
    add_value(bytes, static_cast<double>(c.write_bytes), {{"direction", "write"}});
    out.push_back(std::move(bytes));
  }

  void collect_fs(std::vector<MetricFamily>& out) const {
    fs::FileSystem* f = st_.fs != nullptr ? st_.fs->load() : nullptr;
    if (f == nullptr) return;
    const auto s = f->stats();
    add_single(out, "sharedfs_journal_commits_total", "Journal transactions committed.",
               MetricType::Counter, static_cast<double>(s.commits));
    auto lat = family("sharedfs_journal_commit_duration_seconds",
                      "Time to commit a journal transaction, waiting for the journal included.",
                      MetricType::Histogram);
    add_histogram(lat, f->journal_commit_latency());
    out.push_back(std::move(lat));
    add_single(out, "sharedfs_journal_used_ratio",
               "Fraction of this node's journal holding transactions not yet "
               "checkpointed.",
               MetricType::Gauge,
               s.journal_capacity_blocks == 0 ? 0.0
                                              : static_cast<double>(s.journal_used_blocks) /
                                                    static_cast<double>(s.journal_capacity_blocks));
    auto revokes = family("sharedfs_lock_revokes_total",
                          "Cached locks given up to another node, after writing back and "
                          "dropping what they cover.",
                          MetricType::Counter);
    add_value(revokes, static_cast<double>(f->lock_flushes() - f->ag_lock_flushes()),
              {{"kind", "inode"}});
    add_value(revokes, static_cast<double>(f->ag_lock_flushes()), {{"kind", "alloc-group"}});
    out.push_back(std::move(revokes));
  }

  void collect_dlm(std::vector<MetricFamily>& out) const {
    if (st_.locks == nullptr) return;
    auto waits = family("sharedfs_dlm_lock_wait_seconds",
                        "Time to be granted a cluster lock, by mode.", MetricType::Histogram);
    add_histogram(waits, st_.locks->wait_latency(dlm::LockMode::kPR), {{"mode", "PR"}});
    add_histogram(waits, st_.locks->wait_latency(dlm::LockMode::kEX), {{"mode", "EX"}});
    out.push_back(std::move(waits));
    dlm::LockManagerStats stats;
    std::array<size_t, 3> held{};
    dlm::DlmNode::MembershipStatus ms;
    st_.locks->node().call([&](dlm::LockManager& lm, dlm::LockCache& cache) {
      stats = lm.stats();
      held = cache.count_by_mode();
      ms = st_.locks->node().membership_status_on_driver();
    });
    auto holds = family("sharedfs_dlm_locks_held", "Cluster locks this node holds, by mode.",
                        MetricType::Gauge);
    for (auto mode : {dlm::LockMode::kNL, dlm::LockMode::kPR, dlm::LockMode::kEX}) {
      add_value(holds, static_cast<double>(held[static_cast<size_t>(mode)]),
                {{"mode", std::string(dlm::lock_mode_name(mode))}});
    }
    out.push_back(std::move(holds));
    auto msgs =
        family("sharedfs_dlm_messages_total", "DLM messages, by direction.", MetricType::Counter);
    add_value(msgs, static_cast<double>(stats.sent), {{"direction", "sent"}});
    add_value(msgs, static_cast<double>(stats.received), {{"direction", "received"}});
    add_value(msgs, static_cast<double>(stats.retransmitted), {{"direction", "retransmitted"}});
    out.push_back(std::move(msgs));
    auto reqs = family("sharedfs_dlm_requests_total",
                       "Lock requests this node sent to a master (cache misses), by kind.",
                       MetricType::Counter);
    add_value(reqs, static_cast<double>(stats.requests), {{"kind", "lock"}});
    add_value(reqs, static_cast<double>(stats.range_requests), {{"kind", "range"}});
    out.push_back(std::move(reqs));
    add_single(out, "sharedfs_dlm_cache_hits_total",
               "Locks taken from this node's cache without the DLM.", MetricType::Counter,
               static_cast<double>(st_.locks->fast_path_hits()));
    auto ages = family("sharedfs_heartbeat_age_seconds",
                       "Time since each configured peer was last heard.", MetricType::Gauge);
    size_t alive = 0, silent = 0;
    for (const auto& p : ms.peers) {
      (p.alive ? alive : silent) += 1;
      if (p.heard_ago_ms) {
        add_value(ages, static_cast<double>(*p.heard_ago_ms) / 1000.0,
                  {{"peer", std::to_string(p.id.value)}});
      }
    }
    out.push_back(std::move(ages));
    auto nodes = family("sharedfs_nodes", "Configured nodes by state, as this node sees them.",
                        MetricType::Gauge);
    add_value(nodes, static_cast<double>(ms.view.membership.members.size()), {{"state", "member"}});
    add_value(nodes, static_cast<double>(alive), {{"state", "heard"}});
    add_value(nodes, static_cast<double>(silent), {{"state", "silent"}});
    add_value(nodes, static_cast<double>(ms.awaiting_replay.size()),
              {{"state", "awaiting-replay"}});
    out.push_back(std::move(nodes));
    if (st_.recoveries) {
      add_single(out, "sharedfs_fence_events_total",
                 "Nodes this node fenced and recovered (journal replayed).", MetricType::Counter,
                 static_cast<double>(st_.recoveries()));
    }
  }

  const DaemonState& st_;
};

Result<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::start(const std::string& address,
                                                                const DaemonState& state) {
  std::unique_ptr<MetricsEndpoint> e(new MetricsEndpoint());
  try {
    e->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& ex) {
    return make_status(Code::kInvalidArgument,
                       "cannot serve metrics on {}: {} (is the port in use? metrics=HOST:PORT)",
                       address, ex.what());
  }
  e->collector_ = std::make_shared<Collector>(state);
  e->exposer_->RegisterCollectable(e->collector_);
  return e;
}

MetricsEndpoint::~MetricsEndpoint() = default;

int MetricsEndpoint::port() const {
  const auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

}  // namespace sharedfs::tools
