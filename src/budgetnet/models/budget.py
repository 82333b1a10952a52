"""Exact parameter counts, budgets, fitting a shape to a budget, and per-layer summaries.

Counting builds the real network on the ``meta`` device (shapes, no memory, milliseconds),
so a count can never drift from what training builds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from budgetnet.errors import BudgetnetError
from budgetnet.models.blocks import BLOCKS
from budgetnet.models.builder import build_model
from budgetnet.models.limits import Limits, measure_latency, parse_quantity, quantity_validator, stored_bytes
from budgetnet.models.spec import BOTTLENECK_EXPANSION, ResNetSpec, validate_spec

DEFAULT_BUDGET = 5_000_000

_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9}


def count_params(spec_or_module: ResNetSpec | nn.Module) -> int:
    """Trainable parameters: exactly ``sum(p.numel() for p in model.parameters() if
    p.requires_grad)`` of the built model. A spec is built on the meta device (instant)."""
    if isinstance(spec_or_module, nn.Module):
        return sum(p.numel() for p in spec_or_module.parameters() if p.requires_grad)
    with torch.device("meta"):
        model = build_model(spec_or_module)
    return count_params(model)


def parse_budget(value: str | int | float) -> int:
    """A parameter budget from ``5M``, ``4.5e6``, ``500k``, ``5_000_000``, ``5,000,000`` or a
    number. Must come out a positive whole number of parameters."""
    return parse_quantity(value, what="budget", noun="parameter count", units="parameters", suffixes=_SUFFIXES,
                          hint="write it like 5M, 4.5e6, 500k or 5000000", most_exponent=12)


# A config field that takes a budget in any form parse_budget reads (5M, 4.5e6, 5000000).
Budget = Annotated[int, quantity_validator(parse_budget)]


def scale_widths(base: int, ratios: Sequence[float], multiple: int = 1) -> list[int]:
    """``round(base * ratio)`` per layer (halves round up), snapped to `multiple` and never
    below it. Non-decreasing in `base`, which is what makes binary search valid."""
    return [max(multiple, multiple * math.floor(base * r / multiple + 0.5)) for r in ratios]


def _fields(base: Mapping[str, Any] | ResNetSpec | None) -> dict[str, Any]:
    if base is None:
        return {}
    if isinstance(base, ResNetSpec):
        # Only what was set explicitly: derived fields (strides...) must follow the new shape.
        return base.model_dump(exclude_unset=True)
    return dict(base)


@dataclass(frozen=True)
class LimitCheck:
    """One limit and what a spec costs against it."""

    name: Literal["params", "bytes", "flops", "latency_ms"]
    value: float
    limit: float
    detail: str = ""  # the FLOPs' image size, the bytes' precision, the latency's batch

    @property
    def fits(self) -> bool:
        return self.value <= self.limit

    @property
    def reason(self) -> str:
        """What breaks the limit, e.g. ``has 4,992,586 parameters, over the budget of 2,000,000
        (--budget)``; names the flag (the config key is the same words with underscores)."""
        if self.name == "params":
            return f"has {self.value:,} parameters, over the budget of {self.limit:,} (--budget)"
        if self.name == "bytes":
            return f"stores {self.value:,} bytes of {self.detail} weights, over the limit of {self.limit:,} (--max-bytes)"
        if self.name == "flops":
            return f"needs {self.value:,} FLOPs per {self.detail} image, over the limit of {self.limit:,} (--max-flops)"
        return (f"takes {self.value:.3g} ms per image at {self.detail} on this machine, over the limit of "
                f"{self.limit:g} ms (--max-latency-ms)")

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.name, "value": self.value, "max": self.limit, "fits": self.fits, "detail": self.detail}


def as_limits(budget: int | float | str | Limits) -> Limits:
    """`budget` itself when it is a `Limits`, else a parameter budget alone."""
    return budget if isinstance(budget, Limits) else Limits(params=parse_budget(budget))


class _Costs:
    """What one spec costs, each measured on first use: a meta build gives parameters and
    bytes at once, FLOPs need a meta forward pass, latency a timed run."""

    def __init__(self, spec: ResNetSpec, limits: Limits, known: Mapping[str, float | None] | None = None) -> None:
        self.spec, self.limits = spec, limits
        self._values: dict[str, float] = {k: v for k, v in (known or {}).items() if v is not None}

    def __getitem__(self, name: str) -> float:
        if name not in self._values:
            if name == "flops":
                self._values[name] = forward_flops(self.spec)
            elif name == "latency_ms":
                self._values[name] = measure_latency(self.spec, self.limits.latency_batch)
            else:
                with torch.device("meta"):
                    model = build_model(self.spec)
                self._values["params"] = count_params(model)
                self._values["bytes"] = stored_bytes(model)[self.limits.bytes_precision]
        return self._values[name]

    def checks(self) -> Iterator[LimitCheck]:
        """A check per limit given, cheapest first, each measured only when reached."""
        limits, size = self.limits, self.spec.input_size
        yield LimitCheck("params", int(self["params"]), limits.params)
        if limits.bytes is not None:
            yield LimitCheck("bytes", int(self["bytes"]), limits.bytes, limits.bytes_precision)
        if limits.flops is not None:
            yield LimitCheck("flops", int(self["flops"]), limits.flops, f"{size}x{size}")
        if limits.latency_ms is not None:
            yield LimitCheck("latency_ms", self["latency_ms"], limits.latency_ms, f"batch {limits.latency_batch}")


def check_limits(spec: ResNetSpec, limits: Limits) -> list[LimitCheck]:
    """`spec` against every limit given (latency is measured only if it is limited)."""
    return list(_Costs(spec, limits).checks())


def over_limits(spec: ResNetSpec, limits: Limits) -> str | None:
    """Why `spec` breaks `limits` (the first broken limit, e.g. ``has 5,000,266 parameters,
    over the budget of ...``), or None if it meets all of them. Cheap limits are checked
    first, so a spec over its parameter budget is never timed."""
    return next((check.reason for check in _Costs(spec, limits).checks() if not check.fits), None)


def fit_to_budget(
    budget: int | float | str | Limits,
    *,
    mode: Literal["width", "depth"] = "width",
    blocks: Sequence[int] | None = None,
    width_ratios: Sequence[float] | None = None,
    channels: Sequence[int] | None = None,
    multiple: int = 1,
    base: Mapping[str, Any] | ResNetSpec | None = None,
) -> ResNetSpec:
    """The biggest network of a given shape that meets `budget`: a parameter budget, or
    `Limits` (parameters and any of FLOPs, bytes and latency; the network must meet all).

    `base` (a spec or a mapping of spec fields, e.g. from a preset or YAML) supplies every
    field the fit does not decide: block type, kernels, strides, stage kinds, head...

    * ``mode="width"``: fixed depth (`blocks`, else the base's). Channels are
      ``scale_widths(w, width_ratios, multiple)`` for an integer base width ``w``; ratios
      default to the base's ``channels / channels[0]``. Returns the largest ``w`` that fits,
      found by binary search (every cost grows with ``w``; a measured latency only roughly).
      A stem width set in the base keeps its ratio to the first layer. Bottleneck nets snap
      to a multiple of 4 too.
    * ``mode="depth"``: fixed `channels` (else the base's). Starting from `blocks` (default 1
      per residual layer, 0 per conv_pool layer) blocks are added round-robin, first layer
      first: each pass gives every layer one more block if it still fits, skipping layers
      whose next block would break a limit, until no layer can take one. Round-robin
      keeps depth spread over resolutions the way ResNets are designed; "cheapest block
      first" would pile every block into the narrowest layer.

    Raises `BudgetnetError` if even the smallest network of that shape breaks a limit.
    """
    limits = as_limits(budget)
    fields = _fields(base)
    if multiple < 1:
        raise BudgetnetError(f"multiple must be a positive integer, got {multiple}")
    if mode == "width":
        return _fit_width(limits, fields, blocks, width_ratios, channels, multiple)
    if mode == "depth":
        return _fit_depth(limits, fields, blocks, channels)
    raise BudgetnetError(f"unknown fit mode {mode!r}; use width or depth")


def _fit_width(
    limits: Limits,
    fields: dict[str, Any],
    blocks: Sequence[int] | None,
    width_ratios: Sequence[float] | None,
    channels: Sequence[int] | None,
    multiple: int,
) -> ResNetSpec:
    depth = list(blocks if blocks is not None else fields.get("blocks") or [])
    if not depth:
        raise BudgetnetError("width fitting needs the blocks per layer; give --blocks, e.g. 4,5,3")
    template = list(channels if channels is not None else fields.get("channels") or [])
    if width_ratios is not None:
        ratios = [float(r) for r in width_ratios]
    elif template:
        ratios = [c / template[0] for c in template]
    else:
        raise BudgetnetError("width fitting needs --width-ratios (e.g. 1,2,4) or --channels to take them from")
    if len(ratios) != len(depth):
        raise BudgetnetError(f"width ratios have {len(ratios)} entries but blocks has {len(depth)}; give one per layer")
    if any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise BudgetnetError(f"width ratios must be positive, got {ratios}")
    stem = fields.get("stem_width")
    # The stem keeps its ratio to the first layer; without a template it is fixed as given.
    stem_ratio = stem / template[0] * ratios[0] if stem is not None and template else None
    if fields.get("block") == "bottleneck":
        multiple = math.lcm(multiple, BOTTLENECK_EXPANSION)

    def at(width: int) -> ResNetSpec:
        update: dict[str, Any] = {"blocks": depth, "channels": scale_widths(width, ratios, multiple)}
        if stem_ratio is not None:
            update["stem_width"] = scale_widths(width, [stem_ratio], multiple)[0]
        return validate_spec({**fields, **update})

    narrowest = at(1)
    if (reason := over_limits(narrowest, limits)) is not None:
        raise BudgetnetError(
            f"even the narrowest network of that shape (channels {narrowest.channels}) {reason}; "
            "raise that limit or use fewer blocks"
        )
    fits, over = 1, 2
    while over_limits(at(over), limits) is None:
        fits, over = over, over * 2
    while over - fits > 1:
        mid = (fits + over) // 2
        fits, over = (mid, over) if over_limits(at(mid), limits) is None else (fits, mid)
    return at(fits)


def _fit_depth(
    limits: Limits, fields: dict[str, Any], blocks: Sequence[int] | None, channels: Sequence[int] | None
) -> ResNetSpec:
    widths = list(channels if channels is not None else fields.get("channels") or [])
    if not widths:
        raise BudgetnetError("depth fitting needs the channels per layer; give --channels, e.g. 64,128,256")
    kinds = fields.get("stage_kinds") or ["residual"] * len(widths)
    current = list(blocks) if blocks is not None else [0 if k == "conv_pool" else 1 for k in kinds]

    def at(depth: list[int]) -> ResNetSpec:
        return validate_spec({**fields, "blocks": depth, "channels": widths})

    # Parameters, bytes and FLOPs add up block by block; latency is measured per candidate.
    added = [name for name in ("params", "bytes", "flops") if name == "params" or getattr(limits, name) is not None]
    caps = [getattr(limits, name) for name in added]

    def costs(depth: list[int]) -> list[float]:
        measured = _Costs(at(depth), limits)
        return [measured[name] for name in added]

    def step_costs(depth: list[int], i: int) -> list[float]:
        grown = list(depth)
        grown[i] += 1
        return [after - before for after, before in zip(costs(grown), costs(depth))]

    if (reason := over_limits(at(current), limits)) is not None:
        raise BudgetnetError(
            f"even the shallowest network of that shape (blocks {current}) {reason}; "
            "raise that limit or use narrower channels"
        )
    total = costs(current)
    # Every block after a layer's first is the same identity block, so a layer's next-block
    # cost only changes when it goes from 0 blocks to 1 (a pre-activation net may then gain
    # its final BN); everything else is arithmetic, not a rebuild per block.
    steps = [step_costs(current, i) for i in range(len(current))]
    grew = True
    while grew:
        grew = False
        for i in range(len(current)):
            after = [t + c for t, c in zip(total, steps[i])]
            if any(a > cap for a, cap in zip(after, caps)):
                continue
            grown = current[:i] + [current[i] + 1] + current[i + 1:]
            if limits.latency_ms is not None and over_limits(at(grown), limits) is not None:
                continue
            current, total, grew = grown, after, True
            if current[i] == 1:
                steps = [step_costs(current, j) for j in range(len(current))]
    return at(current)


@dataclass(frozen=True)
class LayerRow:
    """One row of a summary: a module's output shape (batch dropped) and the parameters it
    owns directly, so the rows add up to the total."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """What a spec costs: trainable params, FLOPs per image, stored weight bytes, latency
    (measured only under a latency limit), and each limit's fit."""

    spec: ResNetSpec
    params: int
    limits: Limits
    flops: int
    bytes: dict[str, int]  # weights as stored: fp32 and int8 (see models.limits.stored_bytes)
    latency_ms: float | None = None
    layers: list[LayerRow] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return self.limits.params

    @property
    def within_budget(self) -> bool:
        return self.params <= self.budget

    @property
    def checks(self) -> list[LimitCheck]:
        known = {"params": self.params, "flops": self.flops, "latency_ms": self.latency_ms,
                 "bytes": self.bytes[self.limits.bytes_precision]}
        return list(_Costs(self.spec, self.limits, known).checks())

    @property
    def within_limits(self) -> bool:
        return all(check.fits for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "budget": self.budget,
            "within_budget": self.within_budget,
            "within_limits": self.within_limits,
            "limits": [check.to_dict() for check in self.checks],
            "flops": self.flops,
            "input_size": self.spec.input_size,
            "bytes": self.bytes,
            "latency_ms": self.latency_ms,
            "latency_batch": self.limits.latency_batch if self.latency_ms is not None else None,
            "layers": [
                {"name": r.name, "type": r.type, "output_shape": list(r.output_shape), "params": r.params}
                for r in self.layers
            ],
            "spec": self.spec.resolved().model_dump(mode="json"),
        }


_ROW_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, *BLOCKS.values())


def forward_flops(spec: ResNetSpec) -> int:
    """FLOPs of one image's forward pass at the spec's input size (meta device, no compute)."""
    return summarize(spec).flops


def summarize(spec: ResNetSpec, budget: int | float | str | Limits = DEFAULT_BUDGET) -> ModelSummary:
    """Per-layer table, total trainable params, FLOPs for one image at the spec's input size,
    stored weight bytes, and the fit to `budget` (a parameter budget or `Limits`; latency is
    measured only when limited). FLOPs come from `torch.utils.flop_counter.FlopCounterMode`
    (a multiply-add counts as 2; convolutions and matmuls only). Runs on the meta device: no
    memory, no compute."""
    limits = as_limits(budget)
    with torch.device("meta"):
        model = build_model(spec).eval()
    rows: list[LayerRow] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
            rows.append(LayerRow(name, type(module).__name__, tuple(output.shape[1:]), own))

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, _ROW_TYPES) or any(True for _ in module.parameters(recurse=False))
    ]
    image = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size, device="meta")
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    latency = measure_latency(spec, limits.latency_batch) if limits.latency_ms is not None else None
    return ModelSummary(spec, count_params(model), limits, int(counter.get_total_flops()), stored_bytes(model),
                        latency, rows)
