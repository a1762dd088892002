#!/usr/bin/env bash
# The main job on the embedded default: install what is missing, build, then create a disk
# image, format it with mkfs.sharedfs, mount it with `sharedfs mount` and use it, unmount,
# check it with fsck.sharedfs, show the reservation commands on it, and finally start a
# 3-node cluster on this host over the same image (scripts/cluster_demo.sh): a file written
# through one node is read through the others. The cluster is stopped at the end (all three
# unmounted, fsck -n) unless --keep is given, which leaves it mounted and prints the one
# command that stops it.
#
#   bash scripts/main.sh [--keep] [IMAGE] [SIZE]   default: build/demo/disk.img, 8G (sparse)
#                                                  (SHAREDFS_DEMO_KEEP=1 is the same as --keep)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

keep="${SHAREDFS_DEMO_KEEP:-0}"
args=()
for a in "$@"; do
  case "$a" in
    --keep) keep=1 ;;
    *) args+=("$a") ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"

sharedfs_install_deps
sharedfs_build build

bin="$SHAREDFS_ROOT/build/bin"
cluster_demo="$SHAREDFS_ROOT/scripts/cluster_demo.sh"
image="${1:-$SHAREDFS_ROOT/build/demo/disk.img}"
size="${2:-8G}"
mkdir -p "$(dirname "$image")"
image="$(realpath "$(dirname "$image")")/$(basename "$image")"
demo="$(dirname "$image")"
mnt="$demo/mnt"
cluster_id=42

# Whether a cluster of scripts/cluster_demo.sh is (or may be) up in $demo.
cluster_up() {
  [ -f "$demo/cluster.env" ] && return 0
  for n in 1 2 3; do mountpoint -q "$demo/node$n" 2>/dev/null && return 0; done
  return 1
}
# A cluster left up by an earlier `--keep` run, or a single-node mount left by a run that
# was killed, would be on the image about to be replaced: stop them first (the image is
# formatted again below, so what its fsck finds does not matter).
if cluster_up; then bash "$cluster_demo" stop "$demo" || true; fi
! mountpoint -q "$mnt" 2>/dev/null || fusermount3 -u "$mnt"

rm -f "$image" "$image.pr"
truncate -s "$size" "$image"

echo "== mkfs.sharedfs $image ($size, sparse, cluster id $cluster_id)"
"$bin/mkfs.sharedfs" --label demo --cluster-name demo --cluster-id "$cluster_id" "$image"
echo "== fsck.sharedfs -n $image"
"$bin/fsck.sharedfs" -n "$image"
# fusermount3 -u returns once the kernel let go; the daemon then commits, checkpoints and
# marks its journal clean before it exits.
unmount_and_wait() {
  fusermount3 -u "$mnt"
  for _ in $(seq 1 100); do pgrep -f "sharedfs mount $image $mnt" >/dev/null || return 0; sleep 0.1; done
  echo "the sharedfs daemon did not exit" >&2
  return 1
}
# On any failure: unmount whatever this script mounted (the single node, the cluster).
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then unmount_and_wait || true; fi
  if cluster_up; then bash "$cluster_demo" stop "$demo" || true; fi
}
trap cleanup EXIT
mkdir -p "$mnt"
echo "== sharedfs mount $image $mnt"
"$bin/sharedfs" mount "$image" "$mnt"
mkdir -p "$mnt/dataset/shard-0"
for i in $(seq 1 200); do head -c $((16384 + i * 512)) /dev/urandom >"$mnt/dataset/shard-0/sample-$i.bin"; done
dd if=/dev/zero of="$mnt/dataset/big.bin" bs=1M count=256 status=none conv=fsync
ln -s dataset/big.bin "$mnt/latest"
setfattr -n user.origin -v demo "$mnt/dataset" 2>/dev/null || true
echo "-- ls -la $mnt; du; df; stat"
ls -la "$mnt" "$mnt/dataset" | head -12
du -sh "$mnt/dataset"
df -h "$mnt"
stat -c '%n: %s bytes, %b blocks, inode %i' "$mnt/dataset/big.bin"
sha1=$(cat "$mnt"/dataset/shard-0/* | sha1sum)
echo "== unmount, fsck, mount again: the data is still there"
unmount_and_wait
"$bin/fsck.sharedfs" -n "$image"
"$bin/sharedfs" mount "$image" "$mnt"
[ "$(cat "$mnt"/dataset/shard-0/* | sha1sum)" = "$sha1" ] && echo "200 small files read back identical"
rm -rf "$mnt/dataset" "$mnt/latest"
df -h "$mnt" | tail -1
unmount_and_wait
"$bin/fsck.sharedfs" -n "$image"
echo "== sharedfs debug slots $image"
"$bin/sharedfs" debug slots "$image" | sed -n 1,5p
echo "== persistent reservations: nodes 1-3 register, node 1 holds Write Exclusive - Registrants Only"
for n in 1 2 3; do
  "$bin/sharedfs" reservation register "$image" --cluster-id "$cluster_id" --node "$n"
done
"$bin/sharedfs" reservation acquire "$image" --cluster-id "$cluster_id" --node 1 --type wero
"$bin/sharedfs" reservation report "$image"
echo "== node 1 fences node 3 (preempt-and-abort); node 3's writes now fail with EBADE"
"$bin/sharedfs" reservation preempt --abort "$image" --cluster-id "$cluster_id" --node 1 --victim-node 3
"$bin/sharedfs" reservation report "$image"
echo "== node 1 clears the reservation and every registration, so that node 3 may write again"
"$bin/sharedfs" reservation clear "$image" --cluster-id "$cluster_id" --node 1
"$bin/sharedfs" reservation report "$image"

echo
echo "== a 3-node cluster on this host over $image"
bash "$cluster_demo" start "$image" "$demo"
n1="$demo/node1" n2="$demo/node2" n3="$demo/node3"
# expect WHAT FILE: prints FILE and fails unless it holds exactly WHAT.
expect() {
  cat "$2"
  [ "$(cat "$2")" = "$1" ] || { echo "$2 does not hold what was written on another node" >&2; return 1; }
}
echo "-- node 1 writes hello.txt"
echo "hello from node 1" >"$n1/hello.txt"
echo "-- node 2 reads it:"
expect "hello from node 1" "$n2/hello.txt"
echo "-- node 3 reads it:"
expect "hello from node 1" "$n3/hello.txt"
echo "-- node 3 appends a line; node 1 reads:"
echo "appended on node 3" >>"$n3/hello.txt"
expect "$(printf 'hello from node 1\nappended on node 3')" "$n1/hello.txt"
echo "-- node 2 creates reports/ with 3 files; node 1 lists it:"
mkdir "$n2/reports"
for i in 1 2 3; do echo "report $i, written on node 2" >"$n2/reports/r$i.txt"; done
ls -l "$n1/reports"
[ "$(ls "$n1/reports" | wc -l)" -eq 3 ] || { echo "node 1 does not see node 2's 3 files" >&2; exit 1; }
expect "report 3, written on node 2" "$n1/reports/r3.txt"
echo "-- mount | grep sharedfs (this demo's mounts)"
mount | grep sharedfs | grep -F " $demo/node"

echo
if [ "$keep" = 1 ]; then
  trap - EXIT
  echo "The cluster is up (--keep): nodes 1, 2, 3 of $demo/cluster.toml are mounted at"
  echo "  $n1  $n2  $n3"
  echo "Each sees what the others write, e.g.: echo hi > $n1/x; cat $n3/x"
  echo "Stop it (unmount all three, wait for the daemons to leave the cluster, fsck -n) with:"
  echo "  bash $cluster_demo stop $demo"
  echo "Do not kill the daemons: recovery of a dead node is not built yet, the others would hang."
else
  echo "== stopping the cluster: bash $cluster_demo stop $demo"
  bash "$cluster_demo" stop "$demo"
  trap - EXIT
  echo
  echo "Done. (bash scripts/main.sh --keep leaves the 3 nodes mounted.) The formatted image is"
  echo "$image; remove it with: rm -f $image $image.pr"
fi
