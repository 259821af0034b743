#!/usr/bin/env bash
# README's first command: set up a virtual environment (CPU PyTorch), then train a small TransMamba on the
# bundled Shakespeare, report its validation loss, sample from it and show the KV -> SSM state conversion.
# Extra arguments go to `transmamba demo` (e.g. `bash scripts/demo.sh --max_steps 100`, or `--compare`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
transmamba demo "$@"
