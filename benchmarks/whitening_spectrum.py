"""The whitening stem as a run trained it: the patch-covariance eigenvalues its frozen filters
were set from, read back from the checkpoint (each filter is a unit eigenvector divided by
sqrt(eigenvalue + whiten_eps)), and the gain 1/sqrt(eigenvalue + eps) each patch direction gets
at the run's eps and at others. The faintest directions are the ones eps decides.
Reads checkpoints only, no data.

    .venv/bin/python benchmarks/whitening_spectrum.py RUN [RUN ...] [--eps 5e-4,5e-3]

Prints one Markdown table per run, strongest direction first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from budgetnet.evaluate import find_checkpoint, load_trained
from budgetnet.machine import describe_machine
from budgetnet.models.blocks import WhiteningStem


def eigenvalues(stem: WhiteningStem) -> torch.Tensor:
    """The eigenvalues `stem.init_whitening` scaled its filters by, strongest first (its first
    half of filters, one per eigenvector; the second half are their negations)."""
    half = stem.conv.out_channels // 2
    norms = stem.conv.weight[:half].flatten(1).double().norm(dim=1)
    return norms.pow(-2) - stem.eps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eps", default="5e-4,5e-3", help="comma-separated eps values to show gains at")
    args = parser.parse_args()
    eps_values = [float(e) for e in args.eps.split(",")]
    print(f"Machine: {describe_machine()}")
    for run in args.runs:
        trained = load_trained(find_checkpoint(run))
        stem = trained.model.stem
        if not isinstance(stem, WhiteningStem):
            raise SystemExit(f"{run}: the model has no whitening stem")
        values = eigenvalues(stem)
        print(f"\n{run} (trained at whiten_eps {stem.eps:g})\n")
        print("| direction | eigenvalue | " + " | ".join(f"gain at eps {e:g}" for e in eps_values) + " |")
        print("|---|---|" + "---|" * len(eps_values))
        for i, value in enumerate(values.tolist(), 1):
            gains = " | ".join(f"{(value + e) ** -0.5:.1f}" for e in eps_values)
            print(f"| {i} | {value:.3g} | {gains} |")


if __name__ == "__main__":
    main()
