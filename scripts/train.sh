#!/usr/bin/env bash
# Set-up (if needed) and the main job: train the default flagship recipe.
# Here: on the shared CIFAR-10 zip beside the repo. Elsewhere: on CIFAR-10 downloaded from the
# official address into ./data. Extra arguments are passed to `budgetnet train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SHARED=../shared/data/cifar10-train-jpg.zip
if [ -f "$SHARED" ]; then
  exec .venv/bin/budgetnet train --data "$SHARED" "$@"
else
  exec .venv/bin/budgetnet train --data data/cifar-10-python.tar.gz --download "$@"
fi
