#!/usr/bin/env bash
# snapshotd demo: run from anywhere, as root, on a Debian 12 machine.
#
#   ./scripts/demo.sh
#
# It brings up libvirtd if it is not running, installs snapshotd into .venv, creates
# a throwaway QEMU domain (64 MiB, one qcow2 disk, no OS), takes snapshots of it
# running and shut off with `snapshotd take`, lists them with `snapshotd list`, and
# removes the domain, its snapshot metadata and its files again, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/host-setup.sh >/dev/null
./scripts/venv.sh >/dev/null
SNAPSHOTD=(.venv/bin/snapshotd)
URI=qemu:///system
VIRSH=(virsh -q -c "$URI")

NAME="snapshotd-demo-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DIR="/var/lib/snapshotd-demo/$NAME"

cleanup() {
    set +e
    "${VIRSH[@]}" destroy "$NAME" >/dev/null 2>&1
    # Metadata of external snapshots first (children before parents), then the rest.
    for snap in $("${VIRSH[@]}" snapshot-list "$NAME" --name --topological 2>/dev/null | tac); do
        "${VIRSH[@]}" snapshot-delete "$NAME" "$snap" --metadata >/dev/null 2>&1
    done
    "${VIRSH[@]}" undefine "$NAME" --snapshots-metadata >/dev/null 2>&1
    rm -rf "$DIR"
    rmdir /var/lib/snapshotd-demo 2>/dev/null
    echo "== cleaned up: domain $NAME and $DIR removed"
}
trap cleanup EXIT

domain_type=qemu
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then domain_type=kvm; fi

mkdir -p "$DIR"
qemu-img create -q -f qcow2 "$DIR/root.qcow2" 64M
cat >"$DIR/domain.xml" <<XML
<domain type='$domain_type'>
  <name>$NAME</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DIR/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
"${VIRSH[@]}" define "$DIR/domain.xml" >/dev/null
"${VIRSH[@]}" start "$NAME" >/dev/null
echo "== domain $NAME is running ($domain_type)"

run() { echo; echo "\$ snapshotd $*"; "${SNAPSHOTD[@]}" "$@"; }

# A running domain, memory left to the state table: an internal checkpoint via savevm.
run plan --domain "$NAME"
run take --domain "$NAME" --name running-checkpoint --description "demo: running, with memory"

echo; echo "== shutting the domain off"
"${VIRSH[@]}" destroy "$NAME" >/dev/null

# A shut-off domain: the same request gives an internal disk snapshot via qemu-img.
run take --domain "$NAME" --name offline-disks --description "demo: shut off"
# A request the table refuses (no memory to save while shut off): exit 2, nothing made.
echo; echo "\$ snapshotd take --domain $NAME --memory internal --name refused"
if "${SNAPSHOTD[@]}" take --domain "$NAME" --memory internal --name refused; then
    echo "unexpected: the refused request succeeded" >&2
    exit 1
else
    echo "(exit status $?: refused before libvirt was called)"
fi

echo; echo "== starting the domain again"
"${VIRSH[@]}" start "$NAME" >/dev/null
# Running again: a disk-only snapshot is external, via a QEMU transaction.
run take --domain "$NAME" --disk-only --name running-disk-only

run list --domain "$NAME"
