"""Models: the declarative `ResNetSpec`, the builder, exact budgets and the preset zoo."""

from __future__ import annotations

from budgetnet.models.budget import Budget, count_params, fit_to_budget, parse_budget, summarize
from budgetnet.models.builder import build_model
from budgetnet.models.spec import ResNetSpec, format_validation_error
from budgetnet.models.zoo import PRESETS, get_preset, list_presets, load_model_section

__all__ = [
    "Budget",
    "PRESETS",
    "ResNetSpec",
    "build_model",
    "count_params",
    "fit_to_budget",
    "format_validation_error",
    "get_preset",
    "list_presets",
    "load_model_section",
    "parse_budget",
    "summarize",
]
