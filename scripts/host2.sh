#!/usr/bin/env bash
# A second libvirt host on this machine, for snapshotd's tests: Debian 13 (trixie)'s
# libvirt 11.x and QEMU 10 in a chroot, in a network namespace of its own, reached from
# this machine (libvirt 9.0 client: virsh, libvirt-python) over qemu+ssh with a key.
#
# Usage: scripts/host2.sh up|down|status|uri|root|build|link-down|link-up|link down|link up|restart-libvirtd
#
#   up                build the chroot if needed, then start it; does nothing (quickly)
#                     when the host already answers
#   down              stop everything `up` started (by the pids it recorded), unmount the
#                     bind mounts, delete the network namespace and veth; keeps the cache
#   uri               print the libvirt URI (one line, nothing else on stdout)
#   root              print the chroot directory (the second host's /)
#   status            exit 0 when the host answers at the URI
#   link-down/link-up cut / restore the link between this machine and the host (the
#                     machine's end of the veth), to simulate a network cut
#   restart-libvirtd  stop the host's libvirtd by its pid, start it again, wait for it
#   build             only build the cached chroot
#
# What it makes, all under ${SNAPSHOTD_TEST_CACHE:-/var/cache/snapshotd-tests}/host2:
#   root/        the chroot: `debootstrap --variant=minbase trixie`, then libvirt, QEMU,
#                openssh-server; usable only once `stamp` exists (written last)
#   ssh/         the client key, the host's host key, known_hosts pinning that key, and
#                `ssh`, the wrapper the URI names in command=
# and, while up: network namespace snapshotd-h2 with a veth pair (10.213.7.1/30 here,
# 10.213.7.2/30 there); bind mounts of /proc, /sys, /dev, /dev/pts and of the test
# directories (/var/lib/snapshotd-tests, $SNAPSHOTD_TEST_CACHE/guest) at the same paths
# inside the chroot; a reaper (tini -s) in the namespace and the chroot, whose spawner
# starts sshd (listening on 10.213.7.2 only), virtlogd and libvirtd.
#
# Stop it with `scripts/host2.sh down`.  Nothing here ever looks processes up by name:
# this machine runs its own libvirtd (qemu:///system), which must not be touched.
#
# Must run as root.
set -euo pipefail

CACHE=${SNAPSHOTD_TEST_CACHE:-/var/cache/snapshotd-tests}
H2=$CACHE/host2
ROOT=$H2/root
BUILD=$H2/root.build
STAMP=$H2/stamp
SSHDIR=$H2/ssh
SUITE=trixie
MIRROR=${SNAPSHOTD_HOST2_MIRROR:-http://deb.debian.org/debian}

NS=snapshotd-h2
VETH_HOST=sdh2-host     # this machine's end (interface names: 15 characters at most)
VETH_NS=sdh2-ns         # the end inside $NS
HOST_IP=10.213.7.1
NS_IP=10.213.7.2
PREFIX=30

# The machine's test directories, bound at the same paths inside the chroot so that both
# hosts name image files alike (as hosts sharing storage do).
SHARED_DIRS=(/var/lib/snapshotd-tests "$CACHE/guest")

WAIT_SECONDS=60         # for the host to answer after `up` / `restart-libvirtd`
TERM_SECONDS=5          # SIGTERM, then SIGKILL: libvirtd 11.3 was seen ignoring SIGTERM

# This machine's side: debootstrap builds the chroot, ip makes the namespace, ssh is the
# transport, virsh checks that the host answers.
HOST_PACKAGES=(debootstrap iproute2 openssh-client libvirt-clients)
# The chroot's side.  virt-ssh-helper (libvirt-daemon-common, pulled in by these) is what
# the ssh transport runs on the far end, so netcat is not needed.  tini reaps the QEMU
# processes libvirtd daemonizes (see start_reaper).
CHROOT_PACKAGES=(
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon-system
    qemu-system-x86 qemu-utils openssh-server tini
)

# Paths inside the chroot (as the host's processes see them).
RUNDIR=/run/snapshotd-h2            # our pid files and the spawner's fifo
LOGDIR=/var/log/snapshotd-h2
SSHD_DIR=/etc/ssh/snapshotd-h2      # sshd_config, host key, authorized_keys
SPAWNER=/usr/local/sbin/snapshotd-h2-spawner
LIBVIRTD_PIDFILE=/run/libvirtd.pid
VIRTLOGD_PIDFILE=/run/virtlogd.pid
SSHD_PIDFILE=$RUNDIR/sshd.pid
REAPER_PIDFILE=$RUNDIR/reaper.pid
LIBVIRTD_LOG=/var/log/libvirt/libvirtd.log

log() { printf 'host2: %s\n' "$*" >&2; }
die() { printf 'host2: error: %s\n' "$*" >&2; exit 1; }

# The URI: libvirt runs $SSHDIR/ssh (command=) in place of ssh, with its own arguments
# (-l root, -T, -e none, the host, the remote `sh -c ...` that runs virt-ssh-helper).
# The path goes into the URI unescaped, so it must not need escaping.
[[ $SSHDIR =~ ^[A-Za-z0-9/._-]+$ ]] ||
    die "cache path $SSHDIR has characters a URI would need escaped; set SNAPSHOTD_TEST_CACHE"
URI="qemu+ssh://root@$NS_IP/system?command=$SSHDIR/ssh&no_tty=1"

# --- helpers ------------------------------------------------------------------------------

install_host_packages() {
    local pkg status missing=()
    for pkg in "${HOST_PACKAGES[@]}"; do
        # dpkg-query prints "install ok installed" only for a fully installed package.
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "installing on this machine: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
}

# Does the host answer at the URI?  Bounded: a cut link must not hang the caller.
answers() { timeout 20 virsh -c "$URI" version >/dev/null 2>&1; }

# Is PID a live process of ours, i.e. one whose / is this chroot?  Pid files outlive a
# reboot or a SIGKILL, and the pid may since belong to anything (this machine's libvirtd,
# say); a process chrooted here can only be one this script started.  A zombie has no
# readable root and so does not count.
ours() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$ROOT" ]
}

# The pid in a pid file inside the chroot when that process is ours; nothing otherwise.
pid_of() {
    local file=$ROOT$1 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc 0-9 <"$file")
    ours "$pid" || return 1
    printf '%s\n' "$pid"
}

wait_gone() {   # PID SECONDS
    local deadline=$((SECONDS + $2))
    while ours "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# SIGTERM, then SIGKILL after $TERM_SECONDS, then wait for it to be gone.
stop_pid() {    # NAME PID
    local name=$1 pid=$2
    ours "$pid" || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" "$TERM_SECONDS" && return 0
    log "$name (pid $pid) ignored SIGTERM for ${TERM_SECONDS}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "$name (pid $pid) survived SIGKILL"
}

stop_pidfile() {    # NAME PIDFILE-IN-CHROOT
    local pid
    pid=$(pid_of "$2") || return 0
    stop_pid "$1" "$pid"
}

# Remove a directory tree that may have had things mounted in it (debootstrap mounts
# /proc and /sys in its target; a killed run may leave them): unmount whatever is still
# mounted below it first, and never cross into another filesystem anyway.
remove_tree() {
    local dir=$1 mnt
    [ -e "$dir" ] || return 0
    # Deepest first: mount points sorted in reverse.
    while read -r mnt; do
        log "unmounting leftover $mnt"
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    done < <(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    rm -rf --one-file-system "$dir"
}

# Set "key = value" in a libvirt config file: replace an uncommented assignment of the key
# when there is one, append it otherwise, so the file never collects duplicates.
set_conf() {
    local file=$1 key=$2 value=$3
    touch "$file"
    if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$file"; then
        sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${value}|" "$file"
    else
        printf '%s = %s\n' "$key" "$value" >>"$file"
    fi
}

# --- build --------------------------------------------------------------------------------

# libvirt's and QEMU's settings for a root-only host without systemd, AppArmor or cgroups
# (docs: /work/shared/design/testbed.md).  Applied at build and again at every `up`, so a
# cached chroot picks up changes made here.
configure_chroot() {
    local dir=$1 conf=$1/etc/libvirt/qemu.conf
    # QEMU as root without a security driver: test images live in root-owned directories.
    set_conf "$conf" user '"root"'
    set_conf "$conf" group '"root"'
    set_conf "$conf" swtpm_user '"root"'
    set_conf "$conf" swtpm_group '"root"'
    set_conf "$conf" security_driver '"none"'
    # No cgroups to manage in a chroot; and without namespaces = [ ] starting a domain
    # fails with "Failed disable mount propagation out of the root filesystem".
    set_conf "$conf" cgroup_controllers '[ ]'
    set_conf "$conf" namespaces '[ ]'
    # A log file `up` can show when libvirtd does not answer (there is no journal here).
    set_conf "$dir/etc/libvirt/libvirtd.conf" log_outputs "\"3:file:$LIBVIRTD_LOG\""
    # virt-ssh-helper on this side picks libvirtd's socket, not the modular daemons'
    # (which are installed but never started here).
    set_conf "$dir/etc/libvirt/libvirt.conf" remote_mode '"legacy"'
}

build() {
    if [ -f "$STAMP" ] && [ -d "$ROOT" ]; then
        log "chroot cached in $ROOT ($(tr '\n' ' ' <"$STAMP"))"
        return 0
    fi
    install_host_packages
    local started=$SECONDS
    # A chroot without a stamp is a build that did not finish: never reuse it.
    remove_tree "$ROOT"
    rm -f "$STAMP"

    # The build happens in $BUILD and is renamed into place when complete.  A finished
    # debootstrap is marked, so a build cut short later (the network, say) resumes at
    # apt-get, which picks up an interrupted run itself (dpkg --configure -a).
    if [ ! -f "$BUILD/.debootstrap-done" ]; then
        remove_tree "$BUILD"
        mkdir -p "$H2"
        log "debootstrap --variant=minbase $SUITE into $BUILD (a few minutes)"
        # libvirt cannot go in --include: its systemd pre-dependency breaks the second
        # stage.  It is installed with apt-get below instead.
        debootstrap --variant=minbase "$SUITE" "$BUILD" "$MIRROR" >&2
        touch "$BUILD/.debootstrap-done"
    else
        log "resuming the build in $BUILD after its debootstrap"
    fi

    # Package scripts must not start daemons here: they would run outside the namespace,
    # on this machine's network.  policy-rc.d stays, for later apt-get runs too.
    printf '#!/bin/sh\n# snapshotd host2: no daemon starts from package scripts\nexit 101\n' \
        >"$BUILD/usr/sbin/policy-rc.d"
    chmod 755 "$BUILD/usr/sbin/policy-rc.d"

    mountpoint -q "$BUILD/proc" || mount -t proc proc "$BUILD/proc"
    # shellcheck disable=SC2064  # $BUILD is fixed; expand it now
    trap "umount '$BUILD/proc' 2>/dev/null || true" EXIT
    local apt=(chroot "$BUILD" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
    "${apt[@]}" dpkg --configure -a >&2
    "${apt[@]}" apt-get update -q >&2
    log "installing in the chroot: ${CHROOT_PACKAGES[*]}"
    "${apt[@]}" apt-get install -y -q --no-install-recommends "${CHROOT_PACKAGES[@]}" >&2
    "${apt[@]}" apt-get clean
    umount "$BUILD/proc"
    trap - EXIT

    # openssh-server's own host keys are not used (ours live in the cache, see
    # make_keys); they would only mislead.
    rm -f "$BUILD"/etc/ssh/ssh_host_*_key "$BUILD"/etc/ssh/ssh_host_*_key.pub
    configure_chroot "$BUILD"

    local libvirt qemu
    # shellcheck disable=SC2016  # ${Version} is dpkg-query's, not ours
    libvirt=$(chroot "$BUILD" dpkg-query -W -f='${Version}' libvirt-daemon)
    # shellcheck disable=SC2016
    qemu=$(chroot "$BUILD" dpkg-query -W -f='${Version}' qemu-system-x86)
    rm -f "$BUILD/.debootstrap-done"
    mv "$BUILD" "$ROOT"
    # The stamp last: only a complete chroot has one.
    printf 'suite %s\nlibvirt %s\nqemu %s\nbuilt %s\n' "$SUITE" "$libvirt" "$qemu" \
        "$(date -u +%FT%TZ)" >"$STAMP.tmp"
    mv -f "$STAMP.tmp" "$STAMP"
    log "built $ROOT in $((SECONDS - started)) s: libvirt $libvirt, qemu $qemu"
}

# --- keys and the ssh transport -------------------------------------------------------------

make_keys() {
    mkdir -p "$SSHDIR"
    chmod 700 "$SSHDIR"
    # Kept across rebuilds of the chroot, so the pinned host key never changes.
    [ -f "$SSHDIR/host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C snapshotd-host2 -f "$SSHDIR/host_ed25519_key"
    [ -f "$SSHDIR/client_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C snapshotd-host2-client -f "$SSHDIR/client_key"

    # The host key pinned: strict checking against this file only.
    printf '%s %s\n' "$NS_IP" "$(cut -d' ' -f1,2 "$SSHDIR/host_ed25519_key.pub")" \
        >"$SSHDIR/known_hosts.tmp"
    mv -f "$SSHDIR/known_hosts.tmp" "$SSHDIR/known_hosts"

    # What the URI's command= runs instead of ssh.  -F /dev/null: no ~/.ssh/config, no
    # /etc/ssh/ssh_config; nothing is read from or written to ~/.ssh.  The keepalives make
    # a connection over a cut link fail within some 6 s instead of hanging.
    cat >"$SSHDIR/ssh.tmp" <<EOF
#!/bin/sh
# Written by scripts/host2.sh: ssh to the second test host, its host key pinned.
exec /usr/bin/ssh -F /dev/null -i '$SSHDIR/client_key' -o IdentitiesOnly=yes \\
    -o UserKnownHostsFile='$SSHDIR/known_hosts' -o GlobalKnownHostsFile=/dev/null \\
    -o StrictHostKeyChecking=yes -o UpdateHostKeys=no -o CheckHostIP=no \\
    -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=2 -o ServerAliveCountMax=3 \\
    -o ControlMaster=no -o ControlPath=none -o LogLevel=ERROR "\$@"
EOF
    chmod 755 "$SSHDIR/ssh.tmp"
    mv -f "$SSHDIR/ssh.tmp" "$SSHDIR/ssh"

    # The chroot's sshd: its own config, our host key, our client key as the only way in.
    local d=$ROOT$SSHD_DIR
    mkdir -p "$d"
    chmod 755 "$d"
    install -m 600 "$SSHDIR/host_ed25519_key" "$d/host_ed25519_key"
    install -m 644 "$SSHDIR/client_key.pub" "$d/authorized_keys"
    cat >"$d/sshd_config" <<EOF
# Written by scripts/host2.sh: the second test host's sshd.
ListenAddress $NS_IP
Port 22
HostKey $SSHD_DIR/host_ed25519_key
PidFile $SSHD_PIDFILE
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $SSHD_DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
# Tests open many connections at once.
MaxStartups 200
MaxSessions 200
# Sessions whose client went away (a cut link) end within some 15 s.
ClientAliveInterval 5
ClientAliveCountMax 3
EOF
    chroot "$ROOT" /usr/sbin/sshd -t -f "$SSHD_DIR/sshd_config" ||
        die "the chroot's sshd rejects $ROOT$SSHD_DIR/sshd_config"
}

# --- network --------------------------------------------------------------------------------

network_up() {
    [ -e "/run/netns/$NS" ] || { log "creating network namespace $NS"; ip netns add "$NS"; }
    if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
        log "creating veth $VETH_HOST ($HOST_IP) <-> $VETH_NS ($NS_IP, in $NS)"
        ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NS"
    fi
    ip addr replace "$HOST_IP/$PREFIX" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NS" link set lo up
    ip -n "$NS" addr replace "$NS_IP/$PREFIX" dev "$VETH_NS"
    ip -n "$NS" link set "$VETH_NS" up
}

network_down() {
    if ip link show "$VETH_HOST" >/dev/null 2>&1; then
        log "deleting veth $VETH_HOST"
        ip link del "$VETH_HOST"
    fi
    if [ -e "/run/netns/$NS" ]; then
        log "deleting network namespace $NS"
        ip netns del "$NS"
    fi
}

# --- mounts ---------------------------------------------------------------------------------

# Source and target pairs, in mounting order (unmounted in reverse).
mount_pairs() {
    local d
    printf '%s\n' /proc "$ROOT/proc" /sys "$ROOT/sys" /dev "$ROOT/dev" /dev/pts "$ROOT/dev/pts"
    for d in "${SHARED_DIRS[@]}"; do printf '%s\n' "$d" "$ROOT$d"; done
}

mounts_up() {
    local d src dst
    for d in "${SHARED_DIRS[@]}"; do mkdir -p "$d"; done
    while read -r src && read -r dst; do
        mkdir -p "$dst"
        # A bind whose source was removed and made again shows the old, deleted directory:
        # bind the new one in its place.
        if mountpoint -q "$dst" && [ "$(stat -c %d:%i "$src")" != "$(stat -c %d:%i "$dst")" ]; then
            umount -l "$dst"
        fi
        mountpoint -q "$dst" || mount --bind "$src" "$dst"
    done < <(mount_pairs)
}

mounts_down() {
    local pairs=() i dst
    mapfile -t pairs < <(mount_pairs)
    for ((i = ${#pairs[@]} - 1; i > 0; i -= 2)); do
        dst=${pairs[i]}
        mountpoint -q "$dst" || continue
        log "unmounting $dst"
        umount "$dst" 2>/dev/null || umount -l "$dst"
    done
}

# --- daemons --------------------------------------------------------------------------------

# libvirtd daemonizes every QEMU it starts, and `virsh destroy` returns only once that QEMU
# has been reaped by whoever adopted it.  This machine's PID 1 reaps late or never (see
# host-setup.sh), so everything runs under one long-lived `tini -s` (a child subreaper),
# in the namespace and the chroot: its child, the spawner, starts each daemon on request
# (a line on a fifo), so a libvirtd restarted later is still a descendant of the same
# tini and the QEMU processes of any libvirtd are reaped at once.
write_spawner() {
    mkdir -p "$ROOT$RUNDIR" "$ROOT$LOGDIR" "$ROOT/var/log/libvirt" "$ROOT/run/sshd"
    cat >"$ROOT$SPAWNER" <<EOF
#!/bin/sh
# Written by scripts/host2.sh: runs each line written to $RUNDIR/spawn as a command
# (each daemonizes itself), so that every daemon is a descendant of the tini above.
while :; do
    while IFS= read -r cmd; do
        echo "\$(date '+%F %T') spawning: \$cmd"
        sh -c "\$cmd" </dev/null || echo "\$(date '+%F %T') failed (\$?): \$cmd"
    done <$RUNDIR/spawn
done
EOF
    chmod 755 "$ROOT$SPAWNER"
    [ -p "$ROOT$RUNDIR/spawn" ] || { rm -f "$ROOT$RUNDIR/spawn"; mkfifo -m 600 "$ROOT$RUNDIR/spawn"; }
}

start_reaper() {
    pid_of "$REAPER_PIDFILE" >/dev/null && return 0
    write_spawner
    log "starting the reaper (tini -s) and spawner in $NS and the chroot"
    # Not a process group leader here, so setsid execs without forking and $! is tini's
    # pid once nsenter and chroot have exec'd.  nsenter --net, not `ip netns exec`: that one
    # also makes a mount namespace of its own, where a shared directory bound again later
    # (mounts_up) would never show.  Its output goes to a log, never to our caller's
    # stdout/stderr (a caller capturing them would wait for them to close); and it keeps no
    # other descriptor of ours either: not fd 9, our lock, which it would hold for as long
    # as it runs, nor any pipe our caller handed down.
    # (No redirection on the loop: bash would keep a copy of the fd to restore, and close
    # it with the rest.)
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            [ "$fd" -le 2 ] || eval "exec $fd>&-"
        done
        exec setsid nsenter --net="/run/netns/$NS" chroot "$ROOT" /usr/bin/tini -s -- /bin/sh "$SPAWNER" \
            </dev/null >>"$ROOT$LOGDIR/spawner.log" 2>&1
    ) &
    local pid=$! deadline=$((SECONDS + 5))
    until ours "$pid"; do
        kill -0 "$pid" 2>/dev/null || die "the reaper exited; see $ROOT$LOGDIR/spawner.log"
        [ "$SECONDS" -lt "$deadline" ] || die "the reaper (pid $pid) did not enter the chroot"
        sleep 0.05
    done
    echo "$pid" >"$ROOT$REAPER_PIDFILE"
}

# Have the spawner run a command line (in the chroot's sh).  The fifo's open blocks until
# the spawner reads it; bounded, in case the spawner is gone.
spawn() {
    # shellcheck disable=SC2016  # $1 and $2 are the inner sh's
    timeout 30 sh -c 'printf "%s\n" "$1" >"$2"' sh "$*" "$ROOT$RUNDIR/spawn" ||
        die "the spawner did not take: $*"
}

wait_pidfile() {    # NAME PIDFILE-IN-CHROOT
    local deadline=$((SECONDS + 30))
    until pid_of "$2" >/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$ROOT$LOGDIR/spawner.log" >&2 || true
            die "$1 did not start (no live pid in $ROOT$2)"
        fi
        sleep 0.1
    done
}

start_daemons() {
    start_reaper
    if ! pid_of "$SSHD_PIDFILE" >/dev/null; then
        log "starting sshd on $NS_IP"
        spawn "/usr/sbin/sshd -f $SSHD_DIR/sshd_config -E $LOGDIR/sshd.log"
        wait_pidfile sshd "$SSHD_PIDFILE"
    fi
    # virtlogd first: libvirtd hands every QEMU process's output to it.
    if ! pid_of "$VIRTLOGD_PIDFILE" >/dev/null; then
        log "starting virtlogd"
        spawn "/usr/sbin/virtlogd -d -p $VIRTLOGD_PIDFILE"
        wait_pidfile virtlogd "$VIRTLOGD_PIDFILE"
    fi
    start_libvirtd
}

start_libvirtd() {
    # A libvirtd that is still starting up is waited for, not started a second time.
    pid_of "$LIBVIRTD_PIDFILE" >/dev/null && return 0
    log "starting libvirtd"
    spawn "/usr/sbin/libvirtd -d -p $LIBVIRTD_PIDFILE"
    wait_pidfile libvirtd "$LIBVIRTD_PIDFILE"
}

wait_answers() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            timeout 20 virsh -c "$URI" version >&2 || true
            log "last lines of $ROOT$LIBVIRTD_LOG:"
            tail -n 30 "$ROOT$LIBVIRTD_LOG" >&2 || true
            log "last lines of $ROOT$LOGDIR/sshd.log:"
            tail -n 10 "$ROOT$LOGDIR/sshd.log" >&2 || true
            die "the second host did not answer at $URI within ${WAIT_SECONDS}s"
        fi
        sleep 0.5
    done
}

stop_daemons() {
    local f
    stop_pidfile libvirtd "$LIBVIRTD_PIDFILE"
    # The domains' QEMU processes, by the pid files libvirtd keeps for them.
    for f in "$ROOT"/run/libvirt/qemu/*.pid; do
        [ -e "$f" ] || continue
        stop_pidfile "qemu ($(basename "$f" .pid))" "${f#"$ROOT"}"
    done
    stop_pidfile virtlogd "$VIRTLOGD_PIDFILE"
    stop_pidfile sshd "$SSHD_PIDFILE"
    stop_pidfile "reaper" "$REAPER_PIDFILE"
    # Whatever else is left with its / in this chroot (an sshd session, a helper): started
    # by the daemons above, so ours too; identified by its root, never by its name.
    local p pid
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        ours "$pid" && stop_pid "leftover process $(tr "\0" " " 2>/dev/null <"$p/cmdline")" "$pid"
    done
    return 0
}

# --- subcommands ----------------------------------------------------------------------------

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

# One subcommand at a time changes things (two `up`s at once would start two of each).
lock() {
    mkdir -p "$H2"
    exec 9>"$H2/lock"
    flock 9
}

cmd_up() {
    if answers; then
        mounts_up  # a shared directory removed and made again since is bound again
        log "already up: $URI"
        return 0
    fi
    install_host_packages
    build
    configure_chroot "$ROOT"
    network_up
    mounts_up
    make_keys
    start_daemons
    wait_answers
    log "up: $URI"
    timeout 20 virsh -c "$URI" version | sed -e '/^$/d' -e 's/^/host2:   /' >&2
}

cmd_down() {
    stop_daemons
    mounts_down
    network_down
    log "down (the cache in $H2 is kept)"
}

cmd_restart_libvirtd() {
    [ -f "$STAMP" ] || die "not built; run: $0 up"
    stop_pidfile libvirtd "$LIBVIRTD_PIDFILE"
    pid_of "$REAPER_PIDFILE" >/dev/null || die "the second host is not up; run: $0 up"
    start_libvirtd
    wait_answers
    log "libvirtd restarted (pid $(pid_of "$LIBVIRTD_PIDFILE"))"
}

cmd_link() {    # up|down
    ip link show "$VETH_HOST" >/dev/null 2>&1 || die "no $VETH_HOST; run: $0 up"
    ip link set "$VETH_HOST" "$1"
    log "link $1 ($VETH_HOST)"
    [ "$1" = up ] || return 0
    # Carrier comes back at once; wait (bounded) until sshd is reachable again.
    local deadline=$((SECONDS + 10))
    until timeout 1 bash -c ">/dev/tcp/$NS_IP/22" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { log "warning: $NS_IP:22 not reachable yet"; return 0; }
        sleep 0.2
    done
}

usage() {
    sed -n 's/^# Usage: //p' "$0" >&2
    exit 2
}

[ $# -eq 1 ] || { [ $# -eq 2 ] && [ "$1" = link ]; } || usage
case $1 in
    uri) printf '%s\n' "$URI" ;;
    root) printf '%s\n' "$ROOT" ;;
    status) answers ;;
    up) need_root; lock; cmd_up ;;
    down) need_root; lock; cmd_down ;;
    build) need_root; lock; build ;;
    restart-libvirtd) need_root; lock; cmd_restart_libvirtd ;;
    link-down) need_root; lock; cmd_link down ;;
    link-up) need_root; lock; cmd_link up ;;
    link)  # link down|up: the form tests/integration/target.py's SNAPSHOTD_TEST_LINK takes
        case $2 in down | up) need_root; lock; cmd_link "$2" ;; *) usage ;; esac ;;
    *) usage ;;
esac
