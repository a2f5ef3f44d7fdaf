#!/usr/bin/env bash
# Build the small real Linux guest that the integration tests boot (tests/integration/guest.py):
# a Debian kernel booted directly (no bootloader, no root disk), an initramfs that is the whole
# guest (busybox and qemu-guest-agent), and an ext4 data disk template.  Everything comes from
# Debian 12 packages that are downloaded and unpacked here; nothing is installed on the host.
#
# Output, in ${SNAPSHOTD_TEST_CACHE:-/var/cache/snapshotd-tests}/guest:
#   vmlinux            the uncompressed kernel of bookworm's linux-image-amd64.  Under TCG a
#                      bzImage spends most of its boot decompressing itself; QEMU loads an ELF
#                      vmlinux through its PVH entry point with nothing to decompress.
#   initramfs.cpio.gz  /init (busybox sh), busybox-static, qemu-ga and the libraries ldd lists,
#                      the modules for virtio-pci, virtio disks, the virtio console and ext4,
#                      and the fsfreeze hook (see below)
#   data.qcow2         64 MiB ext4 labelled "snapdata"; each guest gets a copy, mounted at /data
#   stamp              written last: the recipe version and the package versions used
#
# Safe to run any number of times: with a stamp of the current recipe present it does nothing.
# A change to what this script builds must bump RECIPE so that cached builds are redone.
# Concurrent runs wait for each other (flock), and a half-made build is never left in place.
#
# The guest, once booted:
#   * mounts proc, sys, devtmpfs and a tmpfs on /run, loads the modules, mounts LABEL=snapdata
#     at /data;
#   * runs `qemu-ga -m virtio-serial -p /dev/vportXpY -F/etc/qemu/fsfreeze-hook` on the port
#     named org.qemu.guest_agent.0 (restarting it should it exit), and prints
#     "snapshotd-guest: qemu-ga started ..." on the serial console;
#   * the hook appends "<epoch.fraction> <arg>" to /run/freeze.log: "freeze" just before the
#     agent freezes the filesystems, "thaw" just after it thawed them.  When /run/freeze-delay
#     holds a number N, the freeze hook first logs "freeze-delay N" and sleeps N seconds, so
#     that guest-fsfreeze-freeze really hangs that long.  /run is a tmpfs, never frozen.
#
# Must run as root (the cache lives under /var/cache).  Takes about 30 s here, mostly the
# kernel's 70 MB package (unpacking it, decompressing the kernel, gzip -9 of the initramfs);
# the downloaded packages are not kept.
set -euo pipefail

RECIPE=1
CACHE=${SNAPSHOTD_TEST_CACHE:-/var/cache/snapshotd-tests}
OUT=$CACHE/guest
STAMP=$OUT/stamp
DATA_SIZE_MIB=64
DATA_LABEL=snapdata
# What the guest loads, by module name; depmod's modules.dep brings their dependencies.
# crc32c_generic is only a soft dependency of ext4 (found at mount time through the crypto
# API), so it is named here: mke2fs enables metadata_csum, which needs it.
MODULES=(virtio_pci virtio_blk virtio_console crc32c_generic ext4)

log() { printf 'guest-image: %s\n' "$*"; }
die() { printf 'guest-image: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it writes $CACHE)"
started=$SECONDS
stamp_ok() { [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "recipe $RECIPE" ]; }

# A cached build is used without looking at anything else, not even the host's packages.
if stamp_ok; then
    log "up to date in $OUT, nothing to do ($((SECONDS - started)) s): $(tr '\n' ' ' <"$STAMP")"
    exit 0
fi

# --- 0. host tools -----------------------------------------------------------------------
# The few tools that run on the host, by the package that has them; a package is installed
# only when its tool is missing and dpkg says it is not installed (one `apt-get update`,
# and only then).  apt, dpkg, libc-bin (ldd), gzip and util-linux (flock) are essential
# packages of every Debian system; busybox and cpio are not needed on the host (the staged
# busybox-static writes the cpio archive).
for tool in apt-get apt-cache dpkg-deb dpkg-query ldd gzip flock; do
    command -v "$tool" >/dev/null || die "$tool is missing: is this a Debian system?"
done
declare -A TOOL_PACKAGE=([mkfs.ext4]=e2fsprogs [qemu-img]=qemu-utils [xz]=xz-utils)
missing=()
for tool in "${!TOOL_PACKAGE[@]}"; do
    pkg=${TOOL_PACKAGE[$tool]}
    command -v "$tool" >/dev/null && continue
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" = "install ok installed" ] &&
        die "$tool is missing although $pkg is installed"
    missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/guest.lock"
flock 9
if stamp_ok; then # another run built it while this one waited
    log "up to date in $OUT (built by a concurrent run)"
    exit 0
fi

# The build directory is on the cache's filesystem, so the results are moved, not copied.
WORK=$(mktemp -d "$CACHE/guest-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/initramfs

# --- 1. packages -------------------------------------------------------------------------
# apt-get download runs as root here: the _apt sandbox user cannot write into $WORK.
APT_OPTS=(-q -o APT::Sandbox::User=root)
# apt-cache knows nothing before a first `apt-get update` on a fresh machine: update once,
# and only then.
if ! apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1; then
    log "apt lists are empty: apt-get update"
    apt-get update -q
fi

# download PKG: fetch PKG's .deb into $WORK/debs and print its path.
download() {
    mkdir -p "$WORK/debs"
    (cd "$WORK/debs" && apt-get download "${APT_OPTS[@]}" "$1" >/dev/null) ||
        die "apt-get download $1 failed"
    ls "$WORK/debs/$1"_*.deb
}
version_of() { dpkg-deb -f "$1" Version; }

# linux-image-amd64 is a metapackage; the kernel is in the package it depends on.
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on"
log "downloading $kpkg, busybox-static, qemu-guest-agent"
kdeb=$(download "$kpkg")
bdeb=$(download busybox-static)
gdeb=$(download qemu-guest-agent)
dpkg-deb -x "$kdeb" "$WORK/kernel"
dpkg-deb -x "$bdeb" "$WORK/busybox"
dpkg-deb -x "$gdeb" "$WORK/agent"
kver=$(ls "$WORK/kernel/lib/modules")
[ -d "$WORK/kernel/lib/modules/$kver" ] || die "not one kernel version in $kpkg: $kver"
BUSYBOX=$WORK/busybox/bin/busybox
QEMU_GA=$WORK/agent/usr/sbin/qemu-ga

# --- 2. vmlinux --------------------------------------------------------------------------
# As the kernel's scripts/extract-vmlinux does: look for each compressor's magic in the
# bzImage and decompress from every place it occurs until the result is an ELF file.
# (`tr` turns the magic's first byte into a newline and the rest into a marker, so grep
# finds the magic at the start of a "line" and -b gives its offset.)
vmlinuz=$WORK/kernel/boot/vmlinuz-$kver
vmlinux=$WORK/vmlinux
is_elf() { [ "$(head -c4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }
try_decompress() { # magic, marker, decompressor
    local pos
    for pos in $(tr "$1\n$2" "\n$2=" <"$vmlinuz" | grep -abo "^$2" || true); do
        pos=${pos%%:*}
        tail -c+"$pos" "$vmlinuz" | $3 >"$vmlinux" 2>/dev/null || true
        if is_elf "$vmlinux"; then return 0; fi
    done
    return 1
}
try_decompress '\3757zXZ\000' abcde 'xz -dc' ||
    try_decompress '\037\213\010' xy 'gzip -dc' ||
    try_decompress '(\265/\375' xxx 'zstd -dc' ||
    die "no xz, gzip or zstd payload that decompresses to an ELF kernel in $vmlinuz"

# --- 3. initramfs ------------------------------------------------------------------------
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,data,tmp,etc/qemu,root}
cp "$BUSYBOX" "$STAGE/bin/busybox"
# Every applet as a symlink where busybox would install it (sh, mount, modprobe, sync, ...).
"$BUSYBOX" --list-full | while read -r applet; do
    [ -e "$STAGE/$applet" ] || ln -s /bin/busybox "$STAGE/$applet"
done
cp "$QEMU_GA" "$STAGE/usr/sbin/qemu-ga"

# The agent's shared libraries, as ldd resolves them on this host.  A library the host lacks
# comes from its Debian package, unpacked into $WORK/libs (dependencies of qemu-guest-agent,
# recursively, that dpkg says are not installed here).
declare -A seen=()
fetch_missing_deps() { # deb
    local dep
    for dep in $(dpkg-deb -f "$1" Depends | tr ',' '\n' | sed -E 's/[|(].*//; s/[[:space:]]//g'); do
        if [ -z "$dep" ] || [ -n "${seen[$dep]:-}" ]; then continue; fi
        seen[$dep]=1
        [ "$(dpkg-query -W -f='${Status}' "$dep" 2>/dev/null || true)" = "install ok installed" ] &&
            continue
        log "host lacks $dep: downloading it for its libraries"
        local deb
        deb=$(download "$dep")
        dpkg-deb -x "$deb" "$WORK/libs"
        fetch_missing_deps "$deb"
    done
}
libpath=""
if ldd "$QEMU_GA" | grep -q 'not found'; then
    fetch_missing_deps "$gdeb"
    libpath=$WORK/libs/lib/x86_64-linux-gnu:$WORK/libs/usr/lib/x86_64-linux-gnu
fi
libs=$(LD_LIBRARY_PATH=$libpath ldd "$QEMU_GA")
if grep -q 'not found' <<<"$libs"; then
    die "qemu-ga's libraries not found: $(grep 'not found' <<<"$libs" | tr '\n' ' ')"
fi
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)":
# each library goes to the path the dynamic linker will look for it at in the guest (one
# found in $WORK/libs to the path its package puts it at, in a default search directory).
while read -r name arrow path _; do
    if [ "$arrow" != "=>" ]; then path=$name; fi
    case $path in /*) ;; *) continue ;; esac # linux-vdso.so.1 has no file
    dest=${path#"$WORK/libs"}
    mkdir -p "$STAGE$(dirname "$dest")"
    cp -L "$path" "$STAGE$dest"
done <<<"$libs"

# Modules: the dependency closure of MODULES, from a modules.dep that busybox's depmod
# writes for the whole unpacked kernel; then a modules.dep for the staged subset, so that
# busybox modprobe in the guest loads each module after its dependencies.
kmods=$WORK/kernel/lib/modules/$kver
"$BUSYBOX" depmod -b "$WORK/kernel" "$kver"
declare -A want=()
add_module() { # path relative to $kmods
    [ -z "${want[$1]:-}" ] || return 0
    want[$1]=1
    local dep deps
    # modules.dep: "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko ..."
    read -ra deps < <(awk -v m="$1:" '$1 == m {$1 = ""; print}' "$kmods/modules.dep") || true
    for dep in "${deps[@]}"; do
        add_module "${dep#/lib/modules/"$kver"/}"
    done
}
for mod in "${MODULES[@]}"; do
    # Module files spell a name's underscores as dashes or underscores, as they like.
    path=$(cd "$kmods" && find kernel -name "$mod.ko*" -o -name "${mod//_/-}.ko*" | head -n1)
    if [ -z "$path" ]; then
        # Not a module: built into the kernel (modules.builtin), nothing to load.
        grep -qE "/${mod//_/[-_]}\.ko$" "$kmods/modules.builtin" ||
            die "module $mod is neither a module nor built into $kver"
        continue
    fi
    add_module "$path"
done
for path in "${!want[@]}"; do
    mkdir -p "$STAGE/lib/modules/$kver/$(dirname "$path")"
    cp "$kmods/$path" "$STAGE/lib/modules/$kver/$path"
done
cp "$kmods/modules.builtin" "$kmods/modules.order" "$STAGE/lib/modules/$kver/" 2>/dev/null || true
"$BUSYBOX" depmod -b "$STAGE" "$kver"

cat >"$STAGE/init" <<EOF
#!/bin/sh
# The whole test guest: PID 1 of an initramfs, built by scripts/guest-image.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "snapshotd-guest: \$*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
: >/run/freeze.log # there from the start, so that the host can always read it
for m in ${MODULES[*]}; do
    modprobe "\$m" || say "modprobe \$m failed"
done
# The data disk, by label: devices may take a moment to appear after their driver loads.
i=0
until dev=\$(findfs LABEL=$DATA_LABEL 2>/dev/null); do
    i=\$((i + 1))
    [ "\$i" -le 50 ] || { say "no disk labelled $DATA_LABEL"; break; }
    sleep 0.1
done
if [ -n "\${dev:-}" ]; then
    if mount -t ext4 "\$dev" /data; then say "mounted \$dev at /data"; else say "mount \$dev failed"; fi
fi
# The agent's port: the virtio-serial port that the host named org.qemu.guest_agent.0.
i=0
port=
while [ -z "\$port" ]; do
    for f in /sys/class/virtio-ports/*/name; do
        [ -r "\$f" ] && [ "\$(cat "\$f")" = org.qemu.guest_agent.0 ] || continue
        p=\${f%/name}
        port=/dev/\${p##*/}
    done
    [ -n "\$port" ] && [ -e "\$port" ] && break
    port=
    i=\$((i + 1))
    if [ "\$i" -gt 50 ]; then say "no virtio port named org.qemu.guest_agent.0: no agent"; break; fi
    sleep 0.1
done
# Never exit (PID 1 exiting panics the kernel): run the agent, again should it stop.
while :; do
    if [ -n "\$port" ]; then
        qemu-ga -m virtio-serial -p "\$port" -t /run -f /run/qemu-ga.pid -F/etc/qemu/fsfreeze-hook &
        say "qemu-ga started (pid \$!) on \$port"
        wait \$!
        say "qemu-ga exited with status \$?; restarting it"
        sleep 1
    else
        sleep 3600
    fi
done
EOF

cat >"$STAGE/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
# qemu-ga's fsfreeze hook (qemu-ga -F): called with "freeze" before the agent freezes the
# filesystems and with "thaw" after it thawed them.  Logs to the tmpfs /run, never frozen.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
now() { adjtimex | awk '/tv_sec/ {s = $2} /tv_usec/ {u = $2} END {printf "%d.%06d", s, u}'; }
log() { echo "$(now) $*" >>/run/freeze.log; }
if [ "$1" = freeze ] && [ -r /run/freeze-delay ]; then
    delay=$(cat /run/freeze-delay)
    if [ -n "$delay" ]; then
        log "freeze-delay $delay"
        sleep "$delay"
    fi
fi
log "$1"
exit 0
EOF
chmod 0755 "$STAGE/init" "$STAGE/etc/qemu/fsfreeze-hook"

# newc is the format the kernel unpacks; busybox's cpio writes it (no cpio needed on the host).
(cd "$STAGE" && find . -mindepth 1 | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
    gzip -9n >"$WORK/initramfs.cpio.gz"

# --- 4. data disk template -----------------------------------------------------------------
# Formatted here, on a plain file: mkfs.ext4 inside the TCG guest took 8 s.
truncate -s "${DATA_SIZE_MIB}M" "$WORK/data.raw"
mkfs.ext4 -F -q -L "$DATA_LABEL" -m 0 -E root_owner=0:0 "$WORK/data.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/data.raw" "$WORK/data.qcow2"

# --- 5. into place, stamp last -------------------------------------------------------------
mkdir -p "$OUT"
rm -f "$STAMP"
for f in vmlinux initramfs.cpio.gz data.qcow2; do
    chmod 0644 "$WORK/$f"
    mv -f "$WORK/$f" "$OUT/$f"
done
{
    echo "recipe $RECIPE"
    echo "$kpkg $(version_of "$kdeb")"
    echo "busybox-static $(version_of "$bdeb")"
    echo "qemu-guest-agent $(version_of "$gdeb")"
} >"$WORK/stamp"
mv -f "$WORK/stamp" "$STAMP"

kib() { echo "$(($(stat -c %s "$1") / 1024)) KiB"; }
log "built in $OUT in $((SECONDS - started)) s: initramfs $(kib "$OUT/initramfs.cpio.gz"), vmlinux $(kib "$OUT/vmlinux")"
sed 's/^/guest-image:   /' "$STAMP"
