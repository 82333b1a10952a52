"""User-facing errors: anything the user can fix (bad input, bad config, bad file).

The CLI turns a `BudgetnetError` into one line on stderr and exit code 2; everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BudgetnetError(Exception):
    """A problem with the user's input that they can fix; the message says how."""
