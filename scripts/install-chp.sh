#!/bin/sh
# Install configurable-http-proxy 5.3.0 (the reference the benchmarks compare
# against) with npm into a cache folder. Idempotent: does nothing when that
# version is already there. Skipped with a note when npm is missing.
#
#   scripts/install-chp.sh            # -> ~/.cache/cfproxy-bench/chp
#   CFPROXY_BENCH_CACHE=/some/dir scripts/install-chp.sh
#
# `python -m benchmarks` finds it there automatically (override: CFPROXY_BENCH_CHP=path).
set -eu

VERSION=5.3.0
CACHE="${CFPROXY_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cfproxy-bench}"
DEST="$CACHE/chp"
BIN="$DEST/node_modules/.bin/configurable-http-proxy"
PKG="$DEST/node_modules/configurable-http-proxy/package.json"

if [ -x "$BIN" ] && [ -f "$PKG" ] && grep -q "\"version\": \"$VERSION\"" "$PKG"; then
    echo "configurable-http-proxy $VERSION already installed: $BIN"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "note: npm not found; CHP will be skipped by the benchmarks (install Node.js + npm, then re-run)" >&2
    exit 0
fi

mkdir -p "$DEST"
npm install --prefix "$DEST" --no-audit --no-fund --loglevel=error "configurable-http-proxy@$VERSION"
echo "installed configurable-http-proxy $VERSION: $BIN"
