#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, notebooks included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m ruff check .
# one worker per core (at most 4: each holds torch and a tract worker); the tests that share
# a module-scoped export carry an xdist_group mark, which --dist loadgroup keeps on one worker
.venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup "$@"
