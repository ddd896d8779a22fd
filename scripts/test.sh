#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, notebooks included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q "$@"
