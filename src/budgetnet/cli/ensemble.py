"""`budgetnet ensemble`: average trained runs' softmax. Thin: the work is budgetnet.ensemble."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from budgetnet.cli._app import app
from budgetnet.cli._eval_options import BatchSizeOpt, DeviceOpt, JsonOpt, SplitOpt, TtaOpt, check_split


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories (their best.pt) or checkpoints.")],
    data: Annotated[str, typer.Option("--data", metavar="PATH", help="Dataset to evaluate on (as for budgetnet evaluate).")],
    split: SplitOpt = "val",
    tta: TtaOpt = False,
    weighted: Annotated[bool, typer.Option("--weighted", help="Weight members by their validation accuracy.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write the ensemble manifest here (.json), for budgetnet evaluate.")] = None,
    batch_size: BatchSizeOpt = 1000,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Accuracy of the members' averaged softmax, and of each member, on one split (val: the
    members' shared validation split)."""
    from budgetnet.ensemble import run_ensemble

    check_split(split)
    evaluation = run_ensemble(runs, data_path=data, split=split, tta=tta, weighted=weighted, out=out,
                              batch_size=batch_size, device=device)
    if json_out:
        typer.echo(json.dumps(evaluation.to_dict()))
        return
    info = evaluation.info
    for m in evaluation.members:
        typer.echo(f"{m['run']}: accuracy {100 * m['accuracy']:.2f}%, {m['params']:,} params, weight {m['weight']:.3f}")
    typer.echo(f"ensemble of {len(evaluation.members)} on {split}{' with TTA' if tta else ''} "
               f"({info['images']} images): accuracy {100 * evaluation.result.accuracy:.2f}%")
    share = f"{100 * info['params'] / info['budget']:.1f}% of the budget of {info['budget']:,}"
    typer.echo(f"cost: {info['params']:,} params (all members) = {share}"
               + ("" if info["within_budget"] else ": OVER the budget") + f", {info['flops']:,} FLOPs per image")
    if out is not None:
        typer.echo(f"manifest written to {out}; evaluate it with: budgetnet evaluate {out} --data PATH")
