"""The limit flags shared by `summary`, `zoo`, `fit`, `train` and `search`: the parameter
budget, and forward FLOPs, stored weight bytes and latency per image.

Each flag sets the run-config key of the same name (`--max-flops` is `max_flops`; `Sets`,
checked against the schema by tests/test_cli_flags.py), so a config or space file can set the
same limits. `@limit_flags` adds them all to a command, listed under "Limits" in --help.
Importing this module does not import torch.
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

BudgetOption = flag("--budget", str, PANEL, Sets("budget"),
                    "Parameter budget: 5M, 4.5e6, 500k or 5000000 [default: the config's, else 5M].")
MaxFlopsOption = flag("--max-flops", str, PANEL, Sets("max_flops"),
                      "Forward FLOPs per image at most, at the input size: 300M, 1.5G.")
MaxBytesOption = flag("--max-bytes", str, PANEL, Sets("max_bytes"),
                      "Weights as stored at most: 2MB (10^6), 1.5MiB (2^20), 500kB; fp32 unless --int8-bytes.")
Int8BytesOption = Annotated[bool | None, typer.Option(
    "--int8-bytes", rich_help_panel=PANEL,
    help="--max-bytes counts int8 weights, as `budgetnet export --int8` stores them."), Sets("int8_bytes")]
MaxLatencyOption = flag("--max-latency-ms", float, PANEL, Sets("max_latency_ms"),
                        "Milliseconds per image at most at --latency-batch on this machine's CPU (a short timed "
                        "run, cached per machine and shape).")
LatencyBatchOption = flag("--latency-batch", int, PANEL, Sets("latency_batch"),
                          "Batch size the latency is measured at [default: 1].")

# Parameter name -> flag, in the order --help lists them.
LIMIT_FLAGS: dict[str, Any] = {
    "budget": BudgetOption, "max_flops": MaxFlopsOption, "max_bytes": MaxBytesOption, "int8_bytes": Int8BytesOption,
    "max_latency_ms": MaxLatencyOption, "latency_batch": LatencyBatchOption,
}

limit_flags = with_flags(LIMIT_FLAGS, into="limit_values")
"""Adds the limit flags to a command, which receives their values as `limit_values: dict[str, Any]`."""


def limit_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config keys set by the limit flags that were given (`values` by parameter name;
    None or False: not given); the run schema parses and checks them."""
    return flag_overrides(LIMIT_FLAGS, values)


def limits_from_cli(values: Mapping[str, Any], config_path: Path | None = None) -> Limits:
    """The limits of the flags given (see `limit_overrides`), laid over those a run config
    file sets (its top-level budget keys), over the 5M default budget."""
    from budgetnet.config import LIMIT_KEYS, build_config, read_yaml_mapping

    given: dict[str, Any] = {}
    if config_path is not None:
        data = read_yaml_mapping(config_path)
        given = {key: data[key] for key in LIMIT_KEYS if key in data}
    given.update(limit_overrides(values))
    return build_config(given, source="limits").limits
