#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the whole default suite under
# ctest, then the unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
sharedfs_install_deps

jobs="$(nproc)"
sharedfs_build build
echo "== ctest (default suite)"
ctest --test-dir "$SHAREDFS_ROOT/build" --output-on-failure -j"$jobs" --timeout 600 -LE scale

sharedfs_build build-asan -DSHAREDFS_SANITIZE=ON
echo "== ctest -L unit under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$SHAREDFS_ROOT/build-asan" --output-on-failure -j"$jobs" -L unit --timeout 600
