#!/usr/bin/env bash
# Create .venv and install mstc with its test, hardware and plotting extras.
# torch is pinned to the CPU build (2.13.0): an unpinned torch can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,hw,plot,images]"
echo "mstc installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
