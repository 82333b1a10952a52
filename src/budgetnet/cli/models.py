"""`budgetnet` models commands: summary, zoo, fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from budgetnet.cli._app import app
from budgetnet.cli._flags import GroupedHelp
from budgetnet.cli._model_options import (
    ConfigOption,
    PresetOption,
    model_fields_from_cli,
    model_flags,
    model_overrides,
    spec_from_cli,
)
from budgetnet.errors import BudgetnetError

# The library is imported inside the commands: it imports torch, which `--help` does not need.
BudgetOption = Annotated[
    str | None, typer.Option("--budget", help="Parameter budget: 5M, 4.5e6, 500k or 5000000 [default: 5M].")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped: don't fold tables to the 80-column default
        console.width = 160
    return console


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj))


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def _budget(text: str | None) -> int:
    from budgetnet.models.budget import DEFAULT_BUDGET, parse_budget

    return DEFAULT_BUDGET if text is None else parse_budget(text)


def _budget_line(params: int, budget: int) -> str:
    if params <= budget:
        return f"Budget {budget:,}: fits, {budget - params:,} to spare"
    return f"Budget {budget:,}: OVER by {params - budget:,}"


@app.command(cls=GroupedHelp)
@model_flags
def summary(
    model: dict[str, Any],
    preset: PresetOption = None,
    config: ConfigOption = None,
    budget: BudgetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per-layer table, trainable params, FLOPs per image, size and budget fit of a model."""
    from budgetnet.models import summarize

    spec = spec_from_cli(preset, config, model)
    result = summarize(spec, _budget(budget))
    if as_json:
        _echo_json(result.to_dict())
        return
    table = Table(title="Layers")
    table.add_column("Layer")
    table.add_column("Type")
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    for row in result.layers:
        table.add_row(row.name, row.type, str(list(row.output_shape)), f"{row.params:,}")
    console = _console()
    console.print(table)
    size = spec.input_size
    mib = {k: v / 2**20 for k, v in result.bytes.items()}
    console.print(f"Trainable parameters: {result.params:,}", highlight=False)
    console.print(f"FLOPs per image ({size}x{size}): {_si(result.flops)} ({result.flops:,})", highlight=False)
    console.print(
        f"Weights: fp32 {mib['fp32']:.2f} MiB | bf16 {mib['bf16']:.2f} MiB | int8 {mib['int8']:.2f} MiB",
        highlight=False,
    )
    console.print(_budget_line(result.params, result.budget), highlight=False)


@app.command()
def zoo(budget: BudgetOption = None, as_json: JsonOption = False) -> None:
    """Every preset: what it really counts vs what its report claims."""
    from budgetnet.models import list_presets, summarize

    limit = _budget(budget)
    entries = []
    for preset in list_presets():
        result = summarize(preset.spec, limit)
        claimed = preset.claimed_params
        entries.append(
            {
                "name": preset.name,
                "aliases": list(preset.aliases),
                "params": result.params,
                "flops": result.flops,
                "within_budget": result.within_budget,
                "claimed_params": claimed,
                "claimed_diff": None if claimed is None else result.params - claimed,
                "claimed_accuracy": preset.claimed_accuracy,
                "epochs": preset.epochs,
                "source": preset.source,
                "notes": preset.notes,
            }
        )
    if as_json:
        _echo_json({"budget": limit, "presets": entries})
        return
    table = Table(title=f"Preset zoo (budget {limit:,})")
    for name, justify in (
        ("Preset", "left"),
        ("Params", "right"),
        ("FLOPs", "right"),
        ("Fits", "center"),
        ("Claimed", "right"),
        ("Diff", "right"),
        ("Acc %", "right"),
        ("Epochs", "right"),
        ("Source", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for e in entries:
        diff = e["claimed_diff"]
        table.add_row(
            e["name"] + "".join(f"\n(= {a})" for a in e["aliases"]),
            f"{e['params']:,}",
            _si(e["flops"]),
            "yes" if e["within_budget"] else "no",
            "-" if e["claimed_params"] is None else f"{e['claimed_params']:,}",
            "" if not diff else f"{diff:+,}",
            "-" if e["claimed_accuracy"] is None else f"{e['claimed_accuracy']:.2f}",
            "-" if e["epochs"] is None else str(e["epochs"]),
            e["source"],
        )
    console = _console()
    console.print(table)
    for e in entries:
        if e["claimed_diff"]:
            console.print(f"{e['name']}: built {e['params']:,}, claimed {e['claimed_params']:,}. {e['notes']}")


def _floats(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise BudgetnetError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 1,2,4") from None


@app.command(cls=GroupedHelp)
@model_flags
def fit(
    model: dict[str, Any],
    preset: PresetOption = None,
    config: ConfigOption = None,
    width_ratios: Annotated[
        str | None, typer.Option("--width-ratios", help="Width of each layer relative to the base, e.g. 1,2,4.")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="width: widest net of that depth; depth: most blocks at fixed channels.")
    ] = "width",
    multiple: Annotated[int, typer.Option("--multiple", help="Round every width to a multiple of this.")] = 1,
    budget: BudgetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the spec here as YAML (for --config).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Fit a network shape to a parameter budget and print (or save) its spec as YAML."""
    from budgetnet.models import count_params, fit_to_budget

    if mode not in ("width", "depth"):
        raise BudgetnetError(f"--mode {mode!r} must be width or depth")
    # --blocks/--channels go to the fit itself: in depth mode --blocks is the starting depth.
    shape = model_overrides({key: model.pop(key) for key in ("blocks", "channels")})
    base = model_fields_from_cli(preset, config, model)
    limit = _budget(budget)
    spec = fit_to_budget(
        limit,
        mode=mode,  # type: ignore[arg-type]
        blocks=shape.get("blocks"),
        width_ratios=_floats("--width-ratios", width_ratios),
        channels=shape.get("channels"),
        multiple=multiple,
        base=base,
    ).resolved()
    params = count_params(spec)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as exc:
            raise BudgetnetError(f"cannot write {out}: {exc.strerror}") from None
    if as_json:
        _echo_json(
            {
                "mode": mode,
                "budget": limit,
                "params": params,
                "within_budget": params <= limit,
                "spec": spec.model_dump(mode="json"),
                "out": None if out is None else str(out),
            }
        )
        return
    what = "widest" if mode == "width" else "deepest"
    typer.echo(f"# {what} network within {limit:,} parameters: {params:,} ({limit - params:,} to spare)")
    if out is not None:
        typer.echo(f"# wrote {out} (use it with --config {out})")
    else:
        typer.echo(text, nl=False)

