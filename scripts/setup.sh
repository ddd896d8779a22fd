#!/usr/bin/env bash
# Create .venv with the CPU build of torch (pinned: an unpinned torch pulls a CUDA build)
# and t2n installed in editable mode with the given extras (default: none).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
