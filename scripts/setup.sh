#!/usr/bin/env bash
# Creates .venv and installs budgetnet into it. Idempotent: a second run only checks.
# torch is pinned to the CPU wheel this machine keeps on disk; an unpinned torch would pull
# a multi-GB CUDA build. On a GPU machine, install the torch you want first, then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==${BUDGETNET_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[test,deploy,tracking,postgres]"
