#!/usr/bin/env bash
# Set up (if needed) and run the main job on the included example:
# export it to NNEF, quantize it, export again, and check both archives in tract.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/t2n demo "${1:-out/demo}"
