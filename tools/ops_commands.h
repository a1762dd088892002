// tools/ops_commands.h — `sharedfs locks` and `sharedfs top`: cluster-wide views built from
// every node's answers, asked through a daemon of this host (tools/node_report.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace sharedfs::tools {

struct OpsTarget {
  std::string config;  // a cluster config: ask that cluster's daemons; empty: the only one
};

// Every resource someone holds or waits for, merged across the nodes: the master's holders
// and waiters (with wait times) beside what each holder does with it. `busy`: only those
// someone waits for. Returns the exit code.
int run_locks(const OpsTarget& target, bool busy, bool as_json, size_t limit);

// Per node and per second: requests by kind and their latency, lock traffic, cache hits,
// device MB/s. `count` refreshes (0: until interrupted), `interval_s` apart.
int run_top(const OpsTarget& target, double interval_s, unsigned count, bool as_json);

}  // namespace sharedfs::tools
