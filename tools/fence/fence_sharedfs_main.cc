// fence_sharedfs: options from the command line when there are any, else from standard
// input (how Pacemaker's fencer runs agents); see fence_agent.h.
#include <fmt/format.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "tools/fence/fence_agent.h"

int main(int argc, char** argv) {
  using namespace sharedfs;
  Result<fence::AgentOptions> opts = Status(Code::kInternal, "no options");
  if (argc > 1) {
    opts = fence::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
  } else {
    const std::string input{std::istreambuf_iterator<char>(std::cin),
                            std::istreambuf_iterator<char>()};
    opts = fence::parse_stdin_options(input);
  }
  if (!opts) {
    fmt::print(stderr, "{}\nPlease use '-h' for usage\n", opts.status().message());
    return fence::kExitError;
  }
  for (const auto& w : opts->warnings) fmt::print(stderr, "{}\n", w);
  if (opts->version) {
    fmt::print("{}\n", SHAREDFS_VERSION);
    return fence::kExitOk;
  }
  const fence::AgentResult r = fence::run_agent(*opts);
  std::fputs(r.out.c_str(), stdout);
  std::fputs(r.err.c_str(), stderr);
  return r.exit_code;
}
