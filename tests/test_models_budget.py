"""Budgets: parsing, fitting a shape to a budget, summaries."""

from __future__ import annotations

import io
import math

import pytest
import torch

from budgetnet.errors import BudgetnetError
from budgetnet.models import (
    ResNetSpec,
    build_model,
    count_params,
    fit_to_budget,
    get_preset,
    parse_budget,
    summarize,
)
from budgetnet.models.budget import scale_widths


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5M", 5_000_000),
        ("5m", 5_000_000),
        ("4.5e6", 4_500_000),
        ("5000000", 5_000_000),
        ("500k", 500_000),
        ("1.5K", 1_500),
        ("5_000_000", 5_000_000),
        ("5,000,000", 5_000_000),
        (" 2M ", 2_000_000),
        (5_000_000, 5_000_000),
        (4.5e6, 4_500_000),
    ],
)
def test_parse_budget(text: str | int | float, value: int) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["", "5X", "five", "M", "1.2345k", "0", "-5M", "nan", "inf", 0, -3, 2.5, True])
def test_parse_budget_rejects(text: object) -> None:
    with pytest.raises(BudgetnetError, match="budget"):
        parse_budget(text)  # type: ignore[arg-type]


def test_count_params_only_trainable() -> None:
    model = build_model(ResNetSpec(blocks=[1], channels=[8]))
    total = count_params(model)
    model.fc.weight.requires_grad_(False)
    assert count_params(model) == total - model.fc.weight.numel()


def _next_wider(spec: ResNetSpec, ratios: list[float], multiple: int) -> list[int]:
    """The channels one base-width step past the fitted ones."""
    base = next(w for w in range(1, 4096) if scale_widths(w, ratios, multiple) == spec.channels)
    while scale_widths(base, ratios, multiple) == spec.channels:
        base += 1
    return scale_widths(base, ratios, multiple)


@pytest.mark.parametrize(
    ("blocks", "ratios", "budget", "multiple", "extra"),
    [
        ([4, 5, 3], [1, 2, 4], 5_000_000, 1, {}),
        ([2, 2], [1, 1.5], 300_000, 8, {}),
        ([1, 1, 1], [1, 2, 4], 1_000_000, 1, {"block": "bottleneck"}),
        ([1, 0, 1], [1, 2, 4], 2_000_000, 8, {"stage_kinds": ["conv_pool"] * 3}),
        ([2, 1], [1, 3], 77_777, 1, {"block": "preact", "block_kernels": [5, 3]}),
    ],
)
def test_fit_width_is_widest_that_fits(blocks, ratios, budget, multiple, extra) -> None:
    spec = fit_to_budget(budget, blocks=blocks, width_ratios=ratios, multiple=multiple, base=extra)
    assert spec.blocks == blocks
    assert count_params(spec) <= budget
    step = multiple if spec.block != "bottleneck" else 4 * multiple
    assert all(c % step == 0 for c in spec.channels)
    wider = spec.model_copy(update={"channels": _next_wider(spec, ratios, step)})
    assert count_params(wider) > budget


def test_fit_width_recovers_resnet26_b453() -> None:
    spec = fit_to_budget("5M", blocks=[4, 5, 3], width_ratios=[1, 2, 4], base={"strides": [1, 2, 4], "pool": 4})
    assert spec.channels == [64, 128, 256]
    assert count_params(spec) == 4_992_586


def test_fit_width_from_a_preset_keeps_its_layout() -> None:
    spec = fit_to_budget(3_000_000, base=get_preset("seed001_resnet"))
    assert spec.block_kernels == [5, 3] and spec.strides == [1, 1, 2, 2, 2]
    assert spec.channels[0] == spec.channels[1] and spec.channels[3] == spec.channels[4]
    assert count_params(spec) <= 3_000_000


def test_fit_width_scales_the_stem_with_the_net() -> None:
    base = {"blocks": [1, 0, 1], "channels": [128, 256, 512], "stem_width": 64, "stage_kinds": ["conv_pool"] * 3}
    spec = fit_to_budget("1M", base=base)
    assert spec.stem_width == math.floor(spec.channels[0] / 2 + 0.5)


@pytest.mark.parametrize(
    ("channels", "budget", "extra"),
    [
        ([64, 128, 256], 5_000_000, {}),
        ([16, 32], 100_000, {"block": "preact"}),
        ([16, 32, 64], 250_000, {"stage_kinds": ["conv_pool"] * 3, "block": "preact"}),
    ],
)
def test_fit_depth_is_deepest_round_robin(channels, budget, extra) -> None:
    spec = fit_to_budget(budget, mode="depth", channels=channels, base=extra)
    assert count_params(spec) <= budget
    for i in range(len(channels)):
        deeper = list(spec.blocks)
        deeper[i] += 1
        assert count_params(spec.model_copy(update={"blocks": deeper})) > budget


def test_fit_depth_balances_depth() -> None:
    spec = fit_to_budget("5M", mode="depth", channels=[64, 128, 256])
    # round-robin: every layer got blocks until it could not, then the cheaper ones went on
    assert spec.blocks == [8, 4, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocks": [4, 5, 3], "width_ratios": [1, 2, 4], "budget": 1000}, "even the narrowest"),
        ({"mode": "depth", "channels": [512, 512], "budget": "1M"}, "even the shallowest"),
        ({"width_ratios": [1, 2], "budget": "5M"}, "needs the blocks"),
        ({"blocks": [1, 1], "budget": "5M"}, "needs --width-ratios"),
        ({"blocks": [1, 1], "width_ratios": [1, 2, 4], "budget": "5M"}, "3 entries but blocks has 2"),
        ({"blocks": [1, 1], "width_ratios": [1, 0], "budget": "5M"}, "must be positive"),
        ({"mode": "depth", "budget": "5M"}, "needs the channels"),
        ({"blocks": [1], "width_ratios": [1], "budget": "5M", "multiple": 0}, "multiple"),
    ],
)
def test_fit_errors(kwargs: dict, message: str) -> None:
    budget = kwargs.pop("budget")
    with pytest.raises(BudgetnetError, match=message):
        fit_to_budget(budget, **kwargs)


def test_summary_adds_up() -> None:
    spec = ResNetSpec(blocks=[1, 2], channels=[8, 16], pool=2, input_size=16, dropout=0.2)
    result = summarize(spec, "10k")
    assert result.params == count_params(spec) == sum(row.params for row in result.layers)
    assert result.budget == 10_000 and result.within_budget == (result.params <= 10_000)
    # As stored: BN running statistics (2 x 4 bytes per channel) and counters (8 bytes each) too.
    model = build_model(spec)
    stored = io.BytesIO()
    torch.save(model.state_dict(), stored)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert result.bytes["fp32"] == 4 * result.params + sum(8 * m.num_features + 8 for m in bn)
    assert 0 < stored.tell() - result.bytes["fp32"] < 20_000  # the rest is the file's own overhead

    # FlopCounterMode counts 2 FLOPs per multiply-add of every conv and the Linear.
    expected = 0
    for row in result.layers:
        if row.type == "Conv2d":
            expected += 2 * row.params * row.output_shape[1] * row.output_shape[2]
        elif row.type == "Linear":
            expected += 2 * (row.params - spec.classes)
    assert result.flops == expected
    as_dict = result.to_dict()
    assert as_dict["layers"][-1] == {"name": "fc", "type": "Linear", "output_shape": [10], "params": row.params}


def test_int8_bytes_count_one_byte_per_weight_and_a_scale_and_bias_per_channel() -> None:
    spec = ResNetSpec(blocks=[1], channels=[8])  # stem 3->8, block 8->8 twice, head 8->10
    weights = 3 * 8 * 9 + 2 * 8 * 8 * 9 + 8 * 10
    assert summarize(spec).bytes["int8"] == weights + 8 * (8 + 8 + 8 + 10)
