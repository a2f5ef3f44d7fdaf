#!/usr/bin/env bash
# snapshotd's one test command.  Run it from anywhere, as root (it starts libvirtd when
# needed and the integration tests create real QEMU domains at qemu:///system):
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -k hyper   # arguments go to pytest
#
# Steps, each of which must pass: host setup, venv, ruff lint, ruff format check, mypy
# (strict, configured in pyproject.toml), the import contracts (lint-imports, declared in
# pyproject.toml's [tool.importlinter]; --no-cache: the graph builds in under a second, and
# no cache folder is left in the checkout), pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "host setup";        ./scripts/host-setup.sh
step "venv";              ./scripts/venv.sh
step "ruff check";        .venv/bin/ruff check .
step "ruff format check"; .venv/bin/ruff format --check .
step "mypy";              .venv/bin/mypy
step "import contracts";  .venv/bin/lint-imports --no-cache
step "pytest";            .venv/bin/pytest -q "$@"
