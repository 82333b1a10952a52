"""How many test-time views pay: a trained run's validation accuracy under several TTA view sets.

Forwards the run's validation split (re-carved from its own data settings) once per view: both
flips x every one-pixel shift, plus two-pixel shifts along each axis (26 views), at the run's
precision; then scores view sets from those logits: the flip alone, the recipe's 6 views
(evaluate.predict_logits: weights 1/2 centre, 1/4 each diagonal shift, each with its flip), all
18 one-pixel views, those with the centre weighted x4, all 26, and the 18 averaged as softmax.

    .venv/bin/python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...] [--data ZIP]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from budgetnet.data import DeviceLoader
from budgetnet.evaluate import eval_data_config, find_checkpoint, load_split, load_trained, shift
from budgetnet.machine import describe_machine
from budgetnet.runtime import autocast_dtype

View = tuple[int, int, int]  # (flipped, dy, dx)
VIEWS: list[View] = [(f, dy, dx) for f in (0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] + [
    (f, dy, dx) for f in (0, 1) for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
ONE_PX = {v: 1.0 for v in VIEWS[:18]}
VIEW_SETS: dict[str, dict[View, float]] = {
    "flip only (2 views)": {(f, 0, 0): 0.5 for f in (0, 1)},
    # evaluate.predict_logits flips the shifted image: a flip after a (s, s) shift is (s, -s) here.
    "the recipe's 6 views": {(f, 0, 0): 0.25 for f in (0, 1)} | {(f, s, -s if f else s): 0.125
                                                                  for f in (0, 1) for s in (-1, 1)},
    "flip x 9 one-pixel shifts (18 views)": ONE_PX,
    "18 views, centre x4": {v: 4.0 if v[1:] == (0, 0) else 1.0 for v in ONE_PX},
    "18 views + 2-pixel axis shifts (26 views)": {v: 1.0 for v in VIEWS},
}


@torch.no_grad()
def view_logits(run: Path, data: str | None) -> tuple[dict[View, torch.Tensor], torch.Tensor]:
    trained = load_trained(find_checkpoint(run))
    x, y = load_split(eval_data_config(trained.config, data, "val"), "val", trained.classes, torch.device("cpu"))
    amp = autocast_dtype(trained.config.train.precision, torch.device("cpu"))
    model = trained.model.to(memory_format=torch.channels_last).eval()
    loader = DeviceLoader(x, y, 1000, mean=trained.mean, std=trained.std, dtype=amp or torch.float32,
                          channels_last=True)
    logits: dict[View, list[torch.Tensor]] = {v: [] for v in VIEWS}
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        for xb, _ in loader:
            for f, dy, dx in VIEWS:
                logits[(f, dy, dx)].append(model(shift(xb.flip(-1) if f else xb, dy, dx)).float())
    return {v: torch.cat(t) for v, t in logits.items()}, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", help="the run's data, where it has moved")
    args = parser.parse_args()
    scores: dict[str, list[float]] = {}
    for run in args.runs:
        logits, y = view_logits(run, args.data)
        for name, weights in VIEW_SETS.items():
            total = sum(w * logits[v] for v, w in weights.items())
            scores.setdefault(name, []).append(100 * (total.argmax(1) == y).float().mean().item())
        probs = sum(logits[v].softmax(1) for v in ONE_PX)
        scores.setdefault("18 views, mean of softmax", []).append(100 * (probs.argmax(1) == y).float().mean().item())
    print(f"Machine: {describe_machine()}; {len(args.runs)} runs")
    print("| views | mean val acc % | per run |\n|---|---|---|")
    for name, accs in scores.items():
        print(f"| {name} | {statistics.mean(accs):.2f} | {' '.join(f'{a:.2f}' for a in accs)} |")


if __name__ == "__main__":
    main()
