"""Validation accuracy (with `--tta`) of finished runs with their BatchNorm running statistics as
trained, and re-estimated as plain averages over training images ("precise BN"): whether the
running statistics a run ends with cost it accuracy. The speed-run nets keep BN momentum 0.4
per forward, and budgetnet forwards 500-image slices, so their statistics average only the
last 1,000-2,000 training images. Evaluation only; a re-estimate over N images would add
N x forward FLOPs to a run's training compute.

    .venv/bin/python benchmarks/bn_statistics.py RUN [RUN ...] [--data ZIP] [--images 10000]

Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from budgetnet.data import DeviceLoader
from budgetnet.errors import BudgetnetError
from budgetnet.evaluate import eval_data_config, load_split, load_trained, predict_trained
from budgetnet.machine import describe_machine


@torch.no_grad()
def accuracies(run: Path, data: str, images: int) -> tuple[float, float]:
    """Validation accuracy with the run's BN statistics, then with them re-estimated over
    `images` training images (un-augmented, in 500-image forwards as the run trained)."""
    trained = load_trained(run)
    data_cfg = eval_data_config(trained.config, data, "val")
    x_val, y_val = load_split(data_cfg, "val", trained.classes, torch.device("cpu"))
    x_train, y_train = load_split(data_cfg, "train", trained.classes, torch.device("cpu"))

    def accuracy() -> float:
        log_probs = predict_trained(trained, x_val, y_val, tta=True)
        return (log_probs.argmax(1) == y_val).float().mean().item()

    as_trained = accuracy()
    model = trained.model.to(memory_format=torch.channels_last)
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over every forward
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:images]
    loader = DeviceLoader(x_train[pick], y_train[pick], 500, shuffle=False, drop_last=False, seed=0, augment=None,
                          mean=trained.mean, std=trained.std, channels_last=True)
    model.train()
    for xb, _ in loader:
        model(xb)
    model.eval()
    return as_trained, accuracy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.zip"))
    parser.add_argument("--images", type=int, default=10_000, help="training images the statistics are re-estimated over")
    args = parser.parse_args()
    print(f"Machine: {describe_machine()}. BN statistics re-estimated over {args.images:,} training images.\n")
    print("| run | as trained | re-estimated | difference |")
    print("|---|---|---|---|")
    for run in args.runs:
        try:
            before, after = accuracies(run, args.data, args.images)
        except BudgetnetError as err:  # no checkpoint there, data it cannot read: one line, exit 2
            parser.error(str(err))
        print(f"| {run.name} | {100 * before:.2f}% | {100 * after:.2f}% | {100 * (after - before):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
