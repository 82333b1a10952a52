"""budgetnet: the most accurate residual network that fits a parameter budget."""

from __future__ import annotations

__version__ = "0.1.0"

from budgetnet.errors import BudgetnetError

__all__ = ["BudgetnetError", "__version__"]
