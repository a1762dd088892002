// Node failure on a mounted cluster (issue 6, docs/failure.md): a killed node is fenced and
// its journal replayed by a survivor, which then goes on with the files the dead node held;
// a stale journal image never overwrites a newer change; a recovery cut short by a second
// death is finished by the last node; kill-and-restart rounds under load lose nothing that
// was fsync'd; a duplicate node id and a wrong secret are refused. Each test ends with every
// node unmounted and fsck.sharedfs -n clean. The partition tests are in partition_test.cc.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/posix/failure_util.h"
#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using namespace std::chrono_literals;
using testing::FsyncedWrites;
using testing::MountedCluster;
using testing::slurp;
using testing::wait_for_log;
using testing::wait_until_recovered;
using Clock = std::chrono::steady_clock;

// Node `node` of `c` keeps creating files, appending to its log and making directories in
// its own directory, each followed by fsync, and records what fsync made durable. Stops at
// the first error (its node died) or when told.
class Writer {
 public:
  // Works in directory `dir` (created here) of the mount.
  Writer(MountedCluster& c, int node, FsyncedWrites& record, std::string dir)
      : c_(c), node_(node), record_(record), dir_(std::move(dir)) {}
  ~Writer() { stop(); }
  void start() {
    thread_ = std::thread([this] { run(); });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int done() const { return done_.load(); }

 private:
  void run() {
    const std::string& dir = dir_;
    if (mkdir(c_.path(node_, dir).c_str(), 0755) != 0) return;
    std::string log;
    for (int k = 0; !stop_; ++k) {
      bool ok = false;
      switch (k % 3) {
        case 0: {
          const std::string rel = dir + "/f" + std::to_string(k);
          const std::string data = std::string(1000 + 97 * (k % 50), static_cast<char>('a' + k % 26)) +
                                   "|" + rel + "|";
          ok = testing::write_fsync(c_.path(node_, rel), data, O_TRUNC);
          if (ok) record_.file(rel, data);
          break;
        }
        case 1: {
          const std::string line = "node " + std::to_string(node_) + " line " + std::to_string(k) + "\n";
          ok = testing::write_fsync(c_.path(node_, dir + "/log"), line, O_APPEND);
          if (ok) {
            log += line;
            record_.prefix(dir + "/log", log);
          }
          break;
        }
        case 2: {
          const std::string rel = dir + "/d" + std::to_string(k);
          ok = mkdir(c_.path(node_, rel).c_str(), 0755) == 0 && testing::fsync_path(c_.path(node_, dir));
          if (ok) record_.directory(rel);
          break;
        }
      }
      if (!ok) return;
      ++done_;
    }
  }

  MountedCluster& c_;
  const int node_;
  FsyncedWrites& record_;
  std::atomic<bool> stop_{false};
  std::atomic<int> done_{0};
  const std::string dir_;
  std::thread thread_;
};

TEST(FailureTest, KilledNodeIsFencedAndReplayedAndNothingFsyncedIsLost) {
  MountedCluster c(3);
  ASSERT_TRUE(c.mount_all());
  FsyncedWrites record;
  std::vector<std::unique_ptr<Writer>> writers;
  for (int n = 1; n <= 3; ++n) {
    writers.push_back(std::make_unique<Writer>(c, n, record, "w" + std::to_string(n)));
    writers.back()->start();
  }
  std::this_thread::sleep_for(2s);
  // A file node 3 holds in EX at its death: its newest one.
  ASSERT_GT(writers[2]->done(), 3);
  const auto killed = Clock::now();
  c.kill(3);
  writers[2]->stop();
  // The first write of a survivor to a file the dead node held.
  const std::string held = c.path(1, "w3/log");
  ASSERT_TRUE(testing::write_fsync(held, "survivor\n", O_APPEND));
  const auto resumed = Clock::now() - killed;
  const auto limit = std::chrono::milliseconds(c.timings().timeout_ms) + 2s;
  EXPECT_LE(resumed, limit) << "survivor blocked "
                            << std::chrono::duration_cast<std::chrono::milliseconds>(resumed).count()
                            << " ms on the dead node's file";
  std::this_thread::sleep_for(1s);
  writers[0]->stop();
  writers[1]->stop();
  EXPECT_GT(writers[0]->done(), 5);
  EXPECT_GT(writers[1]->done(), 5);
  // Everything fsync'd, by any node (the dead one included), is there, read on node 2.
  record.verify(c, 2);
  EXPECT_TRUE(wait_until_recovered(c, 3, 5s));
  const auto status = c.cli("status --config " + c.config() + " " + c.image());
  EXPECT_EQ(status.rc, 0) << status.out;
  EXPECT_NE(status.out.find("recovered by 1"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("alive"), std::string::npos) << status.out;
  // The survivors' logs (docs/logging.md): one line per event, in order, from the start of
  // the last suspect episode of node 3 (one before the kill may have ended: heard again).
  auto episode = [&](int node) {
    const std::string log = slurp(c.log(node));
    const size_t again = log.rfind("node 3 is heard again");
    return again == std::string::npos ? log : log.substr(again);
  };
  EXPECT_TRUE(wait_for_log(c.log(2), "node 3's journal is replayed", 5s)) << slurp(c.log(2));
  const std::string log1 = episode(1);
  testing::expect_once_in_order(
      log1,
      {"node 3 is suspect", "node 3 declared dead", "node 1: fencing node 3",
       "node 1: fenced node 3", "node 1: replaying node 3's journal",
       "node 1: replayed node 3's journal", "node 1: node 3 recovered"},
      "node 1 (recovers)");
  // The view releasing its locks: after the replay (before or after the slot takeover).
  testing::expect_once_in_order(
      log1, {"node 1: replayed node 3's journal", "node 3's journal is replayed"}, "node 1");
  const std::string log2 = episode(2);
  testing::expect_once_in_order(
      log2, {"node 3 is suspect", "node 3 declared dead", "node 3's journal is replayed"},
      "node 2");
  for (const char* only_the_recovering_node :
       {"fencing node 3", "fenced node 3", "replaying node 3", "replayed node 3",
        "node 3 recovered"}) {
    EXPECT_EQ(log2.find(only_the_recovering_node), std::string::npos) << log2;
  }
  // Node 3 comes back: it says it joined, and so do the others, once each.
  const std::regex joined(R"(node 3 joined cluster "test" \(epoch \d+, members 1,2,3\))");
  auto joins = [&](const std::string& text) {
    return std::distance(std::sregex_iterator(text.begin(), text.end(), joined),
                         std::sregex_iterator());
  };
  size_t before[4];
  for (int n = 1; n <= 3; ++n) before[n] = slurp(c.log(n)).size();
  ASSERT_TRUE(c.mount(3)) << slurp(c.log(3));
  for (int n = 1; n <= 3; ++n) {
    const auto deadline = Clock::now() + 5s;
    std::string since;
    do {
      since = slurp(c.log(n)).substr(before[n]);
      if (joins(since) > 0) break;
      std::this_thread::sleep_for(50ms);
    } while (Clock::now() < deadline);
    EXPECT_EQ(joins(since), 1) << "node " << n << "'s log since node 3's restart:\n" << since;
  }
  EXPECT_EQ(c.unmount_all(), 0);
}

// DESIGN.md §4, stale replay: A changes an inode and gives up its lock, C changes the same
// inode, A dies. After A's journal is replayed the inode holds C's version.
TEST(FailureTest, ReplayOfADeadNodeNeverRestoresAnOlderImage) {
  MountedCluster c(2);
  ASSERT_TRUE(c.mount_all());
  const std::string a = c.path(1, "x"), cpath = c.path(2, "x");
  ASSERT_TRUE(testing::write_fsync(a, std::string(8192, 'A'), O_TRUNC));
  ASSERT_EQ(chmod(a.c_str(), 0600), 0);
  ASSERT_TRUE(testing::fsync_path(a));
  // C takes the inode over (A commits, writes back and gives its lock up) and changes it.
  ASSERT_EQ(chmod(cpath.c_str(), 0640), 0);
  ASSERT_EQ(truncate(cpath.c_str(), 0), 0);
  ASSERT_TRUE(testing::write_fsync(cpath, "C version", O_TRUNC));
  // A goes on with other work in its own journal, then dies.
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(testing::write_fsync(c.path(1, "a" + std::to_string(i)), "more", O_TRUNC));
  }
  c.kill(1);
  EXPECT_TRUE(wait_until_recovered(c, 1, 10s));
  EXPECT_NE(slurp(c.log(2)).find("replayed node 1's journal"), std::string::npos);
  // Read from the device again: a fresh mount of C caches nothing.
  ASSERT_TRUE(c.unmount(2));
  ASSERT_TRUE(c.mount(2));
  struct stat st {};
  ASSERT_EQ(stat(cpath.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_size, 9);
  EXPECT_EQ(slurp(cpath), "C version");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(slurp(c.path(2, "a" + std::to_string(i))), "more");
  EXPECT_EQ(c.unmount_all(), 0);
}

// The node replaying a dead node's journal dies in the middle of it; the last node fences
// it too and replays both journals.
TEST(FailureTest, RecoveryCutShortByASecondDeathIsFinishedByTheLastNode) {
  MountedCluster c(3);
  // Node 1 (the coordinator, which recovers) writes each replayed block slowly.
  c.daemon(1).set_env({{"SHAREDFS_TEST_REPLAY_WRITE_DELAY_MS", "150"}});
  ASSERT_TRUE(c.mount_all());
  FsyncedWrites record;
  ASSERT_TRUE(testing::write_fsync(c.path(1, "by1"), "node 1", O_TRUNC));
  record.file("by1", "node 1");
  // Nothing of node 3's below goes home before it dies (no other node asks for its locks,
  // the commit interval does not pass): all of it is in its journal.
  ASSERT_EQ(mkdir(c.path(3, "w3").c_str(), 0755), 0);
  for (int i = 0; i < 40; ++i) {
    const std::string rel = "w3/f" + std::to_string(i), data = "file " + std::to_string(i);
    ASSERT_TRUE(testing::write_fsync(c.path(3, rel), data, O_TRUNC));
    record.file(rel, data);
  }
  c.kill(3);  // within the commit interval: its journal holds all of it, not yet at home
  ASSERT_TRUE(wait_for_log(c.log(1), "fenced node 3", 10s)) << slurp(c.log(1));
  std::this_thread::sleep_for(500ms);
  c.kill(1);
  EXPECT_EQ(slurp(c.log(1)).find("replayed node 3's journal"), std::string::npos)
      << "node 1 finished the replay before it was killed: the test proves nothing\n"
      << slurp(c.log(1));
  EXPECT_TRUE(wait_for_log(c.log(2), "node 3 recovered", 20s)) << slurp(c.log(2));
  EXPECT_TRUE(wait_for_log(c.log(2), "node 1 recovered", 20s)) << slurp(c.log(2));
  record.verify(c, 2);
  // Both come back and see it all.
  c.daemon(1).set_env({});
  ASSERT_TRUE(c.mount(1));
  ASSERT_TRUE(c.mount(3));
  record.verify(c, 3);
  EXPECT_EQ(c.unmount_all(), 0);
}

// 20 rounds: a random node is killed under load, recovered by the others, restarted.
TEST(FailureTest, CrashLoopLosesNothingFsynced) {
  MountedCluster c(3);
  ASSERT_TRUE(c.mount_all());
  FsyncedWrites record;
  std::map<int, std::unique_ptr<Writer>> writers;
  for (int n = 1; n <= 3; ++n) {
    writers[n] = std::make_unique<Writer>(c, n, record, "w" + std::to_string(n) + "-0");
    writers[n]->start();
  }
  std::mt19937 rng(6);
  int rounds = 0;
  for (; rounds < 20; ++rounds) {
    const int victim = 1 + static_cast<int>(rng() % 3);
    std::this_thread::sleep_for(500ms);
    c.kill(victim);
    writers[victim]->stop();
    ASSERT_TRUE(wait_until_recovered(c, victim, 10s))
        << "round " << rounds << ": node " << victim << " not recovered\n"
        << slurp(c.log(1)) << slurp(c.log(2)) << slurp(c.log(3));
    ASSERT_TRUE(c.mount(victim)) << "round " << rounds << ": node " << victim << " did not rejoin\n"
                                 << slurp(c.log(victim));
    writers[victim] = std::make_unique<Writer>(
        c, victim, record, "w" + std::to_string(victim) + "-" + std::to_string(rounds + 1));
    writers[victim]->start();
  }
  std::this_thread::sleep_for(500ms);
  for (auto& [n, w] : writers) w->stop();
  EXPECT_EQ(rounds, 20);
  EXPECT_GT(record.size(), 100u);
  record.verify(c, 1);
  EXPECT_EQ(c.unmount_all(), 0);
}

// Reservation keys are per node: a node restarted before the others fenced its previous
// mount waits until they recovered it, instead of being fenced along with it.
TEST(FailureTest, ANodeRestartedBeforeItsFenceWaitsForItsRecoveryAndStays) {
  MountedCluster c(3);
  ASSERT_TRUE(c.mount_all());
  ASSERT_TRUE(testing::write_fsync(c.path(2, "held"), "node 2's", O_TRUNC));
  c.kill(2);
  ASSERT_TRUE(c.mount(2)) << slurp(c.log(2));  // at once, well within the dead-node timeout
  const std::string log = slurp(c.log(2));
  EXPECT_NE(log.find("waiting for them"), std::string::npos) << log;
  EXPECT_NE(log.find("recovered its previous mount"), std::string::npos) << log;
  // Past another timeout, it is still a member that writes.
  std::this_thread::sleep_for(2s);
  ASSERT_TRUE(testing::write_fsync(c.path(2, "after"), "still here", O_TRUNC)) << slurp(c.log(2));
  EXPECT_EQ(slurp(c.path(1, "after")), "still here");
  EXPECT_EQ(slurp(c.path(3, "held")), "node 2's");
  EXPECT_EQ(slurp(c.log(2)).find("withdraws"), std::string::npos) << slurp(c.log(2));
  EXPECT_EQ(c.unmount_all(), 0);
}

// The crash-loop test restarts daemons while writers on other nodes have files open: a
// daemon must not inherit those descriptors, or the other node's mount stays busy for the
// daemon's life and its unmount fails with EBUSY (seen about 1 run in 3 before the harness
// closed them).
TEST(FailureTest, ADaemonStartedByTheTestHoldsNothingOfAnotherMount) {
  MountedCluster c(2);
  ASSERT_TRUE(c.mount(1));
  const int fd = open(c.path(1, "open-at-fork").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(c.mount(2));
  close(fd);
  EXPECT_EQ(c.daemon(1).holders(), "  (no process found)\n");
  EXPECT_EQ(c.unmount_all(), 0);
}

TEST(FailureTest, DuplicateNodeIdAndWrongSecretAreRefused) {
  MountedCluster c(3);
  ASSERT_TRUE(c.mount(1));
  ASSERT_TRUE(c.mount(2));
  // Node 1 again, elsewhere, while node 1 lives.
  const std::string dup_mnt = (c.dir() / "dup").string();
  std::filesystem::create_directories(dup_mnt);
  testing::FuseDaemon dup(dup_mnt);
  dup.set_log((c.dir() / "dup.log").string());
  EXPECT_FALSE(dup.start(c.image(), {"--config", c.config(), "--node", "1"}));
  EXPECT_NE(slurp(dup.log()).find("in use by a live node"), std::string::npos) << slurp(dup.log());
  // Node 3 with another secret: the others drop its messages and say so; it says why.
  const std::string bad = (c.dir() / "bad.toml").string();
  c.write_config(bad, "not-the-cluster-secret-42");
  EXPECT_FALSE(c.daemon(3).start(c.image(), {"--config", bad, "--node", "3"}));
  EXPECT_NE(slurp(c.log(3)).find("check the cluster secret"), std::string::npos) << slurp(c.log(3));
  EXPECT_NE(slurp(c.log(1)).find("dropped"), std::string::npos) << slurp(c.log(1));
  // The cluster goes on.
  testing::spit(c.path(1, "after"), "still fine");
  EXPECT_EQ(slurp(c.path(2, "after")), "still fine");
  EXPECT_EQ(c.unmount_all(), 0);
}

}  // namespace
}  // namespace sharedfs
