// dlm/cluster_test_util.h — for tests only: two ClusterLockServices over ZeroMQ on
// 127.0.0.1, members of one view (epoch 1, nodes 1 and 2) set from outside, as the tests
// of the lock service, the advisory locks and the file system's two-node cases use them.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <functional>
#include <memory>
#include <vector>

#include "common/test_util.h"
#include "dlm/cluster_lock_service.h"

namespace sharedfs::dlm::testing {

// `hook_for(i)` is node i's flush hook (i = 0, 1). Failures are test failures; a service
// that did not start is null.
inline std::array<std::unique_ptr<ClusterLockService>, 2> start_two_lock_services(
    const std::function<ClusterLockService::FlushHook(int node)>& hook_for) {
  std::vector<Peer> peers;
  for (uint32_t i = 1; i <= 2; ++i) {
    peers.push_back(Peer{NodeId(i), fmt::format("tcp://127.0.0.1:{}", sharedfs::testing::free_port())});
  }
  const Membership ms{1, {Member{NodeId(1), 1}, Member{NodeId(2), 1}}};
  std::array<std::unique_ptr<ClusterLockService>, 2> svc;
  for (int i = 0; i < 2; ++i) {
    auto s = ClusterLockService::start(
        DlmNodeOptions{ms.members[i], peers, "two-node-test-secret", /*retransmit_ms=*/20,
                       /*tick_ms=*/5},
        hook_for(i));
    EXPECT_OK(s);
    if (!s) return {};
    svc[i] = std::move(s).value();
  }
  for (auto& s : svc) EXPECT_OK(s->node().set_membership(ms));
  return svc;
}

}  // namespace sharedfs::dlm::testing
