// smallfile: the metadata and small-file workloads of bench/fs_bench.sh, timed in-process
// so that neither a shell loop nor an interpreter is what gets measured.
//
//   smallfile [-t THREADS] create  DIR N         create N empty files f0000000.. (open+close)
//   smallfile [-t THREADS] stat    DIR N         lstat each, checking it is an empty file
//   smallfile [-t THREADS] unlink  DIR N         unlink each
//   smallfile              readdir DIR N         list DIR, checking it holds exactly N entries
//   smallfile [-t THREADS] mkfiles DIR N MIN MAX write N files of MIN..MAX bytes (untimed set-up)
//   smallfile [-t THREADS] read    DIR N MIN MAX read each whole file, checking size and header
//
// Prints one line "OPS BYTES SECONDS" on stdout; exits 1 on the first failed call. File i
// is named f%07d and, for mkfiles/read, has a size drawn from a PRNG seeded with i, so every
// file system under test gets the same files. Threads split the index range in equal
// contiguous slices. Build: gcc -O2 -Wall -pthread smallfile.c -o smallfile
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

enum op { OP_CREATE, OP_STAT, OP_UNLINK, OP_READDIR, OP_MKFILES, OP_READ };

struct job {
  enum op op;
  const char* dir;
  long first, last;  // [first, last)
  long min_size, max_size;
  long long bytes;  // out
  int failed;       // out
};

static const size_t kBufSize = 1 << 20;


static void name_of(char* out, size_t n, const char* dir, long i) {
  snprintf(out, n, "%s/f%07ld", dir, i);
}


static int fail(struct job* j, const char* what, const char* path) {
  fprintf(stderr, "smallfile: %s %s: %s\n", what, path, errno ? strerror(errno) : "bad data");
  j->failed = 1;
  return -1;
}


static int one(struct job* j, long i, char* buf) {
  char path[4096];
  name_of(path, sizeof path, j->dir, i);
  errno = 0;
  switch (j->op) {
    case OP_CREATE: {
      int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
      if (fd < 0) return fail(j, "create", path);
      if (close(fd) != 0) return fail(j, "close", path);
      return 0;
    }
    case OP_STAT: {
      struct stat st;
      if (lstat(path, &st) != 0) return fail(j, "stat", path);
      if (!S_ISREG(st.st_mode) || st.st_size != 0) return fail(j, "stat (not an empty file)", path);
      return 0;
    }
    case OP_UNLINK:
      if (unlink(path) != 0) return fail(j, "unlink", path);
      return 0;
    case OP_MKFILES: {
      long size = bench_size_of(i, j->min_size, j->max_size);
      memcpy(buf, &i, sizeof i);  // a header the read pass checks
      int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
      if (fd < 0) return fail(j, "create", path);
      if (bench_write_all(fd, buf, (size_t)size) != 0) return fail(j, "write", path);
      if (close(fd) != 0) return fail(j, "close", path);
      j->bytes += size;
      return 0;
    }
    case OP_READ: {
      long want = bench_size_of(i, j->min_size, j->max_size), got = 0;
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) return fail(j, "open", path);
      for (;;) {
        ssize_t r = read(fd, buf, kBufSize);
        if (r < 0) {
          if (errno == EINTR) continue;
          close(fd);
          return fail(j, "read", path);
        }
        if (r == 0) break;
        if (got == 0 && (r < (ssize_t)sizeof i || memcmp(buf, &i, sizeof i) != 0)) {
          close(fd);
          errno = 0;
          return fail(j, "read (wrong header)", path);
        }
        got += r;
      }
      close(fd);
      if (got != want) {
        errno = 0;
        return fail(j, "read (wrong size)", path);
      }
      j->bytes += got;
      return 0;
    }
    case OP_READDIR:
      break;
  }
  return -1;
}

static void* run(void* arg) {
  struct job* j = arg;
  char* buf = NULL;
  if (j->op == OP_MKFILES || j->op == OP_READ) {
    buf = malloc(kBufSize);
    if (buf == NULL) {
      j->failed = 1;
      return NULL;
    }
    for (size_t k = 0; k < kBufSize; k++) buf[k] = (char)(k * 131 + 7);
  }
  for (long i = j->first; i < j->last; i++)
    if (one(j, i, buf) != 0) break;
  free(buf);
  return NULL;
}

static int do_readdir(const char* dir, long n, long long* entries) {
  DIR* d = opendir(dir);
  if (d == NULL) {
    fprintf(stderr, "smallfile: opendir %s: %s\n", dir, strerror(errno));
    return -1;
  }
  long count = 0;
  struct dirent* e;
  errno = 0;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) count++;
  }
  int err = errno;
  closedir(d);
  if (err != 0) {
    fprintf(stderr, "smallfile: readdir %s: %s\n", dir, strerror(err));
    return -1;
  }
  if (count != n) {
    fprintf(stderr, "smallfile: readdir %s: %ld entries, expected %ld\n", dir, count, n);
    return -1;
  }
  *entries = count;
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: smallfile [-t THREADS] create|stat|unlink|readdir DIR N\n"
          "       smallfile [-t THREADS] mkfiles|read DIR N MIN_BYTES MAX_BYTES\n");
  exit(2);
}

int main(int argc, char** argv) {
  int threads = 1, c;
  while ((c = getopt(argc, argv, "t:")) != -1) {
    if (c != 't') usage();
    threads = atoi(optarg);
  }
  if (threads < 1 || argc - optind < 3) usage();
  const char* opname = argv[optind];
  const char* dir = argv[optind + 1];
  long n = atol(argv[optind + 2]);
  long min_size = 0, max_size = 0;
  enum op op;
  if (strcmp(opname, "create") == 0) op = OP_CREATE;
  else if (strcmp(opname, "stat") == 0) op = OP_STAT;
  else if (strcmp(opname, "unlink") == 0) op = OP_UNLINK;
  else if (strcmp(opname, "readdir") == 0) op = OP_READDIR;
  else if (strcmp(opname, "mkfiles") == 0) op = OP_MKFILES;
  else if (strcmp(opname, "read") == 0) op = OP_READ;
  else usage();
  if (op == OP_MKFILES || op == OP_READ) {
    if (argc - optind != 5) usage();
    min_size = atol(argv[optind + 3]);
    max_size = atol(argv[optind + 4]);
    if (min_size < (long)sizeof(long) || max_size < min_size || max_size > (long)kBufSize) usage();
  } else if (argc - optind != 3) {
    usage();
  }
  if (n < 0) usage();

  long long bytes = 0, ops = n;
  int failed = 0;
  double t0 = bench_now();
  if (op == OP_READDIR) {
    failed = do_readdir(dir, n, &ops) != 0;
  } else {
    if (threads > n && n > 0) threads = (int)n;
    struct job* jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t* tids = calloc((size_t)threads, sizeof *tids);
    if (jobs == NULL || tids == NULL) return 1;
    for (int t = 0; t < threads; t++) {
      jobs[t] = (struct job){op, dir, n * t / threads, n * (t + 1) / threads, min_size, max_size, 0, 0};
      if (pthread_create(&tids[t], NULL, run, &jobs[t]) != 0) {
        fprintf(stderr, "smallfile: pthread_create failed\n");
        return 1;
      }
    }
    for (int t = 0; t < threads; t++) {
      pthread_join(tids[t], NULL);
      bytes += jobs[t].bytes;
      failed |= jobs[t].failed;
    }
    free(jobs);
    free(tids);
  }
  double secs = bench_now() - t0;
  if (failed) return 1;
  printf("%lld %lld %.6f\n", ops, bytes, secs);
  return 0;
}
