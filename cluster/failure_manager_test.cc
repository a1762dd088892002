// The parts of failure handling that need no cluster: who may fence when (partitions and
// ties), how a node registers on the device, and how disk heartbeats are watched. The
// whole of it (kill, partition, replay, rejoin) runs in tests/posix/failure_test.cc.
#include "cluster/failure_manager.h"

#include <gtest/gtest.h>

#include "common/test_util.h"

namespace sharedfs::cluster {
namespace {

using std::chrono::milliseconds;
using Ids = std::vector<NodeId>;

std::map<NodeId, milliseconds> still(std::initializer_list<std::pair<uint32_t, int>> s) {
  std::map<NodeId, milliseconds> out;
  for (auto [id, ms] : s) out[NodeId(id)] = milliseconds(ms);
  return out;
}
Ids ids(std::initializer_list<uint32_t> v) {
  Ids out;
  for (uint32_t i : v) out.push_back(NodeId(i));
  return out;
}

TEST(MayFenceNow, TheLargerSideFencesAtOnce) {
  EXPECT_TRUE(may_fence_now(ids({1, 2}), ids({3}), still({{3, 0}}), milliseconds(5000)));
  EXPECT_TRUE(may_fence_now(ids({2, 3}), ids({1}), still({{1, 0}}), milliseconds(5000)));
}

TEST(MayFenceNow, OnATieTheSideWithTheLowestIdFencesAtOnce) {
  EXPECT_TRUE(may_fence_now(ids({1}), ids({2}), still({{2, 0}}), milliseconds(5000)));
  EXPECT_FALSE(may_fence_now(ids({2}), ids({1}), still({{1, 0}}), milliseconds(5000)));
  EXPECT_TRUE(may_fence_now(ids({1, 4}), ids({2, 3}), still({}), milliseconds(5000)));
}

TEST(MayFenceNow, TheSmallerSideFencesOnlyNodesWhoseDiskHeartbeatStopped) {
  // A live majority still writes its heartbeats: never race it.
  EXPECT_FALSE(may_fence_now(ids({3}), ids({1, 2}), still({{1, 100}, {2, 100}}), milliseconds(1500)));
  // One of them still beats.
  EXPECT_FALSE(may_fence_now(ids({3}), ids({1, 2}), still({{1, 9000}, {2, 200}}), milliseconds(1500)));
  // Both dead (killed, powered off): the survivor goes on alone.
  EXPECT_TRUE(may_fence_now(ids({3}), ids({1, 2}), still({{1, 9000}, {2, 1500}}), milliseconds(1500)));
  EXPECT_TRUE(may_fence_now(ids({2}), ids({1}), still({{1, 1600}}), milliseconds(1500)));
  // Never sampled: not known to be still.
  EXPECT_FALSE(may_fence_now(ids({2}), ids({1}), still({}), milliseconds(1500)));
}

class DeviceFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("failure-manager");
    image_ = (dir_ / "disk.img").string();
    testing::make_sparse_file(image_, 1 << 20);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  device::OpenDevice open(uint32_t node) {
    auto d = device::open_file_device(image_, {.host = device::HostId::for_node(kCluster, node)});
    EXPECT_TRUE(d.is_ok()) << d.status().to_string();
    return std::move(*d);
  }
  static device::ReservationKey key(uint32_t node) {
    return device::node_reservation_key("failtest", node);
  }
  static constexpr uint64_t kCluster = 0x77;
  std::filesystem::path dir_;
  std::string image_;
};

TEST_F(DeviceFixture, TheFirstNodeTakesTheReservationAndTheOthersRegister) {
  auto a = open(1);
  auto b = open(2);
  ASSERT_OK(register_node(*a.reservations, key(1)));
  ASSERT_OK(register_node(*b.reservations, key(2)));
  ASSERT_OK(register_node(*b.reservations, key(2)));  // again: nothing changes
  auto rep = b.reservations->report();
  ASSERT_TRUE(rep.is_ok());
  EXPECT_EQ(rep->type, device::ReservationType::kWriteExclusiveRegistrantsOnly);
  ASSERT_NE(rep->holder(), nullptr);
  EXPECT_EQ(rep->holder()->key, key(1));
  EXPECT_EQ(rep->registrants.size(), 2u);

  // The holder leaves cleanly: the reservation goes with it and the next node to register
  // takes it again.
  ASSERT_OK(unregister_node(*a.reservations, key(1)));
  rep = b.reservations->report();
  ASSERT_TRUE(rep.is_ok());
  EXPECT_EQ(rep->type, device::ReservationType::kNone);
  ASSERT_OK(register_node(*a.reservations, key(1)));
  rep = b.reservations->report();
  ASSERT_TRUE(rep.is_ok());
  EXPECT_EQ(rep->type, device::ReservationType::kWriteExclusiveRegistrantsOnly);
}

TEST_F(DeviceFixture, ForeignReservationTypeIsRefused) {
  auto a = open(1);
  ASSERT_OK(a.reservations->register_key(42));
  ASSERT_OK(a.reservations->acquire(42, device::ReservationType::kExclusiveAccess));
  auto b = open(2);
  const Status st = register_node(*b.reservations, key(2));
  EXPECT_EQ(st.code(), Code::kBusy) << st.to_string();
}

TEST_F(DeviceFixture, DiskHeartbeatsTellWhichCountersStopped) {
  auto dev = open(1);
  format::Superblock sb;
  sb.geo.block_size = 4096;
  sb.geo.slots = 3;
  sb.geo.heartbeat_start = 2;
  auto beat = [&](uint32_t slot, uint64_t counter) {
    format::Heartbeat hb;
    hb.slot = slot;
    hb.node_id = slot + 1;
    hb.counter = counter;
    hb.state = format::HeartbeatState::kMounted;
    device::AlignedBuffer b(4096);
    hb.encode(b.span(), {sb.geo.heartbeat_blkno(slot), sb.fs_tag()});
    ASSERT_OK(dev.io->write(sb.geo.heartbeat_blkno(slot) * 4096, b.span()));
  };
  for (uint32_t s = 0; s < 3; ++s) beat(s, 1);
  DiskHeartbeats beats;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_OK(beats.sample(*dev.io, sb, t0));
  EXPECT_EQ(beats.still_for(0, t0), milliseconds(0));
  beat(0, 2);  // slot 0 beats on, slots 1 and 2 stop
  ASSERT_OK(beats.sample(*dev.io, sb, t0 + milliseconds(700)));
  EXPECT_EQ(beats.still_for(0, t0 + milliseconds(700)), milliseconds(0));
  EXPECT_EQ(beats.still_for(1, t0 + milliseconds(700)), milliseconds(700));
  EXPECT_EQ(beats.still_for(2, t0 + milliseconds(1000)), milliseconds(1000));
  ASSERT_EQ(beats.slots().size(), 3u);
  EXPECT_EQ(beats.slots()[0].beat.counter, 2u);
  EXPECT_EQ(beats.still_for(7, t0), milliseconds(0));  // no such slot
}

}  // namespace
}  // namespace sharedfs::cluster
