"""Learning-rate schedules, all stepped once per optimizer step (except plateau: per epoch).

Durations in the config are in epochs (floats allowed) and converted to steps here, so a
schedule means the same thing whatever the batch size. A run planned to fit a time budget
(`train.time_budget_s`) has fewer steps than its epochs imply; the whole schedule is then
compressed into those steps, warm-up included, keeping its shape.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.optim import lr_scheduler

ScheduleName = Literal[
    "constant", "step", "cosine", "cosine_restarts", "plateau", "cyclic", "onecycle", "linear"
]


class ScheduleConfig(BaseModel):
    """Learning-rate schedule section of a run config."""

    model_config = ConfigDict(extra="forbid")

    name: ScheduleName = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from warmup_start_factor*lr")
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak")
    step_epochs: list[float] = Field(default_factory=lambda: [30.0], description="step: decay at these epochs")
    gamma: float = Field(0.1, gt=0, le=1, description="step/plateau decay factor")
    restart_epochs: float = Field(10.0, gt=0, description="cosine_restarts: first cycle length T_0")
    restart_mult: int = Field(1, ge=1, description="cosine_restarts: T_mult")
    plateau_patience: int = Field(5, ge=0)
    plateau_mode: Literal["val_acc", "val_loss"] = "val_acc"
    cyclic_epochs_up: float = Field(2.0, gt=0)
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: fraction of steps rising")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    steps_per_epoch: int,
    epochs: int,
    total_steps: int | None = None,
) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    """A scheduler to be stepped after every optimizer step (plateau: after every epoch).

    `total_steps` (default: `steps_per_epoch * epochs`) compresses the schedule: one of its
    epochs then lasts `total_steps / epochs` steps.
    """
    spe = steps_per_epoch if total_steps is None else total_steps / epochs
    total = max(1, round(spe * epochs))
    warmup = min(total - 1, round(cfg.warmup_epochs * spe))
    rest = max(1, total - warmup)
    peak = [g["lr"] for g in optimizer.param_groups]
    floor = [lr * cfg.min_lr_factor for lr in peak]

    if cfg.name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if cfg.plateau_mode == "val_acc" else "min",
            factor=cfg.gamma,
            patience=cfg.plateau_patience,
            min_lr=floor,
        )
    if cfg.name == "onecycle":  # has its own warm-up (pct_start)
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=total, pct_start=cfg.pct_start, anneal_strategy="cos"
        )
    if cfg.name == "cyclic":
        up = max(1, round(cfg.cyclic_epochs_up * spe))
        return lr_scheduler.CyclicLR(
            optimizer, base_lr=floor if cfg.min_lr_factor > 0 else [lr * 0.01 for lr in peak],
            max_lr=peak, step_size_up=up, cycle_momentum=False,
        )

    if cfg.name == "constant":
        main: lr_scheduler.LRScheduler = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif cfg.name == "step":
        milestones = [max(1, round(e * spe) - warmup) for e in cfg.step_epochs]
        main = lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    elif cfg.name == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest, eta_min=min(floor))
    elif cfg.name == "cosine_restarts":
        main = lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=max(1, round(cfg.restart_epochs * spe)), T_mult=cfg.restart_mult,
            eta_min=min(floor),
        )
    else:  # linear decay to min_lr_factor: the shape fast CIFAR recipes use after warm-up
        main = lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=max(cfg.min_lr_factor, 1e-8), total_iters=rest
        )
    if warmup <= 0:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=cfg.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])
