// tools/metrics_endpoint.h — the daemon's optional Prometheus endpoint (mount option
// `metrics=ADDR:PORT`, e.g. 127.0.0.1:9464): GET /metrics in the text exposition format,
// through prometheus-cpp's Exposer. Every figure is read at scrape time from the counters
// and histograms the modules keep anyway (tools/node_report.h's DaemonState), so nothing
// on the request path knows Prometheus. Names are `sharedfs_*` in base units (seconds,
// bytes); docs/operations.md lists the families.
//
// Thread-safety: scrapes run on the Exposer's threads; they read atomics and ask the DLM
// driver thread (DlmNode::call) for its tables.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "tools/node_report.h"

namespace prometheus {
class Exposer;
}

namespace sharedfs::tools {

class MetricsEndpoint {
 public:
  // Listens on `address` ("HOST:PORT"; port 0 picks a free one). `state` must outlive the
  // endpoint.
  static Result<std::unique_ptr<MetricsEndpoint>> start(const std::string& address,
                                                        const DaemonState& state);
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // The port it listens on.
  int port() const;

 private:
  class Collector;
  MetricsEndpoint() = default;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace sharedfs::tools
