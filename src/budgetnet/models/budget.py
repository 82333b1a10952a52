"""Exact parameter counts, budgets, fitting a shape to a budget, and per-layer summaries.

Counting builds the real network on the ``meta`` device (shapes, no memory, milliseconds),
so a count can never drift from what training builds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from budgetnet.errors import BudgetnetError
from budgetnet.models.blocks import BLOCKS
from budgetnet.models.builder import build_model
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
    hint = "write it like 5M, 4.5e6, 500k or 5000000"
    if isinstance(value, bool):
        raise BudgetnetError(f"budget {value!r} is not a parameter count; {hint}")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BudgetnetError(f"budget {value!r} is not a parameter count; {hint}")
        amount = Decimal(value)
    else:
        text = str(value).strip().lower().replace("_", "").replace(",", "")
        scale = 1
        if text[-1:] in _SUFFIXES:
            text, scale = text[:-1], _SUFFIXES[text[-1]]
        try:
            amount = Decimal(text) * scale
        except ArithmeticError:  # InvalidOperation, or Overflow for exponents like 1e9999999
            raise BudgetnetError(f"budget {value!r} is not a parameter count; {hint}") from None
        if not amount.is_finite():
            raise BudgetnetError(f"budget {value!r} is not a parameter count; {hint}")
    # Checked before any integer conversion: int() of a million-digit Decimal takes minutes.
    if amount.adjusted() > 12:
        raise BudgetnetError(f"budget {value!r} is absurdly large (at most 1e12 parameters); {hint}")
    if amount != amount.to_integral_value():
        raise BudgetnetError(f"budget {value!r} is not a whole number of parameters; {hint}")
    if amount <= 0:
        raise BudgetnetError(f"budget {value!r} must be positive; {hint}")
    return int(amount)


def _budget_field(value: Any) -> int:
    try:
        return parse_budget(value)
    except BudgetnetError as exc:  # pydantic reports ValueErrors with the field's location
        raise ValueError(str(exc)) from None


# A config field that takes a budget in any form parse_budget reads (5M, 4.5e6, 5000000).
Budget = Annotated[int, BeforeValidator(_budget_field)]


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


def fit_to_budget(
    budget: int | float | str,
    *,
    mode: Literal["width", "depth"] = "width",
    blocks: Sequence[int] | None = None,
    width_ratios: Sequence[float] | None = None,
    channels: Sequence[int] | None = None,
    multiple: int = 1,
    base: Mapping[str, Any] | ResNetSpec | None = None,
) -> ResNetSpec:
    """The biggest network of a given shape whose trainable count is <= `budget`.

    `base` (a spec or a mapping of spec fields, e.g. from a preset or YAML) supplies every
    field the fit does not decide: block type, kernels, strides, stage kinds, head...

    * ``mode="width"``: fixed depth (`blocks`, else the base's). Channels are
      ``scale_widths(w, width_ratios, multiple)`` for an integer base width ``w``; ratios
      default to the base's ``channels / channels[0]``. Returns the largest ``w`` that fits,
      found by binary search (counts never shrink as ``w`` grows). A stem width set in the
      base keeps its ratio to the first layer. Bottleneck nets snap to a multiple of 4 too.
    * ``mode="depth"``: fixed `channels` (else the base's). Starting from `blocks` (default 1
      per residual layer, 0 per conv_pool layer) blocks are added round-robin, first layer
      first: each pass gives every layer one more block if it still fits, skipping layers
      whose next block would break the budget, until no layer can take one. Round-robin
      keeps depth spread over resolutions the way ResNets are designed; "cheapest block
      first" would pile every block into the narrowest layer.

    Raises `BudgetnetError` if even the smallest network of that shape is over budget.
    """
    limit = parse_budget(budget)
    fields = _fields(base)
    if multiple < 1:
        raise BudgetnetError(f"multiple must be a positive integer, got {multiple}")
    if mode == "width":
        return _fit_width(limit, fields, blocks, width_ratios, channels, multiple)
    if mode == "depth":
        return _fit_depth(limit, fields, blocks, channels)
    raise BudgetnetError(f"unknown fit mode {mode!r}; use width or depth")


def _fit_width(
    limit: int,
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
    smallest = count_params(narrowest)
    if smallest > limit:
        raise BudgetnetError(
            f"even the narrowest network of that shape (channels {narrowest.channels}) has "
            f"{smallest:,} parameters, over the budget of {limit:,}; "
            "raise the budget or use fewer blocks"
        )
    fits, over = 1, 2
    while count_params(at(over)) <= limit:
        fits, over = over, over * 2
    while over - fits > 1:
        mid = (fits + over) // 2
        fits, over = (mid, over) if count_params(at(mid)) <= limit else (fits, mid)
    return at(fits)


def _fit_depth(
    limit: int, fields: dict[str, Any], blocks: Sequence[int] | None, channels: Sequence[int] | None
) -> ResNetSpec:
    widths = list(channels if channels is not None else fields.get("channels") or [])
    if not widths:
        raise BudgetnetError("depth fitting needs the channels per layer; give --channels, e.g. 64,128,256")
    kinds = fields.get("stage_kinds") or ["residual"] * len(widths)
    current = list(blocks) if blocks is not None else [0 if k == "conv_pool" else 1 for k in kinds]

    def at(depth: list[int]) -> ResNetSpec:
        return validate_spec({**fields, "blocks": depth, "channels": widths})

    def step_cost(depth: list[int], i: int) -> int:
        grown = list(depth)
        grown[i] += 1
        return count_params(at(grown)) - count_params(at(depth))

    total = count_params(at(current))
    if total > limit:
        raise BudgetnetError(
            f"even the shallowest network of that shape (blocks {current}) has {total:,} "
            f"parameters, over the budget of {limit:,}; raise the budget or use narrower channels"
        )
    # Every block after a layer's first is the same identity block, so a layer's next-block
    # cost only changes when it goes from 0 blocks to 1 (a pre-activation net may then gain
    # its final BN); everything else is arithmetic, not a rebuild per block.
    costs = [step_cost(current, i) for i in range(len(current))]
    grew = True
    while grew:
        grew = False
        for i in range(len(current)):
            if total + costs[i] <= limit:
                current[i] += 1
                total += costs[i]
                grew = True
                if current[i] == 1:
                    costs = [step_cost(current, j) for j in range(len(current))]
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
    """What a spec costs: trainable params, FLOPs per image, weight bytes, budget fit."""

    spec: ResNetSpec
    params: int
    budget: int
    flops: int
    layers: list[LayerRow] = field(default_factory=list)

    @property
    def within_budget(self) -> bool:
        return self.params <= self.budget

    @property
    def bytes(self) -> dict[str, int]:
        """Weight storage at each precision (parameters only; BN running stats excluded)."""
        return {"fp32": 4 * self.params, "bf16": 2 * self.params, "int8": self.params}

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "budget": self.budget,
            "within_budget": self.within_budget,
            "flops": self.flops,
            "input_size": self.spec.input_size,
            "bytes": self.bytes,
            "layers": [
                {"name": r.name, "type": r.type, "output_shape": list(r.output_shape), "params": r.params}
                for r in self.layers
            ],
            "spec": self.spec.resolved().model_dump(mode="json"),
        }


_ROW_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, *BLOCKS.values())


def summarize(spec: ResNetSpec, budget: int | float | str = DEFAULT_BUDGET) -> ModelSummary:
    """Per-layer table, total trainable params and FLOPs for one image at the spec's input
    size. FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts
    as 2; convolutions and matmuls only). Runs on the meta device: no memory, no compute."""
    limit = parse_budget(budget)
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
    return ModelSummary(spec, count_params(model), limit, int(counter.get_total_flops()), rows)
