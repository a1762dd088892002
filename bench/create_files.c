// create_files: the workloads of bench/cluster_bench.sh, timed in-process so that neither a
// shell loop nor an interpreter is what gets measured. Named for its first job; it also
// writes and reads the shared dataset and runs the append ping-pong.
//
//   create_files create N DIR...
//       one process per DIR, started together: each creates N empty files DIR/f0000000..
//       (open O_CREAT|O_EXCL + close). Prints "FILES SECONDS" (SECONDS: from the common
//       start to the end of the last process).
//   create_files mkdata DIR NLARGE LARGE_BYTES NSMALL MIN MAX
//       writes the dataset: NLARGE files DIR/L000.. of LARGE_BYTES and NSMALL files
//       DIR/s0000000.. of MIN..MAX bytes (size from a PRNG seeded with the index), 1 MiB
//       writes; every file starts with its index, a header `read` checks. Prints
//       "FILES BYTES SECONDS".
//   create_files read NLARGE LARGE_BYTES NSMALL MIN MAX DIR...
//       one process per DIR (the dataset seen through another mount), started together:
//       each reads every file whole with 1 MiB reads, checking its size and header; process
//       k starts at file k*FILES/DIRS and wraps around, so the nodes do not walk in
//       lockstep. Prints "FILES BYTES SECONDS" (sums over all processes; wall time).
//   create_files pingpong N FILE_A FILE_B
//       opens FILE_A and FILE_B (the same file through two mounts, or the same path twice)
//       O_WRONLY|O_APPEND and writes 4 KiB blocks alternately through A, B, A, ..., timing
//       each write(); then reads FILE_A back and checks it holds exactly N blocks, block i
//       carrying index i. Prints "OPS SECONDS P50_US P99_US"; if the read-back check fails,
//       prints them all the same and exits 3.
//
// Exits 1 on the first failed call or check, with a message on stderr (pingpong: see above).
// Build: gcc -O2 -Wall -o create_files create_files.c
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

static const size_t kBufSize = 1 << 20;
static const size_t kBlock = 4096;


static void usage(void) {
  fprintf(stderr,
          "usage: create_files create N DIR...\n"
          "       create_files mkdata DIR NLARGE LARGE_BYTES NSMALL MIN MAX\n"
          "       create_files read NLARGE LARGE_BYTES NSMALL MIN MAX DIR...\n"
          "       create_files pingpong N FILE_A FILE_B\n");
  exit(2);
}

static long num(const char* s) {
  char* end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < 0) usage();
  return v;
}

static int failf(const char* what, const char* path) {
  fprintf(stderr, "create_files: %s %s: %s\n", what, path, errno ? strerror(errno) : "bad data");
  return -1;
}


// ---------------------------------------------------------------- processes started together

// Runs body(k, arg) in one child process per k in [0, n), released together once all are
// forked; returns the wall time from the release to the last child's exit, or -1 if any
// child failed. Each child reports two numbers (its own count and bytes) through a pipe.
struct result {
  long long count, bytes;
};
typedef int (*body_fn)(int k, void* arg, struct result* out);

static double run_together(int n, body_fn body, void* arg, struct result* total) {
  int go[2], res[2];
  if (pipe(go) != 0 || pipe(res) != 0) {
    perror("create_files: pipe");
    return -1;
  }
  pid_t* pids = calloc((size_t)n, sizeof *pids);
  if (pids == NULL) return -1;
  for (int k = 0; k < n; k++) {
    pids[k] = fork();
    if (pids[k] < 0) {
      perror("create_files: fork");
      return -1;
    }
    if (pids[k] == 0) {
      // Killed with the parent (the benchmark script stops us on Ctrl-C or TERM by its pid).
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() == 1) _exit(1);
      close(go[1]);
      close(res[0]);
      char c;
      while (read(go[0], &c, 1) < 0 && errno == EINTR) {
      }
      struct result r = {0, 0};
      int rc = body(k, arg, &r);
      if (rc == 0 && bench_write_all(res[1], (const char*)&r, sizeof r) != 0) rc = -1;
      _exit(rc == 0 ? 0 : 1);
    }
  }
  close(go[0]);
  close(res[1]);
  double t0 = bench_now();
  close(go[1]);  // every child's read() returns 0 now
  int failed = 0;
  for (int k = 0; k < n; k++) {
    int st;
    while (waitpid(pids[k], &st, 0) < 0) {
      if (errno != EINTR) {
        failed = 1;
        break;
      }
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
  }
  double secs = bench_now() - t0;
  struct result r;
  int got = 0;
  total->count = total->bytes = 0;
  while (read(res[0], &r, sizeof r) == (ssize_t)sizeof r) {
    total->count += r.count;
    total->bytes += r.bytes;
    got++;
  }
  close(res[0]);
  free(pids);
  if (failed || got != n) return -1;
  return secs;
}

// ---------------------------------------------------------------- create

struct create_args {
  long n;
  char** dirs;
};

static int create_body(int k, void* arg, struct result* out) {
  struct create_args* a = arg;
  char path[4096];
  for (long i = 0; i < a->n; i++) {
    snprintf(path, sizeof path, "%s/f%07ld", a->dirs[k], i);
    errno = 0;
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return failf("create", path);
    if (close(fd) != 0) return failf("close", path);
  }
  out->count = a->n;
  return 0;
}

// ---------------------------------------------------------------- dataset

struct dataset {
  long nlarge, large_bytes, nsmall, min_size, max_size;
  char** dirs;
  int ndirs;
};


// File j of the dataset: the large files first, then the small ones.
static long file_of(const struct dataset* d, const char* dir, long j, char* path, size_t n) {
  if (j < d->nlarge) {
    snprintf(path, n, "%s/L%03ld", dir, j);
    return d->large_bytes;
  }
  snprintf(path, n, "%s/s%07ld", dir, j - d->nlarge);
  return bench_size_of(j - d->nlarge, d->min_size, d->max_size);
}

static char* pattern_buf(void) {
  char* buf = malloc(kBufSize);
  if (buf != NULL)
    for (size_t k = 0; k < kBufSize; k++) buf[k] = (char)(k * 131 + 7);
  return buf;
}

static int mkdata(struct dataset* d) {
  char* buf = pattern_buf();
  char path[4096];
  if (buf == NULL) return 1;
  long long bytes = 0;
  double t0 = bench_now();
  for (long j = 0; j < d->nlarge + d->nsmall; j++) {
    long size = file_of(d, d->dirs[0], j, path, sizeof path);
    errno = 0;
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return failf("create", path), 1;
    for (long off = 0; off < size;) {
      size_t len = (size_t)(size - off) < kBufSize ? (size_t)(size - off) : kBufSize;
      memcpy(buf, &j, sizeof j);
      if (off > 0) memcpy(buf, &off, sizeof off);
      if (bench_write_all(fd, buf, len) != 0) return failf("write", path), 1;
      off += (long)len;
    }
    if (close(fd) != 0) return failf("close", path), 1;
    bytes += size;
  }
  printf("%ld %lld %.6f\n", d->nlarge + d->nsmall, bytes, bench_now() - t0);
  free(buf);
  return 0;
}

static int read_body(int k, void* arg, struct result* out) {
  struct dataset* d = arg;
  long total = d->nlarge + d->nsmall;
  char* buf = malloc(kBufSize);
  char path[4096];
  if (buf == NULL) return -1;
  for (long t = 0; t < total; t++) {
    long j = (t + total * k / d->ndirs) % total;
    long want = file_of(d, d->dirs[k], j, path, sizeof path), got = 0;
    errno = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return failf("open", path);
    for (;;) {
      ssize_t r = read(fd, buf, kBufSize);
      if (r < 0) {
        if (errno == EINTR) continue;
        close(fd);
        return failf("read", path);
      }
      if (r == 0) break;
      // Each 1 MiB piece starts with the file's index (first) or its offset (the others).
      long expect = got == 0 ? j : got;
      if (got % (long)kBufSize == 0 && (r < (ssize_t)sizeof expect || memcmp(buf, &expect, sizeof expect) != 0)) {
        close(fd);
        errno = 0;
        return failf("read (wrong data)", path);
      }
      got += r;
    }
    close(fd);
    if (got != want) {
      errno = 0;
      fprintf(stderr, "create_files: %s: %ld bytes, expected %ld\n", path, got, want);
      return -1;
    }
    out->count++;
    out->bytes += got;
  }
  free(buf);
  return 0;
}

// ---------------------------------------------------------------- ping-pong

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static int pingpong(long n, const char* file_a, const char* file_b) {
  char buf[4096];
  double* lat = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  if (lat == NULL || n < 2) return 1;
  memset(buf, 'x', sizeof buf);
  int fds[2];
  const char* paths[2] = {file_a, file_b};
  for (int s = 0; s < 2; s++) {
    errno = 0;
    fds[s] = open(paths[s], O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fds[s] < 0) return failf("open", paths[s]), 1;
  }
  double t0 = bench_now();
  for (long i = 0; i < n; i++) {
    memcpy(buf, &i, sizeof i);
    double t = bench_now();
    ssize_t w;
    do {
      w = write(fds[i % 2], buf, kBlock);
    } while (w < 0 && errno == EINTR);
    lat[i] = bench_now() - t;
    if (w != (ssize_t)kBlock) {
      if (w >= 0) errno = EIO;
      fprintf(stderr, "create_files: append %ld through %s: %s\n", i, paths[i % 2],
              w < 0 ? strerror(errno) : "short write");
      return 1;
    }
  }
  double secs = bench_now() - t0;
  for (int s = 0; s < 2; s++)
    if (close(fds[s]) != 0) return failf("close", paths[s]), 1;

  // Every append must have landed after the one before it, whichever mount it went through.
  errno = 0;
  int fd = open(file_a, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return failf("open", file_a), 1;
  long blocks = 0, bad = 0;
  for (;;) {
    ssize_t r = pread(fd, buf, kBlock, (off_t)blocks * (off_t)kBlock);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return failf("read back", file_a), 1;
    if (r == 0) break;
    long idx;
    memcpy(&idx, buf, sizeof idx);
    if (r != (ssize_t)kBlock || idx != blocks) {
      if (bad++ == 0)
        fprintf(stderr, "create_files: %s: block %ld holds %s %ld\n", file_a, blocks,
                r != (ssize_t)kBlock ? "a short block," : "index", r != (ssize_t)kBlock ? (long)r : idx);
    }
    blocks++;
  }
  close(fd);
  qsort(lat, (size_t)n, sizeof *lat, cmp_double);
  long p99 = (long)((double)n * 0.99);
  if (p99 >= n) p99 = n - 1;
  printf("%ld %.6f %.1f %.1f\n", n, secs, lat[n / 2] * 1e6, lat[p99] * 1e6);
  free(lat);
  if (bad != 0 || blocks != n) {
    fprintf(stderr, "create_files: %s: %ld blocks read back (%ld wrong), %ld appended\n", file_a,
            blocks, bad, n);
    return 3;
  }
  return 0;
}

// ---------------------------------------------------------------- main

int main(int argc, char** argv) {
  if (argc < 2) usage();
  const char* op = argv[1];
  struct result total;
  if (strcmp(op, "create") == 0) {
    if (argc < 4) usage();
    struct create_args a = {num(argv[2]), argv + 3};
    double secs = run_together(argc - 3, create_body, &a, &total);
    if (secs < 0) return 1;
    printf("%lld %.6f\n", total.count, secs);
    return 0;
  }
  if (strcmp(op, "mkdata") == 0 || strcmp(op, "read") == 0) {
    int mk = op[0] == 'm';
    if (mk ? argc != 8 : argc < 8) usage();
    char** rest = argv + 2;
    struct dataset d;
    if (mk) {
      d.dirs = rest;
      d.ndirs = 1;
      rest++;
    }
    d.nlarge = num(rest[0]);
    d.large_bytes = num(rest[1]);
    d.nsmall = num(rest[2]);
    d.min_size = num(rest[3]);
    d.max_size = num(rest[4]);
    if (d.max_size < d.min_size || d.min_size < (long)sizeof(long) ||
        (d.nlarge > 0 && d.large_bytes < (long)sizeof(long)) || d.nlarge > 999 ||
        d.nlarge + d.nsmall == 0)
      usage();
    if (mk) return mkdata(&d);
    d.dirs = argv + 7;
    d.ndirs = argc - 7;
    double secs = run_together(d.ndirs, read_body, &d, &total);
    if (secs < 0) return 1;
    printf("%lld %lld %.6f\n", total.count, total.bytes, secs);
    return 0;
  }
  if (strcmp(op, "pingpong") == 0) {
    if (argc != 5) usage();
    return pingpong(num(argv[2]), argv[3], argv[4]);
  }
  usage();
  return 2;
}
