#!/usr/bin/env bash
# GPU readiness in one run (at most 8 minutes on one GPU). Uses the torch found on the machine
# (never installs one): the tests marked gpu (the training step on CUDA: bf16, channels_last,
# compile, the device loader, a resume), then the default recipe with no time budget on the
# validation protocol (45k/5k, split seed 0), printing validation accuracy, training seconds,
# images/s and TFLOP/s; then, in the time left of the 8 minutes, the full-size ablation table
# (benchmarks/ablations.py --protocol full, seeds 0-2, resumable: run it again to continue).
#
#   bash benchmarks/gpu_check.sh [DATA [ABLATION ARGS...]]
#
# DATA: the CIFAR-10 zip/folder (default ../shared/...); ABLATION ARGS go to ablations.py after
# its defaults, e.g. `--seeds 0,1,2,3,4,5 --rows "widths 48/192/192" --rows "head lr x2"` for more
# seeds of fewer rows. GPU_CHECK_SECONDS (480) is the whole check's wall-clock budget.
#
# budgetnet's pure-Python dependencies must be importable (pip install -e . where PyPI is
# reachable; elsewhere install the wheels you brought). Output: stdout, and gpu_check/ in the
# repository (the run directory, the test log, the ablation rows and table).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10-train-jpg.zip}
shift $(($# > 0 ? 1 : 0))
BUDGET=${GPU_CHECK_SECONDS:-480}
OUT=${GPU_CHECK_OUT:-gpu_check}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible to torch " + torch.__version__)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
mkdir -p "$OUT"
timeout 180 "$PY" -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py -q 2>&1 | tee "$OUT/tests.log" \
  || echo "gpu_check: the GPU tests failed (above, and $OUT/tests.log); going on with the training run"
rm -rf "$OUT/flagship"
timeout 270 "$PY" -m budgetnet train --data "$DATA" --time-budget none --out "$OUT/flagship" --quiet
"$PY" - "$OUT/flagship/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
rate = s["images_seen"] / s["train_seconds"]
print(f"gpu_check: default recipe val {100 * s['final_val_acc']:.2f}% (TTA), {s['train_seconds']:.1f} s of training, "
      f"{rate:.0f} img/s, {s['train_pflop'] * 1e3 / s['train_seconds']:.1f} TFLOP/s, {s['train_pflop']:.4f} PFLOP, "
      f"{s['precision']}, {s['device']}")
PY
LEFT=$((BUDGET - SECONDS - 60))  # a minute's margin for the row in flight when the deadline passes
if [ "$LEFT" -gt 0 ]; then
  # The rows finished so far are in the .jsonl whether or not the row in flight is cut off.
  timeout $((LEFT + 50)) "$PY" benchmarks/ablations.py --protocol full --data "$DATA" --seeds 0,1,2 \
    --deadline-s "$LEFT" --runs-dir "$OUT/ablations" --out "$OUT/ablations-full.jsonl" \
    --table "$OUT/ablations-full.md" "$@" || echo "gpu_check: ablations stopped at the check's budget"
fi
