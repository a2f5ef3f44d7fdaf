#!/usr/bin/env bash
# Prepare this Debian 12 host so that snapshotd's tests can reach a real libvirtd with
# the QEMU driver at qemu:///system.
#
# Safe to run any number of times:
#   * apt packages are installed only when dpkg says one is missing (one `apt-get update`,
#     and only then);
#   * when libvirtd already answers (a real host, libvirtd under systemd, or an earlier run
#     of this script) nothing else is touched: not qemu.conf, not users, not daemons;
#   * otherwise libvirtd is configured for a root-only, systemd-less machine (a CI container)
#     and started by hand, together with virtlogd, which QEMU domains need for their logs.
#
# Must run as root.
set -euo pipefail

URI="qemu:///system"
QEMU_CONF=/etc/libvirt/qemu.conf
WAIT_SECONDS=30

# What snapshotd needs from the host.  The first line is libvirt and QEMU themselves; the
# second builds libvirt-python and systemd-python from source inside the venv; the third is
# the Python that scripts/venv.sh uses; tini reaps QEMU processes (see below); PostgreSQL
# and openssl are the shared catalog's test server (scripts/postgres.sh starts its own
# cluster, never the package's); prometheus brings promtool and the server the alert
# rules are tested with (tests/unit/test_alert_rules.py, tests/integration/
# test_prometheus.py start their own, never the package's).
PACKAGES=(
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
    libvirt-dev libsystemd-dev pkg-config libxml2-utils gcc
    python3 python3-venv python3-dev
    tini
    postgresql openssl
    prometheus
)

log() { printf 'host-setup: %s\n' "$*"; }
die() { printf 'host-setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts libvirtd)"

# --- 1. packages ------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query prints "install ok installed" only for a fully installed package.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "all ${#PACKAGES[@]} packages already installed"
fi

answers() { virsh -c "$URI" version >/dev/null 2>&1; }
# Is the daemon whose pid file is /run/NAME.pid alive, and this machine's own (its root
# is /)?  Not a search by name: the second test host (scripts/host2.sh) runs a libvirtd
# and a virtlogd of its own in a chroot, and those must not count.  A zombie does not.
alive() {
    local pid
    pid=$(cat "/run/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = / ] &&
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# Set "key = value" in qemu.conf: replace an uncommented assignment of the key when there
# is one, append it otherwise.  Commented-out defaults are left as they are, so the file
# never collects duplicates however often this runs.
set_qemu_conf() {
    local key=$1 value=$2
    if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$QEMU_CONF"; then
        sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${value}|" "$QEMU_CONF"
    else
        printf '%s = %s\n' "$key" "$value" >>"$QEMU_CONF"
    fi
}

# --- 2. libvirtd ------------------------------------------------------------------------
if answers; then
    log "libvirtd already answers at $URI; leaving its configuration alone"
else
    log "libvirtd does not answer at $URI; configuring and starting it"

    # libvirt's QEMU driver resolves its built-in default user (libvirt-qemu) when it
    # loads, before it reads qemu.conf, and refuses to start when that user is missing.
    # Debian creates it in libvirt-daemon-system, which we do not install.
    if ! getent passwd libvirt-qemu >/dev/null; then
        log "creating system user libvirt-qemu"
        useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
            --shell /usr/sbin/nologin libvirt-qemu
    fi

    # Run QEMU as root without a security driver: there is no AppArmor/SELinux policy or
    # unprivileged QEMU user set up in a container, and test images live in root-owned dirs.
    mkdir -p "$(dirname "$QEMU_CONF")"
    touch "$QEMU_CONF"
    set_qemu_conf user '"root"'
    set_qemu_conf group '"root"'
    set_qemu_conf swtpm_user '"root"'
    set_qemu_conf swtpm_group '"root"'
    set_qemu_conf security_driver '"none"'

    mkdir -p /var/log/libvirt /var/run/libvirt

    # virtlogd first: libvirtd hands every QEMU process's stdout/stderr to it.
    if ! alive virtlogd; then
        log "starting virtlogd"
        virtlogd -d
    fi
    # A libvirtd that is still starting up (an earlier run, a slow machine) is waited for,
    # not started a second time.
    #
    # libvirtd is not started with -d: libvirt daemonizes every QEMU it starts, so a QEMU
    # that exits becomes a zombie of whatever adopts it, and `virsh destroy` returns only
    # once that zombie has been reaped.  Without systemd, PID 1 may reap late (seen here:
    # destroy took 1.6 to 2 s, against 0.2 s under tini) or never (destroy then gives up
    # after some 15 s).  tini -s makes itself a child subreaper, so it adopts libvirtd's
    # orphans and reaps them at once; it runs libvirtd in the foreground and exits with it.
    if ! alive libvirtd; then
        log "starting libvirtd (under tini -s, in its own session)"
        setsid -f tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd.stdout 2>&1
    fi

    deadline=$((SECONDS + WAIT_SECONDS))
    until answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            virsh -c "$URI" version >&2 || true
            die "libvirtd did not answer at $URI within ${WAIT_SECONDS}s"
        fi
        sleep 0.2
    done
    log "libvirtd answers at $URI"
fi

virsh -c "$URI" version | sed -e '/^$/d' -e 's/^/host-setup: /'

# --- 3. KVM or TCG ----------------------------------------------------------------------
# The tests ask libvirt the same question: does it offer domain type kvm on this host?
if [ -r /dev/kvm ] && [ -w /dev/kvm ] &&
    virsh -c "$URI" domcapabilities --virttype kvm >/dev/null 2>&1; then
    log "test domains will use KVM (/dev/kvm is usable)"
else
    log "test domains will use TCG (<domain type='qemu'>): /dev/kvm is missing or unusable"
fi
