#!/usr/bin/env bash
# Create the project's virtualenv in .venv and install snapshotd (editable) with its dev tools.
#
# libvirt-python and systemd-python have no wheels: pip builds them from source against the
# host's libvirt-dev and libsystemd-dev (scripts/host-setup.sh installs those, plus gcc and
# python3-dev).  libvirt-python is built at the host's libvirt version, as pkg-config reports
# it (9.0.0 on Debian 12, 11.3.0 on Debian 13): a binding newer than the library may call
# symbols the library lacks.  Quick when nothing changed: pip runs only when the stamp file is missing,
# older than pyproject.toml or constraints.txt, or was written for a .venv somewhere else
# (a venv's scripts hard-code its path, so a moved checkout needs a new one).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP=$VENV/.snapshotd-installed
LIBVIRT=$(pkg-config --modversion libvirt)
HERE="$PWD/$VENV libvirt $LIBVIRT"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HERE" ] &&
    [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt constraints.txt ]; then
    echo "venv: $VENV is up to date"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "venv: creating $VENV"
    python3 -m venv "$VENV"
elif [ -f "$STAMP" ] && [ "$(cat "$STAMP")" != "$HERE" ]; then
    echo "venv: $VENV was made for $(cat "$STAMP"); making it anew"
    python3 -m venv --clear "$VENV"
fi

echo "venv: installing snapshotd and its dev dependencies into $VENV"
echo "venv: libvirt-python $LIBVIRT, for the host's libvirt"
"$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' \
    "libvirt-python==$LIBVIRT"
echo "$HERE" >"$STAMP"
