#!/usr/bin/env bash
# A 3-node sharedfs cluster on this host over one disk image: three `sharedfs mount`
# daemons, nodes 1-3 of one cluster config, talking to each other on 127.0.0.1.
#
#   bash scripts/cluster_demo.sh start IMAGE [DIR]   write DIR/cluster.toml (the cluster id
#                                                    read from IMAGE, three free ports) and
#                                                    mount nodes 1-3 at DIR/node1..node3
#   bash scripts/cluster_demo.sh stop [DIR]          unmount every node that is mounted, wait
#                                                    for the daemons to leave the cluster and
#                                                    exit, then fsck.sharedfs -n IMAGE
#
# DIR defaults to build/demo. `start` records the image in DIR/cluster.env for `stop`.
# Stop with `stop` (or fusermount3 -u on each node): a node that is killed instead is
# fenced by the others after the dead-node timeout and its journal replayed
# (docs/failure.md); it must be unmounted before it can mount again.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin="$SHAREDFS_ROOT/build/bin"
nodes=(1 2 3)

usage() {
  sed -n 4,10p "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The daemon of node N: its command line is `sharedfs mount IMAGE DIR/nodeN --config ...`.
daemon_pattern() { echo "sharedfs mount $1 $2 "; }

start() {
  local image dir
  image="$(realpath "$1")"
  dir="$(realpath -m "${2:-$SHAREDFS_ROOT/build/demo}")"
  mkdir -p "$dir"
  if [ -f "$dir/cluster.env" ]; then
    echo "a cluster from $dir/cluster.env may still be up; stopping it first"
    stop "$dir"
  fi
  local cid
  cid=$("$bin/sharedfs" debug superblock "$image" | awk '/cluster id/ {print $3}')
  [ -n "$cid" ] || { echo "no cluster id in the superblock of $image" >&2; return 1; }
  local cfg="$dir/cluster.toml"
  # As a string: TOML integers are signed, an id above 2^63-1 would not fit.
  sharedfs_write_cluster_config "$cfg" demo "\"$cid\"" 200 2000 "${nodes[@]}"
  printf 'image=%q\n' "$image" >"$dir/cluster.env"
  echo "== cluster config $cfg: cluster id $cid, nodes 1-3 on 127.0.0.1"
  for n in "${nodes[@]}"; do
    mkdir -p "$dir/node$n"
    echo "== sharedfs mount $image $dir/node$n --config $cfg --node $n"
    "$bin/sharedfs" mount "$image" "$dir/node$n" --config "$cfg" --node "$n" ${SHAREDFS_MOUNT_ARGS:-}
  done
}

# Unmounts whatever of the cluster in DIR is mounted, waits for every daemon, checks the
# image. Safe to run twice, and after a start that failed halfway.
stop() {
  local dir
  dir="$(realpath -m "${1:-$SHAREDFS_ROOT/build/demo}")"
  local image="" n
  if [ -f "$dir/cluster.env" ]; then
    image="$(source "$dir/cluster.env" && echo "$image")"
  else
    # No record (removed by hand?): find the image from a node still mounted, if any.
    for n in "${nodes[@]}"; do
      if mountpoint -q "$dir/node$n" 2>/dev/null; then
        image="$(findmnt -n -o SOURCE "$dir/node$n")"
        image="${image#sharedfs:}"
        break
      fi
    done
    if [ -z "$image" ]; then
      echo "no cluster recorded in $dir (no $dir/cluster.env) and no node mounted there; nothing to stop"
      return 0
    fi
  fi
  local rc=0
  for n in "${nodes[@]}"; do
    if mountpoint -q "$dir/node$n"; then
      echo "== fusermount3 -u $dir/node$n"
      fusermount3 -u "$dir/node$n" ||
        { echo "node $n is busy: leave $dir/node$n (cd, close files) and run stop again" >&2; rc=1; }
    fi
  done
  # A busy node stays mounted (and its daemon up): say so now rather than wait for it.
  [ "$rc" -eq 0 ] || return "$rc"
  # fusermount3 -u returns once the kernel let go; each daemon then commits, marks its
  # journal clean and leaves the cluster (announcing it; at most heartbeat_timeout_ms).
  local left
  for _ in $(seq 1 300); do
    left=()
    for n in "${nodes[@]}"; do
      if pgrep -f "$(daemon_pattern "$image" "$dir/node$n")" >/dev/null; then left+=("$n"); fi
    done
    [ "${#left[@]}" -eq 0 ] && break
    sleep 0.1
  done
  if [ "${#left[@]}" -ne 0 ]; then
    echo "the daemons of nodes ${left[*]} did not exit within 30 s" >&2
    return 1
  fi
  rm -f "$dir/cluster.env"
  if [ ! -f "$image" ] && [ ! -b "$image" ]; then
    echo "== all nodes unmounted; $image is gone, no fsck"
    return "$rc"
  fi
  echo "== all nodes unmounted; fsck.sharedfs -n $image"
  "$bin/fsck.sharedfs" -n "$image" || rc=1
  return "$rc"
}

case "${1:-}" in
  start) [ $# -ge 2 ] && [ $# -le 3 ] || usage; start "$2" "${3:-}" ;;
  stop) [ $# -le 2 ] || usage; stop "${2:-}" ;;
  *) usage ;;
esac
