#!/usr/bin/env bash
# Package test (CI runs it after scripts/test.sh): builds the Debian package with
# scripts/package.sh, installs it with dpkg -i, checks files, owners, modes, the user and that
# nothing is enabled or started, verifies the installed units with systemd-analyze, checks and
# runs the shipped configuration (in a throw-away network namespace: it must listen nowhere),
# upgrades in place (conffile edits, leases and the host key survive), removes, purges, and
# checks that nothing is left. Ends with one PASS or FAIL line; exit status 1 on failure.
#
#   SSHVPN_SKIP_PACKAGE=1   skip (quick local runs)
#   SSHVPN_DEB=PATH         test this .deb instead of building one
#
# Needs root and a machine without sshvpn installed: purge deletes /etc/sshvpn and the user
# sshvpn, so the test refuses to run where either already exists.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${SSHVPN_SKIP_PACKAGE:-0}" = 1 ]; then
  echo "test-package.sh: SKIPPED (SSHVPN_SKIP_PACKAGE=1)"
  exit 0
fi

failures=0
current="setup"
step() { current="$*"; echo "== $*"; }
bad() { echo "FAIL [$current]: $*" >&2; failures=$((failures + 1)); }
fatal() {
  echo "FAIL [$current]: $*" >&2
  echo "test-package.sh: FAIL ($current)"
  exit 1
}
# Minimal images (debian:*-slim) tell dpkg not to unpack man pages and docs (path-exclude).
dpkg_cfg=$(cat /etc/dpkg/dpkg.cfg /etc/dpkg/dpkg.cfg.d/* 2>/dev/null)
excluded() {
  local - p
  set -f # the patterns are for [[ ]], not for the shell to expand
  for p in $(sed -n 's/^path-include[= ]*//p' <<<"$dpkg_cfg"); do
    # shellcheck disable=SC2053
    [[ $1 == $p ]] && return 1
  done
  for p in $(sed -n 's/^path-exclude[= ]*//p' <<<"$dpkg_cfg"); do
    # shellcheck disable=SC2053
    [[ $1 == $p ]] && return 0
  done
  return 1
}
# expect_stat PATH MODE OWNER:GROUP
expect_stat() {
  local got
  if [ ! -e "$1" ] && excluded "$1"; then
    grep -qx ".$1" <<<"$deb_files" || bad "$1 is not in the package"
    echo "note: $1 not unpacked (path-exclude in the local dpkg configuration); it is in the package"
    return
  fi
  got=$(stat -c '%a %U:%G' "$1" 2>/dev/null) || { bad "$1 is missing"; return; }
  [ "$got" = "$2 $3" ] || bad "$1 is $got, expected $2 $3"
}
absent() { if [ -e "$1" ] || [ -L "$1" ]; then bad "$1 is still there"; fi; }
enabled_links() {
  find /etc/systemd/system -type l \( -name 'sshvpnd.service' -o -name 'sshvpn@*.service' \) 2>/dev/null
}

[ "$(id -u)" = 0 ] || fatal "needs root (dpkg -i, a system user, a network namespace)"
for tool in dpkg dpkg-deb systemd-analyze systemd-nspawn setpriv ip ss ps unshare adduser; do
  command -v "$tool" >/dev/null || fatal "$tool is not installed (.ci/run installs it)"
done
if grep -q 'installed\|config-files' <<<"$(dpkg-query -W -f='${Status}' sshvpn 2>/dev/null)"; then
  fatal "the package sshvpn is already on this machine; this test would purge it"
fi
[ -e /etc/sshvpn ] && fatal "/etc/sshvpn exists; this test would delete it on purge"
[ -e /var/lib/sshvpn ] && fatal "/var/lib/sshvpn exists; this test would delete it on purge"
getent passwd sshvpn >/dev/null && fatal "a user sshvpn exists; this test would delete it on purge"

ns="sshvpn-pkg-$$"
daemon_pid=""
boot_mounted=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
  if [ -n "$boot_mounted" ]; then
    umount "$boot_mounted/root" "$boot_mounted/rw" 2>/dev/null && rm -rf "$boot_mounted"
  fi
  ip netns del "$ns" 2>/dev/null
  # Never leave a half-tested package behind.
  if dpkg-query -W sshvpn >/dev/null 2>&1; then
    dpkg -P sshvpn >/dev/null 2>&1 </dev/null
  fi
}
trap cleanup EXIT

step "build"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
if [ -n "${SSHVPN_DEB:-}" ]; then
  deb=$SSHVPN_DEB
else
  scripts/package.sh || fatal "scripts/package.sh failed"
  deb="${CARGO_TARGET_DIR:-target}/debian/sshvpn_${version}_${arch}.deb"
fi
[ -f "$deb" ] || fatal "$deb not found"
echo "package: $deb ($(stat -c %s "$deb") bytes)"

step "control data"
[ "$(dpkg-deb -f "$deb" Package)" = sshvpn ] || bad "Package is not sshvpn"
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || bad "Version is not $version"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || bad "Architecture is not $arch"
grep -qw adduser <<<"$(dpkg-deb -f "$deb" Depends)" || bad "Depends lacks adduser"
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles 2>/dev/null)
for f in /etc/sshvpn/sshvpnd.toml /etc/sshvpn/authorized_keys; do
  grep -qx "$f" <<<"$conffiles" || bad "$f is not a conffile (conffiles: $conffiles)"
done
# (Lists are captured first: with pipefail, grep -q closing a pipe early would fail the check.)
control_files=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t)
for s in postinst prerm postrm; do
  grep -qx "./$s" <<<"$control_files" || bad "no $s in the package"
done

step "contents"
deb_files=$(dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's#/$##')
unpacked=$(mktemp -d)
dpkg-deb -x "$deb" "$unpacked" || fatal "dpkg-deb -x failed"
grep -q '^\.TH sshvpn 1' <<<"$(zcat "$unpacked"/usr/share/man/man1/sshvpn.1.gz)" || bad "sshvpn.1.gz is not a section-1 man page"
grep -q '^\.TH sshvpnd 8' <<<"$(zcat "$unpacked"/usr/share/man/man8/sshvpnd.8.gz)" || bad "sshvpnd.8.gz is not a section-8 man page"
grep -q 'check-config' "$unpacked"/usr/share/bash-completion/completions/sshvpnd || bad "sshvpnd bash completion lacks check-config"
grep -q 'connect' "$unpacked"/usr/share/fish/vendor_completions.d/sshvpn.fish || bad "sshvpn fish completion lacks connect"
grep -q '#compdef sshvpn' "$unpacked"/usr/share/zsh/vendor-completions/_sshvpn || bad "_sshvpn is not a zsh completion"
grep -q 'Apache' "$unpacked"/usr/share/doc/sshvpn/copyright || bad "copyright does not name the license"
rm -rf "$unpacked"

step "install (dpkg -i)"
dpkg -i "$deb" </dev/null || fatal "dpkg -i failed"
mapfile -t packaged < <(dpkg -L sshvpn | while read -r p; do [ -f "$p" ] && echo "$p"; done)
echo "${#packaged[@]} files installed"

step "files, owners and modes"
expect_stat /usr/bin/sshvpn 755 root:root
expect_stat /usr/sbin/sshvpnd 755 root:root
for f in /usr/share/man/man1/sshvpn.1.gz /usr/share/man/man8/sshvpnd.8.gz \
  /usr/share/bash-completion/completions/sshvpn /usr/share/bash-completion/completions/sshvpnd \
  /usr/share/zsh/vendor-completions/_sshvpn /usr/share/zsh/vendor-completions/_sshvpnd \
  /usr/share/fish/vendor_completions.d/sshvpn.fish /usr/share/fish/vendor_completions.d/sshvpnd.fish \
  /usr/lib/systemd/system/sshvpnd.service /usr/lib/systemd/system/sshvpn@.service \
  /usr/lib/tmpfiles.d/sshvpn.conf /usr/lib/sysusers.d/sshvpn.conf \
  /etc/sshvpn/sshvpnd.toml /etc/sshvpn/authorized_keys \
  /usr/share/doc/sshvpn/README.md /usr/share/doc/sshvpn/site-to-site.md /usr/share/doc/sshvpn/copyright; do
  expect_stat "$f" 644 root:root
done
expect_stat /etc/sshvpn 755 root:root
expect_stat /var/lib/sshvpn 700 sshvpn:sshvpn
expect_stat /run/sshvpn 750 sshvpn:sshvpn
grep -qF "$version" <<<"$(/usr/bin/sshvpn --version)" || bad "sshvpn --version does not say $version"
grep -qF "$version" <<<"$(/usr/sbin/sshvpnd --version)" || bad "sshvpnd --version does not say $version"

step "system user"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd sshvpn) || bad "no user sshvpn"
[ "${uid:-0}" -gt 0 ] && [ "${uid:-1000}" -lt 1000 ] || bad "sshvpn uid ${uid:-?} is not a system uid"
[ "${home:-}" = /var/lib/sshvpn ] || bad "sshvpn home is ${home:-?}"
[ "${shell:-}" = /usr/sbin/nologin ] || bad "sshvpn shell is ${shell:-?}"
[ "$(getent group sshvpn | cut -d: -f3)" = "${gid:-x}" ] || bad "sshvpn's primary group is not sshvpn"

step "nothing enabled or started"
links=$(enabled_links)
[ -z "$links" ] || bad "units enabled by the install: $links"
[ "$(systemctl is-enabled sshvpnd.service 2>/dev/null)" = disabled ] \
  || bad "systemctl is-enabled sshvpnd.service: $(systemctl is-enabled sshvpnd.service 2>&1)"
[ -e /run/sshvpn/control.sock ] && bad "a control socket exists right after install"
[ -e /var/lib/sshvpn/host_key ] && bad "a host key exists before the first start"

step "maintainer scripts under a running systemd (systemctl replaced by a recorder)"
# CI has no systemd as PID 1, so the scripts' systemctl branches are run here by hand: in a
# private mount namespace with a tmpfs /run holding /run/systemd/system, and a stand-in
# systemctl first on PATH that only records its arguments.
shim=$(mktemp -d)
cat >"$shim/systemctl" <<'EOS'
#!/bin/sh
echo "systemctl $*" >>"$SYSTEMCTL_LOG"
EOS
chmod +x "$shim/systemctl"
# calls SCRIPT ARG...: the systemctl calls the script makes, one per line.
calls() {
  : >"$shim/log"
  SYSTEMCTL_LOG="$shim/log" PATH="$shim:$PATH" unshare -m --propagation private \
    sh -c 'mount -t tmpfs none /run && mkdir -p /run/systemd/system && exec "$@"' sh "$@" \
    >/dev/null 2>&1 || echo "(exit status $?)"
  cat "$shim/log"
}
# expect_calls WHAT EXPECTED GOT
expect_calls() {
  [ "$3" = "$2" ] || bad "$1: systemctl calls were [${3//$'\n'/; }], expected [${2//$'\n'/; }]"
}
info=/var/lib/dpkg/info/sshvpn
expect_calls "postinst configure (install)" "systemctl --system daemon-reload" \
  "$(calls "$info.postinst" configure)"
expect_calls "postinst configure OLD (upgrade)" "systemctl --system daemon-reload
systemctl try-restart sshvpnd.service sshvpn@*.service" "$(calls "$info.postinst" configure 0.0.9)"
expect_calls "prerm upgrade" "" "$(calls "$info.prerm" upgrade "$version")"
expect_calls "prerm remove" "systemctl stop sshvpnd.service sshvpn@*.service" "$(calls "$info.prerm" remove)"
expect_calls "postrm remove" "systemctl --system daemon-reload" "$(calls "$info.postrm" remove)"
rm -rf "$shim"

step "systemd-analyze verify (installed units)"
# sshvpn@.service is a template: verify an instance of it.
# Documentation=man:... is checked too when man and the pages are there.
man_check=no
if command -v man >/dev/null && [ -e /usr/share/man/man8/sshvpnd.8.gz ]; then man_check=yes; fi
if ! out=$(systemd-analyze verify --man="$man_check" sshvpnd.service sshvpn@office.service 2>&1); then
  bad "systemd-analyze verify: $out"
elif grep -q 'sshvpn' <<<"$out"; then
  bad "systemd-analyze verify complains about our units: $out"
fi

step "systemd-analyze security (installed units): exposure at most 2.5"
for u in sshvpnd.service sshvpn@office.service; do
  score=$(systemd-analyze security --no-pager --offline=yes "/usr/lib/systemd/system/${u/@office/@}" 2>&1 \
    | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
  echo "$u: exposure ${score:-?}"
  [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || bad "$u exposure is ${score:-unknown}, above 2.5"
done

step "check-config on the shipped configuration"
out=$(/usr/sbin/sshvpnd check-config --config /etc/sshvpn/sshvpnd.toml 2>&1) || bad "check-config: $out"
grep -q ': OK' <<<"$out" || bad "check-config did not say OK: $out"

step "the shipped configuration, started with the unit's user and capabilities, listens nowhere"
# The unit's own ExecStart line, run in a fresh network namespace (its TUN and routes stay there)
# with what systemd would give it: User=/Group=, CapabilityBoundingSet=, AmbientCapabilities=,
# NoNewPrivileges=, and StateDirectory=/RuntimeDirectory=/LogsDirectory= owned by the user.
# (The boot test below runs the units under a real systemd; this one also works without it.)
unit=/usr/lib/systemd/system/sshvpnd.service
unit_value() { sed -n "s/^$1=//p" "$unit" | tail -n1; }
exec_start=$(unit_value ExecStart)
[ -n "$exec_start" ] || bad "no ExecStart= in the installed sshvpnd.service"
unit_user=$(unit_value User)
unit_group=$(unit_value Group)
caps_list() { tr ' ' '\n' <<<"$1" | sed -n 's/^CAP_//p' | tr 'A-Z' 'a-z' | sed 's/^/+/' | paste -sd, -; }
bounding=$(caps_list "$(unit_value CapabilityBoundingSet)")
ambient=$(caps_list "$(unit_value AmbientCapabilities)")
setpriv_args=(--bounding-set "-all${bounding:+,$bounding}")
if [ -n "$unit_user" ]; then
  setpriv_args+=(--reuid "$unit_user" --regid "${unit_group:-$unit_user}" --init-groups)
fi
[ -n "$ambient" ] && setpriv_args+=(--inh-caps "-all,$ambient" --ambient-caps "-all,$ambient")
[ "$(unit_value NoNewPrivileges)" = yes ] && setpriv_args+=(--no-new-privs)
for kind in State Runtime Logs; do
  case $kind in State) base=/var/lib ;; Runtime) base=/run ;; Logs) base=/var/log ;; esac
  name=$(unit_value "${kind}Directory")
  [ -n "$name" ] || continue
  mode=$(unit_value "${kind}DirectoryMode")
  install -d -o "${unit_user:-root}" -g "${unit_group:-root}" -m "${mode:-0755}" "$base/$name"
done
echo "setpriv ${setpriv_args[*]} -- $exec_start"
ip netns add "$ns" || fatal "ip netns add $ns"
read -r -a argv <<<"$exec_start"
ip netns exec "$ns" setpriv "${setpriv_args[@]}" -- "${argv[@]}" >/tmp/"$ns".log 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do
  [ -S /run/sshvpn/control.sock ] && break
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -S /run/sshvpn/control.sock ]; then
  expect_stat /run/sshvpn/control.sock 660 sshvpn:sshvpn
  expect_stat /var/lib/sshvpn/host_key 600 sshvpn:sshvpn
  grep -q 'generated host key /var/lib/sshvpn/host_key (SHA256:' /tmp/"$ns".log \
    || bad "the log does not show the generated host key's fingerprint"
  logged=$(grep -o 'generated host key.*' /tmp/"$ns".log)
  echo "$logged"
  # The README's way to get the fingerprint to publish must give the logged one.
  if command -v ssh-keygen >/dev/null; then
    fp=$(ssh-keygen -lf /var/lib/sshvpn/host_key | awk '{print $2}')
    [ -n "$fp" ] && grep -qF "($fp)" <<<"$logged" \
      || bad "ssh-keygen -lf /var/lib/sshvpn/host_key gives '$fp', the log says: $logged"
  fi
  listening=$(ip netns exec "$ns" ss -H -ltnu)
  [ -z "$listening" ] || bad "the default configuration listens: $listening"
  echo "listening TCP/UDP sockets in the daemon's namespace: ${listening:-none}"
  grep -q 'inet 10\.99\.0\.1/24' <<<"$(ip netns exec "$ns" ip -4 addr show dev sshvpn0)" \
    || bad "sshvpn0 does not have 10.99.0.1/24"
  user=$(ps -o user= -p "$daemon_pid")
  [ "$user" = sshvpn ] || bad "the daemon runs as '$user', not sshvpn"
  echo "daemon pid $daemon_pid runs as $user; $(grep -o 'CapEff:.*' /proc/"$daemon_pid"/status)"
  /usr/sbin/sshvpnd status --control /run/sshvpn/control.sock >/dev/null 2>&1 || bad "sshvpnd status failed"
  kill -TERM "$daemon_pid"
  wait "$daemon_pid"
  rc=$?
  [ "$rc" = 0 ] || bad "the daemon exited with $rc after SIGTERM: $(tail -n 5 /tmp/"$ns".log)"
  absent /run/sshvpn/control.sock
else
  bad "the daemon, started as the unit starts it, did not create /run/sshvpn/control.sock: $(cat /tmp/"$ns".log)"
  kill "$daemon_pid" 2>/dev/null
fi
daemon_pid=""
ip netns del "$ns"
rm -f /tmp/"$ns".log

step "the units under a real systemd (systemd-nspawn boot of this root, overlaid)"
# systemd as PID 1 in a container of its own: an overlay of this machine's root (the package is
# installed in it; writes go to a tmpfs), booted with systemd-nspawn in a private network, with
# scripts/package-boot-test.sh as the only unit asked for. It starts sshvpnd.service, connects
# the client unit sshvpn@office, reloads the server and stops both (see that script).
if [ "${SSHVPN_SKIP_BOOT:-0}" = 1 ]; then
  echo "note: skipped (SSHVPN_SKIP_BOOT=1)"
else
  boot=$(mktemp -d /tmp/sshvpn-boot.XXXXXX)
  mkdir -p "$boot/rw" "$boot/root"
  mount -t tmpfs -o mode=0755 tmpfs "$boot/rw" && mkdir -p "$boot/rw/upper" "$boot/rw/work" \
    && mount -t overlay overlay -o "lowerdir=/,upperdir=$boot/rw/upper,workdir=$boot/rw/work" "$boot/root" \
    || fatal "cannot make the overlay root for systemd-nspawn"
  boot_mounted=$boot
  install -m 0755 scripts/package-boot-test.sh "$boot/root/usr/local/sbin/sshvpn-package-boot-test"
  printf '%s\n' '[Unit]' 'Description=sshvpn package test under systemd' '[Service]' 'Type=oneshot' \
    'ExecStart=/usr/local/sbin/sshvpn-package-boot-test' \
    'StandardOutput=file:/sshvpn-package-boot-test.out' 'StandardError=inherit' \
    >"$boot/root/etc/systemd/system/sshvpn-package-boot-test.service"
  timeout 150 systemd-nspawn -q -D "$boot/root" --register=no --keep-unit -M "sshvpn-pkg-$$" \
    --private-network --bind=/dev/net/tun -b --console=pipe \
    systemd.unit=sshvpn-package-boot-test.service >"$boot/console.log" 2>&1 </dev/null
  out="$boot/rw/upper/sshvpn-package-boot-test.out"
  if [ -f "$out" ]; then
    sed 's/^/  /' "$out"
    grep -q '^RESULT PASS' "$out" || bad "under systemd: $(grep -c '^FAIL' "$out") checks failed (above)"
  else
    bad "the container did not run the test: $(tail -n 20 "$boot/console.log")"
  fi
  umount "$boot/root" "$boot/rw" && rm -rf "$boot"
  boot_mounted=""
fi

step "upgrade (dpkg -i of version +upgradetest): conffile edits, leases, host key and user survive"
echo '# edited by the admin' >>/etc/sshvpn/sshvpnd.toml
printf 'SHA256:test 10.99.0.7\n' >/var/lib/sshvpn/leases
chown sshvpn:sshvpn /var/lib/sshvpn/leases
before=$(sha256sum /etc/sshvpn/sshvpnd.toml /var/lib/sshvpn/leases /var/lib/sshvpn/host_key 2>&1)
uid_before=$(id -u sshvpn)
# A real version change: the same package repacked as version +upgradetest. (Not with cargo deb:
# it deletes the other sshvpn_*.deb in target/debian.)
upgrade_version="${version}+upgradetest"
work=$(mktemp -d)
upgrade_deb="$work/sshvpn_${upgrade_version}_${arch}.deb"
dpkg-deb -R "$deb" "$work/tree" || fatal "dpkg-deb -R"
sed -i "s/^Version: .*/Version: $upgrade_version/" "$work/tree/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip -b "$work/tree" "$upgrade_deb" >/dev/null || fatal "repacking as $upgrade_version"
dpkg -i "$upgrade_deb" </dev/null || bad "dpkg -i of $upgrade_deb over the installed package failed"
[ "$(dpkg-query -W -f='${Version}' sshvpn)" = "$upgrade_version" ] \
  || bad "installed version is $(dpkg-query -W -f='${Version}' sshvpn), not $upgrade_version"
rm -rf "$work"
after=$(sha256sum /etc/sshvpn/sshvpnd.toml /var/lib/sshvpn/leases /var/lib/sshvpn/host_key 2>&1)
[ "$before" = "$after" ] || bad "the upgrade changed kept files: $before / $after"
[ "$(id -u sshvpn)" = "$uid_before" ] || bad "the upgrade changed the uid of sshvpn"
expect_stat /var/lib/sshvpn 700 sshvpn:sshvpn

step "remove (dpkg -r): programs go, configuration, state and user stay"
# What an admin's `systemctl enable` leaves behind; purge must clean it up.
systemctl enable sshvpnd.service sshvpn@office.service >/dev/null 2>&1 \
  || bad "systemctl enable (offline) failed"
[ -n "$(enabled_links)" ] || bad "systemctl enable made no links"
dpkg -r sshvpn </dev/null || bad "dpkg -r failed"
absent /usr/bin/sshvpn
absent /usr/sbin/sshvpnd
absent /usr/lib/systemd/system/sshvpnd.service
[ -f /etc/sshvpn/sshvpnd.toml ] || bad "remove deleted the conffile /etc/sshvpn/sshvpnd.toml"
[ -f /var/lib/sshvpn/leases ] || bad "remove deleted the leases"
getent passwd sshvpn >/dev/null || bad "remove deleted the user sshvpn"

step "purge (dpkg -P): nothing is left"
dpkg -P sshvpn </dev/null || bad "dpkg -P failed"
for f in "${packaged[@]}"; do absent "$f"; done
for d in /etc/sshvpn /var/lib/sshvpn /run/sshvpn /usr/share/doc/sshvpn; do absent "$d"; done
getent passwd sshvpn >/dev/null && bad "the user sshvpn is still there"
getent group sshvpn >/dev/null && bad "the group sshvpn is still there"
links=$(enabled_links)
[ -z "$links" ] || bad "enable links left: $links"
dpkg-query -W sshvpn >/dev/null 2>&1 && bad "dpkg still knows the package: $(dpkg-query -W -f='${Status}' sshvpn)"

if [ "$failures" = 0 ]; then
  echo "test-package.sh: PASS ($deb: install, files, user, units, check-config, safe start, upgrade, remove, purge)"
else
  echo "test-package.sh: FAIL ($failures problems, see FAIL lines above)"
  exit 1
fi
