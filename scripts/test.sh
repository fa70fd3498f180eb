#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy --strict on daemon/), then pytest.
# Installs what is missing first (scripts/setup.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check daemon tests scripts
.venv/bin/ruff format --check daemon tests scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
