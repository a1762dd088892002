#!/usr/bin/env bash
# Failover benchmark (issue 6, docs/failure.md): three sharedfs nodes on this host over one
# sparse image (DLMs on 127.0.0.1). Each run: node 3 keeps appending to a file of its own
# with fsync (so it holds that file's and its directory's locks in EX); it is killed with
# SIGKILL; node 2 then appends to node 3's file. Reported, median of --runs:
#   - failover: SIGKILL to node 2's first successful write to the dead node's file, beside
#     the configured dead-node timeout (target: at most timeout + 1 s);
#   - blocked: the longest a write+fsync by node 1 to a file of its own (which node 3 never
#     touched) took during the failover, beside the longest before the kill (target: 0).
# Node 3 is restarted (rejoins) after each run. One Markdown table on stdout, progress on
# stderr. Needs root (FUSE mounts).
#
#   bash bench/failover_bench.sh [--quick] [--runs N] [--heartbeat-ms N] [--timeout-ms N]
#                                [--json FILE]
#
# SHAREDFS_BIN_DIR overrides where sharedfs and mkfs.sharedfs are taken from (build/bin).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${SHAREDFS_BIN_DIR:-$ROOT/build/bin}"
RUNS=""
HEARTBEAT_MS=500
TIMEOUT_MS=5000
JSON=""

usage() {
  echo "usage: bash bench/failover_bench.sh [--quick] [--runs N] [--heartbeat-ms N] [--timeout-ms N] [--json FILE]"
  echo "  defaults: 10 runs (--quick: 3), the cluster config's defaults (heartbeat 500 ms, dead after 5000 ms);"
  echo "  --json FILE also writes every run's figures and the medians as JSON to FILE"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) RUNS="${RUNS:-3}"; shift ;;
    --runs) RUNS="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --heartbeat-ms) HEARTBEAT_MS="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --timeout-ms) TIMEOUT_MS="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --json) JSON="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
RUNS="${RUNS:-10}"
for v in "$RUNS" "$HEARTBEAT_MS" "$TIMEOUT_MS"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }
done
if [ -n "$JSON" ]; then
  JSON="$(realpath -m -- "$JSON")"
  [ -d "$(dirname "$JSON")" ] || { echo "failover_bench: --json: no directory for '$JSON'" >&2; exit 2; }
fi

[ "$(id -u)" -eq 0 ] || { echo "failover_bench: must run as root" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
source "$ROOT/scripts/lib.sh"
sharedfs_install_deps >&2 || { echo "failover_bench: cannot install packages" >&2; exit 1; }
for b in sharedfs mkfs.sharedfs; do
  [ -x "$BIN_DIR/$b" ] || { echo "failover_bench: $BIN_DIR/$b is missing: build first" >&2; exit 1; }
done

WORK="$(mktemp -d /var/tmp/sharedfs-failover-XXXXXX)"
trap 'sharedfs_remove_workdir "$WORK"' EXIT
truncate -s 4G "$WORK/disk.img"
"$BIN_DIR/mkfs.sharedfs" --force --nodes 4 --cluster-id 66 --cluster-name failover "$WORK/disk.img" >/dev/null ||
  { echo "failover_bench: mkfs failed" >&2; exit 1; }
sharedfs_write_cluster_config "$WORK/cluster.toml" failover 66 "$HEARTBEAT_MS" "$TIMEOUT_MS" 1 2 3

python3 - "$BIN_DIR" "$WORK" "$RUNS" "$TIMEOUT_MS" "$HEARTBEAT_MS" "$JSON" <<'EOF'
import json, os, signal, statistics, subprocess, sys, threading, time

bin_dir, work, runs, timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
heartbeat_ms, json_out = int(sys.argv[5]), sys.argv[6]
img, cfg = f"{work}/disk.img", f"{work}/cluster.toml"
procs = {}

def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)

def mnt(n):
    return f"{work}/mnt{n}"

def mounted(n):
    with open("/proc/mounts") as f:
        return any(line.split()[1] == mnt(n) for line in f)

def mount(n):
    os.makedirs(mnt(n), exist_ok=True)
    logf = open(f"{work}/node{n}.log", "ab")
    procs[n] = subprocess.Popen([f"{bin_dir}/sharedfs", "mount", "-f", img, mnt(n), "--config", cfg,
                                 "--node", str(n)], stdout=logf, stderr=logf)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if mounted(n):
            return
        if procs[n].poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"node {n} did not mount (see {work}/node{n}.log)")

def unmount(n):
    p = procs.pop(n, None)
    if p is None:
        return
    subprocess.run(["fusermount3", "-u", "-z", mnt(n)], stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()

def kill(n):
    p = procs.pop(n)
    p.send_signal(signal.SIGKILL)
    p.wait()
    subprocess.run(["fusermount3", "-u", "-z", mnt(n)], stderr=subprocess.DEVNULL)

def append_fsync(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)

def recovered(n):
    out = subprocess.run([f"{bin_dir}/sharedfs", "debug", "heartbeats", img], capture_output=True,
                         text=True).stdout
    return any(l.split()[:3] == [str(n - 1), str(n), "recovered"] for l in out.splitlines())

failovers, blocked, baseline = [], [], []
try:
    for n in (1, 2, 3):
        mount(n)
    os.makedirs(f"{mnt(1)}/own1", exist_ok=True)
    for r in range(runs):
        d3 = f"{mnt(3)}/held{r}"
        os.makedirs(d3)
        stop3 = threading.Event()
        def node3_writer():
            i = 0
            while not stop3.is_set():
                try:
                    append_fsync(f"{d3}/log", b"node 3 record %d\n" % i)
                except OSError:
                    return
                i += 1
        t3 = threading.Thread(target=node3_writer)
        t3.start()
        # Node 1 works on its own file throughout; latencies noted with their start time.
        lat, stop1 = [], threading.Event()
        def node1_writer():
            while not stop1.is_set():
                t = time.monotonic()
                append_fsync(f"{mnt(1)}/own1/log", b"x" * 64)
                lat.append((t, time.monotonic() - t))
                time.sleep(0.01)
        t1 = threading.Thread(target=node1_writer)
        t1.start()
        time.sleep(1.0)
        killed = time.monotonic()
        kill(3)
        stop3.set()
        t3.join()
        append_fsync(f"{mnt(2)}/held{r}/log", b"survivor\n")
        done = time.monotonic()
        time.sleep(0.5)
        stop1.set()
        t1.join()
        failovers.append((done - killed) * 1000)
        blocked.append(max([l for (t, l) in lat if killed <= t <= done] or [0]) * 1000)
        baseline.append(max([l for (t, l) in lat if t < killed] or [0]) * 1000)
        log(f"run {r + 1}/{runs}: failover {failovers[-1]:.0f} ms, node 1's longest write+fsync "
            f"{blocked[-1]:.1f} ms during it, {baseline[-1]:.1f} ms before")
        deadline = time.monotonic() + 30
        while not recovered(3) and time.monotonic() < deadline:
            time.sleep(0.1)
        mount(3)
finally:
    for n in list(procs):
        unmount(n)

med = statistics.median
print("## sharedfs failover benchmark\n")
print(f"3 nodes on this host, one image, DLM on 127.0.0.1; heartbeat timeout {timeout_ms} ms; "
      f"median of {runs} runs.\n")
print("| measure | sharedfs | reference | ratio | target |")
print("|---|---|---|---|---|")
print(f"| SIGKILL of a node holding EX locks to a survivor's first write to its file | "
      f"{med(failovers):.0f} ms (min {min(failovers):.0f}, max {max(failovers):.0f}) | "
      f"dead-node timeout {timeout_ms} ms | {med(failovers) / timeout_ms:.2f} | "
      f"<= timeout + 1000 ms: {'met' if med(failovers) <= timeout_ms + 1000 else 'NOT met'} |")
print(f"| longest write+fsync on a file the dead node never touched, during failover | "
      f"{med(blocked):.1f} ms (max {max(blocked):.1f}) | longest before the kill {med(baseline):.1f} ms | "
      f"{med(blocked) / max(med(baseline), 0.001):.2f} | not blocked (within 100 ms of before): "
      f"{'met' if med(blocked) <= med(baseline) + 100 else 'NOT met'} |")
if json_out:
    with open(json_out, "w") as f:
        json.dump({"suite": "failover", "runs": runs, "heartbeat_ms": heartbeat_ms,
                   "timeout_ms": timeout_ms, "target_failover_ms": timeout_ms + 1000,
                   "failover_ms": failovers, "blocked_ms": blocked, "baseline_ms": baseline,
                   "median": {"failover_ms": med(failovers), "blocked_ms": med(blocked),
                              "baseline_ms": med(baseline)},
                   "met": {"failover": med(failovers) <= timeout_ms + 1000,
                           "not_blocked": med(blocked) <= med(baseline) + 100}}, f, indent=1)
        f.write("\n")
EOF
rc=$?
for n in 1 2 3; do fusermount3 -u -z "$WORK/mnt$n" 2>/dev/null; done
exit $rc
