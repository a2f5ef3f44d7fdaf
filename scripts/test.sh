#!/usr/bin/env bash
# snapshotd's one test command.  Run it from anywhere, as root (it starts libvirtd when
# needed and the integration tests create real QEMU domains at qemu:///system):
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -k hyper   # arguments go to pytest
#
# Steps, each of which must pass: host setup; the second libvirt host (scripts/host2.sh:
# Debian 13's libvirt 11 in a chroot and network namespace, over qemu+ssh) and the guest
# image (scripts/guest-image.sh), both built once and cached, started in the background
# so their downloads overlap the next steps; venv, ruff lint, ruff format check, mypy
# (strict, configured in pyproject.toml), the import contracts (lint-imports, declared in
# pyproject.toml's [tool.importlinter]; --no-cache: the graph builds in under a second, and
# no cache folder is left in the checkout); pytest on this machine's libvirt (9.0 on
# Debian 12); pytest again with the second host as the tested host (SECOND_HOST_TESTS)
# and this machine's libvirtd as its peer (tests/integration/target.py).  The second
# host is stopped at the end when this run started it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

# The integration tests that run against the second host too: the state table rows,
# take/list, retention and chain merges, export/import/replicate/revert, the daemon, the
# real guest, and what needs two hosts.
SECOND_HOST_TESTS=(
    tests/integration/test_table_rows.py
    tests/integration/test_cli_disks.py
    tests/integration/test_policyrun.py
    tests/integration/test_faults_time.py
    tests/integration/test_metadata.py
    tests/integration/test_daemon.py
    tests/integration/test_hypervisor.py
    tests/integration/test_guest.py
    tests/integration/test_guest_snapshots.py
    tests/integration/test_two_hosts.py
    tests/integration/test_zz_libvirtd_restart.py
)

LOGS=$(mktemp -d /tmp/snapshotd-test.XXXXXX)
started_host2=no
finish() {
    if [ "$started_host2" = yes ]; then
        ./scripts/host2.sh down >>"$LOGS/host2.log" 2>&1 || true
    fi
}
trap finish EXIT

# Wait for a background step; on failure show its log and stop.
await() {
    local pid=$1 name=$2
    if ! wait "$pid"; then
        tail -n 60 "$LOGS/$name.log" >&2
        printf 'test.sh: %s failed (log: %s)\n' "$name" "$LOGS/$name.log" >&2
        exit 1
    fi
    tail -n 3 "$LOGS/$name.log"
}

step "host setup";        ./scripts/host-setup.sh
step "second host and guest image, in the background (logs in $LOGS)"
./scripts/host2.sh status >/dev/null 2>&1 || started_host2=yes
./scripts/host2.sh up >"$LOGS/host2.log" 2>&1 &
host2=$!
./scripts/guest-image.sh >"$LOGS/guest.log" 2>&1 &
guest=$!
step "venv";              ./scripts/venv.sh
step "ruff check";        .venv/bin/ruff check .
step "ruff format check"; .venv/bin/ruff format --check .
step "mypy";              .venv/bin/mypy
step "import contracts";  .venv/bin/lint-imports --no-cache
step "guest image";       await "$guest" guest
step "pytest";            .venv/bin/pytest -q "$@"
step "second host";       await "$host2" host2
step "pytest on the second host ($(./scripts/host2.sh uri | sed 's/?.*//'))"
SNAPSHOTD_TEST_URI=$(./scripts/host2.sh uri) \
SNAPSHOTD_TEST_LIBVIRT_ROOT=$(./scripts/host2.sh root) \
SNAPSHOTD_TEST_LIBVIRTD_START="./scripts/host2.sh up" \
SNAPSHOTD_TEST_LINK="./scripts/host2.sh link" \
SNAPSHOTD_TEST_PEER_URI=qemu:///system \
    .venv/bin/pytest -q "${SECOND_HOST_TESTS[@]}" "$@"
