"""Optimizers the seeds used, with parameter groups for weight-decay exemption and per-group lr.

Fast CIFAR recipes (Page's ResNet-9, airbench) give BatchNorm and bias parameters their own
group: no weight decay (decaying a BN scale only fights the next layer's weights) and often a
different learning rate. `no_decay_bn_bias` and `bn_bias_lr_scale` expose both.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

OptimizerName = Literal["sgd", "adam", "adamw", "adamax", "adagrad", "rmsprop", "adadelta", "asgd"]


class OptimConfig(BaseModel):
    """Optimizer section of a run config."""

    model_config = ConfigDict(extra="forbid")

    name: OptimizerName = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_bn_bias: bool = False
    bn_bias_lr_scale: float = Field(1.0, gt=0, description="lr multiplier for BN and bias params")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


def _param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    # 1-d tensors are BN scales/shifts and biases; everything >1-d is a conv or linear weight.
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
    if others:
        groups.append(
            {
                "params": others,
                "weight_decay": 0.0 if cfg.no_decay_bn_bias else cfg.weight_decay,
                "lr": cfg.lr * cfg.bn_bias_lr_scale,
            }
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by `cfg`, over `model`'s trainable parameters."""
    groups = _param_groups(model, cfg)
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if name == "adamax":
        return torch.optim.Adamax(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr, eps=cfg.eps)
    return torch.optim.ASGD(groups, lr=cfg.lr)
