// Network partitions (issue 6, docs/failure.md): each node's daemon runs in a network
// namespace of its own, joined by veth pairs to a bridge in another namespace; the test
// cuts a node's link. Exactly one side survives: the larger one, or on a 1-1 split the one
// with the lowest node id. The cut-off node withdraws, and no write it issued after the
// fence is on the device (the emulated reservations enforce it). After the link heals, the
// node is restarted and rejoins. The namespaces are removed at the end.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/posix/failure_util.h"
#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using namespace std::chrono_literals;
using testing::MountedCluster;
using testing::run_command;
using testing::slurp;
using testing::wait_for_log;

// n namespaces "<p>n<i>" with address 10.231.<net>.<i>/24 on a veth whose peer sits on a
// bridge in namespace "<p>br".
class Namespaces {
 public:
  explicit Namespaces(int n) : n_(n) {
    prefix_ = "sfp" + std::to_string(getpid() % 100000);
    const int net = getpid() % 200 + 20;
    ok_ = sh("ip netns add " + br()) &&
          sh(ip_in(br()) + "link add br0 type bridge") &&
          sh(ip_in(br()) + "link set br0 up");
    for (int i = 1; ok_ && i <= n; ++i) {
      const std::string ns = node_ns(i), v = prefix_ + "v" + std::to_string(i), b = peer(i);
      hosts_.push_back("10.231." + std::to_string(net) + "." + std::to_string(i));
      ok_ = sh("ip netns add " + ns) && sh("ip link add " + v + " type veth peer name " + b) &&
            sh("ip link set " + v + " netns " + ns) && sh("ip link set " + b + " netns " + br()) &&
            sh(ip_in(br()) + "link set " + b + " master br0 up") &&
            sh(ip_in(ns) + "addr add " + hosts_.back() + "/24 dev " + v) &&
            sh(ip_in(ns) + "link set " + v + " up") && sh(ip_in(ns) + "link set lo up");
    }
  }
  ~Namespaces() {
    for (int i = 1; i <= n_; ++i) run_command("ip netns del " + node_ns(i) + " 2>/dev/null");
    run_command("ip netns del " + br() + " 2>/dev/null");
  }
  bool ok() const { return ok_; }
  const std::vector<std::string>& hosts() const { return hosts_; }
  std::vector<std::string> enter(int node) const {
    return {"nsenter", "--net=/run/netns/" + node_ns(node)};
  }
  void cut(int node) { EXPECT_TRUE(sh(ip_in(br()) + "link set " + peer(node) + " down")); }
  void heal(int node) { EXPECT_TRUE(sh(ip_in(br()) + "link set " + peer(node) + " up")); }

 private:
  static bool sh(const std::string& cmd) {
    auto r = run_command(cmd + " 2>&1");
    if (r.rc != 0) std::fprintf(stderr, "%s: %s\n", cmd.c_str(), r.out.c_str());
    return r.rc == 0;
  }
  // `ip` inside namespace `ns`. Not `ip -n`: that also makes a mount namespace and
  // remounts / as a slave, which fails where / is not a mount point (a chroot).
  static std::string ip_in(const std::string& ns) { return "nsenter --net=/run/netns/" + ns + " ip "; }
  std::string br() const { return prefix_ + "br"; }
  std::string node_ns(int i) const { return prefix_ + "n" + std::to_string(i); }
  std::string peer(int i) const { return prefix_ + "b" + std::to_string(i); }

  int n_;
  std::string prefix_;
  std::vector<std::string> hosts_;
  bool ok_ = false;
};

int64_t wall_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// The wall-clock time of the first log line holding `needle` ("[2026-11-23 19:38:24.729] ..."),
// in ns; -1 if none.
int64_t log_time(const std::string& log, const std::string& needle) {
  const size_t at = log.find(needle);
  if (at == std::string::npos) return -1;
  const size_t start = log.rfind('\n', at) == std::string::npos ? 0 : log.rfind('\n', at) + 1;
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(log.c_str() + start, "[%d-%d-%d %d:%d:%d.%d]", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7) {
    return -1;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  tm.tm_isdst = -1;
  return int64_t{mktime(&tm)} * 1000000000 + int64_t{ms} * 1000000;
}

std::unique_ptr<MountedCluster> cluster_in(Namespaces& ns, int nodes) {
  auto c = std::make_unique<MountedCluster>(nodes, uint64_t{1} << 30, testing::ClusterTimings{},
                                            ns.hosts());
  for (int i = 1; i <= nodes; ++i) c->daemon(i).set_prefix(ns.enter(i));
  return c;
}

TEST(PartitionTest, TheMajoritySurvivesAndTheCutOffNodeWritesNothingAfterTheFence) {
  Namespaces ns(3);
  ASSERT_TRUE(ns.ok()) << "could not create the network namespaces (ip netns, veth, bridge: root "
                          "and iproute2 are needed)";
  auto c = cluster_in(ns, 3);
  ASSERT_TRUE(c->mount_all());
  testing::spit(c->path(1, "before"), "one");
  EXPECT_EQ(slurp(c->path(3, "before")), "one");

  // Node 3 keeps writing numbered 4 KiB blocks; each one's issue time is noted before the
  // write is issued.
  ASSERT_EQ(mkdir(c->path(3, "cut").c_str(), 0755), 0);
  const int fd = open(c->path(3, "cut/f").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fsync(fd), 0);  // the file survives node 3; what it writes after the fence not
  ASSERT_TRUE(testing::fsync_path(c->path(3, "cut")));
  ASSERT_TRUE(testing::fsync_path(c->mnt(3)));
  std::mutex mu;
  std::map<int, int64_t> issued;  // seq -> wall ns
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    char block[4096];
    int failures = 0;
    for (int seq = 0; !stop && failures < 20; ++seq) {
      std::memset(block, '.', sizeof block);
      std::snprintf(block, sizeof block, "N3CUT:%08d:", seq);
      {
        std::lock_guard l(mu);
        issued[seq] = wall_ns();
      }
      if (pwrite(fd, block, sizeof block, off_t{seq % 64} * 4096) != sizeof block) {
        ++failures;
        std::this_thread::sleep_for(50ms);
      }
    }
  });
  std::this_thread::sleep_for(500ms);
  ns.cut(3);
  const bool fenced = wait_for_log(c->log(1), "fenced node 3", 15s);
  const bool withdrew = wait_for_log(c->log(3), "withdraws", 15s);
  std::this_thread::sleep_for(500ms);  // node 3 goes on trying
  stop = true;
  writer.join();
  close(fd);
  ASSERT_TRUE(fenced) << slurp(c->log(1));
  ASSERT_TRUE(withdrew) << slurp(c->log(3));
  EXPECT_EQ(slurp(c->log(1)).find("withdraws"), std::string::npos);
  EXPECT_EQ(slurp(c->log(2)).find("withdraws"), std::string::npos);
  // The fence returned before its log line was written.
  const int64_t fence = log_time(slurp(c->log(1)), "fenced node 3");
  ASSERT_GT(fence, 0);
  // Every block of node 3's on the device was issued before the fence.
  const std::string image = slurp(c->image());
  int on_disk = 0, late = 0, issued_after = 0;
  std::string late_ones;
  {
    std::lock_guard l(mu);
    for (const auto& [seq, t] : issued) issued_after += t > fence;
    for (size_t at = image.find("N3CUT:"); at != std::string::npos; at = image.find("N3CUT:", at + 1)) {
      const int seq = std::atoi(image.c_str() + at + 6);
      ++on_disk;
      auto it = issued.find(seq);
      // The log's time is cut to the millisecond: a write issued within that millisecond
      // may have come before the fence.
      if (it != issued.end() && it->second > fence + 1000000) {
        ++late;
        late_ones += " seq " + std::to_string(seq) + " issued " +
                     std::to_string((it->second - fence) / 1000) + " us after";
      }
    }
  }
  EXPECT_GT(on_disk, 0);
  EXPECT_GT(issued_after, 0) << "node 3 issued no write after the fence: nothing was tested";
  EXPECT_EQ(late, 0) << late << " blocks written after the fence reached the device:" << late_ones;
  // The majority goes on, also with what node 3 held.
  testing::spit(c->path(1, "cut/after"), "majority");
  EXPECT_EQ(slurp(c->path(2, "cut/after")), "majority");
  EXPECT_TRUE(testing::write_fsync(c->path(2, "cut/f"), "survivor", O_TRUNC));

  // Heal; the withdrawn node is unmounted (its daemon exits with an error), restarted, rejoins.
  ns.heal(3);
  EXPECT_FALSE(c->daemon(3).stop(/*expect_clean=*/false));
  ASSERT_TRUE(c->mount(3)) << slurp(c->log(3));
  EXPECT_EQ(slurp(c->path(3, "cut/after")), "majority");
  testing::spit(c->path(3, "back"), "three");
  EXPECT_EQ(slurp(c->path(1, "back")), "three");
  EXPECT_EQ(c->unmount_all(), 0);
}

TEST(PartitionTest, OnATwoNodeSplitOnlyTheLowestIdSurvives) {
  Namespaces ns(2);
  ASSERT_TRUE(ns.ok()) << "could not create the network namespaces (ip netns, veth, bridge: root "
                          "and iproute2 are needed)";
  auto c = cluster_in(ns, 2);
  ASSERT_TRUE(c->mount_all());
  ASSERT_TRUE(testing::write_fsync(c->path(2, "f"), "two", O_TRUNC));  // fsync: survives the fence
  ns.cut(1);  // either link: the split is the same
  ASSERT_TRUE(wait_for_log(c->log(1), "fenced node 2", 15s)) << slurp(c->log(1));
  ASSERT_TRUE(wait_for_log(c->log(2), "withdraws", 15s)) << slurp(c->log(2));
  EXPECT_EQ(slurp(c->log(1)).find("withdraws"), std::string::npos);
  EXPECT_EQ(slurp(c->log(2)).find("fenced node 1"), std::string::npos);
  EXPECT_EQ(slurp(c->path(1, "f")), "two");
  testing::spit(c->path(1, "f"), "one");
  EXPECT_NE(slurp(c->path(2, "f")), "one");  // EIO: node 2 answers nothing any more
  ns.heal(1);
  EXPECT_FALSE(c->daemon(2).stop(/*expect_clean=*/false));
  ASSERT_TRUE(c->mount(2)) << slurp(c->log(2));
  EXPECT_EQ(slurp(c->path(2, "f")), "one");
  EXPECT_EQ(c->unmount_all(), 0);
}

}  // namespace
}  // namespace sharedfs
