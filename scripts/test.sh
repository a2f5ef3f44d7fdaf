#!/usr/bin/env bash
# snapshotd's one test command.  Run it from anywhere, as root (it starts libvirtd when
# needed and the integration tests create real QEMU domains at qemu:///system):
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -k hyper   # arguments go to pytest
#
# Steps, each of which must pass: host setup, venv, ruff lint, ruff format check, mypy
# (strict, configured in pyproject.toml), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "host setup";        ./scripts/host-setup.sh
step "venv";              ./scripts/venv.sh
step "ruff check";        .venv/bin/ruff check .
step "ruff format check"; .venv/bin/ruff format --check .
step "mypy";              .venv/bin/mypy
step "pytest";            .venv/bin/pytest -q "$@"
