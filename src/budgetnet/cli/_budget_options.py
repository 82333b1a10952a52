"""The limit flags beside `--budget`, declared once for `summary`, `zoo`, `fit`, `train` and
`search`: forward FLOPs, stored weight bytes and latency per image.

Each flag sets the run-config key of the same name (`--max-flops` sets `max_flops`; `Sets`,
checked against the schema by tests/test_cli_flags.py), so a config or space file can give the
same limits. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from budgetnet.cli._flags import Sets, flag, flag_overrides, with_flags

if TYPE_CHECKING:
    from budgetnet.models.limits import Limits

PANEL = "Limits"

BudgetOption = flag("--budget", str, PANEL, Sets("budget"), "Parameter budget: 5M, 4.5e6, 500k or 5000000 "
                                                             "[default: 5M].")

# Parameter name -> flag, in the order --help lists them.
LIMIT_FLAGS: dict[str, Any] = {
    "max_flops": flag("--max-flops", str, PANEL, Sets("max_flops"),
                      "Forward FLOPs per image at most, at the input size: 300M, 1.5G."),
    "max_bytes": flag("--max-bytes", str, PANEL, Sets("max_bytes"),
                      "Weights as stored at most: 2MB (10^6), 1.5MiB (2^20), 500kB; fp32 unless --int8-bytes."),
    "int8_bytes": Annotated[bool, typer.Option(
        "--int8-bytes", rich_help_panel=PANEL,
        help="--max-bytes counts int8 weights, as `budgetnet export --int8` stores them."), Sets("int8_bytes")],
    "max_latency_ms": flag("--max-latency-ms", float, PANEL, Sets("max_latency_ms"),
                           "Milliseconds per image at most at --latency-batch on this machine's CPU (a short "
                           "timed run, cached per machine and shape)."),
    "latency_batch": flag("--latency-batch", int, PANEL, Sets("latency_batch"),
                          "Batch size the latency is measured at [default: 1]."),
}

limit_flags = with_flags(LIMIT_FLAGS, into="limits")
"""Adds the limit flags to a command, which receives their values as `limits: dict[str, Any]`."""


def limit_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config keys the limit flags that were given set (None or False: not given);
    the run schema parses and checks them."""
    return flag_overrides(LIMIT_FLAGS, values)


def limits_from_cli(config_path: Path | None, budget: str | None, values: Mapping[str, Any]) -> Limits:
    """The limits of `--budget` and the limit flags given (`values`), laid over those a run
    config file sets (its top-level budget keys), over the 5M default budget."""
    from budgetnet.config import LIMIT_KEYS, build_config, read_yaml_mapping

    given: dict[str, Any] = {}
    if config_path is not None:
        data = read_yaml_mapping(config_path)
        given = {key: data[key] for key in LIMIT_KEYS if key in data}
    given.update(limit_overrides(values))
    if budget is not None:
        given["budget"] = budget
    return build_config(given, source="limits").limits
