// bench/bench_util.h — helpers the benchmark programs share (smallfile.c, create_files.c);
// header-only, because each program is built alone at bench time with one gcc command.
#pragma once

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Writes all of p[0..n), retrying short writes and EINTR; -1 (errno set) on an error.
static inline int bench_write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

// splitmix64: a size in [min_size, max_size] that depends on i only, so every file system
// in a comparison gets the same files.
static inline long bench_size_of(long i, long min_size, long max_size) {
  uint64_t z = (uint64_t)i + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return min_size + (long)(z % (uint64_t)(max_size - min_size + 1));
}
