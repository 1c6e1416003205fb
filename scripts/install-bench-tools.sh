#!/bin/sh
# Best-effort install of the benchmark's load generator and reference proxy:
# wrk (HTTP load) and nginx (reverse-proxy peer and static backend), via apt-get
# when they are missing. Then CHP via scripts/install-chp.sh. Never fails the
# caller: what cannot be installed is skipped by `python -m benchmarks` with a note.
set -u

missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"

if [ -n "$missing" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
        echo "installing:$missing"
        $SUDO apt-get update -qq || true
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing || \
            echo "note: could not install$missing; those parts of the benchmark are skipped" >&2
    else
        echo "note: apt-get not found; install$missing yourself (the benchmark skips what is missing)" >&2
    fi
else
    echo "wrk and nginx present"
fi

sh "$(dirname "$0")/install-chp.sh" || echo "note: CHP install failed; CHP is skipped" >&2
exit 0
