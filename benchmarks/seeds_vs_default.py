"""The five reports' training setups beside budgetnet's default recipe, at equal training compute.

Each row trains one config as written (`configs/seed00N.yaml`: its model, optimizer, schedule,
augmentation and batch size; budgetnet's default recipe for the last row) with its schedule
compressed into `--pflop` PFLOP of training compute (`train.pflop_budget`: a report whose model
costs more FLOPs per image sees fewer images, which is the point), on the validation protocol
(45,000 train / 5,000 val of the shared zip, split seed 0). The best checkpoint is then
evaluated with and without TTA. Rows append to `--out` (JSON lines) as they finish and are
skipped when already there; a row whose run was killed resumes from its checkpoint.
`--default-run RUN` evaluates a finished run of the default recipe (e.g. a `budgetnet repeat`
member) for the last row instead of training it again: the same training, refused unless its
saved config trains what the row would (model, data split, augmentation, optimizer, schedule,
steps) within the same compute.

    .venv/bin/python benchmarks/seeds_vs_default.py [--pflop 0.25] [--seed 0] [--data ZIP]
        [--runs-dir runs/seeds-vs-default] [--out docs/results/seeds_vs_default/rows.jsonl]
        [--default-run RUN] [--rows seed000,...,default]

Prints one Markdown table (report, model, params, FLOPs/image, images seen, epochs, val acc
without and with TTA, training seconds, the machine each row trained on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from budgetnet.config import RunConfig, build_config, fit_to_data, load_config, read_yaml_mapping
from budgetnet.evaluate import evaluate_checkpoint
from budgetnet.machine import describe_machine, machine_info
from budgetnet.train.engine import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROWS = [*(f"seed00{i}" for i in range(5)), "default"]
# What a run trains; the rest (name, evaluation, budgets that did not bind, logging) may differ.
TRAINING = {"model": None, "augment": None, "optim": None, "schedule": None,
            "data": ("input_size", "val_size", "split_seed", "subset", "fold"),
            "train": ("epochs", "batch_size", "seed", "label_smoothing", "micro_batch", "progressive", "ema_decay")}


def training_of(cfg: RunConfig) -> dict[str, Any]:
    tree = cfg.model_dump(mode="json")
    return {k: tree[k] if keys is None else {f: tree[k].get(f) for f in keys} for k, keys in TRAINING.items()}


def reused_summary(run: Path, cfg: RunConfig, pflop: float) -> dict[str, Any]:
    """The summary of `run` when it is a finished training of `cfg` within `pflop`; otherwise
    exit naming why."""
    if not (run / "summary.json").is_file():
        raise SystemExit(f"--default-run {run}: not a finished run (no summary.json)")
    summary = json.loads((run / "summary.json").read_text())
    saved = build_config(read_yaml_mapping(run / "config.yaml"), source=str(run))
    mine, theirs = training_of(fit_to_data(cfg)), training_of(saved)  # as trained: at the data's size
    if differs := [k for k in mine if mine[k] != theirs[k]]:
        raise SystemExit(f"--default-run {run}: trains another {', '.join(differs)} than the default row")
    if summary["train_pflop"] > pflop:
        raise SystemExit(f"--default-run {run}: trained more than {pflop} PFLOP")
    return summary


def run_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    over = {"name": f"{name}-vs", "data": {"path": args.data, "val_size": 5000, "split_seed": 0},
            "train": {"pflop_budget": args.pflop, "seed": args.seed, "time_budget_s": None, "tta": False}}
    cfg = load_config(overrides=over) if name == "default" else load_config(CONFIGS / f"{name}.yaml", over)
    if name == "default" and args.default_run:
        out = Path(args.default_run)
        s = reused_summary(out, cfg, args.pflop)
        machine = trained_on(out)
    else:
        out = Path(args.runs_dir) / f"{name}-seed{args.seed}"
        s = train(cfg, out, resume=out.exists(), quiet=True).summary
        machine = machine_info()
    accs = {tta: evaluate_checkpoint(out, data_path=args.data, split="val", tta=tta)[0].accuracy for tta in (False, True)}
    return {
        "row": name, "seed": args.seed, "model": cfg.model.model_dump(exclude_defaults=True), "params": s["params"],
        "flops": s["flops"], "images_seen": s["images_seen"], "epochs": s["images_seen"] / 45_000,
        "train_pflop": s["train_pflop"], "val_acc": accs[False], "val_acc_tta": accs[True],
        "train_seconds": s["train_seconds"], "machine": machine, "run_dir": str(out),
    }


def trained_on(run: Path) -> dict[str, Any] | None:
    """The machine a finished run trained on, from its environment.json (None where the run
    predates the CPU model being recorded there)."""
    env = json.loads((run / "environment.json").read_text())
    if "cpu" not in env:
        return None
    return {"cpu": env["cpu"], "capability": env["cpu_capability"], "bf16_units": env.get("cpu_bf16_units"),
            "threads": env["threads"], "torch": env["torch"],
            **({"gpu": env["gpu"]} if "gpu" in env else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CONFIGS.parents[1] / "shared/data/cifar10-train-jpg.zip"))
    parser.add_argument("--pflop", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default="runs/seeds-vs-default")
    parser.add_argument("--out", default="docs/results/seeds_vs_default/rows.jsonl")
    parser.add_argument("--default-run", help="a finished run of the default recipe to evaluate for the last row")
    parser.add_argument("--rows", default=",".join(ROWS), help="the rows to run now (comma-separated), in this order")
    args = parser.parse_args()
    rows = args.rows.split(",")
    if unknown := [r for r in rows if r not in ROWS]:
        parser.error(f"--rows: no row {', '.join(unknown)}; the rows are {', '.join(ROWS)}")
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    for name in rows:
        if not any(d["row"] == name and d["seed"] == args.seed for d in done):
            row = run_row(name, args)
            done.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    # Seconds compare only within one machine, so each row names the machine it trained on.
    print(f"| report | params | FLOPs/img | images seen | epochs | val % | val % TTA | train s | machine |"
          f"  ({args.pflop} PFLOP)")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in done:
        machine = describe_machine(d["machine"]) if d.get("machine") else "not recorded"
        print(f"| {d['row']} (seed {d['seed']}) | {d['params']:,} | {d['flops'] / 1e6:.0f} M | {d['images_seen']:,} | "
              f"{d['epochs']:.2f} | {100 * d['val_acc']:.2f} | {100 * d['val_acc_tta']:.2f} | "
              f"{d['train_seconds']:.0f} | {machine} |")


if __name__ == "__main__":
    main()
