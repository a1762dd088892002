// `sharedfs debug inode|journal|... --json`, tunefs.sharedfs and the progress bars of
// mkfs/fsck, run as a user runs them, against images written through a real mount.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <pty.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "format/format.h"
#include "tests/posix/mounted_fs.h"

namespace sharedfs {
namespace {

using nlohmann::json;
using testing::FuseDaemon;
using testing::MountedFs;
using testing::run_command;
using testing::ScratchImage;

const std::string kSharedfs = SHAREDFS_BIN;
const std::string kTunefs = TUNEFS_BIN;
const std::string kFsck = FSCK_BIN;
const std::string kMkfs = MKFS_BIN;

// Runs `cmd` and parses its standard output (stderr apart) as one JSON object.
json run_json(const std::string& cmd) {
  auto r = run_command(cmd + " 2>/dev/null");
  EXPECT_EQ(r.rc, 0) << cmd << "\n" << r.out;
  json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << cmd << " printed no JSON:\n" << r.out;
  return j;
}

json superblock(const std::string& image) {
  return run_json(kSharedfs + " debug superblock --json " + image);
}

int fsck(const std::string& image) {
  auto r = run_command(kFsck + " -n " + image);
  EXPECT_EQ(r.rc, 0) << r.out;
  return r.rc;
}

// Rewrites both superblocks of `image` through `change` (simulating a tool cut short).
void edit_superblocks(const std::string& image,
                      const std::function<void(format::Superblock&)>& change) {
  std::fstream f(image, std::ios::in | std::ios::out | std::ios::binary);
  std::vector<std::byte> buf(4096);
  f.read(reinterpret_cast<char*>(buf.data()), 4096);
  auto sb = format::Superblock::decode(buf, 0);
  ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
  change(*sb);
  for (uint64_t blk : {uint64_t{0}, sb->geo.backup_superblock()}) {
    sb->encode(buf, blk);
    f.seekp(static_cast<std::streamoff>(blk * 4096));
    f.write(reinterpret_cast<const char*>(buf.data()), 4096);
  }
}

TEST(CliToolsTest, DebugInodeShowsWhatWasWrittenThroughAMount) {
  MountedFs m(256 << 20, "--nodes 2");
  ASSERT_TRUE(m.mount());
  ASSERT_EQ(mkdir(m.path("dir").c_str(), 0750), 0);
  const std::string data(3 * 4096 + 100, 'x');  // more than fits inline: extents
  testing::spit(m.path("dir/file"), data);
  ASSERT_EQ(setxattr(m.path("dir/file").c_str(), "user.color", "blue", 4, 0), 0);
  ASSERT_EQ(chmod(m.path("dir/file").c_str(), 0640), 0);
  ASSERT_EQ(symlink("dir/file", m.path("link").c_str()), 0);
  struct stat dir_st {
  }, file_st{};
  ASSERT_EQ(stat(m.path("dir").c_str(), &dir_st), 0);
  ASSERT_EQ(stat(m.path("dir/file").c_str(), &file_st), 0);
  ASSERT_EQ(m.unmount(), 0);  // fsck -n clean
  const std::string dbg = kSharedfs + " debug inode --json ";

  // The root by its mount number 1: both names listed with their inode numbers.
  json root = run_json(dbg + "1 " + m.image());
  EXPECT_EQ(root["type"], "directory");
  EXPECT_EQ(root["inode"], superblock(m.image())["root_inode"]);
  EXPECT_EQ(root["entries_found"], 2);
  std::map<std::string, uint64_t> names;
  for (const auto& e : root["entries"]) names[e["name"]] = e["inode"];
  EXPECT_EQ(names.at("dir"), dir_st.st_ino);
  EXPECT_TRUE(names.contains("link"));

  json dir = run_json(dbg + std::to_string(dir_st.st_ino) + " " + m.image());
  EXPECT_EQ(dir["mode"], "040750");
  EXPECT_EQ(dir["nlink"], 2);
  EXPECT_EQ(dir["parent"], root["inode"]);
  ASSERT_EQ(dir["entries"].size(), 1u);
  EXPECT_EQ(dir["entries"][0]["name"], "file");
  EXPECT_EQ(dir["entries"][0]["type"], "regular");

  json file = run_json(dbg + std::to_string(file_st.st_ino) + " " + m.image());
  EXPECT_EQ(file["type"], "regular");
  EXPECT_EQ(file["mode"], "100640");
  EXPECT_EQ(file["size"], data.size());
  EXPECT_EQ(file["uid"], file_st.st_uid);
  EXPECT_EQ(file["gid"], file_st.st_gid);
  EXPECT_EQ(file["nlink"], 1);
  EXPECT_EQ(file["generation"].get<uint64_t>() != 0, true);
  EXPECT_EQ(file["mtime_ns"].get<uint64_t>(),
            uint64_t(file_st.st_mtim.tv_sec) * 1000000000 + uint64_t(file_st.st_mtim.tv_nsec));
  uint64_t mapped = 0;
  for (const auto& e : file["extents"]) mapped += e["length"].get<uint64_t>();
  EXPECT_EQ(mapped, 4u) << file.dump(2);  // 3 blocks and a partial one
  ASSERT_EQ(file["xattrs"].size(), 1u) << file.dump(2);
  EXPECT_EQ(file["xattrs"][0]["name"], "user.color");
  EXPECT_EQ(file["xattrs"][0]["value"], "blue");

  json link = run_json(dbg + std::to_string(names.at("link")) + " " + m.image());
  EXPECT_EQ(link["type"], "symlink");
  EXPECT_EQ(link["target"], "dir/file");

  // Errors name the object and the fix, also as JSON.
  auto free_one = run_command(dbg + std::to_string(file_st.st_ino + 1000) + " " + m.image());
  EXPECT_EQ(free_one.rc, 1);
  EXPECT_NE(free_one.out.find("is free (not allocated)"), std::string::npos) << free_one.out;
  EXPECT_NE(free_one.out.find("sharedfs debug inode 1 " + m.image()), std::string::npos)
      << free_one.out;
  auto bad = run_command(kSharedfs + " debug inode 3 " + m.image());
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.out.find("3 is not an inode number"), std::string::npos) << bad.out;
}

TEST(CliToolsTest, DebugJournalShowsTheTransactionsReplayWouldApply) {
  ScratchImage image("tools", 256 << 20, "--nodes 2");
  FuseDaemon daemon((image.dir() / "mnt").string());
  std::filesystem::create_directories(daemon.mnt());
  // Long commit and no checkpoint before the kill: the fsync'd transactions stay in the log.
  ASSERT_TRUE(daemon.start(image.image(), {"--node", "2"}));
  for (int i = 0; i < 5; ++i) {
    const std::string p = daemon.mnt() + "/f" + std::to_string(i);
    testing::spit(p, "data");
    const int fd = open(p.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
  }
  daemon.kill9();
  const std::string dbg = kSharedfs + " debug journal --json ";
  json j = run_json(dbg + "1 " + image.image());
  EXPECT_EQ(j["slot"], 1);
  EXPECT_EQ(j["state"], "dirty");
  EXPECT_EQ(j["needs_replay"], true) << j.dump(2);
  ASSERT_GE(j["transactions"].size(), 1u) << j.dump(2);
  uint64_t seq = j["tail_sequence"];
  for (const auto& t : j["transactions"]) {
    EXPECT_EQ(t["sequence"], seq++);  // consecutive from the tail, as replay reads them
    EXPECT_EQ(t["checksums_valid"], true);
    EXPECT_GE(t["blocks"].get<uint64_t>(), 3u);  // descriptor, an image, commit
    EXPECT_EQ(t["images"], t["targets"].size());
  }
  EXPECT_EQ(j["next_sequence"], seq);
  // Slot 0 was never used: clean and empty.
  json other = run_json(dbg + "0 " + image.image());
  EXPECT_EQ(other["state"], "clean");
  EXPECT_EQ(other["needs_replay"], false);

  // fsck -y replays exactly that; afterwards nothing is left to replay.
  auto y = run_command(kFsck + " -y " + image.image());
  EXPECT_LE(y.rc, 1) << y.out;
  EXPECT_NE(y.out.find(fmt::format("replayed {} transactions", j["transactions"].size())),
            std::string::npos)
      << y.out;
  json after = run_json(dbg + "1 " + image.image());
  EXPECT_EQ(after["state"], "clean");
  EXPECT_EQ(after["needs_replay"], false);
  EXPECT_EQ(after["tail_sequence"], seq);

  auto missing = run_command(kSharedfs + " debug journal 7 " + image.image());
  EXPECT_EQ(missing.rc, 1);
  EXPECT_NE(missing.out.find("slot 7 does not exist: the device has 2 slots"), std::string::npos)
      << missing.out;
}

TEST(CliToolsTest, EveryDebugCommandPrintsOneJsonObject) {
  ScratchImage image("tools", 256 << 20, "--nodes 3 --label lbl --cluster-name prod");
  json sb = superblock(image.image());
  EXPECT_EQ(sb["slots"], 3);
  EXPECT_EQ(sb["label"], "lbl");
  EXPECT_EQ(sb["cluster_name"], "prod");
  EXPECT_EQ(sb["backup_status"], "same");
  json slots = run_json(kSharedfs + " debug slots --json " + image.image());
  ASSERT_EQ(slots["slots"].size(), 3u);
  EXPECT_EQ(slots["slots"][2]["state"], "free");
  json hb = run_json(kSharedfs + " debug heartbeats --json " + image.image());
  ASSERT_EQ(hb["heartbeats"].size(), 3u);
  EXPECT_EQ(hb["heartbeats"][1]["state"], "idle");
}

TEST(CliToolsTest, TunefsChangesEachFieldAndFsckStaysClean) {
  // 4 slots of 4 MiB journals: the first AG at block 4352, so 5 slots fit with 3 MiB ones.
  ScratchImage image("tools", 256 << 20, "--nodes 4 --journal-size 4M");
  const std::string& img = image.image();
  const uint64_t seq0 = superblock(img)["seq"];

  auto dry = run_command(kTunefs + " -n --label dry " + img);
  EXPECT_EQ(dry.rc, 0) << dry.out;
  EXPECT_NE(dry.out.find("would change"), std::string::npos) << dry.out;
  EXPECT_EQ(superblock(img)["label"], "");
  EXPECT_EQ(superblock(img)["seq"], seq0);

  struct Step {
    std::string args, field;
    json value;
  };
  for (const Step& s :
       {Step{"--label data", "label", "data"}, Step{"--cluster-name prod", "cluster_name", "prod"},
        Step{"--cluster-id 0x2a", "cluster_id", 42}}) {
    auto r = run_command(kTunefs + " " + s.args + " " + img);
    ASSERT_EQ(r.rc, 0) << s.args << "\n" << r.out;
    fsck(img);
    json sb = superblock(img);
    EXPECT_EQ(sb[s.field], s.value) << s.args;
    EXPECT_EQ(sb["backup_status"], "same");
  }
  EXPECT_EQ(superblock(img)["seq"], seq0 + 3);

  // Adding a slot needs smaller journals here: refused with what would fit, then done.
  auto refused = run_command(kTunefs + " --add-slots 1 " + img);
  EXPECT_EQ(refused.rc, 1);
  EXPECT_NE(refused.out.find("--journal-size 3472K"), std::string::npos) << refused.out;
  EXPECT_EQ(superblock(img)["slots"], 4);
  auto added = run_command(kTunefs + " --add-slots 1 --journal-size 3M " + img);
  ASSERT_EQ(added.rc, 0) << added.out;
  fsck(img);
  json sb = superblock(img);
  EXPECT_EQ(sb["slots"], 5);
  EXPECT_EQ(sb["journal_blocks"], 768);
  EXPECT_EQ(sb["journal_start"], 12);
  EXPECT_EQ(sb["ag_start"], 4352);  // the AGs did not move
  EXPECT_EQ(sb["incompat_features"], 0);
  EXPECT_EQ(sb["label"], "data");  // earlier changes kept
  json j = run_json(kSharedfs + " debug journal --json 4 " + img);
  EXPECT_EQ(j["state"], "clean");
  EXPECT_EQ(j["region_blocks"], 768);
  auto nothing = run_command(kTunefs + " --label data " + img);
  EXPECT_EQ(nothing.rc, 0);
  EXPECT_NE(nothing.out.find("nothing to change"), std::string::npos) << nothing.out;
}

TEST(CliToolsTest, TunefsFinishesAnInterruptedLayoutChange) {
  ScratchImage image("tools", 256 << 20, "--nodes 2 --journal-size 4M");
  const std::string& img = image.image();
  ASSERT_EQ(run_command(kTunefs + " --add-slots 1 --journal-size 2M " + img).rc, 0);
  // As if cut short after the first superblock write: the superblocks say "rewriting", and
  // a block of the new slot area is not written yet.
  edit_superblocks(img, [](format::Superblock& sb) {
    sb.incompat_features |= format::Superblock::kIncompatSlotAreaRewrite;
    sb.rewrite_sequence = 9;
  });
  {
    std::fstream f(img, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4 * 4096);  // heartbeat of slot 2
    f.write(std::string(4096, '\0').data(), 4096);
  }
  auto ck = run_command(kFsck + " -n " + img);
  EXPECT_EQ(ck.rc, 8);
  EXPECT_NE(ck.out.find("run `tunefs.sharedfs DEVICE` again"), std::string::npos) << ck.out;
  EXPECT_EQ(superblock(img)["incompat_features"], 1);
  auto mnt = run_command(kSharedfs + " debug heartbeats " + img);
  EXPECT_EQ(mnt.rc, 1);
  EXPECT_NE(mnt.out.find("interrupted"), std::string::npos) << mnt.out;

  auto finish = run_command(kTunefs + " " + img);
  ASSERT_EQ(finish.rc, 0) << finish.out;
  fsck(img);
  json sb = superblock(img);
  EXPECT_EQ(sb["incompat_features"], 0);
  EXPECT_EQ(sb["slots"], 3);
  EXPECT_EQ(run_json(kSharedfs + " debug journal --json 2 " + img)["tail_sequence"], 9);
}

TEST(CliToolsTest, TunefsRefusesAMountedDeviceNamingTheNode) {
  MountedFs m(256 << 20, "--nodes 2");
  ASSERT_TRUE(m.mount());
  auto r = run_command(kTunefs + " --label busy " + m.image());
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("node 1 is mounted"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--force"), std::string::npos) << r.out;
  // Read-only inspection works meanwhile.
  EXPECT_EQ(superblock(m.image())["label"], "");
  json hb = run_json(kSharedfs + " debug heartbeats --json " + m.image());
  EXPECT_EQ(hb["heartbeats"][0]["state"], "mounted");
  EXPECT_EQ(m.unmount(), 0);
  auto after = run_command(kTunefs + " --label free " + m.image());
  EXPECT_EQ(after.rc, 0) << after.out;
}

TEST(CliToolsTest, AddSlotsThenTheNewNodeMounts) {
  ScratchImage image("tools", 256 << 20, "--nodes 2 --journal-size 4M");
  ASSERT_EQ(run_command(kTunefs + " --add-slots 1 --journal-size 2M " + image.image()).rc, 0);
  FuseDaemon daemon((image.dir() / "mnt").string());
  std::filesystem::create_directories(daemon.mnt());
  ASSERT_TRUE(daemon.start(image.image(), {"--node", "3"}));
  testing::spit(daemon.mnt() + "/from-node-3", "hello");
  EXPECT_EQ(testing::slurp(daemon.mnt() + "/from-node-3"), "hello");
  EXPECT_TRUE(daemon.stop());
  fsck(image.image());
  json hb = run_json(kSharedfs + " debug heartbeats --json " + image.image());
  EXPECT_EQ(hb["heartbeats"][2]["node_id"], 3);
  EXPECT_GT(hb["heartbeats"][2]["counter"].get<uint64_t>(), 0u);
}

// Runs `cmd` with its stdout and stderr on a pseudo-terminal; returns what it wrote.
std::string run_on_pty(const std::string& cmd) {
  int master = -1;
  const pid_t pid = forkpty(&master, nullptr, nullptr, nullptr);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  EXPECT_GT(pid, 0);
  std::string out;
  char buf[4096];
  ssize_t n;
  // EIO once the child has exited and the slave side is closed.
  while ((n = read(master, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(master);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd << "\n" << out;
  return out;
}

TEST(CliToolsTest, ProgressBarsOnATerminalOnly) {
  ScratchImage image("tools", uint64_t{1} << 30, "-q");
  const std::string& img = image.image();
  const std::string bar = "] 60/60";  // the last redraw of 60 AGs

  std::string mk = run_on_pty(kMkfs + " --force " + img);
  EXPECT_NE(mk.find("writing allocation groups ["), std::string::npos) << mk;
  EXPECT_NE(mk.find(bar), std::string::npos) << mk;
  std::string ck = run_on_pty(kFsck + " -n " + img);
  for (const char* phase :
       {"checking slots [", "checking allocation groups [", "walking the directory tree ["}) {
    EXPECT_NE(ck.find(phase), std::string::npos) << phase << "\n" << ck;
  }
  EXPECT_NE(ck.find("clean"), std::string::npos) << ck;
  // -q on a terminal, and a pipe: no bar at all.
  std::string quiet = run_on_pty(kFsck + " -n -q " + img);
  EXPECT_EQ(quiet.find('['), std::string::npos) << quiet;
  auto piped = run_command(kFsck + " -n " + img + " | cat");
  EXPECT_EQ(piped.rc, 0);
  EXPECT_EQ(piped.out.find('['), std::string::npos) << piped.out;
  EXPECT_EQ(piped.out.find('\r'), std::string::npos) << piped.out;
  auto mk_piped = run_command(kMkfs + " --force " + img + " | cat");
  EXPECT_EQ(mk_piped.out.find("writing allocation groups"), std::string::npos) << mk_piped.out;
}

TEST(CliToolsTest, HelpShowsExamples) {
  for (const std::string& bin : {kMkfs, kFsck, kTunefs}) {
    auto r = run_command(bin + " --help");
    EXPECT_EQ(r.rc, 0) << bin;
    EXPECT_NE(r.out.find("Examples:"), std::string::npos) << bin << "\n" << r.out;
  }
  auto d = run_command(kSharedfs + " debug inode --help");
  EXPECT_NE(d.out.find("--json"), std::string::npos) << d.out;
}

}  // namespace
}  // namespace sharedfs
