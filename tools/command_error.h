// tools/command_error.h — how the `sharedfs` subcommands end on an error: one line
// "sharedfs: <what failed, and the fix>" on standard error, exit status 1.
#pragma once

#include <fmt/format.h>

#include "common/status.h"

namespace sharedfs::tools {

inline int fail(const Status& st) {
  fmt::print(stderr, "sharedfs: {}\n", st.to_string());
  return 1;
}

}  // namespace sharedfs::tools
