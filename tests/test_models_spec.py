"""ResNetSpec: defaults, validation messages, and loading from config mappings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from budgetnet.errors import BudgetnetError
from budgetnet.models import (
    ResNetSpec,
    count_params,
    format_validation_error,
    get_preset,
    load_model_section,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def test_derived_defaults() -> None:
    spec = ResNetSpec(blocks=[1, 1, 1], channels=[8, 16, 32])
    assert spec.layer_strides == [1, 2, 2]
    assert spec.layer_kinds == ["residual"] * 3
    assert spec.kernels == [3, 3]
    assert spec.stem_channels == 8
    assert spec.feature_sizes == [32, 16, 8]
    assert ResNetSpec(blocks=[1], channels=[8], block="bottleneck").kernels == [3]
    # conv_pool layers pool by default even in first place
    assert ResNetSpec(blocks=[0, 1], channels=[8, 8], stage_kinds=["conv_pool"] * 2).layer_strides == [2, 2]


def test_resolved_round_trips() -> None:
    spec = get_preset("seed003_zigzag")
    full = spec.resolved()
    assert None not in full.model_dump().values()
    again = ResNetSpec.model_validate(yaml.safe_load(yaml.safe_dump(full.model_dump(mode="json"))))
    assert again == full
    assert count_params(again) == count_params(spec)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"blocks": [1, 1], "channels": [8, 0]}, "channels[1]: Input should be greater than 0"),
        ({"blocks": [1, 1], "channels": [8, -4]}, "channels[1]: Input should be greater than 0"),
        ({"blocks": [1, 1], "channels": [8]}, "channels has 1 entries but blocks has 2"),
        ({"blocks": [1], "channels": [8], "strides": [1, 2]}, "strides has 2 entries but blocks has 1"),
        ({"blocks": [1], "channels": [8], "block_kernels": [4, 3]}, "block_kernels[0]: kernel 4 is even"),
        ({"blocks": [1], "channels": [8], "skip_kernel": 2}, "skip_kernel: kernel 2 is even"),
        ({"blocks": [1], "channels": [8], "stem_kernel": 0}, "stem_kernel: Input should be greater than 0"),
        ({"blocks": [1], "channels": [8], "colour": "red"}, "unknown key 'model.colour'"),
        ({"blocks": [0], "channels": [8]}, "blocks[0] is 0 but a residual layer"),
        ({"blocks": [1], "channels": [10], "block": "bottleneck"}, "multiple of 4"),
        ({"blocks": [1], "channels": [8], "block": "bottleneck", "block_kernels": [3, 3]}, "has 1 spatial conv"),
        ({"blocks": [1], "channels": [8], "pool": 64}, "pool 64 is larger than the final 32x32"),
        (
            {"blocks": [0, 0, 0], "channels": [8] * 3, "stage_kinds": ["conv_pool"] * 3, "input_size": 4},
            "shrink the 4x4 input to nothing",
        ),
        ({"blocks": [1], "channels": [8], "activation": "tanh"}, "activation: Input should be"),
        ({"blocks": [1], "channels": [8], "dropout": 1.0}, "dropout: Input should be less than 1"),
    ],
)
def test_bad_specs_say_which_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ResNetSpec.model_validate(fields)
    text = format_validation_error(info.value, "model")
    assert message in text
    assert "\n" not in text
    with pytest.raises(BudgetnetError, match="invalid model spec"):
        load_model_section(fields)


def test_preset_plus_overrides() -> None:
    spec = load_model_section({"preset": "resnet26_b453", "channels": [64, 128, 192], "dropout": 0.1})
    assert count_params(spec) == 3_618_890
    assert spec.dropout == 0.1
    assert spec.layer_strides == [1, 2, 4]  # kept from the preset


def test_overrides_reshape_derived_fields() -> None:
    # resnet18 leaves strides derived, so a 3-layer override gets 3 strides, not 4.
    spec = load_model_section({"preset": "resnet18", "blocks": [1, 1, 1], "channels": [8, 16, 32]})
    assert spec.layer_strides == [1, 2, 2]


def test_load_model_section_errors() -> None:
    with pytest.raises(BudgetnetError, match="unknown preset"):
        load_model_section({"preset": "nope"})
    with pytest.raises(BudgetnetError, match="must be a mapping"):
        load_model_section([1, 2])  # type: ignore[arg-type]
    with pytest.raises(BudgetnetError, match="unknown key 'model.blokcs'"):
        load_model_section({"preset": "resnet18", "blokcs": [1]})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    spec = load_model_section(yaml.safe_load(path.read_text()))
    assert count_params(spec) <= 5_000_000
