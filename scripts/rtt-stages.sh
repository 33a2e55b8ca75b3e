#!/usr/bin/env bash
# Where an idle ping's round trip goes, stage by stage: OpenSSH `ssh -w` and sshvpn measured one
# after the other on the bench topology (scripts/netns.sh). tcpdump runs in the laptop and the
# gateway namespaces (one clock for both), and each ping is followed from the client's TUN to its
# SSH socket, the gateway's socket and TUN, the LAN host's answer, and back. Prints the median of
# each stage in microseconds (docs/performance.md, round 6).
#
#   sudo scripts/rtt-stages.sh                    # 300 pings 50 ms apart
#   sudo PINGS=300 INTERVAL=0.002 scripts/rtt-stages.sh   # warm: pings 2 ms apart
#   sudo ONLY=sshvpn scripts/rtt-stages.sh
#   NO_BUILD=1: use the binaries already in target/release
# Needs root, iproute2, iputils-ping, tcpdump, python3, openssh-client/-server for the OpenSSH row.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "rtt-stages.sh needs root" >&2; exit 1; }
for tool in ip ping tcpdump python3 ssh-keygen; do
  command -v $tool >/dev/null || { echo "rtt-stages.sh needs $tool" >&2; exit 1; }
done
PINGS=${PINGS:-300}
INTERVAL=${INTERVAL:-0.05}
ONLY=${ONLY:-all}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bins
BIN=$PWD/target/release

NS_PREFIX=svstage$$
. scripts/netns.sh
WORK=$(mktemp -d /run/sshvpn-stages.XXXXXX) # not /tmp: StrictModes
cleanup() { topology_down; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id"
LAN=10.202.0.2

# Follows each echo request through the two captures (tcpdump -tt text) and prints the medians.
STAGES='
import re, statistics, sys
def load(path):
    events = []
    for line in open(path):
        ts = float(line.split()[0])
        m = re.search(r"ICMP echo (request|reply), id \d+, seq (\d+)", line)
        if m:
            events.append((ts, (m.group(1), int(m.group(2)))))
            continue
        m = re.search(r"IP (\S+) > \S+: Flags .* length (\d+)", line)
        if m and int(m.group(2)) > 0:
            events.append((ts, ("tcp", m.group(1))))
    return events
laptop, gw = load(sys.argv[2]), load(sys.argv[3])
def first(events, t, want):
    return next((ts for ts, e in events if t <= ts < t + 0.005 and want(e)), None)
def last(events, t, want):
    found = [ts for ts, e in events if t <= ts < t + 0.005 and want(e)]
    return found[-1] if found else None
from_client = lambda e: e[0] == "tcp" and e[1].startswith("10.200.0.1.")
from_server = lambda e: e[0] == "tcp" and e[1].startswith("10.200.0.2.")
names = ["client TUN->socket", "wire", "server socket->TUN", "LAN answers", "server TUN->socket", "wire back", "client socket->TUN", "total"]
stages = {n: [] for n in names}
for t0, e in laptop:
    if e[0] != "request":
        continue
    seq = e[1]
    t1 = first(laptop, t0, from_client)
    t2 = t1 and first(gw, t1, from_client)
    t3 = t2 and first(gw, t2, lambda x: x == ("request", seq))
    t4 = t2 and last(gw, t2, lambda x: x == ("reply", seq))  # the reply as it reaches the TUN
    t5 = t4 and first(gw, t4, from_server)
    t6 = t5 and first(laptop, t5, from_server)
    t7 = t5 and first(laptop, t5, lambda x: x == ("reply", seq))
    if None in (t1, t2, t3, t4, t5, t6, t7):
        continue
    for n, v in zip(names, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t7 - t0]):
        stages[n].append(v * 1e6)
print(f"{sys.argv[1]}: {len(stages[names[0]])} pings followed; median per stage (us):")
for n in names:
    print(f"  {n:22s} {statistics.median(stages[n]):6.0f}" if stages[n] else f"  {n:22s}      -")
'

follow() { # label
  ip netns exec "$NS_LAPTOP" ping -c 5 -i 0.05 -q $LAN >/dev/null
  ip netns exec "$NS_LAPTOP" tcpdump -i any -nn -s 128 -w "$WORK/l.pcap" "icmp or tcp" 2>/dev/null &
  local d1=$!
  ip netns exec "$NS_GW" tcpdump -i any -nn -s 128 -w "$WORK/g.pcap" "icmp or tcp" 2>/dev/null &
  local d2=$!
  sleep 1
  local rtt
  rtt=$(ip netns exec "$NS_LAPTOP" ping -c "$PINGS" -i "$INTERVAL" -q $LAN | awk -F/ '/rtt/{print $5}')
  sleep 0.5
  kill -INT $d1 $d2; wait $d1 $d2 2>/dev/null || true
  tcpdump -nn -tt -r "$WORK/l.pcap" 2>/dev/null >"$WORK/l.txt"
  tcpdump -nn -tt -r "$WORK/g.pcap" 2>/dev/null >"$WORK/g.txt"
  python3 -c "$STAGES" "$1 (ping mean $rtt ms, under capture)" "$WORK/l.txt" "$WORK/g.txt"
}

run_openssh() {
  [ -x /usr/sbin/sshd ] || { echo "no /usr/sbin/sshd: skipping OpenSSH" >&2; return; }
  topology_up
  openssh_tunnel_up "$WORK"
  local client=$OPENSSH_CLIENT
  follow "OpenSSH ssh -w"
  kill $client 2>/dev/null || true
  topology_down
}

run_sshvpn() {
  topology_up
  cp "$WORK/id.pub" "$WORK/ak"
  ip netns exec "$NS_GW" "$BIN/sshvpnd" --listen 10.200.0.2:4022 --host-key "$WORK/sv_hk" --authorized-keys "$WORK/ak" \
    --state-dir "$WORK/state" --control "$WORK/control.sock" --pool 10.203.0.0/24 --push-route 10.202.0.0/24 >"$WORK/sv_s.log" 2>&1 &
  local server=$!
  for _ in $(seq 50); do grep -q "listening" "$WORK/sv_s.log" && break; sleep 0.1; done
  ip netns exec "$NS_LAPTOP" "$BIN/sshvpn" connect root@10.200.0.2 -p 4022 -i "$WORK/id" --known-hosts "$WORK/sv_kh" \
    --accept-new-host-key >"$WORK/sv_c.log" 2>&1 &
  local client=$!
  for _ in $(seq 100); do grep -q "tunnel up" "$WORK/sv_c.log" && break; sleep 0.1; done
  grep -q "tunnel up" "$WORK/sv_c.log" || { echo "sshvpn did not connect:"; cat "$WORK/sv_c.log"; exit 1; }
  follow "sshvpn"
  kill $client; sleep 0.5; kill $server 2>/dev/null || true
  topology_down
}

echo "following $PINGS pings, $INTERVAL s apart..." >&2
[ "$ONLY" = all ] && run_openssh
run_sshvpn
