#!/usr/bin/env bash
# The main job on the embedded default: install what is missing, build, then create a disk
# image, format it with mkfs.sharedfs, mount it with `sharedfs mount` and use it, unmount,
# check it with fsck.sharedfs, and show the reservation commands on it. (A 3-node cluster
# on this host arrives with the DLM.)
#
#   bash scripts/main.sh [IMAGE] [SIZE]      default: build/demo/disk.img, 8G (sparse)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
sharedfs_install_deps
sharedfs_build build

bin="$SHAREDFS_ROOT/build/bin"
image="${1:-$SHAREDFS_ROOT/build/demo/disk.img}"
size="${2:-8G}"
mkdir -p "$(dirname "$image")"
rm -f "$image" "$image.pr"
truncate -s "$size" "$image"

echo "== mkfs.sharedfs $image ($size, sparse)"
"$bin/mkfs.sharedfs" --label demo --cluster-name demo "$image"
echo "== fsck.sharedfs -n $image"
"$bin/fsck.sharedfs" -n "$image"
mnt="$(dirname "$image")/mnt"
# fusermount3 -u returns once the kernel let go; the daemon then commits, checkpoints and
# marks its journal clean before it exits.
unmount_and_wait() {
  fusermount3 -u "$mnt"
  for _ in $(seq 1 100); do pgrep -f "sharedfs mount $image" >/dev/null || return 0; sleep 0.1; done
  echo "the sharedfs daemon did not exit" >&2
  return 1
}
mkdir -p "$mnt"
echo "== sharedfs mount $image $mnt"
"$bin/sharedfs" mount "$image" "$mnt"
trap 'fusermount3 -u "$mnt" 2>/dev/null || true' EXIT
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
trap - EXIT
"$bin/fsck.sharedfs" -n "$image"
echo "== sharedfs debug slots $image"
"$bin/sharedfs" debug slots "$image" | sed -n 1,5p
echo "== persistent reservations: nodes 1-3 register, node 1 holds Write Exclusive - Registrants Only"
cid=$("$bin/sharedfs" debug superblock "$image" | awk '/cluster id/ {print $3}')
for n in 1 2 3; do
  "$bin/sharedfs" reservation register "$image" --cluster-id "$cid" --node "$n"
done
"$bin/sharedfs" reservation acquire "$image" --cluster-id "$cid" --node 1 --type wero
"$bin/sharedfs" reservation report "$image"
echo "== node 1 fences node 3 (preempt-and-abort); node 3's writes now fail with EBADE"
"$bin/sharedfs" reservation preempt --abort "$image" --cluster-id "$cid" --node 1 --victim-node 3
"$bin/sharedfs" reservation report "$image"
echo
echo "Done. The formatted image is $image; remove it with: rm -f $image $image.pr"
