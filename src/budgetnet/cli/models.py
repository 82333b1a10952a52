"""`budgetnet` models commands: summary, zoo, fit; each checks every limit given (see cli/_budget_options.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from budgetnet.cli._app import app
from budgetnet.cli._budget_options import limit_flags, limits_from_cli
from budgetnet.cli._data_options import LabelsOpt
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

if TYPE_CHECKING:
    from budgetnet.models.budget import LimitCheck
    from budgetnet.models.limits import Limits

# The library is imported inside the commands: it imports torch, which `--help` does not need.
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
DataOption = Annotated[
    str | None,
    typer.Option("--data", metavar="PATH", rich_help_panel="Data", help="Take the classes and input size from this dataset (any format "
                                                "`budgetnet train` reads), where no flag sets them."),
]


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


def _limit_line(check: LimitCheck) -> str:
    """One line per limit, e.g. ``Budget 5,000,000: fits, 337,654 to spare``."""
    if check.name == "latency_ms":
        what = f"Latency limit {check.limit:g} ms ({check.value:.3g} ms per image at {check.detail}, this machine)"
        margin = f"{abs(check.limit - check.value):.3g} ms"
    else:
        label = {"params": "Budget", "flops": "FLOPs limit", "bytes": f"Bytes limit ({check.detail})"}[check.name]
        what, margin = f"{label} {check.limit:,}", f"{abs(check.limit - check.value):,}"
    return f"{what}: fits, {margin} to spare" if check.fits else f"{what}: OVER by {margin}"


def _with_data(fields: dict[str, Any], data: str | None, labels: str | None) -> dict[str, Any]:
    """Spec fields with the classes and input size of the dataset at `data` where unset."""
    if data is None:
        if labels is not None:
            raise BudgetnetError("--labels chooses the labels of the --data dataset; give --data too")
        return fields
    from budgetnet.data import DataConfig, data_shape
    from budgetnet.models.spec import match_data

    shape = data_shape(DataConfig(path=data, labels=labels, input_size=fields.get("input_size")))
    return match_data(fields, len(shape.classes), shape.input_size, data)


@app.command(cls=GroupedHelp)
@model_flags
@limit_flags
def summary(
    model: dict[str, Any],
    limit_values: dict[str, Any],
    preset: PresetOption = None,
    config: ConfigOption = None,
    data: DataOption = None,
    labels: LabelsOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Per-layer table, trainable params, FLOPs per image, stored size and the fit to every limit."""
    from budgetnet.models import summarize
    from budgetnet.models.spec import validate_spec

    spec = spec_from_cli(preset, config, model)
    if data is not None or labels is not None:
        spec = validate_spec(_with_data(spec.model_dump(exclude_unset=True), data, labels))
    result = summarize(spec, limits_from_cli(limit_values, config))
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
    stored = result.bytes
    console.print(f"Trainable parameters: {result.params:,} ({spec.classes} classes)", highlight=False)
    console.print(f"FLOPs per image ({size}x{size}): {_si(result.flops)} ({result.flops:,})", highlight=False)
    console.print(
        f"Weights as stored: fp32 {stored['fp32'] / 2**20:.2f} MiB ({stored['fp32']:,} bytes) | "
        f"int8 {stored['int8'] / 2**20:.2f} MiB ({stored['int8']:,} bytes)",
        highlight=False,
    )
    for check in result.checks:
        console.print(_limit_line(check), highlight=False)


@app.command(cls=GroupedHelp)
@limit_flags
def zoo(limit_values: dict[str, Any], as_json: JsonOption = False) -> None:
    """Every preset: what it really counts vs what its report claims, and its fit to every limit."""
    from budgetnet.models import list_presets, summarize

    limits = limits_from_cli(limit_values)
    entries = []
    for preset in list_presets():
        result = summarize(preset.spec, limits)
        claimed = preset.claimed_params
        entries.append(
            {
                "name": preset.name,
                "aliases": list(preset.aliases),
                "params": result.params,
                "flops": result.flops,
                "bytes": result.bytes[limits.bytes_precision],
                "latency_ms": result.latency_ms,
                "within_budget": result.within_budget,
                "within_limits": result.within_limits,
                "over": [check.reason for check in result.checks if not check.fits],
                "claimed_params": claimed,
                "claimed_diff": None if claimed is None else result.params - claimed,
                "claimed_accuracy": preset.claimed_accuracy,
                "epochs": preset.epochs,
                "source": preset.source,
                "notes": preset.notes,
            }
        )
    if as_json:
        _echo_json({"budget": limits.params, "limits": limits.to_dict(), "presets": entries})
        return
    timed = limits.latency_ms is not None
    table = Table(title=f"Preset zoo ({_limits_title(limits)})")
    columns = [("Preset", "left"), ("Params", "right"), ("FLOPs", "right"),
               (f"{limits.bytes_precision} bytes", "right"), *([("ms/img", "right")] if timed else []),
               ("Fits", "center"), ("Claimed", "right"), ("Diff", "right"), ("Acc %", "right"), ("Epochs", "right"),
               ("Source", "left")]
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for e in entries:
        diff = e["claimed_diff"]
        table.add_row(
            e["name"] + "".join(f"\n(= {a})" for a in e["aliases"]),
            f"{e['params']:,}",
            _si(e["flops"]),
            _si(e["bytes"]),
            *([f"{e['latency_ms']:.3g}"] if timed else []),
            "yes" if e["within_limits"] else "no",
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


def _limits_title(limits: Limits) -> str:
    """The limits given, e.g. ``budget 5,000,000, 300,000,000 FLOPs, 2 ms at batch 1``."""
    parts = [f"budget {limits.params:,}"]
    if limits.flops is not None:
        parts.append(f"{limits.flops:,} FLOPs")
    if limits.bytes is not None:
        parts.append(f"{limits.bytes:,} {limits.bytes_precision} bytes")
    if limits.latency_ms is not None:
        parts.append(f"{limits.latency_ms:g} ms at batch {limits.latency_batch}")
    return ", ".join(parts)


def _floats(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise BudgetnetError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. 1,2,4") from None


@app.command(cls=GroupedHelp)
@model_flags
@limit_flags
def fit(
    model: dict[str, Any],
    limit_values: dict[str, Any],
    preset: PresetOption = None,
    config: ConfigOption = None,
    width_ratios: Annotated[
        str | None, typer.Option("--width-ratios", help="Width of each layer relative to the base, e.g. 1,2,4.")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="width: widest net of that depth; depth: most blocks at fixed channels.")
    ] = "width",
    multiple: Annotated[int, typer.Option("--multiple", help="Round every width to a multiple of this.")] = 1,
    data: DataOption = None,
    labels: LabelsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the spec here as YAML (for --config).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Fit a network shape under every limit given and print (or save) its spec as YAML."""
    from budgetnet.models import fit_to_budget
    from budgetnet.models.budget import check_limits

    if mode not in ("width", "depth"):
        raise BudgetnetError(f"--mode {mode!r} must be width or depth")
    # --blocks/--channels go to the fit itself: in depth mode --blocks is the starting depth.
    shape = model_overrides({key: model.pop(key) for key in ("blocks", "channels")})
    base = _with_data(model_fields_from_cli(preset, config, model), data, labels)
    limits = limits_from_cli(limit_values, config)
    spec = fit_to_budget(
        limits,
        mode=mode,  # type: ignore[arg-type]
        blocks=shape.get("blocks"),
        width_ratios=_floats("--width-ratios", width_ratios),
        channels=shape.get("channels"),
        multiple=multiple,
        base=base,
    ).resolved()
    checks = check_limits(spec, limits)
    params = int(checks[0].value)
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
                "budget": limits.params,
                "params": params,
                "within_budget": params <= limits.params,
                "limits": [check.to_dict() for check in checks],
                "spec": spec.model_dump(mode="json"),
                "out": None if out is None else str(out),
            }
        )
        return
    what = "widest" if mode == "width" else "deepest"
    typer.echo(f"# {what} network within {_limits_title(limits)}: {params:,} parameters "
               f"({limits.params - params:,} to spare)")
    for check in checks[1:]:
        typer.echo(f"# {_limit_line(check)}")
    if out is not None:
        typer.echo(f"# wrote {out} (use it with --config {out})")
    else:
        typer.echo(text, nl=False)
