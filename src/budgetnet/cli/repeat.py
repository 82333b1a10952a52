"""`budgetnet repeat`: one config trained over seeds or folds. Thin: the work is budgetnet.repeat.

Every `budgetnet train` option is accepted: they are parsed by the train command itself, so the
two never drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from budgetnet.cli._app import app
from budgetnet.cli.train import options_config
from budgetnet.errors import BudgetnetError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def repeat(
    ctx: typer.Context,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds to train, e.g. 0,1,2.")] = None,
    folds: Annotated[int | None, typer.Option("--folds", help="K-fold cross validation: train K runs, each validating on one fold.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Repeat folder [default: repeats/<name>-seeds|folds].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print summary.json instead of the table.")] = False,
) -> None:
    """Train one config several times (--seeds 0,1,2, or --folds K) into one folder and write the
    mean, std, min and max of the final and best validation accuracy (summary.json, summary.md).
    Takes every budgetnet train option except --resume: run the same command again to continue
    a killed repeat."""
    from budgetnet.repeat import parse_seeds, run_repeat
    from budgetnet.train.engine import TrainingInterrupted

    assert ctx.parent is not None
    train_command = ctx.parent.command.get_command(ctx.parent, "train")
    options = train_command.make_context("budgetnet repeat", list(ctx.args), parent=ctx.parent).params
    if options["resume"] is not None:
        raise BudgetnetError("a repeat resumes by itself: drop --resume and run the same command again")
    if seeds is not None and options["seed"] is not None:
        raise BudgetnetError("--seeds sets each run's seed; drop --seed")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    cfg = options_config(options)
    folder = out or Path("repeats") / f"{cfg.name}-{'folds' if folds is not None else 'seeds'}"
    try:
        result = run_repeat(cfg, folder, seeds=seed_list, folds=folds, quiet=options["quiet"] or json_out,
                            progress=not json_out)
    except TrainingInterrupted as exc:
        typer.echo(f"budgetnet: repeat interrupted ({exc.run_dir}); run the same command again to continue", err=True)
        raise typer.Exit(exc.exit_code) from None
    if json_out:
        typer.echo(json.dumps(result.summary))
        return
    typer.echo(result.markdown, nl=False)
    typer.echo(f"wrote {folder / 'summary.json'} and {folder / 'summary.md'}")


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="The repeat folder to compare against (e.g. the default recipe's).")],
    other: Annotated[Path, typer.Argument(help="The repeat folder of the change.")],
    best: Annotated[bool, typer.Option("--best", help="Compare the best epoch's accuracy, not the final one.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON instead of the table.")] = False,
) -> None:
    """Two repeats seed by seed (or fold by fold): each pair's difference in validation accuracy,
    the mean difference with its standard error, how many seeds are ahead and behind, the unpaired
    means of every member, and the config fields the two differ in."""
    from budgetnet.repeat import compare_repeats

    result = compare_repeats(base, other, "best_val_acc" if best else "final_val_acc")
    typer.echo(json.dumps(result.summary) if json_out else result.markdown, nl=json_out)
