#!/bin/sh
# Builds the libFuzzer target for the DLM message decoder with clang and runs it for a
# bounded time: message_fuzz.sh BUILD_DIR SECONDS. Exits 77 (ctest: skipped) without
# clang++-14 or its libFuzzer runtime.
set -eu
out="$1"
seconds="$2"
src="$(cd "$(dirname "$0")/.." && pwd)"
cxx="$(command -v clang++-14 || true)"
[ -n "$cxx" ] || { echo "clang++-14 not installed: skipping"; exit 77; }
mkdir -p "$out/dlm_fuzz_corpus"
bin="$out/dlm_message_fuzz"
sources="$src/dlm/message_fuzz.cc $src/dlm/message.cc $src/dlm/resource_name.cc
         $src/dlm/membership.cc $src/dlm/lock_service.cc $src/common/status.cc $src/common/types.cc"
stale=0
[ -x "$bin" ] || stale=1
for f in $sources $src/dlm/message.h $src/dlm/resource_name.h; do
  [ "$stale" = 1 ] || [ "$f" -nt "$bin" ] && stale=1
done
if [ "$stale" = 1 ]; then
  # shellcheck disable=SC2086
  "$cxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$src" $(pkg-config --cflags fmt libisal openssl) $sources \
    $(pkg-config --libs fmt libisal openssl) -o "$bin" ||
    { echo "clang++-14 cannot build a libFuzzer target here: skipping"; exit 77; }
fi
exec "$bin" -max_total_time="$seconds" -seed=1 -max_len=512 -print_final_stats=1 \
  "$out/dlm_fuzz_corpus"
