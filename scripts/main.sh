#!/usr/bin/env bash
# The main job on the embedded default: install what is missing, build, then create a disk
# image, format it with mkfs.sharedfs, check it with fsck.sharedfs and show what is on it.
# (Mounting it arrives with the file system, a 3-node cluster on this host with the DLM.)
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
