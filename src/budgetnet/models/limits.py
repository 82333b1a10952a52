"""Limits beside the parameter budget: forward FLOPs, stored weight bytes, measured latency.

A `Limits` holds every limit a command was given; `models.budget` checks specs against it
(`check_limits`, `over_limits`) and fits shapes under all of it. This module reads the limits
as users write them (``300M`` FLOPs, ``2MB``) and measures the two costs that need more than
a parameter count:

* weight bytes *as stored*: every tensor of the state dict at its own size (fp32 weights, BN
  statistics, the frozen whitening filters), or, for int8, what ``budgetnet export --int8``
  keeps: one byte per conv/linear weight plus a float32 scale and bias per output channel
  (BatchNorm is folded into that bias);
* latency: a short timed forward run of the spec on this machine's CPU (fp32, eval mode,
  torch's thread count), cached per machine and shape in the user cache dir, so a spec is
  timed once. Timings on a busy CPU are not cached: beside a benchmark at higher priority on
  this 2-core machine, a process at nice 19 timed the narrowest speedrun_2m shape at 17 s per
  image.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BeforeValidator
from torch import nn

from budgetnet.data.cache import default_cache_dir
from budgetnet.errors import BudgetnetError, warn
from budgetnet.files import write_json
from budgetnet.machine import machine_info
from budgetnet.models.builder import build_model
from budgetnet.models.spec import ResNetSpec

_SI = {"k": 10**3, "m": 10**6, "g": 10**9}
_FLOP_UNITS = {**_SI, "t": 10**12}
_BYTE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, **_SI,
}
# Timing: at least this many timed runs and this many seconds of them; the fastest is kept, as
# timeit does: other processes only ever add time to a run.
_LATENCY_RUNS, _LATENCY_SECONDS, _LATENCY_MAX_RUNS = 5, 0.3, 200
_MEASURED: dict[str, float] = {}  # this process's timings, the busy ones too


def parse_quantity(
    value: str | int | float, *, what: str, noun: str, units: str, suffixes: Mapping[str, int], hint: str,
    most_exponent: int = 15,
) -> int:
    """A positive whole amount from a number or text like ``5M``, ``4.5e6``, ``5_000_000``,
    ``5,000,000``; `suffixes` (lower case) scale it. Errors name `what` and give `hint`."""
    bad = f"{what} {value!r} is not a {noun}; {hint}"
    if isinstance(value, bool):
        raise BudgetnetError(bad)
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BudgetnetError(bad)
        amount = Decimal(value)
    else:
        text = str(value).strip().lower().replace("_", "").replace(",", "").replace(" ", "")
        scale = 1
        for suffix in sorted(suffixes, key=len, reverse=True):
            if text.endswith(suffix):
                text, scale = text[: -len(suffix)], suffixes[suffix]
                break
        try:
            amount = Decimal(text) * scale
        except ArithmeticError:  # InvalidOperation, or Overflow for exponents like 1e9999999
            raise BudgetnetError(bad) from None
        if not amount.is_finite():
            raise BudgetnetError(bad)
    # Checked before any integer conversion: int() of a million-digit Decimal takes minutes.
    if amount.adjusted() > most_exponent:
        raise BudgetnetError(f"{what} {value!r} is absurdly large (at most 1e{most_exponent} {units}); {hint}")
    if amount != amount.to_integral_value():
        raise BudgetnetError(f"{what} {value!r} is not a whole number of {units}; {hint}")
    if amount <= 0:
        raise BudgetnetError(f"{what} {value!r} must be positive; {hint}")
    return int(amount)


def parse_flops(value: str | int | float) -> int:
    """A FLOPs limit (forward FLOPs per image) from ``300M``, ``1.5G``, ``3e8`` or a number."""
    return parse_quantity(value, what="FLOPs limit", noun="FLOP count", units="FLOPs", suffixes=_FLOP_UNITS,
                          hint="write it like 300M, 1.5G or 300000000")


def parse_bytes(value: str | int | float) -> int:
    """A size limit in bytes from ``2MB`` (10^6), ``1.5MiB`` (2^20), ``500kB``, ``2M`` or a number."""
    return parse_quantity(value, what="size limit", noun="size in bytes", units="bytes", suffixes=_BYTE_UNITS,
                          hint="write it like 2MB, 500kB, 1.5MiB or 2000000")


def quantity_validator(parse: Callable[[Any], int]) -> BeforeValidator:
    """A pydantic validator reading a field with `parse` (None passes through), its
    `BudgetnetError` turned into the ValueError pydantic reports with the field's location."""

    def validate(value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except BudgetnetError as exc:
            raise ValueError(str(exc)) from None

    return BeforeValidator(validate)


# Config fields that take a limit in any form the parsers above read.
Flops = Annotated[int, quantity_validator(parse_flops)]
ByteSize = Annotated[int, quantity_validator(parse_bytes)]


@dataclass(frozen=True)
class Limits:
    """Every limit a network must meet: the parameter budget, and optionally forward FLOPs
    per image, stored weight bytes (fp32, or int8 with `int8_bytes`) and milliseconds per
    image at `latency_batch` on this machine."""

    params: int
    flops: int | None = None
    bytes: int | None = None
    int8_bytes: bool = False
    latency_ms: float | None = None
    latency_batch: int = 1

    def __post_init__(self) -> None:
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms) and self.latency_ms > 0):
            raise BudgetnetError(f"latency limit {self.latency_ms!r} ms must be a positive number, e.g. 2 or 0.5")
        if self.latency_batch < 1:
            raise BudgetnetError(f"latency batch {self.latency_batch} must be at least 1")

    @property
    def bytes_precision(self) -> str:
        return "int8" if self.int8_bytes else "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "flops": self.flops, "bytes": self.bytes,
                "bytes_precision": self.bytes_precision, "latency_ms": self.latency_ms,
                "latency_batch": self.latency_batch}


def stored_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the weights as stored: ``fp32`` is every state-dict tensor at its own size;
    ``int8`` is one byte per conv/linear weight plus a float32 scale and bias per output
    channel, as the int8 export stores them (BN folded into the bias). Works on meta models."""
    fp32 = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    int8 = sum(m.weight.numel() + 8 * m.weight.shape[0] for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))
    return {"fp32": fp32, "int8": int8}


def _machine() -> dict[str, Any]:
    """What makes a latency this machine's: the host, CPU model, ISA level, threads, torch."""
    return {"host": platform.node(), **machine_info()}


def _busy() -> bool:
    """Whether other work holds the CPU: a 1-minute load average above its core count."""
    return os.getloadavg()[0] > (os.cpu_count() or 1)


@functools.cache
def _warn_busy() -> None:
    warn(f"the CPU is busy (load average above its {os.cpu_count()} cores): latencies measured now are upper "
         "bounds and are not cached; measure on a quiet machine for figures to keep")


def measure_latency(spec: ResNetSpec, batch: int = 1, cache_dir: Path | None = None) -> float:
    """Milliseconds per image of `spec`'s forward pass at `batch` on this machine's CPU: fp32,
    eval mode, no grad, the fastest of the timed runs after one warm-up. Cached per machine
    and spec in ``<cache>/latency/`` when the CPU was not busy (an unreadable entry is
    measured again); a busy CPU's timing is kept for this process only, with a warning."""
    key = json.dumps({"machine": _machine(), "spec": spec.resolved().model_dump(mode="json"), "batch": batch},
                     sort_keys=True)
    folder = (cache_dir or default_cache_dir()) / "latency"
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    if key in _MEASURED:
        return _MEASURED[key]
    try:
        return float(json.loads(path.read_text())["ms_per_image"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    busy = _busy()  # before this run adds its own threads to the load
    model = build_model(spec).eval()
    x = torch.randn(batch, spec.in_channels, spec.input_size, spec.input_size)
    times: list[float] = []
    with torch.inference_mode():
        model(x)  # warm-up: allocator and kernel selection
        while len(times) < _LATENCY_RUNS or (sum(times) < _LATENCY_SECONDS and len(times) < _LATENCY_MAX_RUNS):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    ms = _MEASURED[key] = 1000 * min(times) / batch
    if busy:
        _warn_busy()
        return ms
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, {"ms_per_image": ms, "runs": len(times), "key": json.loads(key)})
    except (OSError, BudgetnetError):
        pass  # a read-only cache costs a new measurement next time, nothing else
    return ms
