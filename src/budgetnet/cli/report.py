"""`budgetnet report`: one self-contained HTML page of runs. Thin: the work is budgetnet.report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from budgetnet.cli._app import app
from budgetnet.cli._data_options import DataPathOpt
from budgetnet.cli._eval_options import BatchSizeOpt, DeviceOpt


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
    data: DataPathOpt = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="TTA for the validation parts [default: as each run validated].")] = None,
    wrong: Annotated[int, typer.Option("--wrong", min=0, help="How many confidently wrong images to show per run.")] = 24,
    batch_size: BatchSizeOpt = 1000,
    device: DeviceOpt = "auto",
) -> None:
    """Config, model, curves, confusion, per-class accuracy, calibration and worst mistakes of
    runs (and a comparison of several), as one HTML file. The validation parts read --data
    (default: each run's own dataset path)."""
    from budgetnet.report import write_report

    path = write_report(runs, out, data_path=data, tta=tta, wrong=wrong, batch_size=batch_size, device=device)
    typer.echo(f"report written to {path}")
