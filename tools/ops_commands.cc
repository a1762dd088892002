#include "tools/ops_commands.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <vector>

#include "cluster/cluster_config.h"
#include "tools/command_error.h"
#include "tools/control_socket.h"

namespace sharedfs::tools {
namespace {

using json = nlohmann::json;

// Asks the cluster `target` names (every node, through a daemon of this host).
Result<json> ask_cluster(const OpsTarget& target, json question) {
  std::optional<uint64_t> id;
  if (!target.config.empty()) {
    ASSIGN_OR_RETURN(auto config, cluster::load_cluster_config(target.config));
    id = config.id;
  }
  question["cluster"] = true;
  ASSIGN_OR_RETURN(auto text, ask_any_daemon(id, question.dump(), std::chrono::seconds(5)));
  json a = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!a.is_object()) return make_status(Code::kCorruption, "the daemon's answer is not JSON");
  if (a.contains("error")) {
    return make_status(Code::kInvalidArgument, "the daemon says: {}",
                       a["error"].get<std::string>());
  }
  return a;
}

std::string ids_text(const json& ids) {
  std::vector<std::string> parts;
  for (const auto& i : ids) parts.push_back(std::to_string(i.get<uint32_t>()));
  return parts.empty() ? "none" : fmt::format("{}", fmt::join(parts, ","));
}

std::string seconds_text(uint64_t ms) {
  return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000);
}

}  // namespace

int run_locks(const OpsTarget& target, bool busy, bool as_json, size_t limit) {
  auto answer = ask_cluster(target, json{{"query", "locks"}, {"busy", busy}, {"limit", limit}});
  if (!answer) return fail(answer.status());
  const json& a = *answer;
  // One row per resource: the master's view, and each node's own.
  struct Row {
    std::optional<uint32_t> master;
    json granted = json::array();
    json waiting = json::array();
    json held_back_for = json::array();
    std::map<uint32_t, json> cached;   // node -> its cached lock
    std::map<uint32_t, json> pending;  // node -> its request in progress
    uint64_t longest_wait_ms = 0;
    uint64_t ranges_held = 0, ranges_waiting = 0;
  };
  std::map<std::string, Row> rows;
  bool truncated = false;
  for (const auto& n : a["nodes"]) {
    if (!n.value("dlm", false)) continue;
    const uint32_t node = n["node"];
    truncated = truncated || n.value("truncated", false);
    for (const auto& m : n["mastered"]) {
      Row& r = rows[m["resource"].get<std::string>()];
      r.master = node;
      r.granted = m["granted"];
      r.waiting = m["waiting"];
      r.held_back_for = m["held_back_for"];
      r.ranges_held = m.value("ranges_held", 0);
      r.ranges_waiting = m.value("ranges_waiting", 0);
      for (const auto& w : m["waiting"]) {
        r.longest_wait_ms = std::max<uint64_t>(r.longest_wait_ms, w["waited_ms"]);
      }
    }
    for (const auto& c : n["cached"]) rows[c["resource"].get<std::string>()].cached[node] = c;
    for (const auto& p : n["pending"]) {
      Row& r = rows[p["resource"].get<std::string>()];
      r.pending[node] = p;
      r.longest_wait_ms = std::max<uint64_t>(r.longest_wait_ms, p["waited_ms"]);
    }
  }
  std::vector<std::pair<std::string, Row*>> order;
  for (auto& [name, row] : rows) order.emplace_back(name, &row);
  std::stable_sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
    return x.second->longest_wait_ms > y.second->longest_wait_ms;
  });

  json out{{"cluster", a["cluster"]},
           {"members", a["members"]},
           {"unanswered", a["unanswered"]},
           {"busy_only", busy},
           {"truncated", truncated}};
  json resources = json::array();
  for (const auto& [name, r] : order) {
    json holders = json::array();
    for (const auto& g : r->granted) {
      const uint32_t node = g["node"];
      json h{{"node", node}, {"mode", g["mode"]}};
      if (auto it = r->cached.find(node); it != r->cached.end()) {
        h["users"] = it->second["users"];
        h["flushing"] = it->second["flushing"];
        h["local_waiters"] = it->second["local_waiters"];
      }
      holders.push_back(h);
    }
    // Without the master's answer (it did not answer, or the view was cut by --busy), the
    // holders' own word is all there is.
    if (!r->master) {
      for (const auto& [node, c] : r->cached) {
        holders.push_back({{"node", node},
                           {"mode", c["mode"]},
                           {"users", c["users"]},
                           {"flushing", c["flushing"]},
                           {"local_waiters", c["local_waiters"]}});
      }
    }
    json waiters = json::array();
    for (const auto& w : r->waiting) {
      waiters.push_back({{"node", w["node"]},
                         {"mode", w["mode"]},
                         {"converting", w["converting"]},
                         {"waited_ms", w["waited_ms"]}});
    }
    if (!r->master) {
      for (const auto& [node, p] : r->pending) {
        waiters.push_back({{"node", node},
                           {"mode", p["wanted"]},
                           {"converting", !p["granted"].is_null()},
                           {"waited_ms", p["waited_ms"]}});
      }
    }
    json res{{"resource", name},
             {"master", r->master ? json(*r->master) : json(nullptr)},
             {"holders", holders},
             {"waiters", waiters},
             {"held_back_for", r->held_back_for},
             {"longest_wait_ms", r->longest_wait_ms}};
    if (r->ranges_held != 0 || r->ranges_waiting != 0) {
      res["ranges_held"] = r->ranges_held;
      res["ranges_waiting"] = r->ranges_waiting;
    }
    resources.push_back(res);
  }
  out["resources"] = resources;
  if (as_json) {
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("cluster \"{}\": members {}, not answering: {}{}\n", a["cluster"].get<std::string>(),
             ids_text(a["members"]), ids_text(a["unanswered"]),
             truncated ? " (lists cut at --limit)" : "");
  if (resources.empty()) {
    fmt::print("{}\n", busy ? "no lock is waited for" : "no locks");
    return 0;
  }
  fmt::print("{:<24}  {:>6}  {:<40}  {}\n", "resource", "master", "holders (node mode: users)",
             "waiting (node mode: for)");
  for (const auto& res : resources) {
    std::vector<std::string> hs, ws;
    for (const auto& h : res["holders"]) {
      std::string t = fmt::format("{} {}", h["node"].get<uint32_t>(),
                                  h["mode"].is_null() ? "-" : h["mode"].get<std::string>());
      if (h.contains("users")) t += fmt::format(": {} users", h["users"].get<int>());
      if (h.value("flushing", false)) t += ", flushing";
      hs.push_back(t);
    }
    for (const auto& w : res["waiters"]) {
      ws.push_back(fmt::format(
          "{} {}{}: {}", w["node"].get<uint32_t>(), w["mode"].get<std::string>(),
          w["converting"].get<bool>() ? " (convert)" : "", seconds_text(w["waited_ms"])));
    }
    if (res.contains("ranges_held")) {
      hs.push_back(fmt::format("{} byte ranges", res["ranges_held"].get<uint64_t>()));
      if (res["ranges_waiting"].get<uint64_t>() != 0) {
        ws.push_back(fmt::format("{} range waiters", res["ranges_waiting"].get<uint64_t>()));
      }
    }
    if (!res["held_back_for"].empty()) {
      ws.push_back(fmt::format("held back until node {}'s journal is replayed",
                               ids_text(res["held_back_for"])));
    }
    fmt::print("{:<24}  {:>6}  {:<40}  {}\n", res["resource"].get<std::string>(),
               res["master"].is_null() ? "?" : std::to_string(res["master"].get<uint32_t>()),
               hs.empty() ? "-" : fmt::format("{}", fmt::join(hs, "; ")),
               ws.empty() ? "-" : fmt::format("{}", fmt::join(ws, "; ")));
  }
  return 0;
}

namespace {

uint64_t at(const json& j, std::initializer_list<const char*> path) {
  const json* p = &j;
  for (const char* k : path) {
    if (!p->is_object() || !p->contains(k)) return 0;
    p = &(*p)[k];
  }
  return p->is_number() ? p->get<uint64_t>() : 0;
}

// Rates between two stats answers of one node.
json rates(const json& before, const json& now) {
  const double dt = static_cast<double>(at(now, {"time_ms"}) - at(before, {"time_ms"})) / 1000.0;
  json r{{"node", now["node"]}, {"interval_s", dt}};
  if (dt <= 0) return r;
  auto per_s = [&](std::initializer_list<const char*> path) {
    return static_cast<double>(at(now, path) - std::min(at(now, path), at(before, path))) / dt;
  };
  uint64_t ops = 0, ops_ns = 0;
  json by_op = json::object();
  if (now.contains("ops")) {
    for (const auto& [op, v] : now["ops"].items()) {
      const uint64_t c =
          v["count"].get<uint64_t>() -
          std::min(v["count"].get<uint64_t>(), at(before, {"ops", op.c_str(), "count"}));
      const uint64_t ns =
          v["sum_ns"].get<uint64_t>() -
          std::min(v["sum_ns"].get<uint64_t>(), at(before, {"ops", op.c_str(), "sum_ns"}));
      if (c == 0) continue;
      ops += c;
      ops_ns += ns;
      by_op[op] = {{"per_s", static_cast<double>(c) / dt},
                   {"avg_ms", static_cast<double>(ns) / static_cast<double>(c) / 1e6}};
    }
  }
  r["ops_per_s"] = static_cast<double>(ops) / dt;
  r["op_avg_ms"] = ops == 0 ? 0.0 : static_cast<double>(ops_ns) / static_cast<double>(ops) / 1e6;
  r["ops"] = by_op;
  r["lock_requests_per_s"] = per_s({"dlm", "lock_requests"});
  r["dlm_messages_per_s"] = per_s({"dlm", "sent"}) + per_s({"dlm", "received"});
  r["lock_cache_hits_per_s"] = per_s({"dlm", "fast_path_hits"});
  r["locks_cached"] = at(now, {"dlm", "locks_cached"});
  r["page_cache_keeps_per_s"] = per_s({"kernel_cache", "keep_cache_opens"});
  r["device_read_mb_s"] = per_s({"device", "read_bytes"}) / 1e6;
  r["device_write_mb_s"] = per_s({"device", "write_bytes"}) / 1e6;
  r["fuse_read_mb_s"] = per_s({"fuse_bytes", "read"}) / 1e6;
  r["fuse_write_mb_s"] = per_s({"fuse_bytes", "written"}) / 1e6;
  r["commits_per_s"] = per_s({"fs", "commits"});
  r["revokes_per_s"] = per_s({"fs", "lock_flushes"});
  return r;
}

std::string top_ops(const json& by_op) {
  std::vector<std::pair<double, std::string>> v;
  for (const auto& [op, x] : by_op.items()) v.emplace_back(x["per_s"].get<double>(), op);
  std::sort(v.rbegin(), v.rend());
  std::vector<std::string> parts;
  for (size_t i = 0; i < v.size() && i < 3; ++i)
    parts.push_back(fmt::format("{} {:.0f}", v[i].second, v[i].first));
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

int run_top(const OpsTarget& target, double interval_s, unsigned count, bool as_json) {
  if (interval_s <= 0) return fail(make_status(Code::kInvalidArgument, "--interval must be > 0"));
  const bool tty = ::isatty(STDOUT_FILENO) == 1 && !as_json;
  std::map<uint32_t, json> last;
  auto first = ask_cluster(target, json{{"query", "stats"}});
  if (!first) return fail(first.status());
  for (const auto& n : (*first)["nodes"]) last[n["node"].get<uint32_t>()] = n;
  for (unsigned i = 0; count == 0 || i < count; ++i) {
    std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
    auto answer = ask_cluster(target, json{{"query", "stats"}});
    if (!answer) return fail(answer.status());
    json frame{{"cluster", (*answer)["cluster"]}, {"unanswered", (*answer)["unanswered"]}};
    json nodes = json::array();
    for (const auto& n : (*answer)["nodes"]) {
      const uint32_t id = n["node"];
      if (auto it = last.find(id); it != last.end()) nodes.push_back(rates(it->second, n));
      last[id] = n;
    }
    frame["nodes"] = nodes;
    if (as_json) {
      fmt::print("{}\n", frame.dump());
      std::fflush(stdout);
      continue;
    }
    if (tty) fmt::print("\033[H\033[2J");  // refresh in place
    fmt::print("sharedfs top: cluster \"{}\", every {:.1f}s{}\n",
               frame["cluster"].get<std::string>(), interval_s,
               frame["unanswered"].empty()
                   ? ""
                   : fmt::format(", not answering: {}", ids_text(frame["unanswered"])));
    fmt::print("{:>4} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}  {}\n", "node", "ops/s",
               "avg ms", "locks/s", "msgs/s", "cachehit", "dev rMB/s", "dev wMB/s", "commits/s",
               "revoke/s", "busiest ops/s");
    for (const auto& r : nodes) {
      fmt::print(
          "{:>4} {:>9.0f} {:>8.3f} {:>9.1f} {:>9.1f} {:>9.0f} {:>9.1f} {:>9.1f} {:>9.1f} {:>8.1f}  "
          "{}\n",
          r["node"].get<uint32_t>(), r.value("ops_per_s", 0.0), r.value("op_avg_ms", 0.0),
          r.value("lock_requests_per_s", 0.0), r.value("dlm_messages_per_s", 0.0),
          r.value("lock_cache_hits_per_s", 0.0), r.value("device_read_mb_s", 0.0),
          r.value("device_write_mb_s", 0.0), r.value("commits_per_s", 0.0),
          r.value("revokes_per_s", 0.0), r.contains("ops") ? top_ops(r["ops"]) : "");
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace sharedfs::tools
