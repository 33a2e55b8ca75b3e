#!/usr/bin/env bash
# Runs every test: unit tests, property tests and the namespace integration tests.
# The integration tests create network namespaces and TUN devices, so this must run as root.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the namespace tests need root; run it as root (sudo -E env PATH=\"\$PATH\" scripts/test.sh)" >&2
  exit 1
fi
. scripts/lib/deps.sh
need_tools test
[ -e /dev/net/tun ] || modprobe tun || true
# The unprivileged `sshvpn exec` tests open /dev/net/tun as a normal user: udev makes it 0666 by
# default, minimal images without udev leave it 0600.
chmod 0666 /dev/net/tun
# The integration tests run the real binaries from target/debug.
cargo build --workspace --bins
cargo test --workspace "$@"
