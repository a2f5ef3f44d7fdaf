#!/usr/bin/env bash
# Boot a real systemd as PID 1 of a private PID + mount namespace, for tests/system.
#
#   unshare --pid --fork --mount --mount-proc --propagation private tests/system/boot.sh
#
# The namespace shares the host's disk, so before systemd runs this script makes sure
# that nothing it does can reach the host:
#   * /run, /tmp, /var/tmp: fresh tmpfs (systemd and journald write to /run only);
#   * /etc, /usr/local, /opt, /var/lib, /var/log: overlays whose upper layer is on the
#     /run tmpfs, so installation steps (docs/operations.md) can be followed literally and
#     everything they write vanishes with the namespace;
#   * the host's /run/libvirt (libvirtd's sockets) and /var/lib/libvirt are bound back in,
#     so services inside reach the host's libvirtd at qemu:///system;
#   * every unit that sysinit.target, basic.target and friends would pull in is masked
#     (except journald), and every unit generator is masked, so only what a test starts
#     runs;
#   * systemd starts harness.target, an empty target, not default.target.
# Every mount is private to the namespace and disappears with it.
set -euo pipefail

[ "$$" -eq 1 ] || { echo "boot.sh: must be PID 1 of a new PID namespace" >&2; exit 1; }

# 1. Keep what must be bound back in, on a scratch tmpfs over /dev/shm (replaced by a
#    clean one at the end): libvirt's sockets and state, the tests' images, and the
#    paths in HARNESS_KEEP (colon-separated: the checkout and its venv, which may well
#    live under /tmp, where a fresh tmpfs goes below).
stage=/dev/shm
mount -t tmpfs -o mode=0700 harness-stage "$stage"
keep=()
IFS=: read -r -a extra <<<"${HARNESS_KEEP:-}"
inside_kept() {  # is $1 below a path kept already? (its bind brings it along)
    local k
    for k in "${keep[@]}"; do
        case "$1/" in "$k"/*) return 0 ;; esac
    done
    return 1
}
for path in /run/libvirt /var/lib/libvirt /var/lib/snapshotd-tests "${extra[@]}"; do
    if [ -n "$path" ] && [ -d "$path" ] && ! inside_kept "$path"; then
        mkdir -p "$stage$path"
        mount --rbind "$path" "$stage$path"
        keep+=("$path")
    fi
done

# 2. Fresh /run (the overlays' upper layers live in it), /tmp and /var/tmp; then the
#    kept paths go back where they were.
mount -t tmpfs -o mode=0755,nosuid,nodev harness-run /run
for dir in /etc /usr/local /opt /var/lib /var/log; do
    layer=/run/harness/overlay/${dir//\//_}
    mkdir -p "$layer/upper" "$layer/work"
    mount -t overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" \
        "harness-overlay$dir" "$dir"
done
mount -t tmpfs -o mode=1777,nosuid,nodev harness-tmp /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev harness-vartmp /var/tmp
for path in "${keep[@]}"; do
    mkdir -p "$path"
    mount --move "$stage$path" "$path"
done
umount -l "$stage"
mount -t tmpfs -o mode=1777,nosuid,nodev harness-shm /dev/shm

# 3. Only what a test starts may run.  Masks go to /run/systemd/system (the tmpfs).
units=/run/systemd/system
generators=/run/systemd/system-generators
mkdir -p "$units" "$generators"
keep_units=" systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket "
for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
    for target in sysinit local-fs local-fs-pre swap cryptsetup integritysetup veritysetup \
        basic sockets timers paths slices remote-fs network network-online; do
        for unit in "$dir/$target.target.wants"/* "$dir/$target.target.requires"/*; do
            [ -e "$unit" ] || [ -L "$unit" ] || continue
            name=${unit##*/}
            case "$keep_units" in *" $name "*) continue ;; esac
            ln -sfn /dev/null "$units/$name"
        done
    done
done
# Named explicitly too, in case a package moved them: each touches the disk or the kernel.
for name in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
    systemd-tmpfiles-clean.service systemd-tmpfiles-clean.timer systemd-sysctl.service \
    systemd-modules-load.service systemd-binfmt.service systemd-sysusers.service \
    systemd-remount-fs.service systemd-random-seed.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service systemd-journal-flush.service \
    systemd-journald-audit.socket systemd-udevd.service systemd-udev-trigger.service \
    systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-networkd.service \
    systemd-resolved.service systemd-timesyncd.service systemd-logind.service \
    systemd-machine-id-commit.service systemd-firstboot.service systemd-hwdb-update.service \
    systemd-journal-catalog-update.service systemd-update-done.service ldconfig.service \
    systemd-pstore.service systemd-repart.service getty.target getty@tty1.service \
    console-getty.service serial-getty@.service dbus.service dbus.socket \
    libvirtd.service libvirtd.socket virtqemud.service virtqemud.socket \
    virtlogd.service virtlogd.socket postgresql.service; do
    ln -sfn /dev/null "$units/$name"
done
for dir in /lib/systemd/system-generators /usr/lib/systemd/system-generators \
    /etc/systemd/system-generators /usr/local/lib/systemd/system-generators; do
    for gen in "$dir"/*; do
        [ -e "$gen" ] || continue
        ln -sfn /dev/null "$generators/${gen##*/}"
    done
done
cat >"$units/harness.target" <<'UNIT'
[Unit]
Description=tests/system harness: nothing but what a test starts
DefaultDependencies=no
UNIT

exec /lib/systemd/systemd --system --unit=harness.target --log-target=journal --show-status=no \
    </dev/null
