#!/usr/bin/env bash
# snapshotd demo: run from anywhere, as root, on a Debian 12 machine.
#
#   ./scripts/demo.sh
#
# It brings up libvirtd if it is not running, installs snapshotd into .venv, and
# creates two throwaway QEMU domains (64 MiB, one qcow2 disk, no OS): one running,
# one shut off.  Part 1 takes snapshots by hand with `snapshotd take` and shows the
# state table at work.  Part 2 runs the daemon for about a minute
# (DEMO_SECONDS, default 60) with a fast policy, then shows `snapshotd status` and
# `snapshotd list --tree`.  Everything it made (domains, snapshot metadata, files,
# the daemon) is removed at the end, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/host-setup.sh >/dev/null
./scripts/venv.sh >/dev/null
SNAPSHOTD=(.venv/bin/snapshotd)
URI=qemu:///system
VIRSH=(virsh -q -c "$URI")
SECONDS_TO_RUN=${DEMO_SECONDS:-60}

TAG="$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
RUNNING="snapshotd-demo-$TAG-run"
SHUTOFF="snapshotd-demo-$TAG-off"
DIR="/var/lib/snapshotd-demo/$TAG"
DAEMON_PID=

cleanup() {
    set +e
    if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; fi
    for name in "$RUNNING" "$SHUTOFF"; do
        "${VIRSH[@]}" destroy "$name" >/dev/null 2>&1
        # Metadata of external snapshots first (children before parents), then the rest.
        for snap in $("${VIRSH[@]}" snapshot-list "$name" --name --topological 2>/dev/null | tac); do
            "${VIRSH[@]}" snapshot-delete "$name" "$snap" --metadata >/dev/null 2>&1
        done
        "${VIRSH[@]}" undefine "$name" --snapshots-metadata >/dev/null 2>&1
    done
    rm -rf "$DIR"
    rmdir /var/lib/snapshotd-demo 2>/dev/null
    echo "== cleaned up: domains $RUNNING and $SHUTOFF, the daemon and $DIR removed"
}
trap cleanup EXIT

domain_type=qemu
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then domain_type=kvm; fi

define() { # define NAME: a 64 MiB domain with one qcow2 disk in $DIR/NAME
    local name=$1
    mkdir -p "$DIR/$name"
    qemu-img create -q -f qcow2 "$DIR/$name/root.qcow2" 64M
    cat >"$DIR/$name/domain.xml" <<XML
<domain type='$domain_type'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DIR/$name/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    "${VIRSH[@]}" define "$DIR/$name/domain.xml" >/dev/null
}

define "$RUNNING"
define "$SHUTOFF"
"${VIRSH[@]}" start "$RUNNING" >/dev/null
echo "== domain $RUNNING is running, $SHUTOFF is shut off ($domain_type)"

# The demo keeps its own settings and state, away from /etc/snapshotd and /var/lib/snapshotd.
mkdir -p "$DIR/policies"
chmod 755 "$DIR" "$DIR/policies"
printf 'connect: [%s]\n' "$URI" >"$DIR/snapshotd.yaml"
chmod 644 "$DIR/snapshotd.yaml"
PATHS=(--config "$DIR/snapshotd.yaml" --policy-dir "$DIR/policies" --state-dir "$DIR/state")

run() { echo; echo "\$ snapshotd $*"; "${SNAPSHOTD[@]}" "$@"; }

echo; echo "== part 1: snapshots by hand; the state table decides what each one is"
# Running, memory left to the state table: an internal checkpoint via savevm.
run plan --domain "$RUNNING"
run take --domain "$RUNNING" --name checkpoint --description "demo: running, with memory" \
    --state-dir "$DIR/state"
# Shut off, the same request: an internal disk snapshot via qemu-img.
run take --domain "$SHUTOFF" --name offline-disks --description "demo: shut off" \
    --state-dir "$DIR/state"
# A request the table refuses (no memory to save while shut off): exit 2, nothing made.
echo; echo "\$ snapshotd take --domain $SHUTOFF --memory internal --name refused"
if "${SNAPSHOTD[@]}" take --domain "$SHUTOFF" --memory internal --name refused; then
    echo "unexpected: the refused request succeeded" >&2
    exit 1
else
    echo "(exit status $?: refused before libvirt was called)"
fi
# Running, disk-only: external, via a QEMU transaction.
run take --domain "$RUNNING" --disk-only --name disk-only --directory "$DIR/overlays" \
    --state-dir "$DIR/state"
run list --domain "$RUNNING"

echo; echo "== part 2: the daemon, for $SECONDS_TO_RUN seconds, with a policy every 10 seconds"
cat >"$DIR/policies/demo.yaml" <<YAML
# Both demo domains, every 10 seconds, internal snapshots; keep the newest 3.
name: demo
domains:
  include: ["snapshotd-demo-$TAG-*"]
schedule:
  every: 10s
retention:
  keep_last: 3
monitor:
  warn: 1m
  crit: 5m
YAML
chmod 644 "$DIR/policies/demo.yaml"
echo "\$ snapshotd run ${PATHS[*]} &"
"${SNAPSHOTD[@]}" run "${PATHS[@]}" 2>"$DIR/daemon.log" &
DAEMON_PID=$!
for ((left = SECONDS_TO_RUN; left > 0; left -= 10)); do
    sleep $((left < 10 ? left : 10))
    echo "   ... $(grep -c ': created ' "$DIR/daemon.log" || true) snapshots created," \
        "$(grep -c ': pruned ' "$DIR/daemon.log" || true) pruned"
done

run status "${PATHS[@]}"
run list --domain "$RUNNING" --tree --state-dir "$DIR/state"
run list --domain "$SHUTOFF" --tree --state-dir "$DIR/state"
run check --freshness "${PATHS[@]}"

echo; echo "== stopping the daemon (SIGTERM: it finishes what is in flight)"
kill "$DAEMON_PID"
wait "$DAEMON_PID"
echo "(exit status $?)"
DAEMON_PID=
