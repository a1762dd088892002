# Shared by scripts/main.sh and scripts/test.sh: install what is missing, then build.
# Sourced, not run. Needs root for apt-get (CI and the README commands run as root).

SHAREDFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian 12 packages the build, the tests and the demo need. libjson-c-dev and libssl-dev
# because libnvme.pc requires json-c and openssl (checked on a debootstrap minbase);
# clang-14 and libclang-rt-14-dev for the DLM decoder's libFuzzer run (else it is skipped);
# python3 for the cluster scripts (free ports, the benchmark's JSON counters); systemd for
# systemd-analyze, which checks the sharedfs@.service unit (systemd need not be running);
# groff-base for groff, which the man_pages test renders man/*.8 with (not in minbase).
SHAREDFS_PACKAGES=(
  build-essential cmake pkg-config git
  libfuse3-dev fuse3
  libnvme-dev libjson-c-dev libssl-dev
  libzmq3-dev cppzmq-dev
  libgtest-dev libgmock-dev
  libcli11-dev libspdlog-dev libfmt-dev libtomlplusplus-dev nlohmann-json3-dev prometheus-cpp-dev
  libisal-dev libblkid-dev liburing-dev
  e2fsprogs xfsprogs btrfs-progs util-linux iproute2 clang-format
  clang-14 libclang-rt-14-dev
  attr acl fio mount procps python3 systemd gnuplot-nox groff-base
)

sharedfs_install_deps() {
  local missing=()
  for p in "${SHAREDFS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  echo "== installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# sharedfs_build DIR [cmake args...]
sharedfs_build() {
  local dir="$1"
  shift
  echo "== building in $dir $*"
  cmake -S "$SHAREDFS_ROOT" -B "$SHAREDFS_ROOT/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$SHAREDFS_ROOT/$dir" -j"$(nproc)"
}

# sharedfs_free_ports N: N TCP ports on 127.0.0.1 that nothing listens on now (held open
# together while chosen, so they are distinct).
sharedfs_free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# sharedfs_write_cluster_config FILE NAME ID HEARTBEAT_MS TIMEOUT_MS NODE...: a cluster
# config (docs/cluster.md) for the given node ids, each on a free port of 127.0.0.1, with a
# fresh random secret; readable by root only.
sharedfs_write_cluster_config() {
  local file="$1" name="$2" id="$3" hb="$4" timeout="$5"
  shift 5
  local nodes=("$@") ports i
  read -r -a ports <<<"$(sharedfs_free_ports "${#nodes[@]}")"
  {
    echo "# written by ${0##*/}: nodes ${nodes[*]} of cluster $id on this host"
    echo "[cluster]"
    echo "name = \"$name\""
    echo "id = $id"
    echo "secret = \"$name-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')\""
    echo "heartbeat_interval_ms = $hb"
    echo "heartbeat_timeout_ms = $timeout"
    for i in "${!nodes[@]}"; do
      echo
      echo "[[node]]"
      echo "id = ${nodes[$i]}"
      echo "name = \"n${nodes[$i]}\""
      echo "address = \"127.0.0.1:${ports[$i]}\""
    done
  } >"$file"
  chmod 600 "$file"
}

# sharedfs_remove_workdir DIR: removes a script's scratch directory unless something is
# still mounted below it (then it says so and returns 1).
sharedfs_remove_workdir() {
  local dir="$1"
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  if findmnt -rn -o TARGET | grep -q "^$dir/"; then
    echo "${0##*/}: warning: something is still mounted under $dir; leaving it" >&2
    return 1
  fi
  rm -rf --one-file-system "$dir"
}
