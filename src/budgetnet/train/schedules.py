"""Learning-rate schedules as pure functions of (step, total steps).

`lr_factor(cfg, step, total_steps, epochs)` is the multiplier of every parameter group's peak
lr at optimizer step `step`; the loop sets each group's lr from it before the step. Being a
pure function, a schedule needs no state in a checkpoint, and re-planning a time budget is
changing `total_steps`. Durations in the config are in epochs (floats allowed) and are
converted with `total_steps / epochs` steps per epoch, so a run planned to fewer steps than
its epochs imply keeps the schedule's shape, warm-up included.

Plateau is the one schedule that depends on results: `Plateau` watches the metric once per
epoch and scales the factor by `gamma` when it stops improving; its small state is
checkpointed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ScheduleName = Literal[
    "constant", "step", "cosine", "cosine_restarts", "plateau", "cyclic", "onecycle", "linear"
]

# torch's OneCycleLR defaults: start at peak/25, end at start/1e4.
_ONECYCLE_DIV, _ONECYCLE_FINAL_DIV = 25.0, 1e4


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


def _cos(fraction: float, start: float, end: float) -> float:
    """Half a cosine from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int, epochs: float) -> float:
    """The lr multiplier at optimizer step `step` (0-based) of a run of `total_steps` steps
    that the config's `epochs` are spread over."""
    total = max(1, total_steps)
    spe = total / epochs  # steps per (possibly compressed) epoch
    floor = cfg.min_lr_factor
    if cfg.name == "onecycle":  # its own warm-up: pct_start of the run rising
        up = max(1.0, cfg.pct_start * total - 1)
        low = 1 / _ONECYCLE_DIV
        if step <= up:
            return _cos(step / up, low, 1.0)
        return _cos((step - up) / max(1.0, total - 1 - up), 1.0, low / _ONECYCLE_FINAL_DIV)
    if cfg.name == "cyclic":  # triangular, between the floor (1% without one) and the peak
        up = max(1, round(cfg.cyclic_epochs_up * spe))
        low = floor if floor > 0 else 0.01
        position = step % (2 * up)
        return low + (1 - low) * (1 - abs(position - up) / up)

    warmup = min(total - 1, round(cfg.warmup_epochs * spe))
    if step < warmup:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warmup
    t, rest = step - warmup, max(1, total - warmup)
    if cfg.name in ("constant", "plateau"):
        return 1.0
    if cfg.name == "step":
        passed = sum(t >= max(1, round(e * spe) - warmup) for e in cfg.step_epochs)
        return cfg.gamma**passed
    if cfg.name == "cosine":
        return _cos(t / rest, 1.0, floor)
    if cfg.name == "cosine_restarts":
        cycle = max(1, round(cfg.restart_epochs * spe))
        while t >= cycle:
            t, cycle = t - cycle, cycle * cfg.restart_mult
        return _cos(t / cycle, 1.0, floor)
    # linear decay to min_lr_factor: the shape fast CIFAR recipes use after warm-up
    return 1 + (floor - 1) * min(t, rest) / rest


class Plateau:
    """Scales the lr by `gamma` once the monitored metric has not improved for more than
    `patience` epochs (never below `min_lr_factor`), like torch's ReduceLROnPlateau."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg
        self.scale = 1.0
        self.best: float | None = None
        self.bad_epochs = 0

    def update(self, metric: float) -> None:
        better = self.best is None or (
            metric > self.best if self.cfg.plateau_mode == "val_acc" else metric < self.best
        )
        if better:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience:
            self.scale = max(self.scale * self.cfg.gamma, self.cfg.min_lr_factor)
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
