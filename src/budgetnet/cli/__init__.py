"""The `budgetnet` command. Thin: parse flags, call the library, print.

Each command group lives in its own module and registers itself on `app` (`cli/_app.py`);
`main()` is the one place that turns user errors into a single line on stderr and exit code 2.
Command modules import the library inside their commands, not at the top: it imports torch,
which `budgetnet --help` does not need (tests/test_layers.py holds that to it).
"""

from __future__ import annotations

import sys

import typer

from budgetnet.cli._app import app
from budgetnet.cli._launch import note_rank_error
from budgetnet.errors import BudgetnetError, one_line, stderr_line

# Imported for their `@app.command()` registrations, so `app` is complete; in the order
# `budgetnet --help` lists the commands.
# isort: off
from budgetnet.cli import models as _models  # noqa: F401
from budgetnet.cli import data as _data  # noqa: F401
from budgetnet.cli import train as _train  # noqa: F401
from budgetnet.cli import search as _search  # noqa: F401
from budgetnet.cli import deploy as _deploy  # noqa: F401
from budgetnet.cli import ensemble as _ensemble  # noqa: F401
from budgetnet.cli import report as _report  # noqa: F401
from budgetnet.cli import repeat as _repeat  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        # Outside standalone mode click *returns* the code of a typer.Exit (e.g. 130 after an
        # interrupted training) or of a Ctrl-C (KeyboardInterrupt -> 130) instead of raising it.
        code = app(args=argv, standalone_mode=False)
    except BudgetnetError as exc:
        return _user_error(one_line(exc))
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing arg
        return _user_error(one_line(exc.format_message()))
    except typer.Abort:
        stderr_line("budgetnet: aborted")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        stderr_line("budgetnet: interrupted")
        return 130
    return code if isinstance(code, int) else 0


def _user_error(message: str) -> int:
    note_rank_error(message)  # a rank of `train --nproc N`: its launcher prints it instead
    stderr_line(f"budgetnet: error: {message}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
