"""benchmarks/gpu_screen.sh: every variant trains the same seeds into its own repeat folder,
GPU_SCREEN_JOBS of them side by side and the next as one ends, and each is compared seed by seed
with the first; too few arguments are a one-line error with exit code 2. Run on the CPU with
1,443-parameter networks (the script takes any device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_noisy_npz

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_screen.sh"
TINY = ("--input-size 16 --val-size 60 --blocks 1 --channels 8 --classes 3 --epochs 2 --batch-size 30 "
        "--lr 0.1 --precision fp32 --threads 1 --device cpu --time-budget none")


def screen(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SCREEN_SECONDS": "120", "GPU_SCREEN_JOBS": "2"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=180)


def test_variants_train_the_same_seeds_and_pair_with_the_first(tmp_path: Path) -> None:
    data = write_noisy_npz(tmp_path / "data.npz", 240, seed=0)
    out = tmp_path / "screen"
    done = screen(str(data), "0,1", str(out), f"base {TINY}", f"lr-half {TINY} --set optim.lr=0.05",
                  f"wd {TINY} --set optim.weight_decay=0.001")  # the third waits for a free slot
    assert done.returncode == 0, done.stderr
    for name in ("base", "lr-half", "wd"):
        members = json.loads((out / name / "summary.json").read_text())["members"]
        assert sorted(m["seed"] for m in members) == [0, 1]
    assert "## lr-half against base" in done.stdout
    assert "2 pairs" in done.stdout and "configs differ in: optim.lr: 0.1 -> 0.05" in done.stdout
    assert "## wd against base" in done.stdout and "optim.weight_decay:" in done.stdout


def test_too_few_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    done = screen("data.zip", "0,1", str(tmp_path / "screen"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "usage:" in done.stderr
    assert not (tmp_path / "screen").exists()
