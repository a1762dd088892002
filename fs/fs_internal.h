// Internal to fs/: pieces shared by the FileSystem's source files.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <string>
#include <string_view>

#include "common/status.h"
#include "format/format.h"
#include "fs/fs.h"
#include "journal/journal.h"

namespace sharedfs::fs {

// The AGs the calling thread's change holds, for the allocator's gate. A thread is in one
// change at a time; the gate lives on the heap so the Change may move.
struct FileSystem::AgGate {
  explicit AgGate(std::vector<uint32_t> held) : ags(std::move(held)), previous(current) {
    current = this;
  }
  ~AgGate() { current = previous; }
  AgGate(const AgGate&) = delete;
  AgGate& operator=(const AgGate&) = delete;

  static bool allows(uint32_t ag) {
    return current != nullptr && std::binary_search(current->ags.begin(), current->ags.end(), ag);
  }

  const std::vector<uint32_t> ags;  // ascending
  AgGate* const previous;
  static thread_local AgGate* current;
};
// A decoded inode and the cached block it lives in. Valid while the caller holds the
// inode's lock; store() re-encodes it into the block.
struct FileSystem::InodeRef {
  Ino ino = 0;
  journal::BufferRef buf;
  format::Inode inode;

  bool is_dir() const { return S_ISDIR(inode.mode); }
  bool is_reg() const { return S_ISREG(inode.mode); }
  bool is_symlink() const { return S_ISLNK(inode.mode); }
};

namespace detail {

// A Status carrying the POSIX error the kernel should see.
inline Status posix_error(int err, std::string message) {
  Code code = Code::kInvalidArgument;
  switch (err) {
    case ENOENT:
    case ENODATA:
      code = Code::kNotFound;
      break;
    case EEXIST:
    case ENOTEMPTY:
      code = Code::kAlreadyExists;
      break;
    case ENOSPC:
      code = Code::kNoSpace;
      break;
    case EOPNOTSUPP:
      code = Code::kUnsupported;
      break;
    case EIO:
      code = Code::kIoError;
      break;
    default:
      break;
  }
  return Status(code, std::move(message), err);
}

uint64_t now_ns();
uint64_t timespec_ns(const timespec& ts);
uint32_t dirent_type(format::FileType type);  // DT_*
// ENAMETOOLONG / EINVAL for names a directory cannot hold.
Status check_name(std::string_view name);

}  // namespace detail
}  // namespace sharedfs::fs
