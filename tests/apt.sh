# Sourced by tests/run.sh and benches/run.sh: install Debian packages without letting
# them start services.

# Root runs apt-get directly; anyone else goes through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-get install "$@" with a policy-rc.d that exits 101 in place, which forbids
# maintainer scripts to start services (no system nginx on port 80, no system php-fpm
# or apache2). An existing policy is put back. `apt-get update` runs once per script run.
apt_updated=""
apt_install_no_services() {
    local policy=/usr/sbin/policy-rc.d
    local backup=""
    if [ -e "$policy" ]; then
        backup="$(mktemp /tmp/policy-rc.d.XXXXXX)"
        as_root cp -p "$policy" "$backup"
    fi
    restore_policy() {
        if [ -n "$backup" ]; then
            as_root cp -p "$backup" "$policy"
            rm -f "$backup"
        else
            as_root rm -f "$policy"
        fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\n# Temporary, from pyfpm tests/apt.sh: start no services.\nexit 101\n' |
        as_root tee "$policy" >/dev/null
    as_root chmod 0755 "$policy"
    if [ -z "$apt_updated" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    restore_policy
    trap - EXIT
}
