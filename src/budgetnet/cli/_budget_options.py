"""The limit flags shared by `summary`, `zoo`, `fit`, `train` and `search`: the parameter
budget, and forward FLOPs, stored weight bytes and latency per image.

Each flag is the run-config key of the same name (`--max-flops` is `max_flops`), so a
config or space file can set the same limits. Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from budgetnet.models.limits import Limits

BudgetOption = Annotated[
    str | None, typer.Option("--budget", help="Parameter budget: 5M, 4.5e6, 500k or 5000000 [default: 5M].")
]
MaxFlopsOption = Annotated[
    str | None, typer.Option("--max-flops", help="Forward FLOPs per image at most, at the input size: 300M, 1.5G.")
]
MaxBytesOption = Annotated[
    str | None,
    typer.Option("--max-bytes", help="Weights as stored at most: 2MB (10^6), 1.5MiB (2^20), 500kB; fp32 unless "
                                     "--int8-bytes."),
]
Int8BytesOption = Annotated[
    bool,
    typer.Option("--int8-bytes", help="--max-bytes counts int8 weights, as `budgetnet export --int8` stores them."),
]
MaxLatencyOption = Annotated[
    float | None,
    typer.Option("--max-latency-ms", help="Milliseconds per image at most at --latency-batch on this machine's CPU "
                                          "(a short timed run, cached per machine and shape)."),
]
LatencyBatchOption = Annotated[
    int | None, typer.Option("--latency-batch", help="Batch size the latency is measured at [default: 1].")
]

def limit_overrides(
    budget: str | None = None,
    max_flops: str | None = None,
    max_bytes: str | None = None,
    int8_bytes: bool = False,
    max_latency_ms: float | None = None,
    latency_batch: int | None = None,
) -> dict[str, Any]:
    """The run-config keys set by the limit flags that were given (None or False: not given);
    the run schema parses and checks them."""
    values = {"budget": budget, "max_flops": max_flops, "max_bytes": max_bytes, "int8_bytes": int8_bytes or None,
              "max_latency_ms": max_latency_ms, "latency_batch": latency_batch}
    return {key: value for key, value in values.items() if value is not None}


def limits_from_cli(config_path: Path | None = None, **flags: Any) -> Limits:
    """The limits of the flags given (see `limit_overrides`), laid over those a run config
    file sets (its top-level budget keys), over the 5M default budget."""
    from budgetnet.config import LIMIT_KEYS, build_config, read_yaml_mapping

    values: dict[str, Any] = {}
    if config_path is not None:
        data = read_yaml_mapping(config_path)
        values = {key: data[key] for key in LIMIT_KEYS if key in data}
    values.update(limit_overrides(**flags))
    return build_config(values, source="limits").limits
