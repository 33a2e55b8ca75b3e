#!/usr/bin/env bash
# Builds the Debian package target/debian/sshvpn_<version>_<arch>.deb (both binaries, units, man
# pages, completions, the default configuration and the maintainer scripts in packaging/debian/).
# The metadata is [package.metadata.deb] in server/Cargo.toml; cargo-deb is installed when missing.
# Man pages and completions are generated here by the freshly built release binaries, into
# target/release/debian-assets/ (cargo-deb maps the target/release/ prefix of the assets to the
# real target directory, CARGO_TARGET_DIR included). Extra arguments go to `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "package.sh: $*" >&2; }
fail() { echo "package.sh: FAILED: $*" >&2; exit 1; }

use_cargo_deb=yes
if ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb (cargo install --locked cargo-deb)"
  if ! cargo install --locked cargo-deb; then
    # Offline, or no registry: the same asset list packed with dpkg-deb (dpkg-build_deb below).
    step "cargo-deb cannot be installed: building the package with dpkg-deb from the same metadata"
    use_cargo_deb=no
  fi
fi
command -v dpkg >/dev/null || fail "dpkg is needed (for the architecture name); run on Debian or Ubuntu"

step "building the release binaries"
cargo build --release --locked -p sshvpn -p sshvpnd || fail "cargo build --release"

release="${CARGO_TARGET_DIR:-target}/release"
assets="$release"/debian-assets
rm -rf "$assets"
mkdir -p "$assets"/man "$assets"/completions

step "generating man pages and completions"
# clap_mangen writes section 1; sshvpnd is a system daemon, section 8.
"$release"/sshvpn man >"$assets"/man/sshvpn.1 || fail "sshvpn man"
"$release"/sshvpnd man | sed '1,/^\.TH/ s/^\(\.TH [^ ]*\) 1/\1 8/' >"$assets"/man/sshvpnd.8 \
  || fail "sshvpnd man"
grep -q '^\.TH sshvpnd 8' "$assets"/man/sshvpnd.8 || fail "sshvpnd.8 has no section-8 .TH line"
for bin in sshvpn sshvpnd; do
  "$release"/$bin completions bash >"$assets"/completions/$bin.bash || fail "$bin completions bash"
  "$release"/$bin completions zsh >"$assets"/completions/_$bin || fail "$bin completions zsh"
  "$release"/$bin completions fish >"$assets"/completions/$bin.fish || fail "$bin completions fish"
done
# -n: no name or time stamp in the gzip header, so rebuilding gives the same bytes.
gzip -9n "$assets"/man/sshvpn.1 "$assets"/man/sshvpnd.8
for f in "$assets"/man/* "$assets"/completions/*; do
  [ -s "$f" ] || fail "$f is empty"
done

step "building the package"
# --strip: the workspace's release profile keeps line tables (for backtraces); the package ships
# stripped binaries, as Debian packages do.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
deb="${CARGO_TARGET_DIR:-target}/debian/sshvpn_${version}_${arch}.deb"
# The fallback: [package.metadata.deb]'s assets, maintainer scripts, conffiles (everything under
# etc/) and control fields, packed with dpkg-deb; binaries stripped, Depends from dpkg-shlibdeps.
dpkg_build_deb() {
  local meta=server/Cargo.toml root src dest mode f name depends
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root"/DEBIAN
  while IFS='|' read -r src dest mode; do
    src=${src/#target\/release/$release}
    src=${src/#..\//}
    for f in $src; do
      [ -e "$f" ] || fail "asset $f is missing"
      if [[ $dest == */ ]]; then name="$root/$dest$(basename "$f")"; else name="$root/$dest"; fi
      install -D -m "$mode" "$f" "$name"
      [[ $dest == etc/* ]] && echo "/${name#"$root"/}" >>"$root"/DEBIAN/conffiles
    done
  done < <(sed -n 's/^ *\["\([^"]*\)", "\([^"]*\)", "\([0-9]*\)"\],*$/\1|\2|\3/p' "$meta")
  strip --strip-unneeded "$root"/usr/bin/sshvpn "$root"/usr/sbin/sshvpnd
  mkdir -p "$root"/usr/share/doc/sshvpn
  printf 'sshvpn authors\nLicense: MIT OR Apache-2.0\n' >"$root"/usr/share/doc/sshvpn/copyright
  for f in postinst prerm postrm; do install -m 755 packaging/debian/$f "$root"/DEBIAN/$f; done
  mkdir -p "$root"/debian
  echo "Source: sshvpn" >"$root"/debian/control
  depends=$(cd "$root" && dpkg-shlibdeps -O usr/bin/sshvpn usr/sbin/sshvpnd 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  rm -rf "$root"/debian
  {
    echo "Package: sshvpn"
    echo "Version: $version"
    echo "Architecture: $arch"
    sed -n 's/^maintainer = "\(.*\)"/Maintainer: \1/p' "$meta"
    echo "Section: net"
    echo "Priority: optional"
    echo "Depends: ${depends:+$depends, }adduser"
    echo "Recommends: iproute2, nftables"
    echo "Suggests: openssh-server"
    echo "Description: layer-3 VPN over SSH (client sshvpn and server sshvpnd)"
    echo " Both programs, systemd units (not enabled), man pages, completions and a default"
    echo " server configuration that listens nowhere."
  } >"$root"/DEBIAN/control
  mkdir -p "$(dirname "$deb")"
  dpkg-deb --root-owner-group -Zxz -b "$root" "$deb" >/dev/null || fail "dpkg-deb -b"
}
if [ "$use_cargo_deb" = yes ]; then
  cargo deb -p sshvpnd --no-build --locked --strip "$@" || fail "cargo deb"
else
  dpkg_build_deb
fi
[ -f "$deb" ] || fail "expected $deb was not built"
step "built $deb"
