#!/usr/bin/env bash
# The benchmark command (benches/README.md): install the peers idempotently, build pyfpm
# in release, run every scenario side by side (benches/bench.py). Extra arguments go to
# bench.py, e.g. `--quick` for a smoke test, `--only pyfpm,uwsgi-fastcgi`, `--help`.
#
# Needs on the machine: the Rust toolchain, CPython 3.9+ as `python3` with its
# development headers (uWSGI is compiled against them), a C compiler.
# Installs when missing: nginx, wrk and php8.2-fpm from Debian (packages are kept from
# starting services), and benches/requirements.txt into benches/.venv, a virtualenv of
# the same python3 that pyfpm's workers run (a pool's default `python: python3`).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

section() { printf '\n==> %s\n' "$*" >&2; }

# as_root, apt_install_no_services
# shellcheck source=tests/apt.sh
. tests/apt.sh

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]
}

section "Debian packages: nginx, wrk, php8.2-fpm"
missing=()
have nginx || missing+=(nginx)
have wrk || missing+=(wrk)
have php-fpm8.2 || missing+=(php8.2-fpm)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "already installed" >&2
else
    apt_install_no_services "${missing[@]}"
    for tool in nginx wrk php-fpm8.2; do
        have "$tool" || { echo "$tool is still missing after apt-get install" >&2; exit 1; }
    done
fi

section "benchmark virtualenv benches/.venv (benches/requirements.txt)"
# The interpreter pyfpm's workers run: `python3` on PATH, resolved (a pyenv shim
# resolves to the real executable through sys.executable).
python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
venv=benches/.venv
if [ -x "$venv/bin/python3" ] &&
    [ "$("$venv/bin/python3" -c 'import os, sys; print(os.path.realpath(sys._base_executable))')" != "$python" ]; then
    echo "benches/.venv was built with another python3: rebuilding it" >&2
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python3" ]; then
    "$python" -m venv "$venv"
fi
include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ ! -f "$include/Python.h" ]; then
    echo "no $include/Python.h: uWSGI compiles against the Python headers; install" \
        "them (python3-dev for Debian's python3)" >&2
    exit 1
fi
# pip only downloads and builds (uWSGI takes a minute) what is not installed already.
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r benches/requirements.txt
echo "$("$venv/bin/python3" -VV | head -n1) at $python" >&2

section "cargo build --release --workspace"
cargo build --release --workspace

section "benches/bench.py $*"
exec "$python" benches/bench.py "$@"
