#!/usr/bin/env bash
# A complete sshvpn session on one machine: three network namespaces (a laptop, a gateway running
# sshvpnd, a LAN host behind it), the tunnel brought up, traffic shown crossing it, and everything
# torn down again. Needs root (namespaces, TUN); installs iproute2, ping and ssh-keygen if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh needs root: sudo scripts/demo.sh" >&2; exit 1; }
. scripts/lib/deps.sh
need_tools demo

. scripts/netns.sh
# Not under /tmp: sshvpnd trusts key files only in directories no other user can write (StrictModes).
WORK=$(mktemp -d /run/sshvpn-demo.XXXXXX)
cleanup() { topology_down; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building release binaries"
cargo build --release --quiet --bins
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release

step "Creating namespaces: $NS_LAPTOP (10.200.0.1) -- $NS_GW (10.200.0.2 | 10.202.0.1) -- $NS_LAN (10.202.0.2)"
topology_up
printf 'Without the VPN the laptop cannot reach the LAN host: '
ip netns exec "$NS_LAPTOP" ping -c1 -W1 -q 10.202.0.2 >/dev/null 2>&1 && echo "reachable?!" || echo "unreachable (as expected)"

step "Generating a client key and authorizing it on the gateway"
ssh-keygen -q -t ed25519 -N '' -C demo-laptop -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"

step "Starting sshvpnd on the gateway"
ip netns exec "$NS_GW" "$BIN/sshvpnd" --listen 10.200.0.2:2222 --host-key "$WORK/host_key" \
  --authorized-keys "$WORK/authorized_keys" --state-dir "$WORK/state" --control "$WORK/control.sock" --pool 10.203.0.0/24 --pool6 fd00:203::/64 \
  --push-route 10.202.0.0/24 --push-route fd00:202::/64 >"$WORK/server.log" 2>&1 &
for _ in $(seq 50); do grep -q "listening on" "$WORK/server.log" && break; sleep 0.1; done
cat "$WORK/server.log"

step "Connecting from the laptop: sshvpn connect root@10.200.0.2 -p 2222 --accept-new-host-key"
ip netns exec "$NS_LAPTOP" "$BIN/sshvpn" connect root@10.200.0.2 -p 2222 -i "$WORK/id_ed25519" \
  --known-hosts "$WORK/known_hosts" --accept-new-host-key >"$WORK/client.log" 2>&1 &
for _ in $(seq 100); do grep -q "tunnel up" "$WORK/client.log" && break; sleep 0.1; done
cat "$WORK/client.log"
echo "-- laptop addresses and routes:"
ip -n "$NS_LAPTOP" -brief addr show dev sshvpn0
ip -n "$NS_LAPTOP" route show dev sshvpn0
ip -n "$NS_LAPTOP" -6 route show dev sshvpn0 | grep -v fe80 || true

step "Ping through the tunnel (IPv4 and IPv6)"
ip netns exec "$NS_LAPTOP" ping -c3 -i0.2 10.202.0.2
ip netns exec "$NS_LAPTOP" ping -c3 -i0.2 fd00:202::2

if command -v iperf3 >/dev/null; then
  step "TCP throughput laptop -> LAN host through the tunnel (iperf3, 3 s)"
  ip netns exec "$NS_LAN" iperf3 -s -1 -D -B 10.202.0.2 >/dev/null 2>&1; sleep 0.3
  ip netns exec "$NS_LAPTOP" iperf3 -c 10.202.0.2 -t 3 | tail -4
fi

step "Disconnecting: routes and interface go away"
pkill -TERM -f "$BIN/sshvpn connect" || true
sleep 1
ip -n "$NS_LAPTOP" route
tail -n 1 "$WORK/server.log"
step "Done; cleaning up namespaces"
