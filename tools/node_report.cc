#include "tools/node_report.h"

#include <fmt/format.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "dlm/lock_manager.h"

namespace sharedfs::tools {
namespace {

using json = nlohmann::json;

constexpr size_t kDefaultLimit = 1000;
constexpr auto kDefaultClusterTimeout = std::chrono::milliseconds(2000);

json error_answer(const std::string& what) { return json{{"error", what}}; }

// "inode:12", "alloc-group:3", "inode:12:posix": what docs/locking.md calls them.
std::string resource_label(const dlm::ResourceName& r) {
  std::string space = r.type <= static_cast<uint8_t>(dlm::LockSpace::kOpen)
                          ? std::string(dlm::lock_space_name(static_cast<dlm::LockSpace>(r.type)))
                          : fmt::format("type{}", r.type);
  std::string out = fmt::format("{}:{}", space, r.id);
  if (r.tag[0] != '\0') out += ":" + std::string(r.tag_view());
  return out;
}

std::string mode_label(dlm::LockMode m) { return std::string(dlm::lock_mode_name(m)); }

std::string op_label(dlm::Op op) {
  switch (op) {
    case dlm::Op::kLock:
      return "lock";
    case dlm::Op::kConvert:
      return "convert";
    case dlm::Op::kUnlock:
      return "unlock";
    default:
      return "other";
  }
}

json histogram_sum(const LatencyHistogram& h) {
  const auto s = h.snapshot();
  return json{{"count", s.count}, {"sum_ns", s.sum_ns}};
}

json status_of(const DaemonState& st, dlm::LockManager* lm) {
  json j;
  j["node"] = st.node;
  j["cluster"] = st.cluster;
  j["cluster_id"] = fmt::format("{:#x}", st.cluster_id);
  j["version"] = SHAREDFS_VERSION;
  j["pid"] = ::getpid();
  j["device"] = st.device;
  j["mountpoint"] = st.mountpoint;
  j["uptime_s"] = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now() - st.started)
                      .count();
  const std::string withdrawn = st.withdrawn_reason ? st.withdrawn_reason() : std::string();
  fs::FileSystem* f = st.fs != nullptr ? st.fs->load() : nullptr;
  if (f != nullptr) {
    const auto s = f->stats();
    j["journal"] = {{"used_blocks", s.journal_used_blocks},
                    {"capacity_blocks", s.journal_capacity_blocks},
                    {"percent", s.journal_capacity_blocks == 0
                                    ? 0.0
                                    : 100.0 * static_cast<double>(s.journal_used_blocks) /
                                          static_cast<double>(s.journal_capacity_blocks)}};
  }
  std::string state = f != nullptr ? "mounted" : "mounting";
  if (st.locks != nullptr && lm != nullptr) {
    const auto ms = st.locks->node().membership_status_on_driver();
    json members = json::array();
    for (const auto& m : ms.view.membership.members) members.push_back(m.id.value);
    json awaiting = json::array();
    for (const auto& m : ms.awaiting_replay) awaiting.push_back(m.id.value);
    json peers = json::array();
    for (const auto& p : ms.peers) {
      json pj{{"node", p.id.value}, {"alive", p.alive}, {"leaving", p.leaving}};
      pj["heard_ms_ago"] = p.heard_ago_ms ? json(*p.heard_ago_ms) : json(nullptr);
      peers.push_back(pj);
    }
    j["membership"] = {{"joined", ms.joined},
                       {"expelled", ms.expelled},
                       {"coordinator", ms.coordinator},
                       {"epoch", ms.view.membership.epoch},
                       {"members", members},
                       {"awaiting_replay", awaiting},
                       {"dlm_recovering", lm->recovering()},
                       {"peers", peers}};
    // Recovery in progress: the DLM rebuilding after a change, or a departed node whose
    // journal is not replayed yet (its locks are held back until it is).
    j["recovering"] = lm->recovering() || !ms.awaiting_replay.empty();
    if (!ms.joined) state = "joining";
    if (ms.expelled) state = "expelled";
  } else {
    j["recovering"] = false;
  }
  if (!withdrawn.empty()) {
    state = "withdrawn";
    j["withdrawn_reason"] = withdrawn;
  }
  j["state"] = state;
  return j;
}

json locks_of(const DaemonState& st, dlm::LockManager* lm, dlm::LockCache* cache, bool busy,
              size_t limit) {
  json j{{"node", st.node}};
  if (lm == nullptr || cache == nullptr) {
    j["dlm"] = false;  // a node alone: its locks are between its own threads
    return j;
  }
  j["dlm"] = true;
  const auto snap = lm->snapshot(busy, limit);
  j["epoch"] = lm->epoch();
  j["mastered_total"] = snap.mastered_total;
  json mastered = json::array();
  for (const auto& m : snap.mastered) {
    json granted = json::array();
    for (const auto& g : m.granted)
      granted.push_back({{"node", g.owner.id.value}, {"mode", mode_label(g.mode)}});
    json waiting = json::array();
    for (const auto& w : m.waiting) {
      waiting.push_back({{"node", w.owner.id.value},
                         {"mode", mode_label(w.mode)},
                         {"converting", w.converting},
                         {"waited_ms", w.waited}});
    }
    json held_back = json::array();
    for (const auto& h : m.held_back_for) held_back.push_back(h.id.value);
    json r{{"resource", resource_label(m.name)},
           {"granted", granted},
           {"waiting", waiting},
           {"held_back_for", held_back}};
    if (m.ranges_held != 0 || m.ranges_waiting != 0) {
      r["ranges_held"] = m.ranges_held;
      r["ranges_waiting"] = m.ranges_waiting;
    }
    mastered.push_back(r);
  }
  j["mastered"] = mastered;
  json pending = json::array();
  for (const auto& p : snap.pending) {
    pending.push_back({{"resource", resource_label(p.name)},
                       {"op", op_label(p.op)},
                       {"granted", p.granted ? json(mode_label(*p.granted)) : json(nullptr)},
                       {"wanted", mode_label(p.wanted)},
                       {"waited_ms", p.waited}});
  }
  j["pending"] = pending;
  size_t cached_total = 0;
  json cached = json::array();
  for (const auto& c : cache->snapshot(busy, limit, &cached_total)) {
    json cj{{"resource", resource_label(c.name)},
            {"mode", c.granted ? json(mode_label(*c.granted)) : json(nullptr)},
            {"users", c.users},
            {"local_waiters", c.local_waiters},
            {"flushing", c.flushing}};
    cj["wanted_elsewhere"] =
        c.wanted_elsewhere ? json(mode_label(*c.wanted_elsewhere)) : json(nullptr);
    cached.push_back(cj);
  }
  j["cached_total"] = cached_total;
  j["cached"] = cached;
  j["truncated"] = snap.truncated || (cached.size() >= limit && cached_total > limit);
  return j;
}

json stats_of(const DaemonState& st, dlm::LockManager* lm, dlm::LockCache* cache) {
  json j{{"node", st.node}};
  j["time_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now().time_since_epoch())
                     .count();
  if (st.requests != nullptr) {
    json ops = json::object();
    for (size_t i = 0; i < static_cast<size_t>(fs::fuse::FuseOp::kCount); ++i) {
      const auto s = st.requests->latency[i].snapshot();
      if (s.count == 0) continue;
      ops[std::string(fs::fuse::fuse_op_name(static_cast<fs::fuse::FuseOp>(i)))] = {
          {"count", s.count}, {"sum_ns", s.sum_ns}};
    }
    j["ops"] = ops;
    j["kernel_cache"] = {{"keep_cache_opens", st.requests->keep_cache_opens.load()},
                         {"entry_invalidations", st.requests->entry_invalidations.load()},
                         {"attr_invalidations", st.requests->attr_invalidations.load()}};
    j["fuse_bytes"] = {{"read", st.requests->read_bytes.load()},
                       {"written", st.requests->write_bytes.load()}};
  }
  if (st.io != nullptr) {
    const auto c = st.io->counts();
    j["device"] = {{"reads", c.reads},
                   {"read_bytes", c.read_bytes},
                   {"writes", c.writes},
                   {"write_bytes", c.write_bytes},
                   {"flushes", c.flushes}};
  }
  if (fs::FileSystem* f = st.fs != nullptr ? st.fs->load() : nullptr) {
    const auto s = f->stats();
    j["fs"] = {{"commits", s.commits},
               {"lock_flushes", f->lock_flushes()},
               {"ag_lock_flushes", f->ag_lock_flushes()},
               {"ag_counts_from_value_blocks", f->ag_counts_from_value_blocks()},
               {"journal_used_blocks", s.journal_used_blocks},
               {"journal_capacity_blocks", s.journal_capacity_blocks}};
    j["journal_commits"] = histogram_sum(f->journal_commit_latency());
  }
  if (lm != nullptr && st.locks != nullptr) {
    const auto& d = lm->stats();
    const size_t cached = cache != nullptr ? cache->size() : 0;
    j["dlm"] = {{"sent", d.sent},
                {"received", d.received},
                {"retransmitted", d.retransmitted},
                {"lock_requests", d.requests},
                {"range_requests", d.range_requests},
                {"fast_path_hits", st.locks->fast_path_hits()},
                {"locks_cached", cached},
                {"waits",
                 {{"PR", histogram_sum(st.locks->wait_latency(dlm::LockMode::kPR))},
                  {"EX", histogram_sum(st.locks->wait_latency(dlm::LockMode::kEX))}}}};
  }
  return j;
}

}  // namespace

std::string NodeReporter::answer(const std::string& question, dlm::LockManager* lm,
                                 dlm::LockCache* cache) const {
  const json q = json::parse(question, nullptr, /*allow_exceptions=*/false);
  if (!q.is_object() || !q.contains("query") || !q["query"].is_string()) {
    return error_answer("a question is a JSON object with a \"query\" string").dump();
  }
  const std::string what = q["query"];
  if (what == "ping") return json{{"node", state_.node}, {"pong", true}}.dump();
  if (what == "status") return status_of(state_, lm).dump();
  if (what == "stats") return stats_of(state_, lm, cache).dump();
  if (what == "locks") {
    const bool busy = q.value("busy", false);
    const size_t limit = q.value("limit", kDefaultLimit);
    return locks_of(state_, lm, cache, busy, limit).dump();
  }
  return error_answer(fmt::format("unknown query \"{}\" (ping, status, locks, stats)", what))
      .dump();
}

std::string NodeReporter::handle(const std::string& request) const {
  json q = json::parse(request, nullptr, /*allow_exceptions=*/false);
  if (!q.is_object()) return error_answer("the request is not a JSON object").dump();
  const bool cluster = q.value("cluster", false);
  q.erase("cluster");
  const auto timeout = std::chrono::milliseconds(
      q.value("timeout_ms", static_cast<int64_t>(kDefaultClusterTimeout.count())));
  q.erase("timeout_ms");
  const std::string question = q.dump();
  if (state_.locks == nullptr) {
    std::string own = answer(question, nullptr, nullptr);
    if (!cluster) return own;
    return json{{"cluster", state_.cluster},
                {"members", json::array({state_.node})},
                {"nodes", json::array({json::parse(own)})},
                {"unanswered", json::array()}}
        .dump();
  }
  dlm::DlmNode& node = state_.locks->node();
  if (!cluster) {
    std::string own;
    node.call(
        [&](dlm::LockManager& lm, dlm::LockCache& cache) { own = answer(question, &lm, &cache); });
    return own;
  }
  const auto [asked, answers] = node.query_all(question, timeout);
  json members = json::array();
  json unanswered = json::array();
  for (uint32_t m : asked) {
    members.push_back(m);
    if (!answers.contains(m)) unanswered.push_back(m);
  }
  json nodes = json::array();
  for (const auto& [id, text] : answers) {
    json a = json::parse(text, nullptr, /*allow_exceptions=*/false);
    nodes.push_back(a.is_discarded() ? error_answer(fmt::format("node {}: unreadable answer", id))
                                     : a);
  }
  return json{{"cluster", state_.cluster},
              {"members", members},
              {"nodes", nodes},
              {"unanswered", unanswered}}
      .dump();
}

}  // namespace sharedfs::tools
