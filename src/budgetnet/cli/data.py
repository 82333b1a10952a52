"""`budgetnet` data commands."""

from __future__ import annotations

from budgetnet.cli import app  # noqa: F401
