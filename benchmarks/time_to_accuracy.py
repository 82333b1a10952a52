"""Time-to-accuracy: training compute (PFLOP) and seconds until validation accuracy first
reaches each threshold.

Trains a shipped recipe (default: the flagship) on 45,000 images and validates on the other
5,000 of the training split (stratified, split seed 0), once per seed. Validation runs after
every epoch and is not counted as training time; nor is the warm-up (compile) before the first
step, which a time-budgeted recipe times apart. PFLOP (3 x forward FLOPs x images trained) are
the same on every machine; seconds are this machine's. --time-budget S plans a recipe into S
seconds (none: no budget), --epochs changes the epochs it plans for.

    .venv/bin/python benchmarks/time_to_accuracy.py [--recipe flagship|long] [--seeds 0,1,2]
        [--epochs N] [--time-budget S] [--max-train-seconds S] [--data ZIP] [--runs-dir DIR]
    .venv/bin/python benchmarks/time_to_accuracy.py --from-runs RUN [RUN ...]

--from-runs reads finished runs' metrics.csv instead of training (a recipe with `tta: final`
validates with TTA after the last epoch only, so earlier epochs count without it).

The last line gives, per threshold, the mean and spread (min-max) of the PFLOP and seconds over
the seeds that reached it, and how many did.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from budgetnet.config import load_config
from budgetnet.train.callbacks import read_metrics
from budgetnet.train.engine import train

THRESHOLDS = (0.88, 0.90, 0.91, 0.92, 0.93)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_zip = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.zip"
    parser.add_argument("--data", default=str(default_zip))
    parser.add_argument("--recipe", default="flagship")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-train-seconds", type=float)
    parser.add_argument("--time-budget", help="seconds, or none")
    parser.add_argument("--runs-dir", default="runs/time-to-accuracy")
    parser.add_argument("--from-runs", nargs="+", type=Path, help="finished run directories; nothing is trained")
    args = parser.parse_args()

    reached: dict[float, list[tuple[float, float]]] = {t: [] for t in THRESHOLDS}
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = args.from_runs or [trained(args, seed) for seed in seeds]
    for run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        recipe = args.recipe if not args.from_runs else run_dir.name
        rows = read_metrics(run_dir / "metrics.csv")
        firsts = {t: next(((r["train_pflop"], r["train_seconds"]) for r in rows if r["val_acc"] >= t), None)
                  for t in THRESHOLDS}
        for t, first in firsts.items():
            if first is not None:
                reached[t].append(first)
        best = max(r["val_acc"] for r in rows)
        print(json.dumps({
            "recipe": recipe, "run_dir": str(run_dir), "best_val_acc": best,
            "train_seconds": summary["train_seconds"], "train_pflop": summary["train_pflop"],
            "epochs": len(rows), "steps": f"{summary['steps_run']}/{summary['planned_steps']}",
            "pflop_seconds_to": {f"{100 * t:.0f}%": f for t, f in firsts.items()},
        }), flush=True)

    parts = []
    for t, firsts_t in reached.items():
        if firsts_t:
            pflop, secs = [f[0] for f in firsts_t], [f[1] for f in firsts_t]
            spread = (f" [{min(pflop):.3f}-{max(pflop):.3f} PFLOP, {min(secs):.0f}-{max(secs):.0f}s]"
                      if len(secs) > 1 else "")
            parts.append(f"{100 * t:.0f}%: {statistics.mean(pflop):.3f} PFLOP {statistics.mean(secs):.0f}s{spread} "
                         f"({len(secs)}/{len(runs)})")
        else:
            parts.append(f"{100 * t:.0f}%: not reached (0/{len(runs)})")
    print(f"time-to-accuracy {args.recipe if not args.from_runs else 'of the runs'}: " + "; ".join(parts))


def trained(args: argparse.Namespace, seed: int) -> Path:
    """The run directory of the recipe trained at `seed`."""
    train_over: dict[str, object] = {"seed": seed}
    if args.epochs:
        train_over["epochs"] = args.epochs
    if args.max_train_seconds:
        train_over["max_train_seconds"] = args.max_train_seconds
    if args.time_budget:
        train_over["time_budget_s"] = args.time_budget
    cfg = load_config(
        recipe=args.recipe,
        overrides={
            "name": f"{args.recipe}-seed{seed}",
            "data": {"path": args.data, "val_size": 5000, "split_seed": 0},
            "train": train_over,
        },
    )
    return train(cfg, runs_root=Path(args.runs_dir), quiet=True).run_dir


if __name__ == "__main__":
    main()
