"""The Typer application every command module registers on (`@app.command()`)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="budgetnet",
    help="Design, train and ship the most accurate ResNet that fits a parameter budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
