#!/usr/bin/env bash
# Load test: N tunnel clients against one sshvpnd, with traffic among them.
#
# The clients all live in one `sshvpn-loadgen` process (tests/loadgen.rs) in the laptop namespace
# of scripts/netns.sh: each is a real SSH connection with its own ed25519 key running the library's
# tunnel driver over an in-memory TUN (it crafts and counts IPv4/UDP packets itself). sshvpnd
# runs in the gateway namespace and routes the client-to-client packets through its kernel.
# Phases: connect all (paced by C handshakes in flight), idle for 5 s, T seconds of traffic
# (PPS packets/s of SIZE bytes from each client to the others in turn), 2 s drain, disconnect.
# Prints clients connected, connect rate, errors, packets sent/received/lost, the server's RSS
# (total and per client) and CPU; exits non-zero if any client failed or the loss exceeded 1%.
#
#   sudo scripts/load.sh                     # N=500 clients, T=30 s of traffic
#   sudo N=100 T=60 PPS=20 scripts/load.sh
#
# Settings (environment):
#   N=500 T=30 PPS=10 SIZE=100    clients, traffic seconds, packets/s per client (default 10, at
#                                 most 10000/N), IPv4 packet bytes
#   SETTLE=7                      idle seconds with everyone connected before the traffic (the
#                                 "idle" memory sample is taken at its end; the server gives freed
#                                 memory back within 5 s of connections coming or going)
#   C=32                          SSH handshakes in flight at once (loadgen --concurrency)
#   MAX_STARTUPS=64:30:128        server --max-startups; by default START = 2*C so that the early
#                                 drop of unauthenticated connections never hits the paced clients
#                                 (MAX_STARTUPS=10:30:100 tries the server's default)
#   RETRIES=0                     reconnect attempts per client after a failed connect
#   SOURCES=N                     source addresses the clients are spread over (from 10.199.0.0/16,
#                                 added to the laptop side, routed by the gateway), one per client
#                                 by default as with real clients; SOURCES=0: all from 10.200.0.1,
#                                 which runs into the server's --per-source-max-startups (8)
#   NOFILE=                       ulimit -n for server and loadgen (default: inherited)
#   SSHVPN_SERVER_ARGS=           extra sshvpnd arguments (the script already passes --metrics
#                                 127.0.0.1:9810, inside the gateway namespace: the heap figures)
#   SSHVPND=target/release/sshvpnd  the server binary to test (e.g. one built from another tree)
#   NO_BUILD=1                    use the binaries already in target/release
#   KEEP=1                        keep the work directory (keys, server log) for inspection
#   ROUNDS=1                      repeat the whole client run (connect, idle, traffic, disconnect)
#                                 this many times against the same server and print its VmRSS after
#                                 each round (a leak grows it round after round; allocator retention
#                                 does not after the first): "flat" means every later round within
#                                 2 % of the first
#   GOAL_KIB=200                  memory goal per client: (peak RSS - RSS before the clients) /
#                                 clients, reported as met / NOT met (exit status unaffected).
#                                 A default run moves only ~30 KB per client each
#                                 way; SIZE=1400 T=60 moves ~840 KB and shows steady-state memory.
# The full output is also saved to target/load/load-N<N>.txt.
# Needs root and iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "load.sh needs root" >&2; exit 1; }
command -v ip >/dev/null || { echo "load.sh needs iproute2" >&2; exit 1; }
N=${N:-500}
T=${T:-30}
# 10 packets/s per client, but at most 10 000 packets/s in all: the load generator and the server
# share the machine (2 vCPUs), and at N=5000 x 10/s both saturate it (docs/load.md).
PPS=${PPS:-$(awk -v n="$N" 'BEGIN { r = 10000 / n; print (r < 10 ? r : 10) }')}
SIZE=${SIZE:-100}
C=${C:-32}
RETRIES=${RETRIES:-0}
SOURCES=${SOURCES:-$N}
GOAL_KIB=${GOAL_KIB:-200}
ROUNDS=${ROUNDS:-1}
SETTLE=${SETTLE:-7}
MAX_STARTUPS=${MAX_STARTUPS:-$((2 * C)):30:$((4 * C))}
MAX_CLIENTS=$((N > 1024 ? N : 1024))
# The pool must hold every client: a /20 has 4094 addresses, a /18 16382.
if [ "$N" -gt 4000 ]; then POOL=${POOL:-10.210.0.0/18}; else POOL=${POOL:-10.210.0.0/20}; fi
OUT=target/load
mkdir -p "$OUT"
LOG=$OUT/load-N$N.txt

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet -p sshvpnd
  cargo build --release --quiet -p sshvpn-tests --bin sshvpn-loadgen
fi
BIN=$PWD/target/release
SSHVPND=${SSHVPND:-$BIN/sshvpnd}
[ -n "${NOFILE:-}" ] && ulimit -n "$NOFILE"

# netns.sh would turn RATE into a tc bottleneck on the laptop-gateway link: not wanted here.
unset RATE
NS_PREFIX=svload$$
. scripts/netns.sh
WORK=$(mktemp -d /run/sshvpn-load.XXXXXX) # not /tmp: StrictModes
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
  topology_down
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# "VmRSS VmHWM cpu_ticks" of a process.
proc_sample() {
  local rss hwm
  rss=$(awk '/^VmRSS:/{print $2}' "/proc/$1/status")
  hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$1/status")
  # utime + stime: fields 14 and 15, counted after the ")" that ends the command name.
  echo "$rss $hwm $(sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}')"
}

exec > >(tee "$LOG") 2>&1
echo "load test: N=$N T=${T}s PPS=$PPS/s SIZE=${SIZE}B C=$C MAX_STARTUPS=$MAX_STARTUPS RETRIES=$RETRIES SOURCES=$SOURCES ulimit -n $(ulimit -n)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "host: $(nproc) CPUs, $(uname -r), $(awk '/MemTotal/{print int($2/1024)" MiB"}' /proc/meminfo); $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"

topology_up
# Client-to-client packets go TUN -> kernel -> TUN on the server: no ICMP redirects for that.
ip netns exec "$NS_GW" sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0
SOURCE_ARGS=()
if [ "$SOURCES" -gt 0 ]; then
  # Client source addresses 10.199.0.1, .2, ...: one per client unless SOURCES says otherwise.
  for i in $(seq "$SOURCES"); do echo "addr add 10.199.$((i / 256)).$((i % 256))/32 dev eth0"; done |
    ip -n "$NS_LAPTOP" -batch -
  ip -n "$NS_GW" route add 10.199.0.0/16 via 10.200.0.1
  SOURCE_ARGS=(--source-net 10.199.0.0/16 --sources "$SOURCES")
fi

"$BIN/sshvpn-loadgen" keys --count "$N" --dir "$WORK/keys" >/dev/null
ip netns exec "$NS_GW" env NO_COLOR=1 "$SSHVPND" --listen 10.200.0.2:4022 --host-key "$WORK/host_key" \
  --authorized-keys "$WORK/keys/authorized_keys" --state-dir "$WORK/state" --pool "$POOL" \
  --control "$WORK/control.sock" --max-startups "$MAX_STARTUPS" --max-clients "$MAX_CLIENTS" \
  --metrics 127.0.0.1:9810 ${SSHVPN_SERVER_ARGS:-} >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do grep -q "listening" "$WORK/server.log" && break; sleep 0.1; done
grep -q "listening" "$WORK/server.log" || { echo "sshvpnd did not start:"; cat "$WORK/server.log"; exit 1; }
read -r RSS0 HWM0 CPU0 < <(proc_sample "$SERVER")
T0=$(date +%s.%N)
echo "server $SSHVPND (built $(date -r "$SSHVPND" '+%F %T')) pid $SERVER: VmRSS $RSS0 KiB, VmHWM $HWM0 KiB before the clients"

# The allocator's own account (sshvpn_heap_bytes): "in_use free" in KiB. A leak grows in_use round
# after round; retention and fragmentation grow only free (and RSS).
heap_kib() {
  ip netns exec "$NS_GW" python3 -c '
import sys, urllib.request
try: text = urllib.request.urlopen("http://127.0.0.1:9810/metrics", timeout=5).read().decode()
except Exception: print("? ?"); sys.exit()
v = {l.split("\"")[1]: int(l.split()[-1]) // 1024 for l in text.splitlines() if l.startswith("sshvpn_heap_bytes{")}
print(v.get("in_use", "?"), v.get("free", "?"))'
}
ROUND_RSS=()
ROUND_HEAP=()
RC=0
for round in $(seq "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "--- round $round of $ROUNDS ---"
  set +e
  ip netns exec "$NS_LAPTOP" "$BIN/sshvpn-loadgen" run --server 10.200.0.2:4022 --dir "$WORK/keys" \
    --clients "$N" --duration "$T" --rate "$PPS" --size "$SIZE" --concurrency "$C" \
    --retries "$RETRIES" --settle "$SETTLE" --server-pid "$SERVER" "${SOURCE_ARGS[@]}" | tee "$WORK/loadgen.out"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" != 0 ] && RC=$rc
  kill -0 "$SERVER" 2>/dev/null || break
  # Let the server notice every disconnect, free the sessions and give the memory back (it does
  # within 5 s of connections coming or going) before sampling.
  sleep 7
  read -r rss _ _ < <(proc_sample "$SERVER")
  ROUND_RSS+=("$rss")
  read -r heap_in_use heap_free < <(heap_kib)
  ROUND_HEAP+=("$heap_in_use")
  [ "$ROUNDS" -gt 1 ] && echo "round $round: server VmRSS $rss KiB after the clients left; heap in use $heap_in_use KiB, freed and kept for reuse $heap_free KiB"
done

if ! kill -0 "$SERVER" 2>/dev/null; then
  echo "sshvpnd DIED during the test; its log ends with:"; tail -20 "$WORK/server.log"
  exit 1
fi
read -r RSS1 HWM1 CPU1 < <(proc_sample "$SERVER")
T1=$(date +%s.%N)
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
SERVER=

# The server's view, from its log: sessions and the per-client counters logged at disconnect.
read -r S_CONN S_DISC S_RX S_TX S_SPOOF S_QFULL S_OTHER < <(awk '
  /client connected:/ { c++ }
  /client disconnected:/ {
    d++
    for (i = 1; i <= NF; i++) {
      # "...; tx 57 pkts/5896 bytes, rx 50 pkts/5000 bytes, dropped spoofed=0 ..."
      if ($i == "rx" && $(i+2) ~ /^pkts/) rx += $(i+1)
      if ($i == "tx" && $(i+2) ~ /^pkts/) tx += $(i+1)
      if ($i ~ /^spoofed=/) { sub("spoofed=", "", $i); spoof += $i }
      if ($i ~ /^queue_full=/) { sub("queue_full=", "", $i); qf += $i }
      if ($i ~ /^(local_scope|malformed|too_big|tun_error)=/) { split($i, a, "="); other += a[2] }
    }
  }
  END { printf "%d %d %d %d %d %d %d\n", c, d, rx, tx, spoof, qf, other }' <(sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log"))
S_WARN=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" | grep -cE " (WARN|ERROR) " || true)

declare -A R
for kv in $(grep '^RESULT ' "$WORK/loadgen.out" | cut -d' ' -f2-); do R[${kv%%=*}]=${kv#*=}; done
v() { echo "${R[$1]:--}"; }

echo
echo "=== summary: N=$N clients, T=${T}s, $PPS pkt/s x ${SIZE} B per client ==="
echo "clients connected     $(v connected)/$N"
echo "connect rate          $(v connect_rate) clients/s ($(v connect_s) s for all, C=$C in flight)"
echo "errors                $(v errors) (connect failed $(v connect_failed), sessions dropped $(v sessions_dropped), retries $(v retries))"
echo "packets               sent $(v sent), received $(v received), lost $(v lost) ($(v loss_pct)%), latency p50 $(v latency_ms_p50) ms p99 $(v latency_ms_p99) ms"
echo "server RSS            $(v server_rss_loaded_kib) KiB with $(v connected) clients (base $(v server_rss_base_kib) KiB, peak $(v server_rss_peak_kib) KiB, after disconnect $(v server_rss_after_kib) KiB)"
echo "server RSS per client $(v server_rss_per_client_kib) KiB total/clients, $(v server_rss_delta_per_client_kib) KiB above base (idle $(v server_rss_idle_delta_per_client_kib) KiB, peak $(v server_rss_peak_delta_per_client_kib) KiB)"
echo "server CPU            connecting $(v server_cpu_connect_pct)%, idle $(v server_cpu_idle_pct)%, traffic $(v server_cpu_traffic_pct)% of one core; whole run $(awk -v a="$CPU0" -v b="$CPU1" -v t0="$T0" -v t1="$T1" 'BEGIN{printf "%.1f", (b-a)/100/(t1-t0)*100}')%"
echo "server sample (script) before: VmRSS $RSS0 KiB VmHWM $HWM0 KiB; after: VmRSS $RSS1 KiB VmHWM $HWM1 KiB; CPU $(awk -v a="$CPU0" -v b="$CPU1" 'BEGIN{printf "%.2f", (b-a)/100}') s"
echo "server log            $S_CONN connected, $S_DISC disconnected; from clients $S_RX pkts, to clients $S_TX pkts; dropped: spoofed $S_SPOOF, queue full $S_QFULL, other $S_OTHER; $S_WARN WARN/ERROR lines"
if [ "$S_WARN" != 0 ]; then grep -E " (WARN|ERROR) " "$WORK/server.log" | head -5; fi
# The goal is judged on what each client adds: (peak RSS - RSS before the clients) / clients.
PEAK_PER_CLIENT=$(v server_rss_peak_delta_per_client_kib)
GOAL=$(awk -v x="$PEAK_PER_CLIENT" -v g="$GOAL_KIB" 'BEGIN{ if (x !~ /^[0-9.]+$/) print "unknown"; else if (x + 0 < g + 0) print "met"; else print "NOT met" }')
echo "memory goal           < $GOAL_KIB KiB per client ((peak RSS - base) / clients = $PEAK_PER_CLIENT KiB): $GOAL"
if [ "$ROUNDS" -gt 1 ]; then
  FLAT=$(printf '%s\n' "${ROUND_RSS[@]}" | awk 'NR == 1 { first = $1 } { if ($1 > first * 1.02) grow = 1; if ($1 > max) max = $1 } END { printf "%s (largest %+.1f %%)", (grow ? "NO" : "yes"), (max / first - 1) * 100 }')
  echo "RSS after each round  ${ROUND_RSS[*]} KiB (base $RSS0 KiB); every round within 2 % of round 1: $FLAT"
  echo "heap in use after each round ${ROUND_HEAP[*]} KiB (a leak grows it round after round)"
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$RC" = 0 ]; then echo "PASS"; else echo "FAIL (loadgen exit $RC)"; fi
exit "$RC"
