#!/usr/bin/env bash
# Cluster benchmark (issue 5): several sharedfs nodes on this host over one sparse disk
# image, talking to each other on 127.0.0.1. Every figure beside its reference measured in
# the same run, as a ratio, median of --runs; lock messages per operation, DLM lock
# requests and device reads per phase from the daemons' counters (-o stats_file, dumped on
# SIGUSR1). One Markdown table on stdout, progress on stderr. Needs root (FUSE mounts,
# drop_caches). See bench/README.md.
#
#   bash bench/cluster_bench.sh [--quick] [--runs N] [--files N] [--data-mib N]
#                               [--appends N] [--size-gib N] [--only GROUPS] [--json FILE]
#
# SHAREDFS_BIN_DIR overrides where sharedfs and mkfs.sharedfs are taken from (build/bin);
# SHAREDFS_MKFS_ARGS and SHAREDFS_MOUNT_ARGS add words to their command lines.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${SHAREDFS_BIN_DIR:-$ROOT/build/bin}"
NODES=(1 2 3)

QUICK=0
RUNS=""
FILES=""
DATA_MIB=""
APPENDS=""
SIZE_GIB=16
ONLY="create,read,append"
JSON=""

usage() {
  cat <<EOF
usage: bash bench/cluster_bench.sh [--quick] [--runs N] [--files N] [--data-mib N]
                                   [--appends N] [--size-gib N] [--only GROUPS] [--json FILE]
  --quick       smaller sizes and one run (5,000 files per node, 256 MiB, 1,000 appends)
  --runs N      repetitions of every row, median reported; default 3 (--quick: 1)
  --files N     empty files each node creates in the create rows; default 50000
  --data-mib N  size of the dataset every node reads, MiB (at least 32); default 2048
  --appends N   4 KiB appends per ping-pong run; default 10000
  --size-gib N  size of the sparse disk image, GiB; default 16
  --only GROUPS comma-separated: create (1, 2, 3 nodes creating), read (3 nodes reading
                one dataset, two epochs), append (two nodes appending in turn); default all
  --json FILE   also write the figures (every run, medians, ratios, counters) as JSON to FILE
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --runs | --files | --data-mib | --appends | --size-gib | --only | --json)
      [ $# -ge 2 ] || { usage >&2; exit 2; }
      v="${1#--}"; v="${v//-/_}"; v="${v^^}"
      printf -v "$v" '%s' "$2"
      shift 2 ;;
    --runs=* | --files=* | --data-mib=* | --appends=* | --size-gib=* | --only=* | --json=*)
      v="${1%%=*}"; v="${v#--}"; v="${v//-/_}"; v="${v^^}"
      printf -v "$v" '%s' "${1#*=}"
      shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

if [ "$QUICK" -eq 1 ]; then
  FILES="${FILES:-5000}"
  DATA_MIB="${DATA_MIB:-256}"
  APPENDS="${APPENDS:-1000}"
  RUNS="${RUNS:-1}"
else
  FILES="${FILES:-50000}"
  DATA_MIB="${DATA_MIB:-2048}"
  APPENDS="${APPENDS:-10000}"
  RUNS="${RUNS:-3}"
fi

log() { echo "== $*" >&2; }
warn() { echo "cluster_bench: warning: $*" >&2; }
die() {
  echo "cluster_bench: $*" >&2
  exit 1
}

for v in RUNS FILES DATA_MIB APPENDS SIZE_GIB; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') wants a positive integer"
done
[ "$DATA_MIB" -ge 32 ] || die "--data-mib wants 32 at least"
[ "$APPENDS" -ge 2 ] || die "--appends wants 2 at least"
for g in ${ONLY//,/ }; do
  case "$g" in create | read | append) ;; *) die "--only: unknown group '$g' (create, read, append)" ;; esac
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }
if [ -n "$JSON" ]; then
  # Absolute: the script works from inside its work directory.
  JSON="$(realpath -m -- "$JSON")"
  [ -d "$(dirname "$JSON")" ] || die "--json: no directory for '$JSON'"
fi

# The dataset: half in 16 large files, half in small files of 16-256 KiB (sizes from a
# PRNG seeded with the index; 136 KiB on average).
NLARGE=16
LARGE_BYTES=$((DATA_MIB * 1024 * 1024 / 2 / NLARGE))
SMALL_MIN=$((16 * 1024))
SMALL_MAX=$((256 * 1024))
NSMALL=$(((DATA_MIB * 1024 * 1024 - NLARGE * LARGE_BYTES) / ((SMALL_MIN + SMALL_MAX) / 2)))
LARGE_H="$(awk -v b="$LARGE_BYTES" 'BEGIN { x = b / 1048576; if (x == int(x)) printf "%d MiB", x; else printf "%.1f MiB", x }')"

# ---------------------------------------------------------------- prerequisites

[ "$(id -u)" -eq 0 ] || die "must run as root (FUSE mounts, drop_caches)"
[ -c /dev/fuse ] || die "/dev/fuse is missing"
# The project's package list (scripts/lib.sh) has everything this needs, python3 included.
# shellcheck source=../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
sharedfs_install_deps >&2 || die "cannot install the packages scripts/lib.sh lists"
for b in sharedfs mkfs.sharedfs; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: build first (cmake -S . -B build && cmake --build build -j)"
done
"$BIN_DIR/sharedfs" mount --help 2>&1 | grep -q -- '--config' ||
  die "$BIN_DIR/sharedfs mount has no --config: this build cannot mount as a cluster node"

# Every node keeps the whole dataset in its page cache for the second epoch.
mem_mib=$(($(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024))
if wanted read && [ $((3 * DATA_MIB)) -gt $((mem_mib * 7 / 10)) ]; then
  warn "3 x ${DATA_MIB} MiB of page cache is more than 70% of the ${mem_mib} MiB available:" \
    "the second read epoch may have to go to the device"
fi

# ---------------------------------------------------------------- state and cleanup

WORK=""
EXT4_MNT=""   # the reference's ext4 mount and loop device, while they exist
EXT4_LOOP=""
IMG=""
CFG=""
CID=0
MOUNT_SEQ=0    # mounts so far: each mount gets its own stats file
HELPER_PID=""  # the measuring helper while one runs (killed on Ctrl-C)
FAILED=0
DAEMON_TROUBLE=0  # a daemon failed to mount, exited with an error or had to be killed
STATS_OK=0
STATS_NOTE=""
declare -A PID=() MNT=() SFILE=()

node_log() { echo "$WORK/logs/node$1.log"; }

# stop_nodes: unmount every node, then wait for each daemon by pid (30 s in all, then
# TERM, then KILL). Returns 1 if a daemon had to be killed or exited with an error.
stop_nodes() {
  local n i rc=0 st
  for n in "${NODES[@]}"; do
    local m="${MNT[$n]:-}"
    if [ -z "$m" ] || ! findmnt -rn --mountpoint "$m" >/dev/null 2>&1; then continue; fi
    if ! fusermount3 -u "$m" 2>>"$WORK/logs/umount.log"; then
      sleep 1
      fusermount3 -u "$m" 2>>"$WORK/logs/umount.log" || {
        warn "node $n ($m) is busy; unmounting it lazily"
        fusermount3 -uz "$m" 2>>"$WORK/logs/umount.log"
        rc=1
      }
    fi
  done
  for ((i = 0; i < 300; i++)); do
    local alive=0
    for n in "${NODES[@]}"; do
      [ -n "${PID[$n]:-}" ] && kill -0 "${PID[$n]}" 2>/dev/null && alive=1
    done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for n in "${NODES[@]}"; do
    local pid="${PID[$n]:-}"
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      warn "node $n daemon (pid $pid) still running 30 s after unmount; sending TERM"
      kill -TERM "$pid" 2>/dev/null
      for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && { warn "node $n daemon (pid $pid) ignores TERM; killing it"; kill -KILL "$pid" 2>/dev/null; }
      DAEMON_TROUBLE=1
      rc=1
    fi
    wait "$pid" 2>/dev/null
    st=$?
    if [ "$st" -ne 0 ]; then
      warn "node $n daemon (pid $pid) exited with status $st (log: $(node_log "$n"))"
      DAEMON_TROUBLE=1
      rc=1
    fi
    PID[$n]=""
  done
  return "$rc"
}

stop_helper() {
  [ -n "$HELPER_PID" ] || return 0
  kill -TERM "$HELPER_PID" 2>/dev/null
  wait "$HELPER_PID" 2>/dev/null
  HELPER_PID=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_helper
  [ -z "$WORK" ] || stop_nodes || rc=1
  if [ -n "$WORK" ] && { [ "$FAILED" -ne 0 ] || [ "$rc" -ne 0 ]; }; then
    local f
    for f in "$WORK"/logs/*.log; do
      [ -s "$f" ] || continue
      # The probe's refusal is expected of a build without -o stats_file; the daemons'
      # logs matter when one of them misbehaved.
      case "${f##*/}" in
        probe.log) [ "$STATS_OK" -eq 1 ] || continue ;;
        node*.log) [ "$DAEMON_TROUBLE" -eq 1 ] || { [ "$rc" -ne 0 ] && [ "$FAILED" -eq 0 ]; } || continue ;;
      esac
      echo "---- last lines of ${f##*/}" >&2
      tail -n 15 "$f" >&2
    done
  fi
  if [ -n "$EXT4_MNT" ] && findmnt -rn --mountpoint "$EXT4_MNT" >/dev/null 2>&1; then
    umount "$EXT4_MNT" 2>/dev/null || { sleep 1; umount "$EXT4_MNT" 2>/dev/null; } || umount -l "$EXT4_MNT"
  fi
  [ -z "$EXT4_LOOP" ] || losetup -d "$EXT4_LOOP" || { warn "cannot detach $EXT4_LOOP"; rc=1; }
  sharedfs_remove_workdir "$WORK" || rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d /var/tmp/sharedfs-cbench.XXXXXX)" || die "cannot create a work directory under /var/tmp"
mkdir -p "$WORK/tools" "$WORK/logs" "$WORK/stats"
for n in "${NODES[@]}"; do
  MNT[$n]="$WORK/node$n"
  mkdir -p "${MNT[$n]}"
done
cd "$WORK" || die "cannot enter $WORK"  # never inside a mount, so unmounting is not blocked

need_mib=$((DATA_MIB + 2048))
avail_mib=$(($(df -Pk /var/tmp | awk 'NR==2 {print $4}') / 1024))
[ "$avail_mib" -ge "$need_mib" ] || die "/var/tmp has ${avail_mib} MiB free, the run needs about ${need_mib} MiB"
[ $((SIZE_GIB * 1024)) -ge $((DATA_MIB * 2 + 2048)) ] ||
  die "--size-gib $SIZE_GIB is too small for a ${DATA_MIB} MiB dataset; use at least $(((DATA_MIB * 2 + 2048 + 1023) / 1024))"

# ---------------------------------------------------------------- tools

log "building create_files in $WORK/tools"
gcc -O2 -Wall -o "$WORK/tools/create_files" "$ROOT/bench/create_files.c" || die "cannot build bench/create_files.c"
TOOL="$WORK/tools/create_files"

# stats.py snap PREFIX PID:FILE:NODE...: SIGUSR1 to each daemon, wait (2 s at most) until
# its stats file shows a new "seq", copy it to PREFIX.nodeNODE.json (none where it did not).
# stats.py delta BEFORE AFTER NODE...: the counters' growth summed over the nodes, as
# "sent lock_requests reads read_bytes", or "n/a" where a node's snapshot is missing.
cat >"$WORK/tools/stats.py" <<'EOF'
import json, os, signal, sys, time

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def seq(path):
    d = load(path)
    return d.get("seq") if isinstance(d, dict) else None

def snap(prefix, specs):
    todo = {}
    for spec in specs:
        pid, path, node = spec.split(":")
        old = seq(path)
        try:
            os.kill(int(pid), signal.SIGUSR1)
        except OSError:
            continue
        todo[node] = (path, old)
    deadline = time.monotonic() + 2.0
    while todo and time.monotonic() < deadline:
        for node, (path, old) in list(todo.items()):
            d = load(path)
            if isinstance(d, dict) and "seq" in d and d["seq"] != old:
                with open(f"{prefix}.node{node}.json", "w") as f:
                    json.dump(d, f)
                del todo[node]
        time.sleep(0.02)
    for node in todo:
        print(f"node {node}: no new stats within 2 s", file=sys.stderr)

def delta(before, after, nodes):
    keys = [("dlm", "sent"), ("dlm", "lock_requests"), ("device", "reads"), ("device", "read_bytes")]
    tot = [0] * len(keys)
    for node in nodes:
        b, a = load(f"{before}.node{node}.json"), load(f"{after}.node{node}.json")
        try:
            for i, (g, k) in enumerate(keys):
                tot[i] += int(a[g][k]) - int(b[g][k])
        except (TypeError, KeyError, ValueError):
            print("n/a n/a n/a n/a")
            return
    print(" ".join(str(x) for x in tot))

if sys.argv[1] == "snap":
    snap(sys.argv[2], sys.argv[3:])
else:
    delta(sys.argv[2], sys.argv[3], sys.argv[4:])
EOF

# ---------------------------------------------------------------- cluster

# new_cluster NAME: a fresh sparse image, formatted, and a config for nodes 1-3 on free
# ports of 127.0.0.1 (the image and config of the previous workload are dropped).
new_cluster() {
  local name="$1"
  IMG="$WORK/disk.img"
  CFG="$WORK/cluster.toml"
  rm -f "$IMG"
  truncate -s "${SIZE_GIB}G" "$IMG" || return 1
  CID=$((RANDOM * 32768 + RANDOM + 1))
  # shellcheck disable=SC2086  # extra arguments split into words on purpose
  if ! "$BIN_DIR/mkfs.sharedfs" --force -q --cluster-id "$CID" ${SHAREDFS_MKFS_ARGS:-} "$IMG" \
    >>"$WORK/logs/mkfs.log" 2>&1; then
    warn "mkfs.sharedfs failed (log: $WORK/logs/mkfs.log)"
    return 1
  fi
  sharedfs_write_cluster_config "$CFG" cbench "$CID" 200 2000 "${NODES[@]}"
}

# start_nodes: every node's daemon in the foreground of a background job (pid recorded),
# one after the other, each once the one before is mounted (60 s at most each), as
# scripts/cluster_demo.sh does.
start_nodes() {
  local n i opts
  MOUNT_SEQ=$((MOUNT_SEQ + 1))
  for n in "${NODES[@]}"; do
    opts=()
    if [ "$STATS_OK" -eq 1 ]; then
      SFILE[$n]="$WORK/stats/m$MOUNT_SEQ.node$n.json"
      opts=(-o "stats_file=${SFILE[$n]}")
    fi
    echo "---- mount $MOUNT_SEQ" >>"$(node_log "$n")"
    # shellcheck disable=SC2086  # SHAREDFS_MOUNT_ARGS splits into words on purpose
    "$BIN_DIR/sharedfs" mount "$IMG" "${MNT[$n]}" --config "$CFG" --node "$n" -f "${opts[@]}" \
      ${SHAREDFS_MOUNT_ARGS:-} >>"$(node_log "$n")" 2>&1 &
    PID[$n]=$!
    for ((i = 0; i < 600; i++)); do
      mountpoint -q "${MNT[$n]}" && continue 2
      kill -0 "${PID[$n]}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${PID[$n]}" 2>/dev/null; then
      warn "node $n did not mount within 60 s; its log ($(node_log "$n")) ends:"
    else
      warn "node $n exited before mounting; its log ($(node_log "$n")) ends:"
    fi
    tail -n 10 "$(node_log "$n")" >&2
    DAEMON_TROUBLE=1
    stop_nodes
    return 1
  done
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# probe_stats: does this build take -o stats_file and dump on SIGUSR1? Tried on a node of
# its own on a scratch image (a build without the option refuses to mount; one without the
# handler would die of the signal: neither may happen to a cluster node).
probe_stats() {
  local img="$WORK/probe.img" m="$WORK/probe" f="$WORK/stats/probe.json" pid i
  mkdir -p "$m"
  { truncate -s 1G "$img" && "$BIN_DIR/mkfs.sharedfs" --force -q --nodes 1 "$img" >>"$WORK/logs/probe.log" 2>&1; } ||
    { STATS_NOTE="cannot format a probe image"; rm -f "$img"; return 1; }
  "$BIN_DIR/sharedfs" mount "$img" "$m" -f -o "stats_file=$f" >>"$WORK/logs/probe.log" 2>&1 &
  pid=$!
  for ((i = 0; i < 100; i++)); do
    mountpoint -q "$m" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if mountpoint -q "$m"; then
    kill -USR1 "$pid"
    for ((i = 0; i < 20; i++)); do
      python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if "seq" in d and "dlm" in d and "device" in d else 1)' \
        "$f" 2>/dev/null && { STATS_OK=1; break; }
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null || { STATS_OK=0; STATS_NOTE="the daemon died of SIGUSR1"; }
    fusermount3 -u "$m" 2>>"$WORK/logs/probe.log" || { sleep 1; fusermount3 -u "$m" || fusermount3 -uz "$m"; }
  fi
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && { kill -TERM "$pid"; sleep 1; kill -KILL "$pid" 2>/dev/null; }
  wait "$pid" 2>/dev/null
  rm -f "$img"
  if [ "$STATS_OK" -eq 0 ] && [ -z "$STATS_NOTE" ]; then
    if grep -q "stats_file" "$WORK/logs/probe.log"; then
      STATS_NOTE="sharedfs mount does not take -o stats_file"
    else
      STATS_NOTE="no stats file within 2 s of SIGUSR1"
    fi
  fi
  [ "$STATS_OK" -eq 1 ]
}

# snap TAG: every node's counters now, as $WORK/stats/TAG.nodeN.json (nothing without stats).
snap() {
  [ "$STATS_OK" -eq 1 ] || return 0
  local specs=() n
  for n in "${NODES[@]}"; do
    [ -n "${PID[$n]:-}" ] && specs+=("${PID[$n]}:${SFILE[$n]}:$n")
  done
  python3 "$WORK/tools/stats.py" snap "$WORK/stats/$1" "${specs[@]}" 2>>"$WORK/logs/stats.log" ||
    warn "stats snapshot $1 failed"
}

# ---------------------------------------------------------------- measurement

declare -A RES=() SENT=() LOCKREQ=() DEVREADS=() DEVMB=() NOTE=()
# record ROW VALUE: one run's figure ("fail" for a failed run).
record() { RES[$1]="${RES[$1]:-} $2"; }
# record_stats ROW BEFORE AFTER OPS: the phase's counters, summed over the nodes.
record_stats() {
  local row="$1" sent lr reads rbytes
  if [ "$STATS_OK" -eq 1 ]; then
    read -r sent lr reads rbytes <<<"$(python3 "$WORK/tools/stats.py" delta "$WORK/stats/$2" "$WORK/stats/$3" "${NODES[@]}")"
  else
    sent=n/a lr=n/a reads=n/a rbytes=n/a
  fi
  SENT[$row]="${SENT[$row]:-} $(awk -v s="$sent" -v o="$4" 'BEGIN { if (s == "n/a" || o <= 0) print "n/a"; else printf "%.6f", s / o }')"
  LOCKREQ[$row]="${LOCKREQ[$row]:-} $lr"
  DEVREADS[$row]="${DEVREADS[$row]:-} $reads"
  DEVMB[$row]="${DEVMB[$row]:-} $(awk -v b="$rbytes" 'BEGIN { if (b == "n/a") print "n/a"; else printf "%.1f", b / 1e6 }')"
  STATS_LINE=""
  [ "$sent" = n/a ] || STATS_LINE="; $sent DLM messages, $lr lock requests, $reads device reads ($(awk -v b="$rbytes" 'BEGIN { printf "%.1f", b / 1e6 }') MB)"
}
STATS_LINE=""

# measure_idle: once, the counters of the cluster just started over 2 s in which nothing
# happens (after 1 s to settle): what the lock and device columns hold without any work.
IDLE_LINE=""
measure_idle() {
  [ "$STATS_OK" -eq 1 ] && [ -z "$IDLE_LINE" ] || return 0
  local before after sent lr reads rbytes
  sleep 1
  next_tag; before="$TAG"
  snap "$before"
  sleep 2
  next_tag; after="$TAG"
  snap "$after"
  read -r sent lr reads rbytes <<<"$(python3 "$WORK/tools/stats.py" delta "$WORK/stats/$before" "$WORK/stats/$after" "${NODES[@]}")"
  [ "$sent" = n/a ] && return 0
  IDLE_LINE="$sent DLM messages, $lr lock requests, $reads device reads ($(awk -v b="$rbytes" 'BEGIN { printf "%.1f", b / 1e6 }') MB)"
  log "idle cluster, 2 s: $IDLE_LINE"
}
failed_row() {
  record "$1" fail
  FAILED=1
  warn "$1: $2"
}

# helper LIMIT ARGS...: run create_files in the background (so that a signal reaches the
# script at once) and wait for it, LIMIT seconds at most (then it is stopped: a stall,
# reported, and the daemons' logs shown at the end); HOUT gets its stdout.
HOUT=""
helper() {
  local limit="$1" rc
  shift
  timeout --signal=TERM "$limit" "$TOOL" "$@" >"$WORK/helper.out" 2>>"$WORK/logs/create_files.log" &
  HELPER_PID=$!
  wait "$HELPER_PID"
  rc=$?
  HELPER_PID=""
  HOUT="$(cat "$WORK/helper.out")"
  if [ "$rc" -eq 124 ]; then
    warn "create_files $1 made no end within $limit s: stopped (a hang in sharedfs?)"
    echo "create_files $*: stopped after $limit s" >>"$WORK/logs/create_files.log"
    DAEMON_TROUBLE=1
  fi
  return "$rc"
}
per_sec() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }'; }

SNAPS=0
next_tag() { SNAPS=$((SNAPS + 1)); TAG="s$SNAPS"; }

# Workload 1: k = 1, 2, 3 nodes creating FILES empty files each, each node in a directory of
# its own (made through that node, untimed), all at once. A fresh image per run.
run_create() {
  local r k n dirs before after files secs
  for ((r = 1; r <= RUNS; r++)); do
    if ! { new_cluster create && start_nodes; }; then
      for k in 1 2 3; do failed_row "create$k" "cannot start the cluster (run $r)"; done
      continue
    fi
    measure_idle
    for k in 1 2 3; do
      dirs=()
      for ((n = 1; n <= k; n++)); do
        dirs+=("${MNT[$n]}/c$k.node$n")
        mkdir "${MNT[$n]}/c$k.node$n" || { failed_row "create$k" "mkdir through node $n failed"; continue 2; }
      done
      sync
      next_tag; before="$TAG"
      snap "$before"
      if helper $((60 + k * FILES / 20)) create "$FILES" "${dirs[@]}"; then
        next_tag; after="$TAG"
        snap "$after"
        read -r files secs <<<"$HOUT"
        record "create$k" "$(per_sec "$files" "$secs")"
        record_stats "create$k" "$before" "$after" "$files"
        log "create, $k node(s), run $r/$RUNS: $(per_sec "$files" "$secs") files/s$STATS_LINE"
      else
        failed_row "create$k" "run $r failed (log: $WORK/logs/create_files.log)"
      fi
    done
    stop_nodes || FAILED=1
  done
}

# Workload 2: the dataset written through node 1 (untimed), then every node reads every
# file, all nodes at once: epoch 1 after sync and drop_caches (the kernels' page caches
# empty, so the data comes from the device; the daemons stay mounted), epoch 2 at once
# after it. Every run starts with drop_caches again.
run_read() {
  local r e files bytes secs before after n dirs=()
  if ! { new_cluster read && start_nodes; }; then
    failed_row read1 "cannot start the cluster"
    failed_row read2 "cannot start the cluster"
    return
  fi
  measure_idle
  log "writing the dataset through node 1 (untimed): $NLARGE x $LARGE_H + $NSMALL files of 16-256 KiB"
  { mkdir "${MNT[1]}/data" && helper $((60 + DATA_MIB / 5)) mkdata "${MNT[1]}/data" "$NLARGE" "$LARGE_BYTES" "$NSMALL" "$SMALL_MIN" "$SMALL_MAX"; } || {
    failed_row read1 "writing the dataset failed"
    failed_row read2 "writing the dataset failed"
    stop_nodes || FAILED=1
    return
  }
  for n in "${NODES[@]}"; do dirs+=("${MNT[$n]}/data"); done
  for ((r = 1; r <= RUNS; r++)); do
    drop_caches
    sleep 1  # the kernels' FORGETs reach the daemons, which let go of their open locks
    next_tag; before="$TAG"
    snap "$before"
    for e in 1 2; do
      if helper $((60 + 3 * DATA_MIB / 5)) read "$NLARGE" "$LARGE_BYTES" "$NSMALL" "$SMALL_MIN" "$SMALL_MAX" "${dirs[@]}"; then
        next_tag; after="$TAG"
        snap "$after"
        read -r files bytes secs <<<"$HOUT"
        record "read$e" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1e6 / s }')"
        [ "$e" -eq 1 ] && READ1_SECS="$secs"
        record_stats "read$e" "$before" "$after" "$files"
        log "read epoch $e, run $r/$RUNS: $(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1e6 / s }') MB/s ($files files, $bytes bytes by ${#NODES[@]} nodes)$STATS_LINE"
        before="$after"
      else
        failed_row "read$e" "epoch $e of run $r failed (log: $WORK/logs/create_files.log)"
        [ "$e" -eq 1 ] && { failed_row read2 "epoch 1 failed"; break; }
      fi
    done
  done
  stop_nodes || FAILED=1
}

# Workload 3: APPENDS 4 KiB appends to one file, alternately through node 1 and node 2
# (ppN), and the same alternation through two descriptors on node 1 (ppref).
run_append() {
  local r row f b before after ops secs p50 p99 rc
  if ! { new_cluster append && start_nodes; }; then
    for row in ppref pp2; do failed_row "$row" "cannot start the cluster"; done
    return
  fi
  measure_idle
  for ((r = 1; r <= RUNS; r++)); do
    for row in ppref pp2; do
      f="$row.run$r"
      : >"${MNT[1]}/$f" || { failed_row "$row" "cannot create ${MNT[1]}/$f"; continue; }
      if [ "$row" = ppref ]; then b="${MNT[1]}/$f"; else b="${MNT[2]}/$f"; fi
      next_tag; before="$TAG"
      snap "$before"
      helper $((60 + APPENDS / 10)) pingpong "$APPENDS" "${MNT[1]}/$f" "$b"
      rc=$?
      if [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ]; then
        next_tag; after="$TAG"
        snap "$after"
        read -r ops secs p50 p99 <<<"$HOUT"
        record "$row" "$(per_sec "$ops" "$secs")"
        record "$row.p50" "$p50"
        record "$row.p99" "$p99"
        record_stats "$row" "$before" "$after" "$ops"
        log "appends $row, run $r/$RUNS: $(per_sec "$ops" "$secs") appends/s, p50 $p50 us, p99 $p99 us$STATS_LINE"
        if [ "$rc" -eq 3 ]; then
          NOTE[$row]=1
          FAILED=1
          warn "$row run $r: the file read back does not hold every append in order: $(tail -n 1 "$WORK/logs/create_files.log")"
        fi
      else
        failed_row "$row" "run $r failed (log: $WORK/logs/create_files.log)"
        record "$row.p50" fail
        record "$row.p99" fail
      fi
    done
  done
  stop_nodes || FAILED=1
}

# loop_reads DEV: "READS BYTES" the block device has completed since it was attached.
loop_reads() { awk '{ printf "%d %.0f\n", $1, $3 * 512 }' "/sys/block/${1#/dev/}/stat"; }

# The reference of the read rows: kernel ext4 on a loop device (direct I/O, so the loop
# device sees every read the page cache misses) holding the same dataset, read by three
# readers through one mount (one kernel, one page cache) in the same two epochs. Its
# epoch-2 device reads are what this host takes back from any page cache between two
# epochs (memory reclaim by the host: DAMON, a balloon), beside sharedfs's. ext4's first
# epoch is much shorter, so it waits before the second until its pages are as old as
# sharedfs's were (reclaim such as DAMON's takes pages by how long they were idle).
READ1_SECS=0
run_read_ext4() {
  local r e files bytes secs b0 b1 reads0 reads1 wait_s img="$WORK/ext4.img"
  truncate -s "$((DATA_MIB * 2 + 512))M" "$img" &&
    EXT4_LOOP="$(losetup --find --show --direct-io=on "$img")" &&
    mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 "$EXT4_LOOP" >>"$WORK/logs/mkfs.log" 2>&1 &&
    mkdir -p "$WORK/ext4" && mount "$EXT4_LOOP" "$WORK/ext4" && EXT4_MNT="$WORK/ext4" &&
    mkdir "$EXT4_MNT/data" &&
    helper $((60 + DATA_MIB / 5)) mkdata "$EXT4_MNT/data" "$NLARGE" "$LARGE_BYTES" "$NSMALL" "$SMALL_MIN" "$SMALL_MAX" || {
    failed_row kread1 "ext4 on a loop device could not be set up (log: $WORK/logs/mkfs.log)"
    failed_row kread2 "ext4 on a loop device could not be set up"
    return
  }
  for ((r = 1; r <= RUNS; r++)); do
    drop_caches
    for e in 1 2; do
      read -r reads0 b0 <<<"$(loop_reads "$EXT4_LOOP")"
      if helper $((60 + 3 * DATA_MIB / 5)) read "$NLARGE" "$LARGE_BYTES" "$NSMALL" "$SMALL_MIN" "$SMALL_MAX" \
        "$EXT4_MNT/data" "$EXT4_MNT/data" "$EXT4_MNT/data"; then
        read -r reads1 b1 <<<"$(loop_reads "$EXT4_LOOP")"
        read -r files bytes secs <<<"$HOUT"
        record "kread$e" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1e6 / s }')"
        DEVREADS[kread$e]="${DEVREADS[kread$e]:-} $((reads1 - reads0))"
        DEVMB[kread$e]="${DEVMB[kread$e]:-} $(awk -v b="$((b1 - b0))" 'BEGIN { printf "%.1f", b / 1e6 }')"
        log "ext4 read epoch $e, run $r/$RUNS: $(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1e6 / s }') MB/s; $((reads1 - reads0)) device reads ($(awk -v b="$((b1 - b0))" 'BEGIN { printf "%.1f", b / 1e6 }') MB)"
        if [ "$e" -eq 1 ]; then
          # sharedfs's epoch 1 plus the counter snapshot between its epochs (about 1 s).
          wait_s="$(awk -v a="$READ1_SECS" -v b="$secs" 'BEGIN { w = a - b + 1; printf "%.1f", (w > 0 ? w : 0) }')"
          log "ext4: waiting $wait_s s before epoch 2 (sharedfs's epoch 1 took $READ1_SECS s, ext4's $secs s)"
          sleep "$wait_s"
        fi
      else
        failed_row "kread$e" "ext4 epoch $e of run $r failed (log: $WORK/logs/create_files.log)"
        [ "$e" -eq 1 ] && { failed_row kread2 "epoch 1 failed"; break; }
      fi
    done
  done
  umount "$EXT4_MNT" && EXT4_MNT="" || warn "cannot unmount $EXT4_MNT"
  losetup -d "$EXT4_LOOP" && EXT4_LOOP="" || warn "cannot detach $EXT4_LOOP"
  rm -f "$img"
}

log "probing for -o stats_file"
if probe_stats; then
  log "daemon counters: -o stats_file, dumped on SIGUSR1"
else
  warn "the lock and device columns are n/a: $STATS_NOTE"
fi

T_START=$(date +%s)
ROWS=()
if wanted create; then
  log "create: $FILES files per node, 1, 2 and 3 nodes at once, $RUNS run(s)"
  run_create
  ROWS+=(create1 create2 create3)
fi
if wanted read; then
  log "read: ${DATA_MIB} MiB dataset, every node every file, two epochs, $RUNS run(s)"
  run_read
  log "read reference: the same dataset on kernel ext4 (loop device), 3 readers on one mount"
  run_read_ext4
  ROWS+=(read1 read2 kread1 kread2)
fi
if wanted append; then
  log "append ping-pong: $APPENDS appends of 4 KiB, $RUNS run(s)"
  run_append
  ROWS+=(ppref pp2 pp2.p50 pp2.p99)
fi
T_END=$(date +%s)

# ---------------------------------------------------------------- report

# median VALUES...: "fail" if any run failed, "n/a" if any is n/a, else the median (mean
# of the middle two).
median() {
  local v
  [ $# -gt 0 ] || { echo fail; return; }
  for v in "$@"; do [ "$v" = fail ] && { echo fail; return; }; done
  for v in "$@"; do [ "$v" = n/a ] && { echo n/a; return; }; done
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
med() {  # med ARRAY ROW: median of ARRAY[ROW]'s values
  local -n arr="$1"
  # shellcheck disable=SC2086  # the values are space-separated on purpose
  median ${arr[$2]:-}
}
fmt() {  # thousands for large figures, one decimal below 100
  case "$1" in
    fail | n/a | —) echo "$1" ;;
    *) awk -v x="$1" 'BEGIN { if (x < 100) { printf "%.1f", x; exit }
         s = sprintf("%.0f", x); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
         print s o }' ;;
  esac
}
fmt_small() {  # messages per operation: 0, or two significant decimals at least
  case "$1" in
    fail | n/a | —) echo "$1" ;;
    *) awk -v x="$1" 'BEGIN { if (x == 0) print "0"; else if (x < 0.01) printf "%.4f", x;
         else if (x < 10) printf "%.2f", x; else printf "%.1f", x }' ;;
  esac
}
fmt_int() {  # counts: thousands separated; a median between two counts keeps its .5
  case "$1" in
    fail | n/a | —) echo "$1" ;;
    *) awk -v x="$1" 'BEGIN { if (x != int(x) && x < 1000) { printf "%.1f", x; exit }
         s = sprintf("%.0f", x); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
         print s o }' ;;
  esac
}
ratio() {
  case "$1$2" in
    *fail* | *n/a* | *—*) echo "—" ;;
    *) awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "—" }' ;;
  esac
}
commas() { fmt "$1"; }
fmt_mb() { awk -v x="$1" 'BEGIN { if (x < 10) printf "%.1f", x; else printf "%.0f", x }'; }

DATA_H="$([ $((DATA_MIB % 1024)) -eq 0 ] && echo "$((DATA_MIB / 1024)) GiB" || echo "$DATA_MIB MiB")"
DATASET="$DATA_H dataset ($NLARGE × $LARGE_H + $(commas "$NSMALL") files of 16–256 KiB)"
declare -A LABEL=(
  [create1]="create $(commas "$FILES") empty files, 1 node (reference)"
  [create2]="create $(commas "$FILES") empty files per node, 2 nodes at once, own directories (target ≥ 1.6×)"
  [create3]="create $(commas "$FILES") empty files per node, 3 nodes at once, own directories"
  [read1]="3 nodes each read the whole $DATASET, epoch 1, after drop_caches"
  [read2]="the same again, epoch 2 (target: no device reads, no lock requests)"
  [kread1]="reference: kernel ext4 on a loop device, the same dataset read by 3 readers on one mount, epoch 1"
  [kread2]="reference: the same on ext4, epoch 2, its pages as old as sharedfs's (its device reads: what this host's memory reclaim took back)"
  [ppref]="$(commas "$APPENDS") appends of 4 KiB, two descriptors on node 1 in turn (reference)"
  [pp2]="$(commas "$APPENDS") appends of 4 KiB, node 1 and node 2 in turn (lock ping-pong)"
  [pp2.p50]="latency of one append, node 1 and node 2 in turn, p50 (lower is better)"
  [pp2.p99]="latency of one append, node 1 and node 2 in turn, p99 (lower is better)"
)
declare -A UNIT=(
  [create1]="files/s" [create2]="files/s" [create3]="files/s" [read1]="MB/s" [read2]="MB/s" [kread1]="MB/s" [kread2]="MB/s"
  [ppref]="appends/s" [pp2]="appends/s" [pp2.p50]="µs" [pp2.p99]="µs"
)
declare -A REF=(
  [create2]=create1 [create3]=create1 [read2]=read1 [kread2]=kread1 [pp2]=ppref [pp2.p50]=ppref.p50 [pp2.p99]=ppref.p99
)
# Short names for charts (bench/make_report.py); the table keeps the long ones.
declare -A SHORT=(
  [create1]="create, 1 node" [create2]="create, 2 nodes" [create3]="create, 3 nodes"
  [read1]="read, epoch 1" [read2]="read, epoch 2" [kread1]="ext4 read, epoch 1"
  [kread2]="ext4 read, epoch 2" [ppref]="appends, one node"
  [pp2]="appends, two nodes" [pp2.p50]="append latency p50" [pp2.p99]="append latency p99"
)

echo "## sharedfs cluster benchmark"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), kernel $(uname -r), $(nproc) CPUs," \
  "$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo) GiB RAM; ${#NODES[@]} sharedfs nodes on this host" \
  "(one daemon each, DLM on 127.0.0.1, heartbeats 200 ms / 2 s) over one ${SIZE_GIB} GiB sparse image on /var/tmp" \
  "($(findmnt -rn -o FSTYPE --target /var/tmp)); binaries: $BIN_DIR ($(date -u -r "$BIN_DIR/sharedfs" '+%Y-%m-%d %H:%M UTC'));" \
  "lock and device columns: $([ "$STATS_OK" -eq 1 ] && echo "daemon counters (-o stats_file), summed over the nodes" || echo "n/a, $STATS_NOTE");" \
  "${IDLE_LINE:+the idle cluster (3 nodes, 2 s, nothing running): $IDLE_LINE;}" \
  "median of $RUNS run(s)$([ "$QUICK" -eq 1 ] && echo ", --quick"); $((T_END - T_START)) s."
echo
echo "| workload | unit | sharedfs | reference | ratio | DLM messages / op | lock requests | device reads |"
echo "|---|---|--:|--:|--:|--:|--:|--:|"
JROWS=""
for row in "${ROWS[@]}"; do
  val="$(med RES "$row")"
  ref="—"
  [ -n "${REF[$row]:-}" ] && ref="$(med RES "${REF[$row]}")"
  case "$row" in
    *.p50 | *.p99) msgs="—" lr="—" reads="—" ;;
    *)
      msgs="$(fmt_small "$(med SENT "$row")")"
      lr="$(fmt_int "$(med LOCKREQ "$row")")"
      case "$row" in kread*) msgs="—" lr="—" ;; esac  # no DLM under ext4
      reads="$(fmt_int "$(med DEVREADS "$row")")"
      mb="$(med DEVMB "$row")"
      case "$reads" in fail | n/a | 0) ;; *) reads="$reads ($(fmt_mb "$mb") MB)" ;; esac
      ;;
  esac
  mark=""
  [ -n "${NOTE[${row%%.*}]:-}" ] && mark=" †"
  echo "| ${LABEL[$row]} | ${UNIT[$row]} | $(fmt "$val")$mark | $(fmt "$ref") | $(ratio "$val" "$ref") | $msgs | $lr | $reads |"
  # One tab-separated line per row for --json: every run's figures, medians, counters.
  JROWS+="$row"$'\t'"${LABEL[$row]}"$'\t'"${SHORT[$row]}"$'\t'"${UNIT[$row]}"$'\t'"${REF[$row]:-}"
  JROWS+=$'\t'"${RES[$row]:-}"$'\t'"${RES[${REF[$row]:-none}]:-}"$'\t'"$val"$'\t'"$ref"
  for a in SENT LOCKREQ DEVREADS DEVMB; do
    case "$row:$a" in
      *.p50:* | *.p99:* | kread*:SENT | kread*:LOCKREQ) JROWS+=$'\t\t' ;;
      *)
        declare -n jarr="$a"
        JROWS+=$'\t'"${jarr[$row]:-}"$'\t'"$(med "$a" "$row")"
        unset -n jarr ;;
    esac
  done
  JROWS+=$'\t'"${NOTE[${row%%.*}]:+order}"$'\n'
done
if [ -n "${NOTE[pp2]:-}${NOTE[ppref]:-}" ]; then
  echo
  echo "† the file read back did not hold every append in order (appends lost or overwritten): the figure is not of a correct run."
fi

# write_json FILE: the rows above as JSON (numbers as numbers, "fail" and "n/a" as strings;
# a median is "fail" if any run failed). The counters are summed over the nodes per phase.
write_json() {
  local py
  IFS= read -r -d '' py <<'PYEOF'
import json, sys

(out, quick, runs, files, data_mib, appends, size_gib, nodes, secs, stats_ok, stats_note,
 idle, failed) = sys.argv[1:]

def num(v):
    try:
        return float(v)
    except ValueError:
        return v

def nums(field):
    return [num(v) for v in field.split()]

rows = []
for line in sys.stdin.read().splitlines():
    if not line:
        continue
    f = line.split("\t")
    row = {"id": f[0], "label": f[1], "short": f[2], "unit": f[3],
           "higher_is_better": not f[0].endswith((".p50", ".p99")), "reference": f[4] or None,
           "runs": nums(f[5]), "reference_runs": nums(f[6]), "median": num(f[7]),
           "reference_median": num(f[8]) if f[4] else None}
    m, r = row["median"], row["reference_median"]
    row["ratio"] = m / r if isinstance(m, float) and isinstance(r, float) and r > 0 else None
    for i, key in enumerate(["dlm_messages_per_op", "lock_requests", "device_reads", "device_read_mb"]):
        runs_field, med_field = f[9 + 2 * i], f[10 + 2 * i]
        row[key] = {"runs": nums(runs_field), "median": num(med_field)} if med_field else None
    row["readback_wrong"] = f[17] == "order"
    rows.append(row)
doc = {"suite": "cluster", "quick": quick == "1", "runs": int(runs), "files_per_node": int(files),
       "data_mib": int(data_mib), "appends": int(appends), "size_gib": int(size_gib),
       "nodes": int(nodes), "seconds": int(secs), "counters": stats_ok == "1",
       "counters_note": stats_note or None, "idle_2s": idle or None, "failed": failed != "0",
       "rows": rows}
with open(out, "w") as fp:
    json.dump(doc, fp, indent=1)
    fp.write("\n")
PYEOF
  python3 -c "$py" "$1" "$QUICK" "$RUNS" "$FILES" "$DATA_MIB" "$APPENDS" "$SIZE_GIB" "${#NODES[@]}" \
    "$((T_END - T_START))" "$STATS_OK" "$STATS_NOTE" "$IDLE_LINE" "$FAILED" <<<"$JROWS"
}
if [ -n "$JSON" ]; then
  write_json "$JSON" || { warn "cannot write $JSON"; FAILED=1; }
fi

if [ "$FAILED" -ne 0 ]; then
  warn "some measurements failed or were wrong; the logs' last lines follow"
  exit 1
fi
