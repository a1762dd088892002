#!/usr/bin/env bash
# Single-node file-system benchmark: every row measured on sharedfs, on kernel ext4 over a
# loop device and on libfuse's passthrough_ll over that ext4, in the same run on the same
# storage (sparse images under /var/tmp), each repeated and reported as the median, with
# the ratios sharedfs/ext4 and sharedfs/passthrough_ll. Markdown on stdout, progress on
# stderr. Needs root (loop devices, mounts, drop_caches). See bench/README.md.
#
#   bash bench/fs_bench.sh [--size-gib N] [--quick] [--runs N] [--threads N] [--only GROUPS]
#                          [--json FILE]
#
# SHAREDFS_BIN_DIR overrides where sharedfs and mkfs.sharedfs are taken from (build/bin);
# SHAREDFS_MKFS_ARGS and SHAREDFS_MOUNT_ARGS add words to their command lines.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${SHAREDFS_BIN_DIR:-$ROOT/build/bin}"
EXAMPLES=/usr/share/doc/libfuse3-dev/examples

SIZE_GIB=8
QUICK=0
RUNS=""
THREADS=1
ONLY="seq,meta,small"
JSON=""

usage() {
  cat <<EOF
usage: bash bench/fs_bench.sh [--size-gib N] [--quick] [--runs N] [--threads N] [--only GROUPS]
                              [--json FILE]
  --size-gib N  size of each image (sharedfs, ext4) in GiB; default 8
  --quick       smaller data sizes and one run, a few minutes in all
  --runs N      repetitions per row, median reported; default 3 (--quick: 1)
  --threads N   threads of the create/stat/small-read/unlink rows; default 1
  --only GROUPS comma-separated row groups to run: seq (write, read, random read),
                meta (create, stat, readdir, unlink), small (small-file read); default all
  --json FILE   also write the figures (every run, medians, ratios) as JSON to FILE
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --size-gib) SIZE_GIB="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --size-gib=*) SIZE_GIB="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    --runs) RUNS="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --runs=*) RUNS="${1#*=}"; shift ;;
    --threads) THREADS="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --threads=*) THREADS="${1#*=}"; shift ;;
    --only) ONLY="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --only=*) ONLY="${1#*=}"; shift ;;
    --json) JSON="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --json=*) JSON="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

if [ "$QUICK" -eq 1 ]; then
  SEQ_MIB=512          # sequential write/read file, also the random-read file
  RAND_MIB_PER_JOB=16  # 4 KiB random reads per job (4 jobs): 1/32 of the file each
  NFILES=10000         # empty files in one directory
  NSMALL=2000          # small files read cold
  RUNS="${RUNS:-1}"
else
  SEQ_MIB=2048
  RAND_MIB_PER_JOB=64
  NFILES=100000
  NSMALL=20000
  RUNS="${RUNS:-3}"
fi
SMALL_MIN=$((16 * 1024))
SMALL_MAX=$((128 * 1024))
RAND_JOBS=4

log() { echo "== $*" >&2; }
warn() { echo "fs_bench: warning: $*" >&2; }
die() {
  echo "fs_bench: $*" >&2
  exit 1
}

for g in ${ONLY//,/ }; do
  case "$g" in seq | meta | small) ;; *) die "--only: unknown group '$g' (seq, meta, small)" ;; esac
done
if [ -n "$JSON" ]; then
  # Absolute: the script works from inside its work directory.
  JSON="$(realpath -m -- "$JSON")"
  [ -d "$(dirname "$JSON")" ] || die "--json: no directory for '$JSON'"
fi
# wanted GROUP: whether --only lets GROUP run.
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

for v in SIZE_GIB RUNS THREADS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') wants a positive integer"
done
# The ext4 image holds both the ext4 and the passthrough_ll copies of the largest data set.
[ $((SIZE_GIB * 1024)) -ge $((2 * SEQ_MIB + 1024)) ] ||
  die "--size-gib $SIZE_GIB is too small: the ext4 image holds two ${SEQ_MIB} MiB files; use at least $(((2 * SEQ_MIB + 1024 + 1023) / 1024))"

# ---------------------------------------------------------------- prerequisites

[ "$(id -u)" -eq 0 ] || die "must run as root (loop devices, mounts, drop_caches)"
[ -c /dev/fuse ] || die "/dev/fuse is missing"
# The project's package list (scripts/lib.sh) has everything this needs, fio included.
# shellcheck source=../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
sharedfs_install_deps >&2 || die "cannot install the packages scripts/lib.sh lists"
for c in gcc pkg-config fusermount3 losetup mkfs.ext4 mountpoint findmnt truncate fio; do
  command -v "$c" >/dev/null || die "$c is missing"
done
pkg-config --exists fuse3 || die "fuse3 development files are missing (libfuse3-dev)"

# passthrough_ll keeps an O_PATH descriptor open for every inode the kernel has looked up,
# so 100,000 files need more than the usual 1024 or 20000 descriptors; the daemons inherit
# this limit.
nofile=$(($(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576) < 1048576 ? $(cat /proc/sys/fs/nr_open) : 1048576))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$nofile" ]; then
  ulimit -Hn "$nofile" 2>/dev/null
  ulimit -Sn "$nofile" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"
fi
# Where the limit cannot be raised (no CAP_SYS_RESOURCE, as in some containers), the file
# counts shrink for every file system alike, so that the ratios still compare like with like.
COUNT_NOTE=""
if [ "$(ulimit -n)" != unlimited ]; then
  cap=$((($(ulimit -n) - 512) / 1000 * 1000))
  if [ "$NFILES" -gt "$cap" ] || [ "$NSMALL" -gt "$cap" ]; then
    COUNT_NOTE="file counts capped at $cap (asked: $NFILES and $NSMALL) by the open-file limit $(ulimit -n), as passthrough_ll holds a descriptor per inode"
    warn "$COUNT_NOTE"
    [ "$NFILES" -le "$cap" ] || NFILES="$cap"
    [ "$NSMALL" -le "$cap" ] || NSMALL="$cap"
  fi
fi

# sharedfs takes part only once its command can mount. CLI11 answers `--help` with
# the top-level help and status 0 for an unknown subcommand, so the status alone says
# nothing: the usage line must name `mount`.
SFS_NOTE=""
sharedfs_can_mount() {
  [ -x "$BIN_DIR/sharedfs" ] || { SFS_NOTE="$BIN_DIR/sharedfs is not built"; return 1; }
  [ -x "$BIN_DIR/mkfs.sharedfs" ] || { SFS_NOTE="$BIN_DIR/mkfs.sharedfs is not built"; return 1; }
  local out
  if ! out="$("$BIN_DIR/sharedfs" mount --help 2>&1)" ||
    ! grep -Eq '^Usage:.*[[:space:]]mount([[:space:]]|$)' <<<"$out"; then
    SFS_NOTE="$BIN_DIR/sharedfs has no mount subcommand"
    return 1
  fi
}
FSLIST=(ext4 passthrough_ll)
HAVE_SFS=0
if sharedfs_can_mount; then
  HAVE_SFS=1
  FSLIST=(sharedfs ext4 passthrough_ll)
else
  warn "sharedfs column is n/a: $SFS_NOTE"
fi

# ---------------------------------------------------------------- state and cleanup

WORK=""
LOOP=""
MNT_EXT4=""
declare -A MNT=() PID=() BROKEN=() BROKEN_SMALL=()
FAILED=0

# fuse_stop FS: unmount a FUSE file system and reap its daemon (by pid).
fuse_stop() {
  local fs="$1" m="${MNT[$1]:-}" pid="${PID[$1]:-}" i rc
  if [ -n "$m" ] && findmnt -rn --mountpoint "$m" >/dev/null 2>&1; then
    if ! fusermount3 -u "$m" 2>>"$WORK/logs/umount.log"; then
      sleep 1
      fusermount3 -u "$m" 2>>"$WORK/logs/umount.log" || fusermount3 -uz "$m" 2>>"$WORK/logs/umount.log"
    fi
  fi
  [ -n "$pid" ] || return 0
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$fs daemon (pid $pid) still running 30 s after unmount; killing it"
    kill -TERM "$pid" 2>/dev/null
    sleep 1
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  rc=$?
  [ "$rc" -eq 0 ] || warn "$fs daemon (pid $pid) exited with status $rc (log: ${WORK}/logs/$fs.log)"
  PID[$fs]=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for fs in sharedfs passthrough_ll; do
    fuse_stop "$fs"
  done
  if [ "$FAILED" -ne 0 ] || [ "$rc" -ne 0 ]; then
    local f
    for f in "$WORK"/logs/*.log; do
      [ -s "$f" ] || continue
      echo "---- last lines of ${f##*/}" >&2
      tail -n 15 "$f" >&2
    done
  fi
  if [ -n "$MNT_EXT4" ] && findmnt -rn --mountpoint "$MNT_EXT4" >/dev/null 2>&1; then
    umount "$MNT_EXT4" 2>/dev/null || { sleep 1; umount "$MNT_EXT4" 2>/dev/null; } || umount -l "$MNT_EXT4"
  fi
  [ -z "$LOOP" ] || losetup -d "$LOOP" || warn "cannot detach $LOOP"
  sharedfs_remove_workdir "$WORK" || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /var/tmp/sharedfs-bench.XXXXXX)" || die "cannot create a work directory under /var/tmp"
mkdir -p "$WORK/tools" "$WORK/logs" "$WORK/mnt/sharedfs" "$WORK/mnt/ext4" "$WORK/mnt/passthrough_ll"
MNT[sharedfs]="$WORK/mnt/sharedfs"
MNT[passthrough_ll]="$WORK/mnt/passthrough_ll"
MNT_EXT4="$WORK/mnt/ext4"
cd "$WORK" || die "cannot enter $WORK"  # never inside a mount, so unmounting is not blocked

# Real space the run may use under /var/tmp: each image can hold up to two copies of the
# largest data set (the small files are ~72 KiB on average).
need_mib=$(((HAVE_SFS + 2) * (SEQ_MIB > NSMALL * 72 / 1024 ? SEQ_MIB : NSMALL * 72 / 1024) + 1024))
avail_mib=$(($(df -Pk /var/tmp | awk 'NR==2 {print $4}') / 1024))
[ "$avail_mib" -ge "$need_mib" ] || die "/var/tmp has ${avail_mib} MiB free, the run needs about ${need_mib} MiB"

# ---------------------------------------------------------------- tools

log "building smallfile and passthrough_ll in $WORK/tools"
gcc -O2 -Wall -pthread "$ROOT/bench/smallfile.c" -o "$WORK/tools/smallfile" || die "cannot build bench/smallfile.c"
SMALLFILE="$WORK/tools/smallfile"
for f in passthrough_ll.c passthrough_helpers.h; do
  if [ -f "$EXAMPLES/$f" ]; then
    cp "$EXAMPLES/$f" "$WORK/tools/$f"
  elif [ -f "$EXAMPLES/$f.gz" ]; then
    gunzip -c "$EXAMPLES/$f.gz" >"$WORK/tools/$f"
  else
    die "$EXAMPLES/$f is missing (libfuse3-dev)"
  fi
done
# shellcheck disable=SC2046  # pkg-config output is meant to split into words
(cd "$WORK/tools" && gcc -O2 -Wall passthrough_ll.c $(pkg-config fuse3 --cflags --libs) -o passthrough_ll) \
  >"$WORK/logs/passthrough_ll.build.log" 2>&1 ||
  { cat "$WORK/logs/passthrough_ll.build.log" >&2; die "cannot build passthrough_ll"; }
PT_BIN="$WORK/tools/passthrough_ll"

# ---------------------------------------------------------------- mounts

# fuse_start FS: start the daemon in the foreground of a background job, wait for the mount.
fuse_start() {
  local fs="$1" m="${MNT[$1]}" i
  [ -z "${BROKEN[$fs]:-}" ] || return 1
  # shellcheck disable=SC2086  # SHAREDFS_MOUNT_ARGS splits into words on purpose
  case "$fs" in
    sharedfs) "$BIN_DIR/sharedfs" mount "$SFS_IMG" "$m" -f ${SHAREDFS_MOUNT_ARGS:-} >>"$WORK/logs/sharedfs.log" 2>&1 & ;;
    passthrough_ll) "$PT_BIN" -f -o source="$MNT_EXT4/pt" "$m" >>"$WORK/logs/passthrough_ll.log" 2>&1 & ;;
  esac
  PID[$fs]=$!
  for ((i = 0; i < 600; i++)); do
    mountpoint -q "$m" && return 0
    kill -0 "${PID[$fs]}" 2>/dev/null || break
    sleep 0.1
  done
  warn "$fs did not mount on $m; its log ($WORK/logs/$fs.log) ends:"
  tail -n 20 "$WORK/logs/$fs.log" >&2
  fuse_stop "$fs"
  BROKEN[$fs]=1
  return 1
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# make_cold FS: nothing of FS left in memory. FUSE file systems are remounted (the daemon
# forgets its inodes and open handles), and the kernel caches dropped for all.
make_cold() {
  local fs="$1"
  [ -z "${BROKEN[$fs]:-}" ] || return 1
  if [ "$fs" != ext4 ]; then
    fuse_stop "$fs"
  fi
  drop_caches
  if [ "$fs" != ext4 ]; then
    fuse_start "$fs" || return 1
  fi
}

# The directory each file system's rows work in.
fsdir() {
  case "$1" in
    sharedfs) echo "${MNT[sharedfs]}" ;;
    ext4) echo "$MNT_EXT4/ext4" ;;
    passthrough_ll) echo "${MNT[passthrough_ll]}" ;;
  esac
}

log "ext4 on a loop device over a ${SIZE_GIB} GiB sparse image"
truncate -s "${SIZE_GIB}G" "$WORK/ext4.img" || die "cannot create $WORK/ext4.img"
# Direct I/O on the loop device keeps ext4's data out of the page cache a second time as
# pages of the image file, as sharedfs opens its device with O_DIRECT.
LOOP="$(losetup --find --show --direct-io=on "$WORK/ext4.img" 2>/dev/null)" ||
  LOOP="$(losetup --find --show "$WORK/ext4.img")" || die "cannot attach a loop device"
LOOP_DIO="$(cat "/sys/block/${LOOP#/dev/}/loop/dio" 2>/dev/null || echo '?')"
mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP" >"$WORK/logs/mkfs.ext4.log" 2>&1 ||
  { cat "$WORK/logs/mkfs.ext4.log" >&2; die "mkfs.ext4 failed"; }
mount "$LOOP" "$MNT_EXT4" || die "cannot mount $LOOP"
mkdir -p "$MNT_EXT4/ext4" "$MNT_EXT4/pt"

log "passthrough_ll over $MNT_EXT4/pt"
fuse_start passthrough_ll || die "passthrough_ll did not mount"

SFS_IMG="$WORK/sharedfs.img"
SFS_VERSION="n/a"
if [ "$HAVE_SFS" -eq 1 ]; then
  log "sharedfs over a ${SIZE_GIB} GiB sparse image"
  SFS_VERSION="$("$BIN_DIR/sharedfs" version 2>/dev/null | head -n 1)"
  truncate -s "${SIZE_GIB}G" "$SFS_IMG" || die "cannot create $SFS_IMG"
  # shellcheck disable=SC2086  # extra arguments split into words on purpose
  if ! "$BIN_DIR/mkfs.sharedfs" --force ${SHAREDFS_MKFS_ARGS:-} "$SFS_IMG" >"$WORK/logs/mkfs.sharedfs.log" 2>&1; then
    cat "$WORK/logs/mkfs.sharedfs.log" >&2
    warn "mkfs.sharedfs failed; sharedfs cells will read 'fail'"
    BROKEN[sharedfs]=1
  else
    fuse_start sharedfs
  fi
fi

# ---------------------------------------------------------------- measurement

declare -A RES=()  # "row:fs" -> values of each run, "fail" for a failed one
record() { RES["$1:$2"]+="$3 "; }
failed() {
  warn "$1 failed on $2"
  record "$1" "$2" fail
  FAILED=1
}

FIO_COMMON=(--output-format=terse --terse-version=3 --ioengine=psync --fallocate=none --direct=0 --group_reporting)
FIO_LINE=""
# run_fio ARGS...: FIO_LINE gets the terse line of the (single) group. Terse v3 fields:
# 5 error, 7 read KiB/s, 8 read IOPS, 48 write KiB/s, 49 write IOPS.
run_fio() {
  local out
  out="$(fio "${FIO_COMMON[@]}" "$@" 2>>"$WORK/logs/fio.log")" || return 1
  FIO_LINE="$(grep '^3;' <<<"$out" | tail -n 1)"
  [ -n "$FIO_LINE" ] && [ "$(cut -d';' -f5 <<<"$FIO_LINE")" = 0 ]
}
field() { cut -d';' -f"$1" <<<"$FIO_LINE"; }
kib_to_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }'; }

SF_OPS=0
SF_BYTES=0
SF_SECS=0
# sf ARGS...: run the smallfile helper; SF_OPS, SF_BYTES, SF_SECS get its figures.
sf() {
  local out
  out="$("$SMALLFILE" "$@" 2>>"$WORK/logs/smallfile.log")" || return 1
  read -r SF_OPS SF_BYTES SF_SECS <<<"$out"
}
per_sec() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }'; }

ok() { [ -z "${BROKEN[$1]:-}" ]; }

seq_file() { echo "$(fsdir "$1")/seq.dat"; }

row_seqwrite() {
  local fs="$1" f
  f="$(seq_file "$fs")"
  rm -f "$f" && sync || return 1
  run_fio --name=seqwrite --filename="$f" --rw=write --bs=1M --size="${SEQ_MIB}m" --end_fsync=1 || return 1
  VAL="$(kib_to_mb "$(field 48)")"
}

row_seqread() {
  local fs="$1"
  make_cold "$fs" || return 1
  run_fio --name=seqread --filename="$(seq_file "$fs")" --rw=read --bs=1M --size="${SEQ_MIB}m" || return 1
  VAL="$(kib_to_mb "$(field 7)")"
}

row_randread() {
  local fs="$1"
  make_cold "$fs" || return 1
  run_fio --name=randread --filename="$(seq_file "$fs")" --rw=randread --bs=4k --size="${SEQ_MIB}m" \
    --io_size="${RAND_MIB_PER_JOB}m" --numjobs="$RAND_JOBS" --thread || return 1
  VAL="$(field 8)"
}

# The sequential file: written by the write row, then read by the two read rows. A file
# system whose every write run failed gets it written once here so that reads can go on.
ensure_seq_file() {
  local fs="$1" f
  f="$(seq_file "$fs")"
  [ "$(stat -c %s "$f" 2>/dev/null)" = "$((SEQ_MIB * 1024 * 1024))" ] && return 0
  rm -f "$f"
  run_fio --name=layout --filename="$f" --rw=write --bs=1M --size="${SEQ_MIB}m"
}

run_row() {  # run_row ROW: every run, every file system in turn
  local row="$1" r fs
  for ((r = 1; r <= RUNS; r++)); do
    for fs in "${FSLIST[@]}"; do
      if ! ok "$fs"; then
        record "$row" "$fs" fail
        FAILED=1
        continue
      fi
      VAL=""
      if "row_$row" "$fs" && [ -n "$VAL" ]; then
        record "$row" "$fs" "$VAL"
        log "$row run $r/$RUNS $fs: $VAL"
      else
        failed "$row run $r/$RUNS" "$fs"
      fi
    done
  done
}

# The metadata rows form one pipeline on a fresh directory per run and file system:
# create, stat cold, stat warm, readdir cold, unlink (after an untimed stat of every file,
# so that unlink is timed from the same warm state on every file system).
META_ROWS=(create statcold statwarm readdir unlink)
meta_pipeline() {
  local fs="$1" d step
  d="$(fsdir "$fs")/meta"
  rm -rf "$d" && mkdir "$d" && sync || return 1
  for step in "${META_ROWS[@]}"; do
    case "$step" in
      create) sf -t "$THREADS" create "$d" "$NFILES" ;;
      statcold) make_cold "$fs" && sf -t "$THREADS" stat "$d" "$NFILES" ;;
      statwarm) sf -t "$THREADS" stat "$d" "$NFILES" ;;
      readdir) make_cold "$fs" && sf readdir "$d" "$NFILES" ;;
      unlink) sf -t "$THREADS" stat "$d" "$NFILES" >/dev/null && sf -t "$THREADS" unlink "$d" "$NFILES" ;;
    esac || { META_FAILED_AT="$step"; return 1; }
    record "$step" "$fs" "$(per_sec "$SF_OPS" "$SF_SECS")"
    log "$step $fs: $(per_sec "$SF_OPS" "$SF_SECS") per s"
  done
  rmdir "$d"
}

run_meta() {
  local r fs step skip
  for ((r = 1; r <= RUNS; r++)); do
    for fs in "${FSLIST[@]}"; do
      META_FAILED_AT="${META_ROWS[0]}"
      ok "$fs" && meta_pipeline "$fs" && continue
      skip=1
      for step in "${META_ROWS[@]}"; do
        [ "$step" = "$META_FAILED_AT" ] && skip=0
        [ "$skip" -eq 1 ] || record "$step" "$fs" fail
      done
      warn "metadata run $r/$RUNS failed on $fs at $META_FAILED_AT"
      FAILED=1
      ok "$fs" && rm -rf "$(fsdir "$fs")/meta"
    done
  done
}

run_small() {
  local r fs d
  for fs in "${FSLIST[@]}"; do
    ok "$fs" || continue
    d="$(fsdir "$fs")/small"
    log "writing $NSMALL small files on $fs (untimed)"
    if ! { rm -rf "$d" && mkdir "$d" && sf -t 2 mkfiles "$d" "$NSMALL" "$SMALL_MIN" "$SMALL_MAX"; }; then
      warn "small-file set-up failed on $fs"
      BROKEN_SMALL[$fs]=1
    fi
  done
  for ((r = 1; r <= RUNS; r++)); do
    for fs in "${FSLIST[@]}"; do
      d="$(fsdir "$fs")/small"
      if ok "$fs" && [ -z "${BROKEN_SMALL[$fs]:-}" ] && make_cold "$fs" &&
        sf -t "$THREADS" read "$d" "$NSMALL" "$SMALL_MIN" "$SMALL_MAX"; then
        record smallfiles "$fs" "$(per_sec "$SF_OPS" "$SF_SECS")"
        record smallmb "$fs" "$(awk -v b="$SF_BYTES" -v s="$SF_SECS" 'BEGIN { printf "%.1f", b / 1e6 / s }')"
        log "small-file read run $r/$RUNS $fs: $(per_sec "$SF_OPS" "$SF_SECS") files/s"
      else
        record smallfiles "$fs" fail
        record smallmb "$fs" fail
        FAILED=1
        warn "small-file read run $r/$RUNS failed on $fs"
      fi
    done
  done
  for fs in "${FSLIST[@]}"; do
    ok "$fs" && rm -rf "$(fsdir "$fs")/small"
  done
  sync
}

T_START=$(date +%s)
ROWS=()
if wanted seq; then
  log "sequential write, ${SEQ_MIB} MiB, $RUNS run(s)"
  run_row seqwrite
  for fs in "${FSLIST[@]}"; do
    ok "$fs" && { ensure_seq_file "$fs" || warn "cannot write the sequential file on $fs"; }
  done
  log "sequential read, cold"
  run_row seqread
  log "random 4 KiB reads, cold, $RAND_JOBS threads"
  run_row randread
  for fs in "${FSLIST[@]}"; do
    ok "$fs" && rm -f "$(seq_file "$fs")"
  done
  sync
  ROWS+=(seqwrite seqread randread)
fi
if wanted meta; then
  log "metadata: $NFILES files in one directory"
  run_meta
  ROWS+=(create statcold statwarm readdir unlink)
fi
if wanted small; then
  log "small files: $NSMALL of 16-128 KiB"
  run_small
  ROWS+=(smallfiles smallmb)
fi
T_END=$(date +%s)

# ---------------------------------------------------------------- report

# median VALUES...: "fail" if any run failed, else the median (mean of the middle two).
median() {
  local v
  for v in "$@"; do [ "$v" = fail ] && { echo fail; return; }; done
  [ $# -gt 0 ] || { echo fail; return; }
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
fmt() {  # thousands for large figures, one decimal below 100
  case "$1" in
    fail | n/a) echo "$1" ;;
    *) awk -v x="$1" 'BEGIN { if (x < 100) { printf "%.1f", x; exit }
         s = sprintf("%.0f", x); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
         print s o }' ;;
  esac
}
ratio() {
  case "$1$2" in
    *fail* | *n/a*) echo "n/a" ;;
    *) awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }' ;;
  esac
}
commas() { fmt "$1"; }
human_mib() {
  if [ $(($1 % 1024)) -eq 0 ]; then echo "$(($1 / 1024)) GiB"; else echo "$1 MiB"; fi
}

SEQ_H="$(human_mib "$SEQ_MIB")"
declare -A LABEL=(
  [seqwrite]="sequential write $SEQ_H, 1 MiB requests, fsync at end"
  [seqread]="sequential read $SEQ_H, 1 MiB requests, cold"
  [randread]="random read 4 KiB, $RAND_JOBS threads, $SEQ_H file, $(human_mib $((RAND_MIB_PER_JOB * RAND_JOBS))) read, cold"
  [create]="create $(commas "$NFILES") empty files in one directory"
  [statcold]="stat $(commas "$NFILES") files, cold"
  [statwarm]="stat $(commas "$NFILES") files, warm"
  [smallfiles]="read $(commas "$NSMALL") files of 16–128 KiB, cold"
  [smallmb]="read $(commas "$NSMALL") files of 16–128 KiB, cold"
  [readdir]="readdir of $(commas "$NFILES") entries, cold"
  [unlink]="unlink $(commas "$NFILES") files"
)
declare -A UNIT=(
  [seqwrite]="MB/s" [seqread]="MB/s" [randread]="IOPS" [create]="files/s" [statcold]="files/s"
  [statwarm]="files/s" [smallfiles]="files/s" [smallmb]="MB/s" [readdir]="entries/s" [unlink]="files/s"
)
# Short names for charts (bench/make_report.py); the table keeps the long ones.
declare -A SHORT=(
  [seqwrite]="seq write" [seqread]="seq read, cold" [randread]="random 4 KiB read, cold"
  [create]="create" [statcold]="stat, cold" [statwarm]="stat, warm" [readdir]="readdir, cold"
  [unlink]="unlink" [smallfiles]="small-file read, cold" [smallmb]="small-file read, cold"
)

storage="$(df -P /var/tmp | awk 'NR==2 {print $1}') ($(findmnt -rn -o FSTYPE --target /var/tmp))"
echo "## sharedfs single-node benchmark"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), kernel $(uname -r), $(nproc) CPUs," \
  "$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo) GiB RAM; images: ${SIZE_GIB} GiB sparse" \
  "files on /var/tmp, $storage; ext4 on $LOOP (direct I/O: $LOOP_DIO);" \
  "passthrough_ll (libfuse $(pkg-config --modversion fuse3), multi-threaded, default options) over that ext4;" \
  "sharedfs: ${SFS_VERSION}$([ "$HAVE_SFS" -eq 1 ] || echo " ($SFS_NOTE)");" \
  "$(fio --version); median of $RUNS run(s)$([ "$QUICK" -eq 1 ] && echo ", --quick");" \
  "metadata and small-file rows with $THREADS thread(s)${COUNT_NOTE:+; $COUNT_NOTE}; $((T_END - T_START)) s."
echo
echo "| row | unit | sharedfs | ext4 | passthrough_ll | sharedfs/ext4 | sharedfs/passthrough_ll |"
echo "|---|---|--:|--:|--:|--:|--:|"
JROWS=""
for row in "${ROWS[@]}"; do
  declare -A MED=()
  for fs in sharedfs ext4 passthrough_ll; do
    if [ "$fs" = sharedfs ] && [ "$HAVE_SFS" -eq 0 ]; then
      MED[$fs]="n/a"
    else
      # shellcheck disable=SC2086  # the values are space-separated on purpose
      MED[$fs]="$(median ${RES["$row:$fs"]:-})"
    fi
  done
  echo "| ${LABEL[$row]} | ${UNIT[$row]} | $(fmt "${MED[sharedfs]}") | $(fmt "${MED[ext4]}") |" \
    "$(fmt "${MED[passthrough_ll]}") | $(ratio "${MED[sharedfs]}" "${MED[ext4]}") |" \
    "$(ratio "${MED[sharedfs]}" "${MED[passthrough_ll]}") |"
  # One tab-separated line per row for --json: every run's figures and the medians.
  JROWS+="$row"$'\t'"${LABEL[$row]}"$'\t'"${SHORT[$row]}"$'\t'"${UNIT[$row]}"
  for fs in sharedfs ext4 passthrough_ll; do
    JROWS+=$'\t'"$([ "$fs" = sharedfs ] && [ "$HAVE_SFS" -eq 0 ] || echo "${RES["$row:$fs"]:-}")"
  done
  JROWS+=$'\t'"${MED[sharedfs]}"$'\t'"${MED[ext4]}"$'\t'"${MED[passthrough_ll]}"$'\n'
  unset MED
done

# write_json FILE: the rows above as JSON (numbers as numbers, "fail" and "n/a" as strings).
write_json() {
  local py
  IFS= read -r -d '' py <<'PYEOF'
import json, sys

out, quick, runs, threads, size_gib, secs, have_sfs, sfs_note, count_note, version, failed = sys.argv[1:]
FSS = ["sharedfs", "ext4", "passthrough_ll"]

def num(v):
    try:
        return float(v)
    except ValueError:
        return v

def ratio(a, b):
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None

rows = []
for line in sys.stdin.read().splitlines():
    if not line:
        continue
    f = line.split("\t")
    row = {"id": f[0], "label": f[1], "short": f[2], "unit": f[3],
           "runs": {fs: [num(v) for v in f[4 + i].split()] for i, fs in enumerate(FSS)},
           "median": {fs: num(f[7 + i]) for i, fs in enumerate(FSS)}}
    row["ratio"] = {ref: ratio(row["median"]["sharedfs"], row["median"][ref]) for ref in FSS[1:]}
    rows.append(row)
doc = {"suite": "fs", "higher_is_better": True, "quick": quick == "1", "runs": int(runs),
       "threads": int(threads), "size_gib": int(size_gib), "seconds": int(secs),
       "sharedfs": version if have_sfs == "1" else None, "sharedfs_note": sfs_note or None,
       "count_note": count_note or None, "failed": failed != "0", "filesystems": FSS, "rows": rows}
with open(out, "w") as fp:
    json.dump(doc, fp, indent=1)
    fp.write("\n")
PYEOF
  python3 -c "$py" "$1" "$QUICK" "$RUNS" "$THREADS" "$SIZE_GIB" "$((T_END - T_START))" "$HAVE_SFS" \
    "$SFS_NOTE" "$COUNT_NOTE" "$SFS_VERSION" "$FAILED" <<<"$JROWS"
}
if [ -n "$JSON" ]; then
  write_json "$JSON" || { warn "cannot write $JSON"; FAILED=1; }
fi

if [ "$FAILED" -ne 0 ]; then
  warn "some measurements failed; the logs' last lines follow"
  exit 1
fi
