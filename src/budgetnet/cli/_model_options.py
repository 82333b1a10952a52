"""The CLI flags that choose a model, declared once for `summary`, `fit` and `train`.

`@model_flags` adds every flag of `MODEL_FLAGS` to a command (`budgetnet.cli._flags`); the
command hands their values to `spec_from_cli`, and flags override whatever `--preset` or
`--config` gave. Each flag says which `ResNetSpec` field it sets (`Sets`), which
tests/test_cli_flags.py checks against the schema. Importing this module does not import torch
(`budgetnet.models` does, so it is imported where a spec is made), which keeps
`budgetnet --help` fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from budgetnet.cli._flags import Sets, flag, flag_overrides, with_flags
from budgetnet.errors import BudgetnetError

if TYPE_CHECKING:
    from budgetnet.models import ResNetSpec

PANEL = "Model"


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


def _pool(text: str) -> int | Literal["global"]:
    if text.strip().lower() == "global":
        return "global"
    try:
        return int(text)
    except ValueError:
        raise BudgetnetError(f"--pool {text!r} must be an integer kernel size or global") from None


def _model_flag(name: str, help: str, kind: Any = str, parse: Callable[[Any], Any] | None = None,
                also: tuple[str, ...] = ()) -> Any:
    """A model flag: `--some-name` sets the spec field `some_name` (and the fields `also`)."""
    field = "model." + name.removeprefix("--").replace("-", "_")
    return flag(name, kind, PANEL, Sets(field, *also, parse=parse), help)


PresetOption = flag("--preset", str, PANEL, Sets("model.preset"), "A zoo preset (see `budgetnet zoo`).")
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file: a model spec, or a run config with a `model:` section."),
]

# Parameter name -> flag, in the order --help lists them.
MODEL_FLAGS: dict[str, Any] = {
    "blocks": _model_flag("--blocks", "Residual blocks per layer, e.g. 4,5,3.", parse=_int_list("--blocks")),
    "channels": _model_flag("--channels", "Channels per layer, e.g. 64,128,256.", parse=_int_list("--channels")),
    "strides": _model_flag("--strides", "Stride per layer (default 1,2,2,...).", parse=_int_list("--strides")),
    "stage_kinds": _model_flag("--stage-kinds", "residual or conv_pool per layer (default residual).", parse=_str_list),
    "block_kernels": _model_flag("--block-kernels", "Kernels of a block's convs, e.g. 5,3 (default 3,3).",
                           parse=_int_list("--block-kernels")),
    "skip_kernel": _model_flag("--skip-kernel", "Projection shortcut kernel (1).", int),
    "stem_width": _model_flag("--stem-width", "Stem channels (first layer's).", int),
    "stem_kernel": _model_flag("--stem-kernel", "Stem conv kernel (3).", int),
    "pool": _model_flag("--pool", "Average-pool kernel P, or global (default).", parse=_pool),
    "block": _model_flag("--block", "Block type: basic, bottleneck, preact or plain."),
    "activation": _model_flag("--activation", "relu, gelu or silu."),
    "classes": _model_flag("--classes", "Number of classes (default: the data's, else 10).", int),
    "dropout": _model_flag("--dropout", "Dropout before the head (0).", float),
    "input_size": _model_flag("--input-size", "Input image side (default: the data's, else 32).", int, also=("data.input_size",)),
    "head_scale": _model_flag("--head-scale", "Logit multiplier (1.0).", float),
}

model_flags = with_flags(MODEL_FLAGS, into="model")
"""Adds the model flags to a command, which receives their values as `model: dict[str, Any]`."""


def model_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Spec fields from the model flags that were given (``None`` = not given)."""
    return flag_overrides(MODEL_FLAGS, values).get("model", {})


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


def model_fields_from_cli(preset: str | None, config_path: Path | None, flags: Mapping[str, Any]) -> dict[str, Any]:
    """Unvalidated spec fields: the preset's or config's, with the given model `flags` laid over."""
    from budgetnet.models.zoo import model_mapping

    if preset is not None and config_path is not None:
        raise BudgetnetError("give --preset or --config, not both (a config may say preset: NAME)")
    section: dict[str, Any] = {}
    if config_path is not None:
        section = read_model_section(config_path)
    elif preset is not None:
        section = {"preset": preset}
    return {**model_mapping(section), **model_overrides(flags)}


def spec_from_cli(preset: str | None, config_path: Path | None, flags: Mapping[str, Any]) -> ResNetSpec:
    """The model the flags choose: `--preset` or `--config`, then any flag overrides; or a
    spec from flags alone (then ``--blocks`` and ``--channels`` are required)."""
    from budgetnet.models.spec import validate_spec

    fields = model_fields_from_cli(preset, config_path, flags)
    if preset is None and config_path is None and not {"blocks", "channels"} <= fields.keys():
        raise BudgetnetError(
            "choose a model: --preset NAME, --config FILE.yaml, or --blocks and --channels "
            "(e.g. --blocks 4,5,3 --channels 64,128,256)"
        )
    return validate_spec(fields)
