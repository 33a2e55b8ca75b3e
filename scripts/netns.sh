#!/usr/bin/env bash
# Shared namespace topology for scripts/demo.sh and scripts/bench.sh (source it, do not run it).
#
#   laptop (10.200.0.1, fd00:200::1) --veth-- gateway (10.200.0.2 | 10.202.0.1) --veth-- lan (10.202.0.2)
#
# The gateway forwards; the LAN host routes everything via the gateway. Names get a per-run
# prefix ($NS_PREFIX) so several runs never collide. RATE=10mbit adds a tc tbf bottleneck on the
# laptop-gateway link in both directions. LOSS=10 drops that many per mille (10 = 1 %) of the IP
# packets arriving at either end of the laptop-gateway link, at random (an nftables `numgen
# random` rule: loss each way where netem is not available).

NS_PREFIX=${NS_PREFIX:-svdemo$$}
NS_LAPTOP=${NS_PREFIX}-laptop
NS_GW=${NS_PREFIX}-gw
NS_LAN=${NS_PREFIX}-lan

topology_up() {
  local n
  for n in "$NS_LAPTOP" "$NS_GW" "$NS_LAN"; do
    ip netns add "$n"
    # No duplicate address detection: fresh links are usable at once.
    ip netns exec "$n" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
  done
  ip -n "$NS_LAPTOP" link add eth0 type veth peer name eth0 netns "$NS_GW"
  ip -n "$NS_GW" link add eth1 type veth peer name eth0 netns "$NS_LAN"
  ip -n "$NS_LAPTOP" addr add 10.200.0.1/24 dev eth0
  ip -n "$NS_LAPTOP" addr add fd00:200::1/64 dev eth0 nodad
  ip -n "$NS_GW" addr add 10.200.0.2/24 dev eth0
  ip -n "$NS_GW" addr add fd00:200::2/64 dev eth0 nodad
  ip -n "$NS_GW" addr add 10.202.0.1/24 dev eth1
  ip -n "$NS_GW" addr add fd00:202::1/64 dev eth1 nodad
  ip -n "$NS_LAN" addr add 10.202.0.2/24 dev eth0
  ip -n "$NS_LAN" addr add fd00:202::2/64 dev eth0 nodad
  for n in "$NS_LAPTOP" "$NS_GW" "$NS_LAN"; do
    ip -n "$n" link set lo up
    ip -n "$n" link set eth0 up
  done
  ip -n "$NS_GW" link set eth1 up
  ip -n "$NS_LAN" route add default via 10.202.0.1
  ip -n "$NS_LAN" -6 route add default via fd00:202::1
  ip netns exec "$NS_GW" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  if [ -n "${RATE:-}" ]; then
    ip netns exec "$NS_LAPTOP" tc qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 400ms
    ip netns exec "$NS_GW" tc qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 400ms
  fi
  if [ -n "${LOSS:-}" ] && [ "${LOSS}" != 0 ]; then
    for n in "$NS_LAPTOP" "$NS_GW"; do
      ip netns exec "$n" nft -f - <<EON
table netdev sshvpn_loss {
  chain ingress {
    type filter hook ingress device eth0 priority 0;
    meta protocol { ip, ip6 } numgen random mod 1000 < ${LOSS} counter drop
  }
}
EON
    done
  fi
}

# Kills every process still running in our namespaces, then deletes them.
topology_down() {
  local n pids
  for n in "$NS_LAPTOP" "$NS_GW" "$NS_LAN"; do
    pids=$(ip netns pids "$n" 2>/dev/null || true)
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
  done
  sleep 0.3
  for n in "$NS_LAPTOP" "$NS_GW" "$NS_LAN"; do
    pids=$(ip netns pids "$n" 2>/dev/null || true)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    ip netns del "$n" 2>/dev/null || true
  done
}
