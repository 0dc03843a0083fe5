#!/usr/bin/env bash
# The README's run command: build everything, then run pyfpm in the foreground on the
# bundled configuration (examples/pyfpm.yaml + pools.d/www.yaml), serving examples/app.py
# on a Unix socket and on 127.0.0.1:9000. Extra arguments go to pyfpm (e.g. -t).
#
# The socket directory comes from PYFPM_RUNTIME_DIR, which pools.d/www.yaml reads:
# /run/pyfpm for root, ${XDG_RUNTIME_DIR:-/tmp}/pyfpm-$USER otherwise, unless it is
# already set. As root, the socket's group is www-data (stock Debian nginx's user) when
# that group exists (PYFPM_LISTEN_GROUP).
set -euo pipefail

# Work from the repository root whatever the caller's directory.
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

echo "==> cargo build --release --workspace" >&2
cargo build --release --workspace

if [ -z "${PYFPM_RUNTIME_DIR:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        PYFPM_RUNTIME_DIR=/run/pyfpm
    else
        PYFPM_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}/pyfpm-${USER:-$(id -un)}"
    fi
fi
export PYFPM_RUNTIME_DIR
mkdir -p "$PYFPM_RUNTIME_DIR"

# A stock Debian nginx runs as www-data: as root, give that group the socket (0660) so
# `fastcgi_pass unix:$PYFPM_RUNTIME_DIR/www.sock;` works as it is.
if [ -z "${PYFPM_LISTEN_GROUP:-}" ] && [ "$(id -u)" -eq 0 ] && getent group www-data >/dev/null; then
    export PYFPM_LISTEN_GROUP=www-data
fi

cat >&2 <<MSG
==> pyfpm -F -c examples/pyfpm.yaml $*
    app:     examples/app.py (/, /hello, /echo, /stream)
    listens: unix:$PYFPM_RUNTIME_DIR/www.sock and 127.0.0.1:9000
    try:     target/release/pyfpm request unix:$PYFPM_RUNTIME_DIR/www.sock /hello
    stop:    Ctrl-C (fast) or kill -QUIT <pid> (graceful)
MSG
exec target/release/pyfpm -F -c examples/pyfpm.yaml "$@"
