// Errors as values: Status and Result<T>.
//
// Every fallible call in sharedfs returns a [[nodiscard]] Status or Result<T>. No exception
// crosses a module boundary: adapters around libraries that throw (cppzmq, toml++, CLI11)
// catch and convert. A Status carries a Code that callers branch on, the errno the kernel
// gave (when there was one) and a human-readable message with context.
//
// Add a Code only when some caller reacts to it differently from the existing ones.
//
// Thread-safety: values; copy freely.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace sharedfs {

enum class Code : int {
  kOk = 0,
  // Programming or user errors: a caller passed something invalid.
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kNoSpace,
  kBusy,
  kUnsupported,
  // The device: I/O failed. `retryable()` tells whether trying again may help.
  kIoError,
  // On-disk data failed validation (bad magic, checksum, self block number, version).
  kCorruption,
  // The device refused the command because of a persistent reservation. For a write by a
  // node whose key was preempted this means "we are fenced": the node must withdraw.
  kReservationConflict,
  // A fault-injecting device reached its crash point: the "machine" is down.
  kCrashed,
  kInternal,
};

std::string_view code_name(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message, int sys_errno = 0, bool retryable = false)
      : code_(code), sys_errno_(sys_errno), retryable_(retryable), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == Code::kOk; }
  explicit operator bool() const { return is_ok(); }
  Code code() const { return code_; }
  // errno from the failed system call, 0 when the error did not come from one.
  int sys_errno() const { return sys_errno_; }
  bool retryable() const { return retryable_; }
  const std::string& message() const { return message_; }

  // errno to hand to the kernel (FUSE replies) or to a shell.
  int to_errno() const;
  std::string to_string() const;

  // Prepends context: "reading superblock: <message>".
  Status with_context(std::string_view context) const;

 private:
  Code code_ = Code::kOk;
  int sys_errno_ = 0;
  bool retryable_ = false;
  std::string message_;
};

// Builds a Status from errno after a failed system call.
Status errno_status(int err, std::string_view what);

template <typename... Args>
Status make_status(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).is_ok()) {
      v_ = Status(Code::kInternal, "Result constructed from an OK Status");
    }
  }

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }

  const Status& status() const {
    static const Status kOkStatus;
    return is_ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

namespace internal {
inline Status as_status(Status s) { return s; }
template <typename T>
Status as_status(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

}  // namespace sharedfs

#define SHAREDFS_CONCAT_INNER(a, b) a##b
#define SHAREDFS_CONCAT(a, b) SHAREDFS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                                         \
  do {                                                                \
    ::sharedfs::Status _st = ::sharedfs::internal::as_status((expr)); \
    if (!_st.is_ok()) return _st;                                     \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.is_ok()) return tmp.status();      \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(SHAREDFS_CONCAT(_result_, __LINE__), lhs, expr)
