#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch) and run the test suite. README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
python -m pytest -q -n 2 --dist loadfile tests "$@"
