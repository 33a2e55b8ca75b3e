#!/usr/bin/env bash
# Runs INSIDE a container booted by scripts/test-package.sh (systemd-nspawn -b of an overlay of
# this machine's root, with the package installed; systemd is PID 1 there, the network is the
# container's own). Starts the installed units the way systemd does and checks them:
# `systemctl start sshvpnd` (as the unit's user, with its capabilities and sandbox), a client
# tunnel through the client unit `sshvpn@PROFILE` (in a network namespace of its own, through a
# drop-in that only sets NetworkNamespacePath=), `systemctl reload sshvpnd`, then stops both.
# Writes "ok ..." / "FAIL ..." lines and a last line "RESULT PASS" or "RESULT FAIL" to stdout.
set -uo pipefail
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
finish() {
  if [ "$fails" != 0 ]; then
    echo "--- journal of the units"
    journalctl --no-pager -o short-monotonic -u sshvpnd -u 'sshvpn@*' | tail -n 60
  fi
  [ "$fails" = 0 ] && echo "RESULT PASS" || echo "RESULT FAIL ($fails)"
  systemctl poweroff --no-block
  exit 0
}
trap finish EXIT

[ "$(cat /proc/1/comm)" = systemd ] || { bad "PID 1 is $(cat /proc/1/comm), not systemd"; exit; }
ok "PID 1 is systemd $(systemctl --version | head -n1 | cut -d' ' -f2)"

# The server: the shipped configuration with a listener, and one client key.
sed -i 's/^#listen = .*/listen = "0.0.0.0:2222"/' /etc/sshvpn/sshvpnd.toml
mkdir -p /root/pkgtest && ssh-keygen -q -t ed25519 -N '' -C pkgtest -f /root/pkgtest/id
cp /root/pkgtest/id.pub /etc/sshvpn/authorized_keys

if systemctl start sshvpnd.service; then
  ok "systemctl start sshvpnd"
else
  bad "systemctl start sshvpnd failed: $(systemctl status --no-pager sshvpnd 2>&1 | tail -n 15)"
  exit
fi
pid=$(systemctl show -p MainPID --value sshvpnd)
user=$(ps -o user= -p "$pid")
[ "$user" = sshvpn ] && ok "sshvpnd (pid $pid) runs as sshvpn" || bad "sshvpnd runs as '$user'"
caps=$(grep -E '^Cap(Eff|Bnd|Amb)' /proc/"$pid"/status | tr '\n\t' '  ')
# CAP_NET_BIND_SERVICE (bit 10) and CAP_NET_ADMIN (bit 12): 0x1400.
grep -q 'CapEff: 0000000000001400' <<<"$caps" && grep -q 'CapBnd: 0000000000001400' <<<"$caps" \
  && ok "capabilities: $caps" || bad "capabilities are not exactly net_admin,net_bind_service: $caps"
grep -q '^NoNewPrivs:.*1' /proc/"$pid"/status && ok "NoNewPrivs" || bad "NoNewPrivs is not set"
st() { stat -c '%a %U:%G %F' "$1" 2>&1; }
[ "$(st /var/lib/sshvpn/host_key)" = "600 sshvpn:sshvpn regular file" ] \
  && ok "host key $(st /var/lib/sshvpn/host_key)" || bad "host key is $(st /var/lib/sshvpn/host_key)"
[ "$(st /run/sshvpn/control.sock)" = "660 sshvpn:sshvpn socket" ] \
  && ok "control socket $(st /run/sshvpn/control.sock)" || bad "control socket is $(st /run/sshvpn/control.sock)"
# Leases, host key and audit log: the daemon's alone (VPN users in the group sshvpn reach only
# the control socket's directory).
for d in /var/lib/sshvpn /var/log/sshvpn; do
  [ "$(st $d)" = "700 sshvpn:sshvpn directory" ] && ok "$d $(st $d)" || bad "$d is $(st $d)"
done
[ "$(st /run/sshvpn)" = "750 sshvpn:sshvpn directory" ] && ok "/run/sshvpn $(st /run/sshvpn)" || bad "/run/sshvpn is $(st /run/sshvpn)"

# The client host: a network namespace joined to this one by a veth pair.
ip netns add cli && ip link add pkg0 type veth peer name eth0 netns cli \
  && ip addr add 192.168.77.1/24 dev pkg0 && ip link set pkg0 up \
  && ip -n cli addr add 192.168.77.2/24 dev eth0 && ip -n cli link set eth0 up && ip -n cli link set lo up \
  || { bad "cannot build the client namespace"; exit; }
echo "[192.168.77.1]:2222 $(ssh-keygen -y -f /var/lib/sshvpn/host_key)" >/root/pkgtest/known_hosts
cat >/etc/sshvpn/office.toml <<'EOF'
host = "192.168.77.1"
port = 2222
user = "pkgtest"
identity = "/root/pkgtest/id"
known_hosts = "/root/pkgtest/known_hosts"
EOF
mkdir -p /run/systemd/system/sshvpn@office.service.d
printf '[Service]\nNetworkNamespacePath=/run/netns/cli\n' >/run/systemd/system/sshvpn@office.service.d/netns.conf
systemctl daemon-reload
if systemctl start sshvpn@office.service; then
  ok "systemctl start sshvpn@office (Type=notify: the tunnel is up)"
else
  bad "systemctl start sshvpn@office failed: $(systemctl status --no-pager sshvpn@office 2>&1 | tail -n 15)"
  exit
fi
ip netns exec cli ping -c 2 -W 2 10.99.0.1 >/dev/null && ok "ping through the tunnel" \
  || bad "no ping from the client to 10.99.0.1 through the tunnel"
status=$(sshvpnd status --control /run/sshvpn/control.sock 2>&1)
grep -q 'SHA256:' <<<"$status" && ok "sshvpnd status lists the client" || bad "sshvpnd status: $status"

# Reload: same process, still serving.
systemctl reload sshvpnd.service || bad "systemctl reload sshvpnd failed"
sleep 1
[ "$(systemctl show -p MainPID --value sshvpnd)" = "$pid" ] && systemctl is-active -q sshvpnd \
  && ok "systemctl reload sshvpnd: same pid, active" || bad "sshvpnd after reload: $(systemctl is-active sshvpnd)"
ip netns exec cli ping -c 1 -W 2 10.99.0.1 >/dev/null && ok "ping through the tunnel after the reload" \
  || bad "no ping after the reload"

systemctl stop sshvpn@office.service sshvpnd.service
systemctl is-failed -q sshvpnd && bad "sshvpnd failed when stopped"
[ -e /run/sshvpn/control.sock ] && bad "the control socket is still there after stop"
ip netns del cli
ok "stopped"
