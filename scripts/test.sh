#!/usr/bin/env bash
# snapshotd's one test command.  Run it from anywhere, as root (it starts libvirtd when
# needed and the integration tests create real QEMU domains at qemu:///system):
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -k hyper   # arguments go to pytest
#
# Steps, each of which must pass: host setup; PostgreSQL (scripts/postgres.sh: a cluster
# of the tests' own for the shared catalog, stopped at the end when this run started it);
# the second libvirt host (scripts/host2.sh:
# Debian 13's libvirt 11 in a chroot and network namespace, over qemu+ssh) and the guest
# image (scripts/guest-image.sh), both built once and cached, started in the background
# so their downloads overlap the next steps; venv, ruff lint, ruff format check, mypy
# (strict, configured in pyproject.toml), the import contracts (lint-imports, declared in
# pyproject.toml's [tool.importlinter]; --no-cache: the graph builds in under a second, and
# no cache folder is left in the checkout); pytest on this machine's libvirt (9.0 on
# Debian 12); the whole integration suite again with the second host as the tested host
# and this machine's libvirtd as its peer (tests/integration/target.py).  The second
# host is stopped at the end when this run started it.
#
# Each pytest runs on $SNAPSHOTD_TEST_WORKERS xdist workers (default 3: the tests mostly
# wait on libvirt, QEMU and schedules, so three keep two CPUs busy); tests/conftest.py
# keeps the real guest's tests on one worker and the booted systemd's on another.  The
# tests marked disruptive (a libvirtd restart, a network cut) reach every test of their
# host, so they run alone afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

WORKERS=${SNAPSHOTD_TEST_WORKERS:-3}

# pytest twice: the tests side by side on the workers, then the disruptive ones alone
# (none of those selected by the caller's arguments is no failure).
pytest_twice() {
    .venv/bin/pytest -q -n "$WORKERS" --dist loadgroup -m "not disruptive" "$@"
    local rc=0
    .venv/bin/pytest -q -m disruptive "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        return "$rc"
    fi
}

LOGS=$(mktemp -d /tmp/snapshotd-test.XXXXXX)
started_host2=no
started_postgres=no
finish() {
    if [ "$started_host2" = yes ]; then
        ./scripts/host2.sh down >>"$LOGS/host2.log" 2>&1 || true
    fi
    if [ "$started_postgres" = yes ]; then
        ./scripts/postgres.sh stop >>"$LOGS/postgres.log" 2>&1 || true
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
step "PostgreSQL, the shared catalog's test server (scripts/postgres.sh)"
./scripts/postgres.sh status >/dev/null 2>&1 || started_postgres=yes
./scripts/postgres.sh up
step "venv";              ./scripts/venv.sh
step "ruff check";        .venv/bin/ruff check .
step "ruff format check"; .venv/bin/ruff format --check .
step "mypy";              .venv/bin/mypy
step "import contracts";  .venv/bin/lint-imports --no-cache
step "guest image";       await "$guest" guest
step "pytest";            pytest_twice "$@"
step "second host";       await "$host2" host2
step "pytest on the second host ($(./scripts/host2.sh uri | sed 's/?.*//')): the integration suite"
SNAPSHOTD_TEST_URI=$(./scripts/host2.sh uri) \
SNAPSHOTD_TEST_LIBVIRT_ROOT=$(./scripts/host2.sh root) \
SNAPSHOTD_TEST_LIBVIRTD_START="./scripts/host2.sh up" \
SNAPSHOTD_TEST_LINK="./scripts/host2.sh link" \
SNAPSHOTD_TEST_PEER_URI=qemu:///system \
    pytest_twice tests/integration "$@"
step "done"
