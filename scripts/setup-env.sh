#!/usr/bin/env bash
# Sourced by scripts/*.sh: create .venv if missing, install CPU PyTorch and the project, activate it.
set -euo pipefail
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# The CPU build of torch first, so the project's `torch>=2.4` does not pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
