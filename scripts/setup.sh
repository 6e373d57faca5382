#!/usr/bin/env bash
# Create .venv and install clipsift with everything it needs (CPU PyTorch from local disk).
# Usage: bash scripts/setup.sh [extra pip args, e.g. ".[test]"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision first, pinned to the builds this machine holds locally
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q -e "${1:-.}"
echo "clipsift installed in .venv ($(.venv/bin/clipsift --version 2>/dev/null || true))" >&2
