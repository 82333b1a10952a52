"""Ablations of the default recipe: what each speed-run component is worth at fixed compute.

Each row is the baseline with one change, given as config overrides (data, not code), trained
on a proxy of the validation protocol: a stratified 15,000-image subset of the
training split, 5,000 of them held out for validation (split seed 0), `--epochs` epochs of the
other 10,000. The baseline is the default recipe with Nesterov momentum on the parameters Muon
does not train, as the recipe had it when the first rows were measured (one row measures the
recipe's plain momentum now). Rows print and append to `--out` (JSON lines) as they finish; a row already in
that file is skipped, so a killed run continues where it stopped. The `no TTA` row evaluates
the baseline's best.pt again without test-time augmentation (no training). The markdown table
goes to `--table`.

    .venv/bin/python benchmarks/ablations.py [--data ZIP] [--epochs 3] [--seeds 0]
        [--out docs/results/accuracy_per_flop/ablations.jsonl]
        [--table docs/results/accuracy_per_flop/ablations.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from budgetnet.config import load_config
from budgetnet.evaluate import evaluate_checkpoint
from budgetnet.machine import describe_machine
from budgetnet.train.engine import train

ROWS: dict[str, dict[str, Any]] = {
    "baseline (speedrun_2m, Muon; Nesterov on the rest)": {},
    "3x3 conv stem (BN, 24 ch) instead of whitening": {"model": {"stem": "conv", "stem_width": 24}},
    "kaiming init instead of dirac": {"model": {"conv_init": "kaiming"}},
    "ReLU instead of GELU": {"model": {"activation": "relu"}},
    "learned BN scale, momentum 0.1": {"model": {"bn_frozen_scale": False, "bn_momentum": 0.1, "bn_eps": 1e-5}},
    "Nesterov SGD lr 0.2 (wd 5e-4, no BN decay) instead of Muon": {
        "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "no_decay_bn_bias": True}},
    # Same compute as the baseline (3 epochs at 32 px): the first 40% of the steps at 24 px cost
    # 52% as much, so the PFLOP budget pays for 18 steps instead of 15 (3.6 epochs).
    "progressive resizing: 24 px for the first 40%, more steps at the same PFLOP": {
        "train": {"epochs": 4, "pflop_budget": 3 * 236_294_720 * 30_000 / 1e15,
                  "progressive": [{"until": 0.4, "size": 24}]}},
    "plain momentum on the non-filter parameters (the default recipe now)": {"optim": {"nesterov": False}},
    "no label smoothing (0.2 -> 0)": {"train": {"label_smoothing": 0.0}},
    "random flip instead of alternating": {"augment": {"flip": {"mode": "random"}}},
    "translate up to 4 px instead of 2": {"augment": {"crop": {"padding": 4}}},
    "cutout 12 px": {"augment": {"cutout": {"size": 12}}},
    # Same images and PFLOP, twice the steps; the per-step learning rates and decay as they are.
    "batch 1,000 instead of 2,000": {"train": {"batch_size": 1000}},
}
# Not a row: an EMA of the weights (`train.ema_decay`) over the proxy's 15 steps would average
# the early, far-from-trained weights; it needs full-length runs to say anything.
BASELINE = next(iter(ROWS))
NO_TTA = "no TTA (the default run, evaluated without it)"


def run_row(name: str, over: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    base = {"data": {"path": args.data, "subset": 15_000, "val_size": 5_000, "split_seed": 0},
            "optim": {"nesterov": True}, "train": {"epochs": args.epochs, "seed": seed}}
    sections = {k: {**base.get(k, {}), **over.get(k, {})} for k in {**base, **over}}
    cfg = load_config(overrides={"name": "ablation", **sections})
    result = train(cfg, runs_root=Path(args.runs_dir), quiet=True)
    s = result.summary
    return {"row": name, "seed": seed, "val_acc_tta": s["final_val_acc"], "train_pflop": s["train_pflop"],
            "train_seconds": s["train_seconds"], "params": s["params"], "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_zip = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.zip"
    parser.add_argument("--data", default=str(default_zip))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs-dir", default="runs/ablations")
    parser.add_argument("--out", default="docs/results/accuracy_per_flop/ablations.jsonl")
    parser.add_argument("--table", default="docs/results/accuracy_per_flop/ablations.md")
    args = parser.parse_args()
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    seen = {(d["row"], d["seed"]) for d in done}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, over in ROWS.items():
            if (name, seed) not in seen:
                record(out, done, run_row(name, over, seed, args))
        if (NO_TTA, seed) not in seen:
            base = next(d for d in done if d["row"] == BASELINE and d["seed"] == seed)
            result, _ = evaluate_checkpoint(Path(base["run_dir"]), data_path=args.data, split="val", tta=False)
            record(out, done, {**base, "row": NO_TTA, "val_acc_tta": result.accuracy})
    write_table(Path(args.table), done, args)


def record(out: Path, done: list[dict[str, Any]], row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)
    done.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


def write_table(path: Path, done: list[dict[str, Any]], args: argparse.Namespace) -> None:
    names = list(dict.fromkeys(d["row"] for d in done))
    seeds = ",".join(str(s) for s in sorted({d["seed"] for d in done}))
    base = statistics.mean(d["val_acc_tta"] for d in done if d["row"] == BASELINE)
    lines = [
        f"Proxy: {args.epochs} epochs of 10,000 training images, validation on 5,000 held out "
        "(15,000-image stratified subset of the shared zip, split seed 0). "
        f"Machine: {describe_machine()}.",
        f"Command: `python benchmarks/ablations.py --epochs {args.epochs} --seeds {seeds}` (rows run so far at "
        "the number of seeds in their column; the command runs the rest, skipping what is done).",
        "",
        "| change from the baseline | seeds | val acc % (mean) | min-max | vs baseline | train PFLOP |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        accs = [100 * d["val_acc_tta"] for d in done if d["row"] == name]
        pflop = statistics.mean(d["train_pflop"] for d in done if d["row"] == name)
        lines.append(f"| {name} | {len(accs)} | {statistics.mean(accs):.2f} | {min(accs):.2f}-{max(accs):.2f} | "
                     f"{statistics.mean(accs) - 100 * base:+.2f} | {pflop:.4f} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
