#!/usr/bin/env bash
# The README's test command: install what the test suite needs (idempotently), build
# everything, run every test. Extra arguments go to `cargo test` (e.g. `-- --nocapture`).
#
# Needs on the machine: the Rust toolchain, CPython 3.9+ with pip, a C compiler.
# Installs when missing: nginx, wrk, apache2, lighttpd and caddy from Debian (for the
# end-to-end, load and web-server tests; packages are kept from starting services) and
# the Python packages in tests/requirements.txt.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

section() { printf '\n==> %s\n' "$*"; }

# as_root, apt_install_no_services
# shellcheck source=tests/apt.sh
. tests/apt.sh

have_nginx() {
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
}

have_wrk() {
    command -v wrk >/dev/null 2>&1
}

section "nginx (Debian package)"
if have_nginx; then
    echo "already installed: $( (command -v nginx || echo /usr/sbin/nginx) | head -n1)"
else
    apt_install_no_services nginx
    have_nginx || { echo "nginx is still missing after apt-get install" >&2; exit 1; }
fi

# wrk drives the reload-under-load test (nginx -> pyfpm, counting non-2xx and socket
# errors).
section "wrk (Debian package)"
if have_wrk; then
    echo "already installed: $(command -v wrk)"
else
    apt_install_no_services wrk
    have_wrk || { echo "wrk is still missing after apt-get install" >&2; exit 1; }
fi

# A package whose maintainer scripts start a server anyway (despite policy-rc.d) would
# leave a system web server on port 80 or 443 that the tests never stop: refuse to go on
# when a listener appeared there during the install.
web_ports() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp '( sport = :80 or sport = :443 )' 2>/dev/null | sort || true
}
check_no_new_web_ports() {
    local pkg="$1" before="$2" after
    after="$(web_ports)"
    if [ "$after" != "$before" ]; then
        echo "port 80/443 listeners changed while installing $pkg:" >&2
        echo "$after" >&2
        echo "stop what $pkg started (the tests never use it) and run this script again" >&2
        exit 1
    fi
}

# The web-server tests (tests/webservers.rs) start each of these in the foreground in a
# temp dir, on a free loopback port, with configs rendered from contrib/.
# apache2 brings mod_proxy_fcgi and mod_authnz_fcgi; lighttpd's package includes
# mod_fastcgi; caddy is Debian's 2.6 (reverse_proxy with the fastcgi transport).
install_server() {
    local pkg="$1" bin="$2"
    section "$pkg (Debian package)"
    if [ -x "$bin" ]; then
        echo "already installed: $bin"
        return
    fi
    local ports_before
    ports_before="$(web_ports)"
    apt_install_no_services "$pkg"
    [ -x "$bin" ] || { echo "$pkg is still missing ($bin) after apt-get install" >&2; exit 1; }
    # The package enables its unit: under systemd it would start at the next boot.
    if [ -d /run/systemd/system ]; then
        as_root systemctl disable "$pkg.service" || true
    fi
    check_no_new_web_ports "$pkg" "$ports_before"
}
install_server apache2 /usr/sbin/apache2
install_server lighttpd /usr/sbin/lighttpd
install_server caddy /usr/bin/caddy

section "Python packages (tests/requirements.txt)"
if [ -f tests/requirements.txt ] && grep -qEv '^[[:space:]]*(#|$)' tests/requirements.txt; then
    python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
else
    echo "none needed"
fi

section "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

section "cargo test --workspace --no-fail-fast $*"
log="$(mktemp /tmp/pyfpm-tests.XXXXXX)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# One closing line for the whole run (cargo prints one per test binary, the last of
# which is often a crate's empty doctest run).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\nsummary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
