#!/usr/bin/env bash
# Installs what building and testing unpoll needs beyond Rust, from Debian's packages, when it is
# missing: cmake (./scripts/build-deps.sh: pingora builds zlib-ng with it), chromium (the demo
# page's browser test) and systemd's systemd-analyze (the test that rates
# deploy/unpoll.service), redis-server (the
# cluster tests start their own, on a free port), Node.js and npm (the JavaScript client's
# tests), prometheus and its promtool (the alert rules' tests and the scrape test), nginx (the
# front-proxy recipe's test), python3
# with venv; from crates.io, cargo-deny (the licence and ban checks of ./scripts/test.sh; built
# once, in about 90 s) and cargo-deb (the release script's Debian package, about 40 s); and from
# PyPI, kubernetes-validate (deploy/kubernetes checked offline
# against Kubernetes' schemas), in a virtualenv under target/tools.
set -euo pipefail
CARGO_DENY_VERSION=0.20.2
CARGO_DEB_VERSION=3.8.0 # keep in step with scripts/release.sh
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION..." >&2
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION..." >&2
  # A debug build: a minute and a half to build instead of four, and the checks take seconds.
  cargo install --debug --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
"$(dirname "$0")/build-deps.sh"
missing=()
[ -x "${UNPOLL_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing ${missing[*]}..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
KUBERNETES_VALIDATE_VERSION=1.37.0
venv="$(cd "$(dirname "$0")/.." && pwd)/target/tools/venv"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
