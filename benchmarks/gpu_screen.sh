#!/usr/bin/env bash
# Screens changes to the default recipe on one CUDA GPU, seed by seed against the default itself.
# Every variant trains `budgetnet repeat --seeds SEEDS --data DATA FLAGS` into OUT/NAME, several
# variants at once, one process each: the default's 2M-parameter net in 500-image slices keeps an
# H200 about 6% busy (45.8 of ~790 TFLOP/s; kernel launches bound it), so processes side by side
# fill the gaps instead of queueing. Then `budgetnet compare OUT/FIRST OUT/NAME` for every other.
#
#   bash benchmarks/gpu_screen.sh DATA SEEDS OUT 'NAME [FLAGS...]' 'NAME FLAGS...' ...
#
# e.g. bash benchmarks/gpu_screen.sh ZIP 0,1,2,3 screen 'default' 'warmup --set schedule.warmup_epochs=1.8'
# The first variant is the base of the comparisons (usually the default, no flags). GPU runs of
# one seed repeat to the digit, so the pairs measure the change alone. GPU_SCREEN_SECONDS (360)
# bounds the training: the seeds finished by then pair, and the same command continues the rest.
# GPU_SCREEN_JOBS (6) variants run at a time, the next starting as one ends (six default runs side
# by side on an H100 ran 2.4x the runs an hour of one). Uses the torch found on the machine, as
# benchmarks/gpu_check.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
  echo "usage: bash benchmarks/gpu_screen.sh DATA SEEDS OUT 'NAME [FLAGS...]' ..." >&2
  exit 2
fi
DATA=$1 SEEDS=$2 OUT=$3
shift 3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# Each process only launches kernels and reads its cached arrays: 2 threads each leave the host's
# cores to the others.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${GPU_SCREEN_SECONDS:-360}))
mkdir -p "$OUT"
names=()
for variant in "$@"; do
  read -r name flags <<< "$variant"
  names+=("$name")
  while [ "$(jobs -rp | wc -l)" -ge "${GPU_SCREEN_JOBS:-6}" ]; do wait -n || true; done
  left=$((DEADLINE - SECONDS))
  if [ "$left" -le 0 ]; then echo "gpu_screen: deadline reached before $name started" >&2; continue; fi
  # shellcheck disable=SC2086  # FLAGS split into arguments on purpose
  timeout "$left" "$PY" -m budgetnet repeat --seeds "$SEEDS" --data "$DATA" --quiet \
    $flags --out "$OUT/$name" > "$OUT/$name.log" 2>&1 &
done
wait  # a variant cut off by the deadline keeps its finished seeds
for name in "${names[@]:1}"; do
  echo "## $name against ${names[0]}"
  "$PY" -m budgetnet compare "$OUT/${names[0]}" "$OUT/$name" || true
done
