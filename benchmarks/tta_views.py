"""Validation accuracy of finished runs under several sets of test-time augmentation views:
which views beyond budgetnet's `--tta` (flip x {centre, 1 px up-left, 1 px down-right}) pay.
Evaluation only, no training; logits are averaged as `--tta` averages them.

    .venv/bin/python benchmarks/tta_views.py RUN [RUN ...] [--data ZIP]

Prints one Markdown row per view set: accuracy per run, the mean, and forwards per image.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from budgetnet.data import DeviceLoader
from budgetnet.evaluate import _shift as shifted  # the translation --tta uses
from budgetnet.evaluate import eval_data_config, load_split, load_trained
from budgetnet.machine import describe_machine

DIAGONAL = [(-1, -1), (1, 1), (-1, 1), (1, -1)]
SIDES = [(-1, 0), (1, 0), (0, -1), (0, 1)]
# name -> (shift, weight) pairs; each shift is seen unflipped and flipped, equally weighted.
VIEW_SETS = {
    "none (centre only, no flip)": None,
    "flip": [((0, 0), 1.0)],
    "flip x centre + 2 diagonal 1 px (--tta)": [((0, 0), 0.5), ((-1, -1), 0.25), ((1, 1), 0.25)],
    "flip x centre + 4 diagonal 1 px": [((0, 0), 0.5), *((s, 0.125) for s in DIAGONAL)],
    "flip x centre + 8 neighbours 1 px": [((0, 0), 0.5), *((s, 0.0625) for s in DIAGONAL + SIDES)],
}


@torch.no_grad()
def view_logits(run: Path, data: str) -> tuple[dict[tuple[int, int, bool], torch.Tensor], torch.Tensor]:
    """Logits of every shift (centre, 8 neighbours) with and without flip, and the labels."""
    trained = load_trained(run)
    x, y = load_split(eval_data_config(trained.config, data, "val"), "val", trained.classes, torch.device("cpu"))
    loader = DeviceLoader(x, y, 500, shuffle=False, drop_last=False, seed=0, augment=None,
                          mean=trained.mean, std=trained.std, channels_last=True)
    model = trained.model.to(memory_format=torch.channels_last)
    shifts = [(0, 0), *DIAGONAL, *SIDES]
    out: dict[tuple[int, int, bool], list[torch.Tensor]] = {(dy, dx, f): [] for dy, dx in shifts for f in (False, True)}
    for xb, _ in loader:
        for dy, dx in shifts:
            v = shifted(xb, dy, dx)
            out[(dy, dx, False)].append(model(v).float())
            out[(dy, dx, True)].append(model(v.flip(-1)).float())
    return {k: torch.cat(v) for k, v in out.items()}, y


def accuracy(logits: dict[tuple[int, int, bool], torch.Tensor], y: torch.Tensor, views: list | None) -> float:
    if views is None:
        combined = logits[(0, 0, False)]
    else:
        combined = sum(w * 0.5 * (logits[(*s, False)] + logits[(*s, True)]) for s, w in views)
    return (combined.argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", default=None, help="the dataset (default: each run's own)")
    args = parser.parse_args()
    per_run = [view_logits(run, args.data) for run in args.runs]
    print("| views | " + " | ".join(r.name for r in args.runs) + " | mean | forwards/image |")
    print("|---|" + "---|" * (len(args.runs) + 2))
    for name, views in VIEW_SETS.items():
        accs = [accuracy(logits, y, views) for logits, y in per_run]
        print(f"| {name} | " + " | ".join(f"{100 * a:.2f}%" for a in accs)
              + f" | {100 * statistics.mean(accs):.2f}% | {1 if views is None else 2 * len(views)} |")
    print(f"machine: {describe_machine()}")


if __name__ == "__main__":
    main()
