"""`ResNetSpec` -> `nn.Module`. The only place that turns a spec into layers, so counting
(`budget.count_params` builds on the meta device) can never disagree with training."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from budgetnet.models.blocks import BLOCKS, ConvBNAct, ConvPoolStage, SqueezeExcite, WhiteningStem, make_activation
from budgetnet.models.spec import ResNetSpec


class ResNet(nn.Module):
    """stem -> layers -> (final BN-act for pre-activation nets) -> pool -> dropout -> Linear.

    Keeps its `spec` so checkpoints, summaries and exports can say what was built.
    """

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.spec = spec
        block = partial(
            BLOCKS[spec.block], kernels=spec.kernels, skip_kernel=spec.skip_kernel, act=spec.activation
        )
        self.stem: nn.Module = (
            WhiteningStem(spec.in_channels, spec.whiten_kernel, act=spec.activation, eps=spec.whiten_eps)
            if spec.stem == "whiten"
            else ConvBNAct(spec.in_channels, spec.stem_channels, spec.stem_kernel, act=spec.activation)
        )
        layers: list[nn.Module] = []
        width = spec.stem_channels
        for kind, depth, out, stride in zip(spec.layer_kinds, spec.blocks, spec.channels, spec.layer_strides):
            if kind == "conv_pool":
                layers.append(ConvPoolStage(width, out, stride, depth, block, act=spec.activation, blur=spec.pool_blur))
            else:
                # Only the first block changes stride/width; the rest are identity-skip blocks.
                first = block(width, out, stride)
                layers.append(nn.Sequential(first, *(block(out, out, 1) for _ in range(depth - 1))))
            if spec.se_ratio > 0:
                hidden = max(1, round(out * spec.se_ratio))
                layers[-1] = nn.Sequential(layers[-1], SqueezeExcite(out, hidden, act=spec.activation))
            width = out
        self.layers = nn.Sequential(*layers)
        # A pre-activation block ends on an un-normalized sum; normalize once before the head.
        ends_on_preact = spec.block == "preact" and (spec.layer_kinds[-1] == "residual" or spec.blocks[-1] > 0)
        self.final = (
            nn.Sequential(nn.BatchNorm2d(width), make_activation(spec.activation)) if ends_on_preact else nn.Identity()
        )
        if spec.pool_op == "max":
            self.pool: nn.Module = nn.AdaptiveMaxPool2d(1) if spec.pool == "global" else nn.MaxPool2d(spec.pool)
        else:
            self.pool = nn.AdaptiveAvgPool2d(1) if spec.pool == "global" else nn.AvgPool2d(spec.pool)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(spec.head_features, spec.classes, bias=spec.head_bias)
        self.head_scale = spec.head_scale
        self._init_weights()

    def _init_weights(self) -> None:
        spec = self.spec
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = spec.bn_momentum, spec.bn_eps
                m.weight.requires_grad_(not spec.bn_frozen_scale)
            # Meta tensors (parameter counting) have no values to initialize, and touching
            # them with init ops costs seconds of lazy imports.
            if not isinstance(m, nn.Conv2d) or m.weight.is_meta or not m.weight.requires_grad:
                continue
            if spec.conv_init == "dirac":
                # PyTorch's default init, then the first in_channels filters as identities
                # (airbench): a fresh stage passes its input through.
                m.reset_parameters()
                nn.init.dirac_(m.weight[: m.in_channels])
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, SqueezeExcite) and not m.expand.weight.is_meta:
                # A zero excitation gates every channel at exactly 1: the net starts as it would without.
                nn.init.zeros_(m.expand.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.layers(self.stem(x)))
        x = self.dropout(torch.flatten(self.pool(x), 1))
        logits = self.fc(x)
        return logits * self.head_scale if self.head_scale != 1.0 else logits


def build_model(spec: ResNetSpec) -> ResNet:
    """Build the network a spec describes (on the current default device)."""
    return ResNet(spec)
