// `sharedfs debug superblock|slots|heartbeats|inode N|journal SLOT DEVICE [--json]`:
// read-only inspection of a device, safe on a device other hosts have mounted (it is opened
// read-only and nothing is written). Text for people, one JSON object with --json.
#pragma once

#include <CLI/CLI.hpp>

namespace sharedfs::tools {

// Adds the `debug` subcommand and its subcommands to `app`. The chosen one runs from
// CLI11's callback and stores its exit code (0, or 1 with a message) in `rc`, which must
// outlive the parse.
void add_debug_command(CLI::App& app, int& rc);

}  // namespace sharedfs::tools
