"""Options shared by the commands that run trained models on a split (`evaluate`, `ensemble`,
`report`). Importing this module stays cheap: it does not import torch."""

from __future__ import annotations

from typing import Annotated

import typer

from budgetnet.errors import BudgetnetError

SplitOpt = Annotated[str, typer.Option("--split", help="val (the run's own validation split) or test")]
TtaOpt = Annotated[bool, typer.Option("--tta", help="Flip + translate test-time augmentation.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def check_split(split: str) -> None:
    if split not in ("val", "test"):
        raise BudgetnetError(f"--split must be val or test, not {split!r}")
