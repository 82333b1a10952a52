"""`budgetnet search`: an Optuna search over a space file. Thin: the work is budgetnet.search.

Imports of torch and optuna stay inside the command, so `budgetnet --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from budgetnet.cli._app import app
from budgetnet.cli._budget_options import limit_flags, limit_overrides
from budgetnet.cli._data_options import DataPathOpt, DownloadOpt, LabelsOpt, SubsetOpt, ValSizeOpt, data_overrides
from budgetnet.errors import BudgetnetError

if TYPE_CHECKING:
    from budgetnet.search import SearchResult


search_app = typer.Typer(invoke_without_command=True)
app.add_typer(search_app, name="search")

StorageOpt = Annotated[str | None, typer.Option("--storage", help="PostgreSQL URL of the study, to share it with workers on other machines [default: the journal file OUT/study.journal].")]
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name [default: the space file's name].")]


@search_app.callback()
@limit_flags
def search(
    ctx: typer.Context,
    limit_values: dict[str, Any],
    space: Annotated[Path | None, typer.Option("--space", help="Space file (YAML); see configs/search/.")] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Finished trials the study should hold; trials already in it count.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs per trial (the most a pruner lets one run).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes on this machine, sharing the study and this machine's threads.")] = 1,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    heartbeat: Annotated[int | None, typer.Option("--heartbeat", min=1, help="With --storage: seconds between a worker's signs of life; one silent for 4 times this is dead and its trial runs again [default: 30].")] = None,
    data: DataPathOpt = None,
    download: DownloadOpt = False,
    labels: LabelsOpt = None,
    subset: SubsetOpt = None,
    val_size: ValSizeOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Search directory [default: searches/<study>].")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="tpe, random or grid [default: the space file's, else tpe].")] = None,
    pruner: Annotated[str | None, typer.Option("--pruner", help="hyperband, halving or none [default: the space file's, else hyperband].")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="Start no new trial after this many seconds.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler seed (worker i of --workers uses seed + i; leave unset when machines share a study).")] = None,
    log: Annotated[list[str] | None, typer.Option("--log", help="Experiment tracker of every trial: tensorboard (in each trial's run directory).")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the printed table.")] = 20,
    verbose: Annotated[bool, typer.Option("--verbose", help="Optuna's log and every trial's epoch lines.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary JSON instead of the table.")] = False,
) -> None:
    """Search models and training settings for the most accurate network under a budget and
    any other limits (`budgetnet search report` writes the report of a search's study)."""
    if ctx.invoked_subcommand is not None:
        return
    if space is None:
        raise BudgetnetError("which search space? pass --space FILE (see configs/search/)")
    from budgetnet.search import load_space, run_search
    from budgetnet.train.engine import TrainingInterrupted

    spec = load_space(space)
    name = study or space.stem
    try:
        result = run_search(
            spec, out=out or Path("searches") / name, trials=trials, storage=storage, study_name=name,
            sampler=sampler, pruner=pruner, epochs=epochs, timeout=timeout, seed=seed,
            limits=limit_overrides(limit_values),
            data_overrides=data_overrides(data, download, val_size=val_size, subset=subset, labels=labels),
            log=log, workers=workers, **({} if heartbeat is None else {"heartbeat": heartbeat}),
            quiet=json_out, verbose=verbose,
        )
    except TrainingInterrupted as exc:
        typer.echo(f"budgetnet: search interrupted ({exc.run_dir}); run the same command again to continue, "
                   "the interrupted trial resumes from its checkpoint", err=True)
        raise typer.Exit(exc.exit_code) from None
    _show(result, top, json_out)
    if not result.files:
        running = result.counts["running"]
        why = (f"{running} trials still run in other workers, and the last to end writes the report" if running
               else "the study has not changed since its report was written")
        typer.echo(f"budgetnet: {why}; budgetnet search report --out {result.out}"
                   f"{'' if storage is None else ' --storage URL'} --study {name} writes it here now", err=True)
    if result.best is None:
        see = f"; see {result.files['trials_csv']}" if result.files else ""
        raise BudgetnetError(
            f"no trial has completed ({result.counts['over budget']} over budget, {result.counts['error']} "
            f"errors, {result.counts['pruned']} pruned){see}"
        )


@search_app.command("report")
def report(
    out: Annotated[Path, typer.Option("--out", help="The search directory (with --storage: any directory to write into).")],
    storage: StorageOpt = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name [default: the storage's only study].")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows of the printed table.")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary JSON instead of the table.")] = False,
) -> None:
    """Write a search's report (trials.csv, pareto.png, importance.png, best.yaml, summary.json)
    for its study as it is now: after a search whose last worker ran on another machine, or
    during one."""
    from budgetnet.search import report_search

    _show(report_search(out, url=storage, study_name=study), top, json_out)


def _show(result: SearchResult, top: int, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_report(result, top)


def _si(value: float | None) -> str:
    if value is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def _short_names(names: list[str]) -> dict[str, str]:
    """`optim.lr` -> `lr` where the last part is unambiguous, to keep the table narrow."""
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {n: s if last.count(s) == 1 else n for n, s in zip(names, last)}


def _print_report(result: SearchResult, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: don't fold the table to 80 columns
        console.width = 200
    rows: list[dict[str, Any]] = result.rows
    short = _short_names(list(dict.fromkeys(n for r in rows for n in r["values"])))
    counts = result.counts
    table = Table(
        "rank", "trial", "state", "val acc", "params", "FLOPs", "epochs", "train s", "key params",
        title=f"Search {result.study!r}: {counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['over budget']} over budget, {counts['error']} errors (* Pareto front)",
    )
    for r in rows[:top]:
        acc = "" if r["val_acc"] is None else f"{100 * r['val_acc']:.2f}%"
        note = r["note"] if r["state"] not in ("complete", "pruned") else ""
        table.add_row(
            f"{r['rank']}{'*' if r['pareto'] else ''}", str(r["trial"]), r["state"], acc,
            "" if r["params"] is None else f"{r['params']:,}", _si(r["flops"]),
            "" if r["epochs"] is None else str(r["epochs"]),
            "" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}",
            " ".join(f"{short[k]}={v}" for k, v in r["values"].items()) + (f" ({note})" if note else ""),
        )
    console.print(table)
    if len(rows) > top:
        console.print(f"... {len(rows) - top} more rows" + (f" in {result.files['trials_csv']}" if result.files else ""))
    if result.best is not None:
        b = result.best
        console.print(f"best: trial {b['trial']}, validation accuracy {100 * b['val_acc']:.2f}%, "
                      f"{b['params']:,} parameters" + (f"; train it with: budgetnet train --config {b['config']}"
                                                       if "config" in b else ""))
    if result.importance_note:
        console.print(result.importance_note)
    if result.files:
        console.print("wrote " + ", ".join(Path(p).name for p in result.files.values()) + f" in {result.out}")
