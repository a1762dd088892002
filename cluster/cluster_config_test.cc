#include "cluster/cluster_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/test_util.h"

namespace sharedfs::cluster {
namespace {

constexpr std::string_view kGood = R"(
[cluster]
name = "demo"
id = 42
secret = "0123456789abcdef-secret"
heartbeat_interval_ms = 500

[[node]]
id = 2
name = "b"
address = "127.0.0.1:7002"

[[node]]
id = 1
name = "a"
address = "127.0.0.1:7001"

[[node]]
id = 3
name = "c"
address = "[::1]:7003"
)";

// The error message of parsing `text`, or "" when it parses.
std::string error_of(std::string_view text) {
  auto r = parse_cluster_config(text, "<test>");
  return r.is_ok() ? "" : r.status().message();
}

// kGood with one line replaced.
std::string good_with(std::string_view from, std::string_view to) {
  std::string s(kGood);
  const auto at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return s.replace(at, from.size(), to);
}

TEST(ClusterConfig, ParsesAGoodConfig) {
  auto c = parse_cluster_config(kGood, "<test>");
  ASSERT_OK(c);
  EXPECT_EQ(c->name, "demo");
  EXPECT_EQ(c->id, 42u);
  EXPECT_EQ(c->secret, "0123456789abcdef-secret");
  EXPECT_EQ(c->heartbeat_interval.count(), 500);
  EXPECT_EQ(c->heartbeat_timeout.count(), 5000);  // the default
  ASSERT_EQ(c->nodes.size(), 3u);
  EXPECT_EQ(c->nodes[0].id, 1u);  // sorted by id
  EXPECT_EQ(c->nodes[0].endpoint(), "tcp://127.0.0.1:7001");
  EXPECT_EQ(c->nodes[2].host, "::1");
  EXPECT_EQ(c->nodes[2].endpoint(), "tcp://[::1]:7003");
  ASSERT_NE(c->node(2), nullptr);
  EXPECT_EQ(c->node(2)->name, "b");
  EXPECT_EQ(c->node(9), nullptr);
}

TEST(ClusterConfig, RefusesMistakesWithTheirCause) {
  EXPECT_NE(error_of("[cluster\nname=1").find("line"), std::string::npos);
  EXPECT_NE(error_of(good_with("heartbeat_interval_ms", "heartbeat_intervall_ms")).find("unknown key 'heartbeat_intervall_ms'"),
            std::string::npos);
  EXPECT_NE(error_of(good_with("id = 42", "id = true")).find("must be an integer"), std::string::npos);
  EXPECT_NE(error_of(good_with("secret = \"0123456789abcdef-secret\"", "secret = \"short\"")).find("at least 16"),
            std::string::npos);
  EXPECT_NE(error_of(good_with("secret = \"0123456789abcdef-secret\"", "")).find("exactly one of"),
            std::string::npos);
  EXPECT_NE(error_of(good_with("id = 2", "id = 1")).find("appears twice"), std::string::npos);
  EXPECT_NE(error_of(good_with("id = 3", "id = 17")).find("outside 1..16"), std::string::npos);
  EXPECT_NE(error_of(good_with("name = \"b\"", "name = \"a\"")).find("taken"), std::string::npos);
  EXPECT_NE(error_of(good_with("127.0.0.1:7002", "127.0.0.1:7001")).find("taken by another node"),
            std::string::npos);
  EXPECT_NE(error_of(good_with("127.0.0.1:7002", "127.0.0.1")).find("host:port"), std::string::npos);
  EXPECT_NE(error_of(good_with("127.0.0.1:7002", "127.0.0.1:70000")).find("port 1-65535"),
            std::string::npos);
  EXPECT_NE(error_of(good_with("heartbeat_interval_ms = 500", "heartbeat_interval_ms = 6000")).find("twice"),
            std::string::npos);
  EXPECT_NE(error_of("[cluster]\nname=\"x\"\nid=1\nsecret=\"0123456789abcdef\"\n").find("no [[node]]"),
            std::string::npos);
  EXPECT_NE(error_of(good_with("address = \"127.0.0.1:7001\"", "address = \"127.0.0.1:7001\"\nport = 1")).find("unknown key 'port'"),
            std::string::npos);
}

TEST(ClusterConfig, ReadsTheSecretFromAFileBesideTheConfig) {
  const auto dir = testing::scratch_dir("cluster-config");
  std::ofstream(dir / "secret") << "a-secret-from-a-file-0123\n";
  std::ofstream(dir / "cluster.toml")
      << good_with("secret = \"0123456789abcdef-secret\"", "secret_file = \"secret\"");
  auto c = load_cluster_config((dir / "cluster.toml").string());
  ASSERT_OK(c);
  EXPECT_EQ(c->secret, "a-secret-from-a-file-0123");  // the newline dropped
  std::filesystem::remove(dir / "secret");
  auto missing = load_cluster_config((dir / "cluster.toml").string());
  EXPECT_FALSE(missing.is_ok());
  EXPECT_EQ(load_cluster_config((dir / "nothing.toml").string()).status().code(), Code::kNotFound);
  std::filesystem::remove_all(dir);
}

TEST(ClusterConfig, MountChecksNodeClusterIdAndSlots) {
  auto c = parse_cluster_config(kGood, "<test>");
  ASSERT_OK(c);
  EXPECT_OK(check_config_for_mount(*c, 2, 42, 4));
  auto not_member = check_config_for_mount(*c, 4, 42, 4);
  EXPECT_NE(not_member.message().find("node 4 is not in the config"), std::string::npos);
  auto other_cluster = check_config_for_mount(*c, 1, 7, 4);
  EXPECT_NE(other_cluster.message().find("device belongs to cluster id 7"), std::string::npos);
  auto few_slots = check_config_for_mount(*c, 1, 42, 2);
  EXPECT_NE(few_slots.message().find("node 3 ('c') has no journal slot"), std::string::npos);
}

}  // namespace
}  // namespace sharedfs::cluster

namespace sharedfs::cluster {
namespace {

// mkfs used to draw 64-bit ids; TOML integers stop at 2^63-1, so such an id is a string.
TEST(ClusterConfig, AClusterIdAboveTheTomlRangeIsWrittenAsAString) {
  auto big = parse_cluster_config(good_with("id = 42", R"(id = "0xca7a0e2a1f3c5b01")"), "<test>");
  ASSERT_OK(big);
  EXPECT_EQ(big->id, 0xca7a0e2a1f3c5b01u);
  auto dec = parse_cluster_config(good_with("id = 42", R"(id = "14590124011879732659")"), "<test>");
  ASSERT_OK(dec);
  EXPECT_EQ(dec->id, 14590124011879732659u);
  EXPECT_NE(error_of(good_with("id = 42", R"(id = "0x")")).find("not a positive"), std::string::npos);
  EXPECT_NE(error_of(good_with("id = 42", R"(id = "12abc")")).find("not a positive"), std::string::npos);
  EXPECT_NE(error_of(good_with("id = 42", R"(id = "0")")).find("not a positive"), std::string::npos);
  EXPECT_NE(error_of(good_with("id = 42", "id = -5")).find("as a string"), std::string::npos);
}

}  // namespace
}  // namespace sharedfs::cluster
