#!/usr/bin/env bash
# Builds the release artifacts of the version in Cargo.toml into target/release-artifacts/
# (see docs/releasing.md):
#   unpoll-VERSION-ARCH-linux.tar.gz   the binary, LICENSE, README.md, CHANGELOG.md, the example
#                                      configuration and the systemd unit
#   unpoll_VERSION-1_ARCH.deb          the Debian package (cargo-deb): /usr/bin/unpoll,
#                                      /etc/unpoll/unpoll.yaml (a conffile), the hardened unit,
#                                      a system user `unpoll`
#   SHA256SUMS                         of both
# Installs cargo-deb (crates.io) and cmake (Debian) when they are missing.
# Environment: OUT (target/release-artifacts), PROFILE (release; the test suite packages its
# dev build with PROFILE=dev NO_BUILD=1), NO_BUILD (1: package the binary already built).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
OUT="${OUT:-target/release-artifacts}"
PROFILE="${PROFILE:-release}"
dir="$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"
version="$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "unpoll"))')"
arch="$(uname -m)"

if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION..." >&2
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
if [ -z "${NO_BUILD:-}" ]; then
  ./scripts/build-deps.sh
  cargo build --locked --profile "$PROFILE" --bin unpoll
fi
binary="target/$dir/unpoll"
[ -x "$binary" ] || { echo "no $binary: build it first, or leave NO_BUILD unset" >&2; exit 1; }

# The packaged configuration: the example, with the upgrade socket in the unit's
# RuntimeDirectory (PrivateTmp would hide one in /tmp from the process taking over).
mkdir -p target/package "$OUT"
sed 's|^  upgrade_sock: .*|  upgrade_sock: /run/unpoll/upgrade.sock|' config/example.yaml > target/package/unpoll.yaml
grep -q '^  upgrade_sock: /run/unpoll/upgrade.sock$' target/package/unpoll.yaml

name="unpoll-$version-$arch-linux"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name"
cp "$binary" LICENSE README.md CHANGELOG.md "$stage/$name/"
# Symbols stay (for profiles and backtraces); the debug information goes, as cargo-deb's does.
strip --strip-debug "$stage/$name/unpoll" 2>/dev/null || true
cp config/example.yaml "$stage/$name/unpoll.yaml"
cp deploy/unpoll.service "$stage/$name/"
tar -C "$stage" -czf "$OUT/$name.tar.gz" "$name"

deb_args=(--no-build --output "$OUT/" --quiet)
[ "$PROFILE" = release ] || deb_args+=(--profile "$PROFILE")
cargo deb "${deb_args[@]}" >/dev/null

(cd "$OUT" && sha256sum -- "$name.tar.gz" unpoll_"$version"-*.deb > SHA256SUMS)
echo "unpoll $version: $(cd "$OUT" && ls -- "$name.tar.gz" unpoll_"$version"-*.deb SHA256SUMS | tr '\n' ' ')in $OUT"
