#include "tools/fstab.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <sstream>

namespace sharedfs::tools {
namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }

// Mount points compare as paths: "/mnt/x/" and "/mnt//x" are "/mnt/x".
std::string normal_path(const std::string& p) {
  std::string n = std::filesystem::path(p).lexically_normal().string();
  while (n.size() > 1 && n.back() == '/') n.pop_back();
  return n;
}

// The second blank-separated field of an fstab line, unescaped; empty for comments,
// blank lines and lines with fewer fields.
std::string mountpoint_of(std::string_view line) {
  size_t i = 0;
  while (i < line.size() && is_blank(line[i])) ++i;
  if (i == line.size() || line[i] == '#' || line[i] == '\n') return {};
  while (i < line.size() && !is_blank(line[i]) && line[i] != '\n') ++i;  // fs_spec
  while (i < line.size() && is_blank(line[i])) ++i;
  const size_t start = i;
  while (i < line.size() && !is_blank(line[i]) && line[i] != '\n') ++i;
  return unescape_fstab_field(line.substr(start, i - start));
}

Status write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, "writing " + what);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::ok();
}

Result<std::string> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "opening " + path);
  std::string out;
  char buf[16384];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return errno_status(err, "reading " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// The file update_fstab replaces: the target of a symbolic link, since renaming over the
// link would replace the link itself.
std::string target_of(const std::string& path) {
  std::error_code ec;
  auto real = std::filesystem::canonical(path, ec);
  return ec ? path : real.string();
}

}  // namespace

std::string escape_fstab_field(std::string_view field) {
  std::string out;
  for (char c : field) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\\' || c == '#') {
      out += fmt::format("\\{:03o}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out;
}

std::string unescape_fstab_field(std::string_view field) {
  auto octal = [](char c) { return c >= '0' && c <= '7'; };
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && octal(field[i + 1]) && octal(field[i + 2]) &&
        octal(field[i + 3])) {
      out += static_cast<char>(((field[i + 1] - '0') << 6) | ((field[i + 2] - '0') << 3) |
                               (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

std::string format_fstab_line(const FstabEntry& e) {
  return fmt::format("{} {} {} {} {} {}", escape_fstab_field(e.device),
                     escape_fstab_field(e.mountpoint), escape_fstab_field(e.type),
                     escape_fstab_field(e.options.empty() ? "defaults" : e.options), e.dump,
                     e.pass);
}

FstabEntry fstab_entry_for_mount(const std::string& device, const std::string& mountpoint,
                                 const std::string& config, uint32_t node,
                                 const std::vector<std::string>& option_groups) {
  FstabEntry e;
  e.device = device;
  e.mountpoint = mountpoint;
  std::vector<std::string> opts;
  if (!config.empty()) {
    opts.push_back("_netdev");
    opts.push_back("config=" + config);
  }
  opts.push_back(fmt::format("node={}", node));
  for (const auto& group : option_groups) {
    std::stringstream ss(group);
    std::string opt;
    while (std::getline(ss, opt, ',')) {
      const std::string key = opt.substr(0, opt.find('='));
      if (opt.empty() || key == "config" || key == "node" || key == "_netdev" ||
          key == "defaults") {
        continue;
      }
      opts.push_back(opt);
    }
  }
  for (size_t i = 0; i < opts.size(); ++i) e.options += (i ? "," : "") + opts[i];
  return e;
}

std::string fstab_with_entry(std::string_view text, const FstabEntry& entry) {
  const std::string target = normal_path(entry.mountpoint);
  const std::string line = format_fstab_line(entry) + "\n";
  std::string out;
  bool placed = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    end = end == std::string_view::npos ? text.size() : end + 1;
    const std::string_view old = text.substr(pos, end - pos);
    pos = end;
    const std::string mnt = mountpoint_of(old);
    if (mnt.empty() || normal_path(mnt) != target) {
      out += old;
    } else if (!placed) {
      out += line;
      placed = true;
    }
  }
  if (!placed) {
    if (!out.empty() && out.back() != '\n') out += '\n';
    out += line;
  }
  return out;
}

Status check_fstab_updatable(const std::string& path) {
  const std::string file = target_of(path);
  if (::access(file.c_str(), F_OK) == 0) {
    if (::access(file.c_str(), R_OK) != 0) return errno_status(errno, "fstab " + file);
  }
  std::string dir = std::filesystem::path(file).parent_path().string();
  if (dir.empty()) dir = ".";
  const std::string what = fmt::format("fstab {}: its directory {}", file, dir);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return errno_status(errno, what);
  if (!S_ISDIR(st.st_mode)) return errno_status(ENOTDIR, what);
  // access() says EROFS for a read-only file system, even to root.
  if (::access(dir.c_str(), W_OK) != 0) return errno_status(errno, what);
  return Status::ok();
}

Status update_fstab(const std::string& path, const FstabEntry& entry) {
  const std::string file = target_of(path);
  std::string old;
  struct stat st {};
  bool existed = true;
  if (::stat(file.c_str(), &st) != 0) {
    if (errno != ENOENT) return errno_status(errno, "fstab " + file);
    existed = false;
  } else {
    ASSIGN_OR_RETURN(old, read_file(file));
  }
  const std::string text = fstab_with_entry(old, entry);
  if (existed && text == old) return Status::ok();

  const std::filesystem::path fp(file);
  std::string tmp = (fp.parent_path() / ("." + fp.filename().string() + ".sharedfs-XXXXXX"));
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "creating a temporary file beside " + file);
  auto fail = [&](Status s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  // The new fstab keeps the old one's permissions and owner (mkostemp makes it 0600).
  if (::fchmod(fd, existed ? (st.st_mode & 07777) : 0644) != 0) {
    return fail(errno_status(errno, "chmod " + tmp));
  }
  if (existed && ::fchown(fd, st.st_uid, st.st_gid) != 0) {
    return fail(errno_status(errno, "chown " + tmp));
  }
  if (Status w = write_all(fd, text, tmp); !w) return fail(w);
  if (::fsync(fd) != 0) return fail(errno_status(errno, "fsync " + tmp));
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return errno_status(err, "closing " + tmp);
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return errno_status(err, fmt::format("renaming {} to {}", tmp, file));
  }
  // The rename is durable once the directory is.
  std::string dir = fp.parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0) return errno_status(err, "fsync " + dir);
  }
  return Status::ok();
}

}  // namespace sharedfs::tools
