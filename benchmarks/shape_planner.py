"""The default recipe's shape table, and the planner's choice against a width sweep.

`table`: trains the default recipe's model at each width of WIDTHS for each of its epoch
counts (full schedules, no time or compute budget; 45k/5k validation protocol, split seed 0,
TTA on the final validation) and writes the shape table the planner reads. Runs already
finished in `--runs-dir` are read, not trained again, so a killed build continues.

`sweep --seconds S`: trains `budgetnet train --time-budget S` as a new user would (the
planner picks the shape and its epochs) and every other shape of the recipe's shipped table, as
that table names it (its model overrides, pools included), with the same S and the epochs S
holds for it, and prints one table: shape, planned or not, expected and measured validation
accuracy, epochs, seconds.

    .venv/bin/python benchmarks/shape_planner.py table [--data ZIP] [--runs-dir DIR]
        [--out src/budgetnet/recipes/shapes/flagship.yaml]
    .venv/bin/python benchmarks/shape_planner.py sweep --seconds 300 [--uncapped] [--data ZIP] [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from budgetnet.config import load_config
from budgetnet.machine import describe_machine
from budgetnet.shape_planner import epochs_to_train, load_shape_table
from budgetnet.train.engine import train

# speedrun_2m's shape ([64, 256, 256]) at a quarter and half of its width, itself, and
# speedrun_5m's wider shape (the long recipe's net, 4.6M params), for budgets of an hour; the
# epoch counts bracket what 300 s to an hour buy on CPUs (in 300 s a 2-core AVX2 EPYC trains the
# full width ~1 epoch and the quarter width ~6; a 2-core AMX Xeon ~7 and ~35, and in an hour
# speedrun_5m 31-38 and speedrun_2m 72-79: the curves run to 32 epochs, since beyond its last point
# a curve is read flat, and at 16 the two were level).
WIDTHS: dict[str, tuple[list[int], list[int]]] = {
    "speedrun w16": ([16, 64, 64], [2, 4, 8, 16, 32]),
    "speedrun w32": ([32, 128, 128], [2, 4, 8, 16, 32]),
    "speedrun w64 (speedrun_2m)": ([64, 256, 256], [2, 4, 8, 16, 32]),
    "speedrun w128 (speedrun_5m)": ([128, 384, 384], [2, 4, 8, 16, 32]),
}


def trained(run_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    summary = run_dir / "summary.json"
    if not summary.exists():
        train(load_config(overrides=overrides), run_dir, quiet=True, resume=run_dir.exists())
    return json.loads(summary.read_text())


def build_table(args: argparse.Namespace) -> None:
    shapes = []
    for name, (channels, epoch_counts) in WIDTHS.items():
        points = []
        for epochs in epoch_counts:
            run = Path(args.runs_dir) / f"w{channels[0]}-e{epochs}"
            s = trained(run, {"data": {"path": args.data}, "model": {"channels": channels},
                              "train": {"epochs": epochs, "pflop_budget": None}})
            points.append({"epochs": epochs, "val_acc": round(100 * s["final_val_acc"], 2)})
            print(f"{name:28s} {epochs:2d} epochs  {100 * s['final_val_acc']:.2f}%  "
                  f"{s['train_pflop']:.4f} PFLOP  {s['train_seconds']:.0f} s", flush=True)
        shapes.append({"name": name, "model": {"channels": channels}, "points": points})
    made_by = (
        "python benchmarks/shape_planner.py table: the default recipe (flagship) with only the "
        "model's widths changed, each width trained for each epoch count as a full schedule "
        "(seed 0, no time budget or compute cap), on 45,000 images of the CIFAR-10 JPEG training split, "
        "validated with TTA on the other 5,000 (stratified, split seed 0). Machine: " + describe_machine()
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# The default recipe's shapes and their measured validation accuracy (%) after full\n"
        "# schedules of `epochs` epochs: budgetnet/shape_planner.py reads it to pick a shape for a\n"
        "# time budget. Made by the command in `made_by`; one seed per point.\n"
        + yaml.safe_dump({"made_by": made_by, "shapes": shapes}, sort_keys=False, width=100)
    )
    load_shape_table(str(out))  # what was written must load
    print(f"wrote {out}")


def sweep(args: argparse.Namespace) -> None:
    root = Path(args.runs_dir) / f"sweep-{args.seconds:g}s{'-uncapped' if args.uncapped else ''}"
    # The default recipe's 0.25 PFLOP cap binds as well as S (the tighter wins); --uncapped lifts
    # it, for budgets that buy more than that compute (on the AMX Xeon, past about 6 minutes).
    limits = {"pflop_budget": None} if args.uncapped else {}
    base = {"data": {"path": args.data}, "train": {"time_budget_s": args.seconds, **limits}}
    planned = trained(root / "planned", base)
    plan = json.loads((root / "planned" / "shape_plan.json").read_text())
    # Each shape as the table names it: the shipped table's shapes carry their pools (2x2, as
    # measured), which the recipe's model (anti-aliased) would otherwise give them.
    recipe = load_config().train
    models = {shape.name: shape.model for shape in load_shape_table(recipe.shape_table).shapes}
    rows = []
    for candidate in plan["candidates"]:
        name = candidate["name"]
        model = models[name]
        # Each shape for the epochs S holds at its own pace, as the planner sets them for its choice
        # (the recipe's epochs would leave a small shape's S mostly unspent on a fast machine).
        epochs = epochs_to_train(candidate["epochs"])
        s = planned if name == plan["choice"] else trained(
            root / f"w{model['channels'][0]}", {**base, "model": model, "train": {**base["train"], "epochs": epochs}})
        # A shape the planner ruled out untimed carries its ceiling: at most that.
        expected = f"{'' if candidate.get('timed', True) else '<= '}{candidate['expected_acc']:.1f}%"
        rows.append((name, name == plan["choice"], expected, s))
    best = max(s["final_val_acc"] for *_, s in rows)
    cap = "none" if args.uncapped else f"{recipe.pflop_budget:g} PFLOP"
    print(f"Time budget {args.seconds:g} s, compute cap {cap}; machine: {describe_machine()}")
    print("| shape | planned | expected | val acc (TTA) | epochs | train PFLOP | train s | params |")
    print("|---|---|---|---|---|---|---|---|")
    batch = recipe.batch_size
    epoch_images = 45_000 // batch * batch  # an epoch is the whole batches of the 45k
    for name, chosen, expected, s in rows:
        print(f"| {name} | {'**yes**' if chosen else ''} | {expected} | {100 * s['final_val_acc']:.2f}% | "
              f"{s['images_seen'] / epoch_images:.1f} | {s['train_pflop']:.4f} | {s['train_seconds']:.0f} | {s['params']:,} |")
    print(f"planned choice vs best of the sweep: {100 * (planned['final_val_acc'] - best):+.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_zip = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.zip"
    parser.add_argument("what", choices=["table", "sweep"])
    parser.add_argument("--data", default=str(default_zip))
    parser.add_argument("--runs-dir", default="runs/shape_planner")
    parser.add_argument("--out", default="src/budgetnet/recipes/shapes/flagship.yaml")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--uncapped", action="store_true", help="lift the recipe's compute cap (--pflop none)")
    args = parser.parse_args()
    build_table(args) if args.what == "table" else sweep(args)


if __name__ == "__main__":
    main()
