"""User-facing errors: anything the user can fix (bad input, bad config, bad file).

The CLI turns a `BudgetnetError` into one line on stderr and exit code 2; everything
else is a bug and keeps its traceback. `warn` is the one-line counterpart for problems that
do not stop a command; `stderr_line` writes any line that processes sharing stderr may print.
"""

from __future__ import annotations

import sys


class BudgetnetError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


def one_line(message: object) -> str:
    """`message` with all its whitespace, newlines included, collapsed to single spaces."""
    return " ".join(str(message).split())


def stderr_line(text: str) -> None:
    """`text` and its newline on stderr in one write. `print` writes the two separately, so
    lines of worker processes sharing the stream interleaved ("trial 2: ...trial 3: ...\\n\\n");
    one write of a line under the pipe's 4 KiB is atomic."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    """One line on stderr (stdout stays clean for --json and --csv)."""
    stderr_line(f"budgetnet: warning: {one_line(message)}")
