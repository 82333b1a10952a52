#!/usr/bin/env bash
# Set-up (if needed), the linter (config in pyproject.toml) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
