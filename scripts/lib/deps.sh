# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run: installs the tools a script needs when
# they are missing. Debian and Ubuntu only (apt-get); elsewhere it names what to install and stops.
#
#   need_tools demo|test|package   installs what that job needs, or exits 1 naming what is missing

# command -> Debian package
_deps_demo=(ip:iproute2 ping:iputils-ping ssh-keygen:openssh-client ssh:openssh-client)
_deps_test=("${_deps_demo[@]}" /usr/sbin/sshd:openssh-server iperf3:iperf3 nft:nftables
  sysctl:procps setpriv:util-linux prlimit:util-linux ssh-add:openssh-client)
_deps_package=(dpkg-shlibdeps:dpkg-dev strip:binutils systemd-analyze:systemd adduser:adduser
  gzip:gzip setpriv:util-linux systemd-nspawn:systemd-container)

_deps_have() {
  case $1 in
  /*) [ -x "$1" ] ;;
  *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

need_tools() {
  local job=$1 entry cmd pkg missing=() pkgs=()
  local -n list="_deps_$job"
  for entry in "${list[@]}"; do
    cmd=${entry%%:*} pkg=${entry#*:}
    if ! _deps_have "$cmd"; then
      missing+=("$cmd")
      [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
    fi
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "$(basename "$0"): missing ${missing[*]}; install the packages that provide them (Debian names: ${pkgs[*]})" >&2
      exit 1
    fi
    echo "$(basename "$0"): installing ${pkgs[*]} (for ${missing[*]})"
    apt-get update -qq || { echo "$(basename "$0"): apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null ||
      { echo "$(basename "$0"): apt-get install ${pkgs[*]} failed" >&2; exit 1; }
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "$(basename "$0"): cargo is not on PATH; install Rust (rust-version in Cargo.toml), or run with sudo -E env \"PATH=\$PATH\"" >&2
    exit 1
  fi
}
