#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy --strict on daemon/), then pytest.
# Installs what is missing first (scripts/setup.sh). Extra arguments go to pytest.
#   --fast (first argument): the same lint and types, then only the tests that start no
#          sound server, broker or daemon and are not slow (-m "not rig and not e2e and
#          not slow"; the markers are in pyproject.toml). Under 3 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  tier=(-m "not rig and not e2e and not slow")
fi
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check daemon tests scripts
.venv/bin/ruff format --check daemon tests scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "${tier[@]}" "$@"
