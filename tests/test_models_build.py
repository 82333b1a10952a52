"""The builder: counts agree with real builds for random specs, forward shapes, blocks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from budgetnet.models import ResNetSpec, build_model, count_params
from budgetnet.models.blocks import BasicBlock, BottleneckBlock, ConvPoolStage, PreActBlock


@st.composite
def tiny_specs(draw: st.DrawFn) -> ResNetSpec:
    """Small random specs over every block type, stage kind, kernel and pool choice."""
    n = draw(st.integers(1, 3))
    block = draw(st.sampled_from(["basic", "bottleneck", "preact"]))
    kinds = draw(st.lists(st.sampled_from(["residual", "conv_pool"]), min_size=n, max_size=n))
    convs = 1 if block == "bottleneck" else 2
    fields = {
        "blocks": [draw(st.integers(1 if k == "residual" else 0, 2)) for k in kinds],
        "channels": draw(st.lists(st.sampled_from([4, 8, 12]), min_size=n, max_size=n)),
        "strides": draw(st.lists(st.integers(1, 2), min_size=n, max_size=n)),
        "stage_kinds": kinds,
        "block": block,
        "block_kernels": draw(st.lists(st.sampled_from([1, 3, 5]), min_size=convs, max_size=convs)),
        "skip_kernel": draw(st.sampled_from([1, 3])),
        "stem_width": draw(st.sampled_from([None, 4, 6])),
        "stem_kernel": draw(st.sampled_from([1, 3, 5])),
        "dropout": draw(st.sampled_from([0.0, 0.3])),
        "head_scale": draw(st.sampled_from([1.0, 0.125])),
        "activation": draw(st.sampled_from(["relu", "gelu", "silu"])),
        "classes": draw(st.integers(2, 5)),
        "input_size": draw(st.integers(8, 12)),
        "in_channels": draw(st.integers(1, 3)),
    }
    final = ResNetSpec.model_validate(fields).feature_sizes[-1]
    fields["pool"] = draw(st.one_of(st.just("global"), st.integers(1, final)))
    return ResNetSpec.model_validate(fields)


@settings(max_examples=25, deadline=None)
@given(tiny_specs())
def test_count_matches_real_build_and_forward_shape(spec: ResNetSpec) -> None:
    model = build_model(spec)
    assert count_params(spec) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.randn(2, spec.in_channels, spec.input_size, spec.input_size)
    assert model(x).shape == (2, spec.classes)


def test_model_keeps_its_spec() -> None:
    spec = ResNetSpec(blocks=[1], channels=[8])
    assert build_model(spec).spec is spec


def test_channels_last_autocast_and_backward() -> None:
    spec = ResNetSpec(blocks=[1, 1], channels=[8, 16], input_size=8, block="preact")
    model = build_model(spec).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_head_scale_multiplies_logits() -> None:
    spec = ResNetSpec(blocks=[1], channels=[8], input_size=8)
    plain, scaled = build_model(spec).eval(), build_model(spec.model_copy(update={"head_scale": 0.125})).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(scaled(x), plain(x) * 0.125)


def test_projection_only_where_shape_changes() -> None:
    assert isinstance(BasicBlock(8, 8, 1).shortcut, nn.Identity)
    assert isinstance(BasicBlock(8, 16, 1).shortcut, nn.Sequential)
    assert BasicBlock(8, 8, 2, skip_kernel=3).shortcut.conv.kernel_size == (3, 3)
    assert not hasattr(PreActBlock(8, 16, 2).shortcut, "bn")  # pre-activated input: bare conv
    block = BottleneckBlock(16, 32, 2)
    assert block.conv2.stride == (2, 2) and block.conv2.out_channels == 8
    assert block(torch.randn(1, 16, 8, 8)).shape == (1, 32, 4, 4)


def test_conv_pool_stage_pools_before_norm() -> None:
    stage = ConvPoolStage(3, 8, 2, 1, BasicBlock)
    kinds = [type(m) for m in stage.children()]
    assert kinds == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential]
    assert stage(torch.randn(2, 3, 8, 8)).shape == (2, 8, 4, 4)


def test_optional_head_parts() -> None:
    assert isinstance(build_model(ResNetSpec(blocks=[1], channels=[8], dropout=0.2)).dropout, nn.Dropout)
    assert isinstance(build_model(ResNetSpec(blocks=[1], channels=[8])).dropout, nn.Identity)
    assert isinstance(build_model(ResNetSpec(blocks=[1], channels=[8], block="preact")).final, nn.Sequential)
