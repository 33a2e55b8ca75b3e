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

if ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb (cargo install --locked cargo-deb)"
  cargo install --locked cargo-deb || fail "installing cargo-deb"
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
cargo deb -p sshvpnd --no-build --locked --strip "$@" || fail "cargo deb"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
deb="${CARGO_TARGET_DIR:-target}/debian/sshvpn_${version}_${arch}.deb"
[ -f "$deb" ] || fail "expected $deb was not built"
step "built $deb"
