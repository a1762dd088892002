#include "common/status.h"

#include <cstring>

namespace sharedfs {

std::string_view code_name(Code code) {
  switch (code) {
    case Code::kOk:
      return "ok";
    case Code::kInvalidArgument:
      return "invalid argument";
    case Code::kNotFound:
      return "not found";
    case Code::kAlreadyExists:
      return "already exists";
    case Code::kNoSpace:
      return "no space";
    case Code::kBusy:
      return "busy";
    case Code::kUnsupported:
      return "unsupported";
    case Code::kIoError:
      return "I/O error";
    case Code::kCorruption:
      return "corruption";
    case Code::kReservationConflict:
      return "reservation conflict";
    case Code::kCrashed:
      return "crashed";
    case Code::kInternal:
      return "internal error";
  }
  return "unknown";
}

int Status::to_errno() const {
  if (sys_errno_ != 0) return sys_errno_;
  switch (code_) {
    case Code::kOk:
      return 0;
    case Code::kInvalidArgument:
      return EINVAL;
    case Code::kNotFound:
      return ENOENT;
    case Code::kAlreadyExists:
      return EEXIST;
    case Code::kNoSpace:
      return ENOSPC;
    case Code::kBusy:
      return EBUSY;
    case Code::kUnsupported:
      return EOPNOTSUPP;
    case Code::kIoError:
      return EIO;
    case Code::kCorruption:
      return EUCLEAN;
    case Code::kReservationConflict:
      return EBADE;
    case Code::kCrashed:
      return EIO;
    case Code::kInternal:
      return EIO;
  }
  return EIO;
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  std::string s(code_name(code_));
  if (!message_.empty()) s += ": " + message_;
  if (sys_errno_ != 0) s += fmt::format(" ({})", std::strerror(sys_errno_));
  return s;
}

Status Status::with_context(std::string_view context) const {
  if (is_ok()) return *this;
  return Status(code_, fmt::format("{}: {}", context, message_), sys_errno_, retryable_);
}

Status errno_status(int err, std::string_view what) {
  Code code = Code::kIoError;
  bool retryable = false;
  switch (err) {
    case EBADE:
      code = Code::kReservationConflict;
      break;
    case ENOENT:
      code = Code::kNotFound;
      break;
    case EEXIST:
      code = Code::kAlreadyExists;
      break;
    case EINVAL:
      code = Code::kInvalidArgument;
      break;
    case ENOSPC:
      code = Code::kNoSpace;
      break;
    case EBUSY:
      code = Code::kBusy;
      break;
    case EOPNOTSUPP:
      code = Code::kUnsupported;
      break;
    case EAGAIN:
    case EINTR:
    case ETIMEDOUT:
      retryable = true;
      break;
    default:
      break;
  }
  return Status(code, std::string(what), err, retryable);
}

}  // namespace sharedfs
