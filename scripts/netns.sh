#!/usr/bin/env bash
# Shared namespace topology for scripts/demo.sh, bench.sh, load.sh and rtt-stages.sh (source it,
# do not run it).
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

# The OpenSSH reference tunnel over the topology (bench.sh, rtt-stages.sh): sshd in the gateway,
# `ssh -w` (aes128-gcm, point-to-point tun5, 10.201.0.1 <-> 10.201.0.2) from the laptop, the LAN
# routed through it. $1: a work directory holding the client key `id` (and `id.pub`). Sets
# OPENSSH_CLIENT to the ssh client's pid.
openssh_tunnel_up() {
  local work=$1 n
  mkdir -p /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$work/hk" <<<y >/dev/null 2>&1 || true
  cat >"$work/sshd_config" <<EOC
ListenAddress 10.200.0.2:2222
HostKey $work/hk
PermitRootLogin prohibit-password
AuthorizedKeysFile $work/id.pub
PermitTunnel yes
StrictModes no
UsePAM no
PidFile $work/sshd.pid
LogLevel ERROR
EOC
  ip netns exec "$NS_GW" /usr/sbin/sshd -f "$work/sshd_config"; sleep 0.3
  for n in "$NS_LAPTOP" "$NS_GW"; do ip netns exec "$n" ip tuntap add dev tun5 mode tun; done
  ip -n "$NS_LAPTOP" addr add 10.201.0.1/30 dev tun5; ip -n "$NS_LAPTOP" link set tun5 up
  ip -n "$NS_GW" addr add 10.201.0.2/30 dev tun5; ip -n "$NS_GW" link set tun5 up
  ip -n "$NS_LAPTOP" route add 10.202.0.0/24 via 10.201.0.2
  ip -n "$NS_LAN" route add 10.201.0.0/30 via 10.202.0.1 2>/dev/null || true
  ip netns exec "$NS_LAPTOP" ssh -i "$work/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p 2222 \
    -c aes128-gcm@openssh.com -o Tunnel=point-to-point -w 5:5 -N root@10.200.0.2 &
  OPENSSH_CLIENT=$!
  sleep 1
}
