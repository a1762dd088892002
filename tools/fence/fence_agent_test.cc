// fence_sharedfs against the emulated reservations of an image file: the stdin and command
// line protocol, on/off/status/monitor/list/validate-all in-process and through the binary,
// that `off` really stops the node's writes (raw device writes, and a mounted node's file
// writes), the metadata as XML; and the OCF agent scripts/ocf/sharedfs: meta-data,
// validate-all, and start/monitor/stop of a real mount.
#include "tools/fence/fence_agent.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/test_util.h"
#include "device/device.h"

namespace sharedfs::fence {
namespace {

using testing::run_command;

constexpr const char* kClusterName = "fencetest";
constexpr uint64_t kClusterId = 0x77;
constexpr auto kWero = device::ReservationType::kWriteExclusiveRegistrantsOnly;

// Python: "%.4s%.4d" % (hashlib.md5(b"fencetest").hexdigest(), n) -> "765c000n".
constexpr device::ReservationKey kKey1 = 0x765c0001;
constexpr device::ReservationKey kKey2 = 0x765c0002;
constexpr device::ReservationKey kKey3 = 0x765c0003;

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// ----- parsing

TEST(FenceAgentParseTest, StdinLinesCommentsQuotesAndAliases) {
  auto o = parse_stdin_options(
      "# Pacemaker's fencer writes one name=value a line\n"
      "action=off\n"
      "  devices = \"/dev/nvme0n1, /dev/nvme1n1\"\n"
      "port=host-a\n"
      "local-node=2\n"
      "delay=3\n"
      "verbose=yes\n"
      "pcmk_bogus=1\n"
      "\n");
  ASSERT_TRUE(o.is_ok()) << o.status().to_string();
  EXPECT_EQ(o->action, "off");
  EXPECT_EQ(o->devices, (std::vector<std::string>{"/dev/nvme0n1", "/dev/nvme1n1"}));
  EXPECT_EQ(o->plug, "host-a");
  EXPECT_EQ(o->local_node, "2");
  EXPECT_EQ(o->delay_seconds, 3);
  EXPECT_TRUE(o->verbose);
  ASSERT_EQ(o->warnings.size(), 1u);
  EXPECT_NE(o->warnings[0].find("pcmk_bogus"), std::string::npos);
}

TEST(FenceAgentParseTest, NodenameOverridesPlugWhateverTheOrder) {
  auto o = parse_stdin_options("nodename=host-b\nplug=host-a\n");
  ASSERT_TRUE(o.is_ok());
  EXPECT_EQ(o->plug, "host-b");
}

TEST(FenceAgentParseTest, KeyTakesFenceScsiHexAndRefusesGarbage) {
  auto o = parse_stdin_options("key=765c0003\n");
  ASSERT_TRUE(o.is_ok());
  EXPECT_EQ(o->key, kKey3);
  EXPECT_FALSE(parse_stdin_options("key=0\n").is_ok());
  EXPECT_FALSE(parse_stdin_options("key=zz\n").is_ok());
  EXPECT_FALSE(parse_stdin_options("delay=soon\n").is_ok());
}

TEST(FenceAgentParseTest, CommandLineShortAndLongOptions) {
  auto o = parse_command_line({"-o", "status", "--devices=/a,/b", "-n", "3", "--key", "0x765c0001",
                               "--config", "/etc/x.toml", "-v"});
  ASSERT_TRUE(o.is_ok()) << o.status().to_string();
  EXPECT_EQ(o->action, "status");
  EXPECT_EQ(o->devices, (std::vector<std::string>{"/a", "/b"}));
  EXPECT_EQ(o->plug, "3");
  EXPECT_EQ(o->key, kKey1);
  EXPECT_EQ(o->config, "/etc/x.toml");
  EXPECT_TRUE(o->verbose);
  EXPECT_FALSE(parse_command_line({"--bogus", "1"}).is_ok());
  EXPECT_FALSE(parse_command_line({"-o"}).is_ok());
  EXPECT_FALSE(parse_command_line({"stray"}).is_ok());
}

// ----- actions on an image file's emulated reservations

class FenceAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("fence");
    image_ = (dir_ / "disk.img").string();
    testing::make_sparse_file(image_, 1 << 20);
    config_ = (dir_ / "cluster.toml").string();
    std::ofstream c(config_);
    c << "[cluster]\nname = \"" << kClusterName << "\"\nid = " << kClusterId
      << "\nsecret = \"fence-test-secret-0123\"\n";
    const char* names[] = {"node-a", "node-b.example.com", "node-c"};
    for (int i = 0; i < 3; ++i) {
      c << "[[node]]\nid = " << i + 1 << "\nname = \"" << names[i]
        << "\"\naddress = \"127.0.0.1:" << 7100 + i << "\"\n";
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  AgentOptions options(const std::string& action, const std::string& plug,
                       const std::string& local = "") const {
    AgentOptions o;
    o.action = action;
    o.devices = {image_};
    o.plug = plug;
    o.config = config_;
    o.local_node = local;
    return o;
  }
  device::OpenDevice open_as(uint32_t node) const {
    auto d = device::open_file_device(image_, {.host = device::HostId::for_node(kClusterId, node)});
    EXPECT_TRUE(d.is_ok()) << d.status().to_string();
    return std::move(*d);
  }
  device::ReservationReport report() const {
    auto d = open_as(9);
    auto r = d.reservations->report();
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : device::ReservationReport{};
  }
  static Status write_block(device::OpenDevice& d) {
    device::AlignedBuffer buf(4096);
    std::memset(buf.data(), 0x5a, buf.size());
    return d.io->write(8 * 4096, buf.span());
  }
  std::string fence_cmd(const std::string& stdin_text) const {
    return "printf %s " + shell_quote(stdin_text) + " | " + FENCE_BIN;
  }

  std::filesystem::path dir_;
  std::string image_;
  std::string config_;
};

TEST_F(FenceAgentTest, KeysAreFenceScsiKeysOfTheClusterName) {
  EXPECT_EQ(device::node_reservation_key(kClusterName, 1), kKey1);
  EXPECT_EQ(device::node_reservation_key(kClusterName, 3), kKey3);
}

TEST_F(FenceAgentTest, OnRegistersTheNodesKeyAsItsHostAndTakesTheReservation) {
  auto r = run_agent(options("on", "node-a"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "Success: Powered ON\n");
  auto rep = report();
  ASSERT_EQ(rep.registrants.size(), 1u);
  EXPECT_EQ(rep.registrants[0].key, kKey1);
  EXPECT_EQ(rep.registrants[0].host, device::HostId::for_node(kClusterId, 1));
  EXPECT_EQ(rep.type, kWero);
  EXPECT_TRUE(rep.registrants[0].holds_reservation);

  r = run_agent(options("on", "1"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "Success: Already ON\n");
  // A node known by its full name in the config answers to its short name too.
  r = run_agent(options("on", "node-b"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_NE(report().find_key(kKey2), nullptr);
}

TEST_F(FenceAgentTest, OnRunsOnTheNodeItUnfences) {
  auto r = run_agent(options("on", "node-a", "2"));
  EXPECT_EQ(r.exit_code, kExitError);
  EXPECT_NE(r.err.find("run it on node 1"), std::string::npos) << r.err;
  EXPECT_TRUE(report().registrants.empty());
}

TEST_F(FenceAgentTest, StatusIsOnWhileTheKeyIsRegisteredAndOffOtherwise) {
  auto r = run_agent(options("status", "node-a"));
  EXPECT_EQ(r.exit_code, kExitStatusOff) << r.err;
  EXPECT_EQ(r.out, "Status: OFF\n");
  ASSERT_EQ(run_agent(options("on", "node-a")).exit_code, kExitOk);
  r = run_agent(options("status", "node-a"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "Status: ON\n");
  EXPECT_EQ(run_agent(options("status", "node-c")).exit_code, kExitStatusOff);
}

// The check the issue asks for: node 1 writes, holds the reservation (WERO); `off` for
// node 1 from node 2; node 1's next write is refused with a reservation conflict, node 2's
// still lands, and node 2 now holds the reservation.
TEST_F(FenceAgentTest, OffStopsTheNodesWrites) {
  auto node1 = open_as(1);
  auto node2 = open_as(2);
  ASSERT_EQ(run_agent(options("on", "node-a")).exit_code, kExitOk);
  ASSERT_EQ(run_agent(options("on", "2")).exit_code, kExitOk);
  ASSERT_OK(write_block(node1));
  ASSERT_TRUE(report().find_key(kKey1)->holds_reservation);

  auto r = run_agent(options("off", "node-a", "node-b"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "Success: Powered OFF\n");

  const Status refused = write_block(node1);
  EXPECT_EQ(refused.code(), Code::kReservationConflict) << refused.to_string();
  EXPECT_OK(write_block(node2));
  auto rep = report();
  EXPECT_EQ(rep.find_key(kKey1), nullptr);
  ASSERT_NE(rep.holder(), nullptr);
  EXPECT_EQ(rep.holder()->key, kKey2);
  EXPECT_EQ(rep.type, kWero);

  EXPECT_EQ(run_agent(options("status", "node-a")).exit_code, kExitStatusOff);
  r = run_agent(options("off", "node-a", "node-b"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "Success: Already OFF\n");

  // Unfencing lets it write again (a restarted node: Pacemaker runs `on` on it).
  ASSERT_EQ(run_agent(options("on", "node-a")).exit_code, kExitOk);
  EXPECT_OK(write_block(node1));
}

TEST_F(FenceAgentTest, OffFromAnUnregisteredNodeRegistersItFirst) {
  auto node1 = open_as(1);
  ASSERT_EQ(run_agent(options("on", "node-a")).exit_code, kExitOk);
  auto r = run_agent(options("off", "1", "node-c"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  auto rep = report();
  EXPECT_EQ(rep.find_key(kKey1), nullptr);
  ASSERT_NE(rep.find_key(kKey3), nullptr);
  EXPECT_EQ(rep.find_key(kKey3)->host, device::HostId::for_node(kClusterId, 3));
  EXPECT_EQ(write_block(node1).code(), Code::kReservationConflict);
}

TEST_F(FenceAgentTest, OffWithoutAReservationTakesOneSoTheVictimIsCutOff) {
  // Registered but nobody holds the reservation: everybody may write. The fence must take
  // the reservation, or removing the key would not stop the victim.
  auto node1 = open_as(1);
  auto node2 = open_as(2);
  ASSERT_OK(node1.reservations->register_key(kKey1));
  ASSERT_OK(node2.reservations->register_key(kKey2));
  ASSERT_EQ(report().type, device::ReservationType::kNone);
  auto r = run_agent(options("off", "1", "2"));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(report().type, kWero);
  EXPECT_EQ(write_block(node1).code(), Code::kReservationConflict);
}

TEST_F(FenceAgentTest, OffRefusesToFenceItselfAndNeedsAFencerIdentity) {
  ASSERT_EQ(run_agent(options("on", "node-a")).exit_code, kExitOk);
  auto r = run_agent(options("off", "node-a", "node-a"));
  EXPECT_EQ(r.exit_code, kExitError);
  EXPECT_NE(r.err.find("You can not fence yourself"), std::string::npos) << r.err;
  EXPECT_NE(report().find_key(kKey1), nullptr);

  // On an image file the agent must know which node's host it is.
  AgentOptions o = options("off", "node-a");
  o.config = "";
  o.key = kKey1;
  r = run_agent(o);
  EXPECT_EQ(r.exit_code, kExitError);
  EXPECT_NE(r.err.find("local_node"), std::string::npos) << r.err;
  EXPECT_NE(report().find_key(kKey1), nullptr);
}

// A key registered the fence_scsi way (key_value=hash, or by hand) is fenced with key=.
TEST_F(FenceAgentTest, ExplicitFenceScsiStyleKey) {
  auto node3 = open_as(3);
  ASSERT_OK(node3.reservations->register_key(0xabcd1234));
  ASSERT_OK(node3.reservations->acquire(0xabcd1234, kWero));
  ASSERT_EQ(run_agent(options("on", "node-a")).exit_code, kExitOk);

  auto o = parse_stdin_options("action=status\nkey=abcd1234\n");
  ASSERT_TRUE(o.is_ok());
  o->devices = {image_};
  EXPECT_EQ(run_agent(*o).exit_code, kExitOk);
  o->action = "off";
  o->config = config_;
  o->local_node = "1";
  auto r = run_agent(*o);
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(write_block(node3).code(), Code::kReservationConflict);
  EXPECT_EQ(report().holder()->key, kKey1);
}

TEST_F(FenceAgentTest, MonitorListValidateAndErrors) {
  EXPECT_EQ(run_agent(options("monitor", "")).exit_code, kExitOk);
  AgentOptions missing = options("monitor", "");
  missing.devices = {(dir_ / "no-such.img").string()};
  EXPECT_EQ(run_agent(missing).exit_code, kExitError);

  ASSERT_EQ(run_agent(options("on", "node-c")).exit_code, kExitOk);
  auto r = run_agent(options("list", ""));
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "node-a,1\nnode-b.example.com,2\nnode-c,3\n");
  r = run_agent(options("list-status", ""));
  EXPECT_EQ(r.out, "node-a,1,OFF\nnode-b.example.com,2,OFF\nnode-c,3,ON\n");

  EXPECT_EQ(run_agent(options("validate-all", "node-a")).exit_code, kExitOk);
  r = run_agent(options("validate-all", ""));
  EXPECT_EQ(r.exit_code, kExitError);
  EXPECT_NE(r.err.find("nodename or key is required"), std::string::npos) << r.err;
  EXPECT_EQ(run_agent(options("validate-all", "node-z")).exit_code, kExitError);
  EXPECT_EQ(run_agent(options("validate-all", "9")).exit_code, kExitError);
  AgentOptions no_dev = options("status", "node-a");
  no_dev.devices.clear();
  EXPECT_EQ(run_agent(no_dev).exit_code, kExitError);
  r = run_agent(options("reboot", "node-a"));
  EXPECT_EQ(r.exit_code, kExitError);
  EXPECT_NE(r.err.find("Unrecognised action"), std::string::npos);
  AgentOptions bad_config = options("status", "node-a");
  bad_config.config = (dir_ / "none.toml").string();
  EXPECT_EQ(run_agent(bad_config).exit_code, kExitError);
}

// ----- the binary: the protocol Pacemaker's fencer speaks

TEST_F(FenceAgentTest, BinaryOverStdinAndCommandLine) {
  const std::string common = "devices=" + image_ + "\nconfig=" + config_ + "\n";
  auto r = run_command(fence_cmd("action=status\nport=node-a\n" + common));
  EXPECT_EQ(r.rc, kExitStatusOff) << r.out;
  EXPECT_NE(r.out.find("Status: OFF"), std::string::npos);
  // Pacemaker unfences with action=on and the node's own name as nodename.
  r = run_command(fence_cmd("action=on\nnodename=node-a\nunknown_thing=1\n" + common));
  EXPECT_EQ(r.rc, kExitOk) << r.out;
  EXPECT_NE(r.out.find("Success: Powered ON"), std::string::npos);
  EXPECT_NE(r.out.find("Ignoring unknown option"), std::string::npos);
  r = run_command(std::string(FENCE_BIN) + " -o status -d " + image_ + " -n node-a --config " +
                  config_);
  EXPECT_EQ(r.rc, kExitOk) << r.out;
  r = run_command(fence_cmd("action=off\nport=node-a\nlocal_node=node-c\n" + common));
  EXPECT_EQ(r.rc, kExitOk) << r.out;
  EXPECT_EQ(report().find_key(kKey1), nullptr);
  r = run_command(std::string(FENCE_BIN) + " --action=status --devices=" + image_ +
                  " --plug=1 --config=" + config_);
  EXPECT_EQ(r.rc, kExitStatusOff) << r.out;
  r = run_command(std::string(FENCE_BIN) + " --frobnicate");
  EXPECT_EQ(r.rc, kExitError) << r.out;
  r = run_command(std::string(FENCE_BIN) + " -h");
  EXPECT_EQ(r.rc, kExitOk);
  EXPECT_NE(r.out.find("--devices"), std::string::npos);
}

// The metadata is XML that names the parameters and actions (parsed with Python's XML
// parser, as Pacemaker parses it with libxml2).
TEST_F(FenceAgentTest, MetadataIsXmlNamingActionsAndParameters) {
  const std::string parse =
      " | python3 -c 'import sys, xml.etree.ElementTree as E\n"
      "r = E.fromstring(sys.stdin.read())\n"
      "print(\"agent\", r.get(\"name\"))\n"
      "print(\"actions\", \" \".join(a.get(\"name\") for a in r.iter(\"action\")))\n"
      "print(\"params\", \" \".join(p.get(\"name\") for p in r.iter(\"parameter\")))\n"
      "on = [a for a in r.iter(\"action\") if a.get(\"name\") == \"on\"][0]\n"
      "print(\"on\", on.get(\"on_target\"), on.get(\"automatic\"))'";
  for (const std::string& cmd :
       {std::string(FENCE_BIN) + " -o metadata" + parse, fence_cmd("action=meta-data\n") + parse}) {
    auto r = run_command(cmd);
    ASSERT_EQ(r.rc, 0) << r.out;
    EXPECT_NE(r.out.find("agent fence_sharedfs\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("actions on off status list list-status monitor metadata validate-all\n"),
              std::string::npos)
        << r.out;
    for (const char* p :
         {" action", " devices", " plug", " port", " key", " config", " local_node", " delay"}) {
      EXPECT_NE(r.out.find(p), std::string::npos) << p << " missing in " << r.out;
    }
    EXPECT_NE(r.out.find("on 1 1\n"), std::string::npos) << r.out;
  }
}

// ----- the OCF resource agent

class OcfAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::scratch_dir("ocf");
    // The daemon's control socket and state files: a directory of this test's own (the
    // default /run/sharedfs is shared by every cluster on the host), with a short path.
    run_dir_ = "/tmp/sharedfs-ocf-run-" + std::to_string(getpid());
    image_ = (dir_ / "disk.img").string();
    mnt_ = (dir_ / "mnt").string();
    config_ = (dir_ / "cluster.toml").string();
    testing::make_sparse_file(image_, uint64_t{1} << 30);
    auto r =
        run_command(std::string(MKFS_BIN) + " --force --nodes 4 --cluster-id " +
                    std::to_string(kClusterId) + " --cluster-name " + kClusterName + " " + image_);
    ASSERT_EQ(r.rc, 0) << r.out;
    char host[256] = {};
    ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
    host_ = host;
    // Node 1 is this host, by name: how a clone instance finds its node id. Node 2 is
    // configured but never mounted.
    std::ofstream c(config_);
    c << "[cluster]\nname = \"" << kClusterName << "\"\nid = " << kClusterId
      << "\nsecret = \"ocf-test-secret-0123\"\nheartbeat_interval_ms = 100\n"
      << "heartbeat_timeout_ms = 1500\n"
      << "[[node]]\nid = 1\nname = \"" << host_
      << "\"\naddress = \"127.0.0.1:" << testing::free_port() << "\"\n"
      << "[[node]]\nid = 2\nname = \"other-host\"\naddress = \"127.0.0.1:" << testing::free_port()
      << "\"\n";
  }
  void TearDown() override {
    // Whatever happened, nothing stays mounted; the daemon exits once its mount is gone.
    (void)run_command("fusermount3 -u -z " + mnt_ + " 2>/dev/null");
    std::filesystem::remove_all(dir_);
    std::filesystem::remove_all(run_dir_);
  }

  testing::CommandResult ocf(const std::string& action, const std::string& extra_env = "") const {
    return run_command("env SHAREDFS_RUN_DIR=" + run_dir_ + " OCF_RESKEY_device=" + image_ +
                       " OCF_RESKEY_mountpoint=" + mnt_ +
                       " OCF_RESKEY_config=" + config_ + " OCF_RESKEY_binary=" + SHAREDFS_BIN +
                       " OCF_RESKEY_force_unmount=false OCF_RESKEY_monitor_timeout=5 " + extra_env +
                       " sh " + OCF_AGENT + " " + action);
  }
  testing::CommandResult fence(const std::string& args) const {
    return run_command(std::string(FENCE_BIN) + " -d " + image_ + " --config " + config_ + " " +
                       args);
  }
  // Waits up to `limit` for `action` to exit with `rc`.
  bool ocf_until(const std::string& action, int rc, std::chrono::seconds limit) const {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (ocf(action).rc == rc) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  std::filesystem::path dir_;
  std::string image_, mnt_, config_, host_, run_dir_;
};

constexpr int kOcfSuccess = 0;
constexpr int kOcfErrGeneric = 1;
constexpr int kOcfErrConfigured = 6;
constexpr int kOcfNotRunning = 7;

TEST_F(OcfAgentTest, MetaDataAndValidateAll) {
  auto r = run_command(std::string("sh ") + OCF_AGENT +
                       " meta-data | python3 -c 'import sys, xml.etree.ElementTree as E\n"
                       "r = E.fromstring(sys.stdin.read())\n"
                       "print(r.get(\"name\"), *[a.get(\"name\") for a in r.iter(\"action\")])\n"
                       "print(*[p.get(\"name\") for p in r.iter(\"parameter\")])'");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("sharedfs start stop monitor meta-data validate-all\n"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("device mountpoint config node options"), std::string::npos) << r.out;

  EXPECT_EQ(ocf("validate-all").rc, kOcfSuccess) << ocf("validate-all").out;
  // This host's name missing from the config: no node id for a clone instance.
  EXPECT_EQ(run_command("sed -i 's/\"" + host_ + "\"/\"elsewhere\"/' " + config_).rc, 0);
  r = ocf("validate-all");
  EXPECT_EQ(r.rc, kOcfErrConfigured) << r.out;
  EXPECT_NE(r.out.find("no node id"), std::string::npos) << r.out;
  EXPECT_EQ(ocf("validate-all", "OCF_RESKEY_node=1").rc, kOcfSuccess);
  EXPECT_EQ(ocf("validate-all", "OCF_RESKEY_mountpoint=relative").rc, kOcfErrConfigured);
  EXPECT_EQ(ocf("validate-all", "OCF_RESKEY_device=" + (dir_ / "none").string()).rc, 5);
  EXPECT_EQ(ocf("bogus").rc, 3);
  // Nothing is mounted: monitor says not running, stop has nothing to do.
  EXPECT_EQ(ocf("monitor").rc, kOcfNotRunning);
  EXPECT_EQ(ocf("stop").rc, kOcfSuccess);
}

// start, monitor, stop of a cluster mount, with the daemon's reservation key checked
// through fence_sharedfs: the daemon registers the very key the agent computes for node 1.
TEST_F(OcfAgentTest, StartMonitorStopAndTheDaemonsKeyIsTheAgentsKey) {
  auto r = ocf("start");
  ASSERT_EQ(r.rc, kOcfSuccess) << r.out;
  EXPECT_EQ(ocf("monitor").rc, kOcfSuccess);
  EXPECT_EQ(ocf("start").rc, kOcfSuccess);  // already running: nothing to do
  testing::CommandResult w = run_command("echo hello > " + mnt_ + "/f && cat " + mnt_ + "/f");
  EXPECT_EQ(w.out, "hello\n");

  r = fence("-o status -n " + host_);
  EXPECT_EQ(r.rc, kExitOk) << r.out;
  r = fence("-o status -n 1");
  EXPECT_EQ(r.rc, kExitOk) << r.out;

  r = ocf("stop");
  EXPECT_EQ(r.rc, kOcfSuccess) << r.out;
  EXPECT_EQ(ocf("monitor").rc, kOcfNotRunning);
  // A clean unmount takes the key away with it.
  EXPECT_EQ(fence("-o status -n 1").rc, kExitStatusOff);
  // And it mounts again, the file still there.
  ASSERT_EQ(ocf("start").rc, kOcfSuccess);
  EXPECT_EQ(run_command("cat " + mnt_ + "/f").out, "hello\n");
  EXPECT_EQ(ocf("stop").rc, kOcfSuccess);
  r = run_command(std::string(FSCK_BIN) + " -n " + image_);
  EXPECT_EQ(r.rc, 0) << r.out;
}

// A mounted node fenced with fence_sharedfs: its writes fail, monitor reports the failure
// (Pacemaker then stops it), and stop still takes the mount down.
TEST_F(OcfAgentTest, FencedMountStopsWritingAndMonitorFails) {
  ASSERT_EQ(ocf("start").rc, kOcfSuccess);
  EXPECT_EQ(run_command("echo before > " + mnt_ + "/f && sync " + mnt_ + "/f").rc, 0);

  auto r = fence("-o off -n 1 --local-node 2");
  ASSERT_EQ(r.rc, kExitOk) << r.out;
  EXPECT_EQ(fence("-o status -n 1").rc, kExitStatusOff);

  // The node finds out at its next write (its disk heartbeat, every 100 ms) and withdraws:
  // every operation that reaches the daemon fails from then on.
  bool refused = false;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  for (int i = 0; !refused && std::chrono::steady_clock::now() < end; ++i) {
    const std::string path = mnt_ + "/after" + std::to_string(i);
    const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY, 0644);
    if (fd < 0) {
      refused = true;
      break;
    }
    refused = ::write(fd, "x", 1) != 1 || ::fsync(fd) != 0;
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(refused) << "the fenced node still writes";
  EXPECT_TRUE(ocf_until("monitor", kOcfErrGeneric, std::chrono::seconds(15))) << ocf("monitor").out;
  r = ocf("stop");
  EXPECT_EQ(r.rc, kOcfSuccess) << r.out;
  EXPECT_EQ(ocf("monitor").rc, kOcfNotRunning);
}

}  // namespace
}  // namespace sharedfs::fence
