#!/usr/bin/env bash
# End-to-end benchmark: sshvpn against OpenSSH `ssh -w` (and the plain routed path), measured in the
# same run on the same namespace topology (scripts/netns.sh):
#   laptop --veth-- gateway (server) --veth-- LAN host; traffic is iperf3 laptop <-> LAN host.
# Prints one table (throughput up/down with 1 and 4 streams, idle and loaded ping RTT, TCP
# request/response, UDP 64-byte packets/s with two senders, peak RSS) with the sshvpn/OpenSSH
# ratio per row, and writes target/bench/bench.csv and target/bench/bench.png (the chart needs
# python3 with matplotlib).
#
#   sudo scripts/bench.sh                 # T=8 seconds per iperf3 run
#   sudo RATE=10mbit scripts/bench.sh     # with a tc tbf bottleneck on the laptop-gateway link
#   sudo RATE=100mbit LOSS=10 scripts/bench.sh  # ... and 1 % random loss each way (LOSS is per mille)
#   sudo ONLY=sshvpn scripts/bench.sh     # skip OpenSSH and the plain path
# Needs root, iproute2, iperf3, iputils-ping, openssh-client; openssh-server for the OpenSSH rows.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root" >&2; exit 1; }
for tool in ip iperf3 ping ssh-keygen python3; do
  command -v $tool >/dev/null || { echo "bench.sh needs $tool" >&2; exit 1; }
done
T=${T:-8}
ONLY=${ONLY:-all}
OUT=target/bench
mkdir -p "$OUT"
cargo build --release --quiet --bins
BIN=$PWD/target/release

NS_PREFIX=svbench$$
. scripts/netns.sh
WORK=$(mktemp -d /run/sshvpn-bench.XXXXXX) # not /tmp: StrictModes
cleanup() { topology_down; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id"
LAN=10.202.0.2
inl() { ip netns exec "$NS_LAPTOP" "$@"; }
inlan() { ip netns exec "$NS_LAN" "$@"; }

iperf_server() { inlan iperf3 -s -1 -D -B $LAN >/dev/null 2>&1; sleep 0.3; }
# iperf3 TCP Mbit/s (receiver side) with the given extra arguments.
tcp_mbps() {
  iperf_server
  inl iperf3 -c $LAN -t "$T" -J "$@" 2>/dev/null | python3 -c '
import json,sys
try: print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))
except Exception: print("ERR")'
}
# 64-byte UDP flood for UDP_SECS seconds: datagrams the LAN host's UDP layer delivered to a socket (its
# InDatagrams counter, which counts the datagrams of a GSO super-packet one by one), per second of
# sending. (iperf3's own loss accounting disagrees with itself when a tunnel buffers and reorders.)
# Two senders: sshvpn-udpflood (one `send` per datagram and nothing else; tests/udpflood.rs) and
# iperf3 -u, whose own per-datagram work made the sender the limit of the sshvpn row on 2 vCPUs
# (docs/performance.md, round 7).
UDP_SECS=4
udp_delivered() { inlan awk '/^Udp: [0-9]/ { print $2 }' /proc/net/snmp; }
udp_rate() { # command...: runs the sender, prints delivered datagrams per second
  local before after
  before=$(udp_delivered)
  "$@" >/dev/null 2>&1 || true
  sleep 1
  after=$(udp_delivered)
  if [ -n "$before" ] && [ -n "$after" ]; then echo $(((after - before) / UDP_SECS)); else echo ERR; fi
}
udp_pps() {
  ip netns exec "$NS_LAN" "$BIN/sshvpn-udpflood" sink 5202 & local sink=$!
  sleep 0.3
  udp_rate inl "$BIN/sshvpn-udpflood" send $LAN:5202 --seconds $UDP_SECS --size 64
  kill $sink 2>/dev/null; wait $sink 2>/dev/null || true
}
udp_pps_iperf() {
  iperf_server
  udp_rate inl iperf3 -c $LAN -u -l 64 -b 0 -t $UDP_SECS
}
ping_avg() { inl ping -c "$1" -i "$2" -q $LAN 2>/dev/null | awk -F/ '/rtt/{print $5}'; }
# Request/response: one TCP connection, a 64-byte request answered by a 64-byte response, the next
# request sent when the response is in (what an interactive session or an RPC feels): transactions/s.
RR_SERVER='
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.202.0.2", 7777)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    m = c.recv(64)
    if not m: break
    c.sendall(m)
'
RR_CLIENT='
import socket, sys, time
c = socket.create_connection(("10.202.0.2", 7777), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg, n, end = b"x" * 64, 0, time.monotonic() + float(sys.argv[1])
start = time.monotonic()
while time.monotonic() < end:
    c.sendall(msg); got = 0
    while got < 64:
        r = c.recv(64 - got)
        if not r: sys.exit("connection closed")
        got += len(r)
    n += 1
print(round(n / (time.monotonic() - start)))
'
rr_tps() {
  inlan python3 -c "$RR_SERVER" & local srv=$!
  sleep 0.3
  local r; r=$(inl python3 -c "$RR_CLIENT" 4 2>/dev/null || echo ERR)
  kill $srv 2>/dev/null; wait $srv 2>/dev/null || true
  echo "$r"
}
loaded_rtt() {
  iperf_server
  ip netns exec "$NS_LAPTOP" iperf3 -c $LAN -t 6 >/dev/null 2>&1 &
  local p=$!; sleep 2
  local r; r=$(ping_avg 20 0.1)
  wait $p || true
  echo "${r:-ERR}"
}
peak_rss_mib() { # pids...
  local total=0 p kb
  for p in "$@"; do
    kb=$(awk '/VmHWM/{print $2}' /proc/$p/status 2>/dev/null || echo 0)
    [ "${kb:-0}" -gt "$total" ] && total=$kb
  done
  echo $((total / 1024))
}

declare -A R
measure() { # name pids-var
  local name=$1
  R[$name,up1]=$(tcp_mbps)
  R[$name,down1]=$(tcp_mbps -R)
  R[$name,up4]=$(tcp_mbps -P 4)
  R[$name,down4]=$(tcp_mbps -R -P 4)
  sleep 1 # let queues from the previous run drain
  R[$name,rtt_idle]=$(ping_avg 20 0.05)
  R[$name,rtt_loaded]=$(loaded_rtt)
  R[$name,rr_tps]=$(rr_tps)
  # 64-byte UDP floods say nothing behind a 10 Mbit/s bottleneck (and starve iperf3's control connection).
  if [ -z "${RATE:-}" ]; then
    R[$name,udp_pps]=$(udp_pps)
    R[$name,udp_iperf]=$(udp_pps_iperf)
  else
    R[$name,udp_pps]=-; R[$name,udp_iperf]=-
  fi
  echo "  $name: up ${R[$name,up1]} down ${R[$name,down1]} Mbit/s" >&2
}

run_plain() {
  topology_up
  ip -n "$NS_LAPTOP" route add 10.202.0.0/24 via 10.200.0.2
  measure plain
  R[plain,rss_client]=-; R[plain,rss_server]=-
  topology_down
}

run_openssh() {
  [ -x /usr/sbin/sshd ] || { echo "no /usr/sbin/sshd: skipping OpenSSH (apt-get install openssh-server)" >&2; return; }
  topology_up
  openssh_tunnel_up "$WORK"
  local client=$OPENSSH_CLIENT
  measure openssh
  local server; server=$(pgrep -f "sshd: root" | head -1 || true)
  R[openssh,rss_client]=$(peak_rss_mib $client)
  R[openssh,rss_server]=$(peak_rss_mib ${server:-0})
  kill $client 2>/dev/null || true
  topology_down
}

run_sshvpn() {
  topology_up
  cp "$WORK/id.pub" "$WORK/ak"; rm -f "$WORK/sv_hk" "$WORK/sv_kh"
  ip netns exec "$NS_GW" "$BIN/sshvpnd" --listen 10.200.0.2:4022 --host-key "$WORK/sv_hk" --authorized-keys "$WORK/ak" --state-dir "$WORK/state" --control "$WORK/control.sock" \
    --pool 10.203.0.0/24 --push-route 10.202.0.0/24 ${SSHVPN_SERVER_ARGS:-} >"$WORK/sv_s.log" 2>&1 &
  local server=$!
  for _ in $(seq 50); do grep -q "listening" "$WORK/sv_s.log" && break; sleep 0.1; done
  ip netns exec "$NS_LAPTOP" "$BIN/sshvpn" connect root@10.200.0.2 -p 4022 -i "$WORK/id" --known-hosts "$WORK/sv_kh" --accept-new-host-key \
    ${SSHVPN_CLIENT_ARGS:-} >"$WORK/sv_c.log" 2>&1 &
  local client=$!
  for _ in $(seq 100); do grep -q "tunnel up" "$WORK/sv_c.log" && break; sleep 0.1; done
  measure sshvpn
  R[sshvpn,rss_client]=$(peak_rss_mib $client)
  R[sshvpn,rss_server]=$(peak_rss_mib $server)
  kill $client; sleep 0.5; kill $server 2>/dev/null || true
  topology_down
}

echo "measuring (T=${T}s per run${RATE:+, bottleneck $RATE}${LOSS:+, loss ${LOSS} per mille each way})..." >&2
if [ "$ONLY" = all ]; then run_plain; run_openssh; fi
run_sshvpn

rows="up1:TCP up, 1 stream (Mbit/s) down1:TCP down, 1 stream (Mbit/s) up4:TCP up, 4 streams (Mbit/s) down4:TCP down, 4 streams (Mbit/s) rtt_idle:ping RTT idle (ms) rtt_loaded:ping RTT under upload (ms) rr_tps:TCP request/response, 64 B (transactions/s) udp_pps:UDP 64-byte packets/s (lean sender) udp_iperf:UDP 64-byte packets/s (iperf3 sender) rss_client:client peak RSS (MiB) rss_server:server peak RSS (MiB)"
python3 - "$OUT" "${RATE:-none}${LOSS:+, loss ${LOSS} per mille}" <<PY
import csv, re, sys
out, rate = sys.argv[1], sys.argv[2]
R = {$(for k in "${!R[@]}"; do printf '"%s": "%s", ' "$k" "${R[$k]}"; done)}
rows = [r.split(":", 1) for r in """$rows""".split(" ") if r]
# re-join labels that contained spaces
items, cur = [], None
for part in """$rows""".split(" "):
    if re.match(r"[a-z0-9_]+:", part):
        cur = part.split(":", 1); items.append(cur)
    elif cur: cur[1] += " " + part
systems = [s for s in ("plain", "openssh", "sshvpn") if f"{s},up1" in R]
def num(v):
    try: return float(v)
    except: return None
lower_better = {"rtt_idle", "rtt_loaded", "rss_client", "rss_server"}
table = []
for key, label in items:
    vals = [R.get(f"{s},{key}", "-") for s in systems]
    def ratio(other):
        a, b = num(R.get(f"sshvpn,{key}")), num(R.get(f"{other},{key}"))
        if not (a and b):
            return "-"
        return f"{(b / a if key in lower_better else a / b):.2f}x"
    table.append([label] + vals + [ratio("openssh"), ratio("plain")])
hdr = ["metric"] + systems + ["sshvpn vs OpenSSH (higher is better)", "sshvpn vs plain"]
w = [max(len(str(r[i])) for r in table + [hdr]) for i in range(len(hdr))]
print(f"\nbottleneck: {rate}")
print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
for r in table:
    print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
with open(f"{out}/bench.csv", "w", newline="") as f:
    cw = csv.writer(f); cw.writerow(hdr); cw.writerows(table)
try:
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    keys = ["up1", "down1", "up4", "down4"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        ax.bar([k + i * width for k in range(len(keys))], [num(R.get(f"{s},{k}")) or 0 for k in keys], width, label=s)
    ax.set_xticks([k + width * (len(systems) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels(["up 1", "down 1", "up 4", "down 4"]); ax.set_ylabel("Mbit/s")
    ax.set_title(f"TCP throughput through the tunnel (bottleneck: {rate})"); ax.legend()
    fig.tight_layout(); fig.savefig(f"{out}/bench.png", dpi=100)
    print(f"\nwrote {out}/bench.csv and {out}/bench.png")
except ImportError:
    print(f"\nwrote {out}/bench.csv (pip install matplotlib for {out}/bench.png)")
PY
