# Shared by scripts/main.sh and scripts/test.sh: install what is missing, then build.
# Sourced, not run. Needs root for apt-get (CI and the README commands run as root).

SHAREDFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian 12 packages the build, the tests and the demo need. libjson-c-dev and libssl-dev
# because libnvme.pc requires json-c and openssl (checked on a debootstrap minbase);
# clang-14 and libclang-rt-14-dev for the DLM decoder's libFuzzer run (else it is skipped).
SHAREDFS_PACKAGES=(
  build-essential cmake pkg-config git
  libfuse3-dev fuse3
  libnvme-dev libjson-c-dev libssl-dev
  libzmq3-dev cppzmq-dev
  libgtest-dev libgmock-dev
  libcli11-dev libspdlog-dev libfmt-dev libtomlplusplus-dev
  libisal-dev libblkid-dev liburing-dev
  e2fsprogs xfsprogs btrfs-progs util-linux iproute2 clang-format
  clang-14 libclang-rt-14-dev
  attr acl fio mount procps
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
