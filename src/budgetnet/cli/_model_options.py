"""The CLI flags that choose a model, shared by `summary`, `fit` and `train`.

A command declares the ones it wants as parameters, e.g. ``blocks: BlocksOption = None``,
and hands them to `spec_from_cli`; flags override whatever `--preset` or `--config` gave.
Importing this module does not import torch (`budgetnet.models` does, so it is imported
where a spec is made), which keeps `budgetnet --help` fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from budgetnet.errors import BudgetnetError

if TYPE_CHECKING:
    from budgetnet.models import ResNetSpec

PresetOption = Annotated[str | None, typer.Option("--preset", help="A zoo preset (see `budgetnet zoo`).")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file: a model spec, or a run config with a `model:` section."),
]
BlocksOption = Annotated[str | None, typer.Option("--blocks", help="Residual blocks per layer, e.g. 4,5,3.")]
ChannelsOption = Annotated[str | None, typer.Option("--channels", help="Channels per layer, e.g. 64,128,256.")]
StridesOption = Annotated[str | None, typer.Option("--strides", help="Stride per layer (default 1,2,2,...).")]
StageKindsOption = Annotated[
    str | None, typer.Option("--stage-kinds", help="residual or conv_pool per layer (default residual).")
]
BlockKernelsOption = Annotated[
    str | None, typer.Option("--block-kernels", help="Kernels of a block's convs, e.g. 5,3 (default 3,3).")
]
SkipKernelOption = Annotated[int | None, typer.Option("--skip-kernel", help="Projection shortcut kernel (1).")]
StemWidthOption = Annotated[int | None, typer.Option("--stem-width", help="Stem channels (first layer's).")]
StemKernelOption = Annotated[int | None, typer.Option("--stem-kernel", help="Stem conv kernel (3).")]
PoolOption = Annotated[str | None, typer.Option("--pool", help="Average-pool kernel P, or global (default).")]
BlockOption = Annotated[str | None, typer.Option("--block", help="Block type: basic, bottleneck or preact.")]
ActivationOption = Annotated[str | None, typer.Option("--activation", help="relu, gelu or silu.")]
ClassesOption = Annotated[int | None, typer.Option("--classes", help="Number of classes (10).")]
DropoutOption = Annotated[float | None, typer.Option("--dropout", help="Dropout before the head (0).")]
InputSizeOption = Annotated[int | None, typer.Option("--input-size", help="Input image side (32).")]
HeadScaleOption = Annotated[float | None, typer.Option("--head-scale", help="Logit multiplier (1.0).")]


def _int_list(flag: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",")]
        except ValueError:
            raise BudgetnetError(
                f"{flag} {text!r} is not a comma-separated list of integers, e.g. 4,5,3"
            ) from None

    return parse


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def _pool(text: str) -> int | str:
    if text.strip().lower() == "global":
        return "global"
    try:
        return int(text)
    except ValueError:
        raise BudgetnetError(f"--pool {text!r} must be an integer kernel size or global") from None


def _same(value: Any) -> Any:
    return value


# Flag (as a Python parameter name) -> parser into the ResNetSpec field of the same name.
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "blocks": _int_list("--blocks"),
    "channels": _int_list("--channels"),
    "strides": _int_list("--strides"),
    "stage_kinds": _str_list,
    "block_kernels": _int_list("--block-kernels"),
    "skip_kernel": _same,
    "stem_width": _same,
    "stem_kernel": _same,
    "pool": _pool,
    "block": _same,
    "activation": _same,
    "classes": _same,
    "dropout": _same,
    "input_size": _same,
    "head_scale": _same,
}


def model_overrides(**flag_values: Any) -> dict[str, Any]:
    """Spec fields from the model flags that were given (``None`` = not given)."""
    unknown = set(flag_values) - set(_PARSERS)
    if unknown:
        raise TypeError(f"not model flags: {sorted(unknown)}")
    return {name: _PARSERS[name](value) for name, value in flag_values.items() if value is not None}


def read_model_section(path: Path) -> dict[str, Any]:
    """The model mapping in a YAML file: the file itself, or its ``model:`` section."""
    from budgetnet.config import read_yaml_mapping

    holds = "a model spec mapping (or a run config with a model: section)"
    data: Any = read_yaml_mapping(path, holds)
    if "model" in data:
        data = data["model"]
    if not isinstance(data, Mapping):
        raise BudgetnetError(f"config file {path} must hold {holds}")
    return dict(data)


def model_fields_from_cli(preset: str | None, config_path: Path | None, **flag_values: Any) -> dict[str, Any]:
    """Unvalidated spec fields: the preset's or config's, with the given flags laid over."""
    from budgetnet.models.zoo import model_mapping

    if preset is not None and config_path is not None:
        raise BudgetnetError("give --preset or --config, not both (a config may say preset: NAME)")
    section: dict[str, Any] = {}
    if config_path is not None:
        section = read_model_section(config_path)
    elif preset is not None:
        section = {"preset": preset}
    return {**model_mapping(section), **model_overrides(**flag_values)}


def spec_from_cli(preset: str | None, config_path: Path | None, **flag_values: Any) -> ResNetSpec:
    """The model the flags choose: `--preset` or `--config`, then any flag overrides; or a
    spec from flags alone (then ``--blocks`` and ``--channels`` are required)."""
    from budgetnet.models.spec import validate_spec

    fields = model_fields_from_cli(preset, config_path, **flag_values)
    if preset is None and config_path is None and not {"blocks", "channels"} <= fields.keys():
        raise BudgetnetError(
            "choose a model: --preset NAME, --config FILE.yaml, or --blocks and --channels "
            "(e.g. --blocks 4,5,3 --channels 64,128,256)"
        )
    return validate_spec(fields)
