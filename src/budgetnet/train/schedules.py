"""Learning-rate schedules as pure functions of (step, total steps).

`lr_factor(cfg, step, total_steps, epochs)` is the multiplier of every parameter group's peak
lr at optimizer step `step`; the loop sets each group's lr from it before the step. Being a
pure function, a schedule needs no state in a checkpoint, and re-planning a time budget is
changing `total_steps`. Durations in the config are in epochs (floats allowed) and are
converted with `total_steps / epochs` steps per epoch, so a run planned to fewer steps than
its epochs imply keeps the schedule's shape, warm-up included. Each schedule's config holds
only the settings it uses (`ScheduleConfig` is a union tagged by `name`, train/tagged.py).

Plateau is the one schedule that depends on results: `Plateau` watches the metric once per
epoch and scales the factor by `gamma` when it stops improving; its small state is
checkpointed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from budgetnet.train.tagged import kinds, tagged_union

# torch's OneCycleLR defaults: start at peak/25, end at start/1e4.
_ONECYCLE_DIV, _ONECYCLE_FINAL_DIV = 25.0, 1e4


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class _WarmUp(_Schedule):
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from warmup_start_factor*lr")
    warmup_start_factor: float = Field(0.1, gt=0, le=1)


class _Floor(_Schedule):
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="final (or lowest) lr as a fraction of the peak")


class ConstantSchedule(_WarmUp):
    name: Literal["constant"] = "constant"


class StepSchedule(_WarmUp):
    name: Literal["step"] = "step"
    step_epochs: list[float] = Field(default_factory=lambda: [30.0], description="decay at these epochs")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor")


class CosineSchedule(_Floor, _WarmUp):
    name: Literal["cosine"] = "cosine"


class CosineRestartsSchedule(_Floor, _WarmUp):
    name: Literal["cosine_restarts"] = "cosine_restarts"
    restart_epochs: float = Field(10.0, gt=0, description="first cycle length T_0")
    restart_mult: int = Field(1, ge=1, description="T_mult")


class PlateauSchedule(_Floor, _WarmUp):
    name: Literal["plateau"] = "plateau"
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor")
    plateau_patience: int = Field(5, ge=0)
    plateau_mode: Literal["val_acc", "val_loss"] = "val_acc"


class CyclicSchedule(_Floor):
    name: Literal["cyclic"] = "cyclic"
    cyclic_epochs_up: float = Field(2.0, gt=0)


class OneCycleSchedule(_Schedule):
    name: Literal["onecycle"] = "onecycle"
    pct_start: float = Field(0.25, gt=0, lt=1, description="fraction of steps rising")


class LinearSchedule(_Floor, _WarmUp):
    name: Literal["linear"] = "linear"


# The section's fields when one model held every schedule's settings (they never changed).
_ONE_MODEL_FIELDS = frozenset({
    "name", "warmup_epochs", "warmup_start_factor", "min_lr_factor", "step_epochs", "gamma", "restart_epochs",
    "restart_mult", "plateau_patience", "plateau_mode", "cyclic_epochs_up", "pct_start",
})

ScheduleConfig = tagged_union(
    ConstantSchedule, StepSchedule, CosineSchedule, CosineRestartsSchedule, PlateauSchedule, CyclicSchedule,
    OneCycleSchedule, LinearSchedule,
    noun="schedule", default="cosine",
    legacy=(_ONE_MODEL_FIELDS, _ONE_MODEL_FIELDS),
)
"""Learning-rate schedule section of a run config: one of the schedules above, by `name`."""

SCHEDULE_NAMES = tuple(kinds(ScheduleConfig))


def _cos(fraction: float, start: float, end: float) -> float:
    """Half a cosine from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int, epochs: float) -> float:
    """The lr multiplier at optimizer step `step` (0-based) of a run of `total_steps` steps
    that the config's `epochs` are spread over."""
    total = max(1, total_steps)
    spe = total / epochs  # steps per (possibly compressed) epoch
    if isinstance(cfg, OneCycleSchedule):  # its own warm-up: pct_start of the run rising
        up = max(1.0, cfg.pct_start * total - 1)
        low = 1 / _ONECYCLE_DIV
        if step <= up:
            return _cos(step / up, low, 1.0)
        return _cos((step - up) / max(1.0, total - 1 - up), 1.0, low / _ONECYCLE_FINAL_DIV)
    if isinstance(cfg, CyclicSchedule):  # triangular, between the floor (1% without one) and the peak
        up = max(1, round(cfg.cyclic_epochs_up * spe))
        low = cfg.min_lr_factor if cfg.min_lr_factor > 0 else 0.01
        position = step % (2 * up)
        return low + (1 - low) * (1 - abs(position - up) / up)

    warmup = min(total - 1, round(cfg.warmup_epochs * spe))
    if step < warmup:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warmup
    t, rest = step - warmup, max(1, total - warmup)
    if isinstance(cfg, (ConstantSchedule, PlateauSchedule)):
        return 1.0
    if isinstance(cfg, StepSchedule):
        passed = sum(t >= max(1, round(e * spe) - warmup) for e in cfg.step_epochs)
        return cfg.gamma**passed
    if isinstance(cfg, CosineSchedule):
        return _cos(t / rest, 1.0, cfg.min_lr_factor)
    if isinstance(cfg, CosineRestartsSchedule):
        cycle = max(1, round(cfg.restart_epochs * spe))
        while t >= cycle:
            t, cycle = t - cycle, cycle * cfg.restart_mult
        return _cos(t / cycle, 1.0, cfg.min_lr_factor)
    # linear decay to min_lr_factor: the shape fast CIFAR recipes use after warm-up
    return 1 + (cfg.min_lr_factor - 1) * min(t, rest) / rest


class Plateau:
    """Scales the lr by `gamma` once the monitored metric has not improved for more than
    `patience` epochs (never below `min_lr_factor`), like torch's ReduceLROnPlateau."""

    def __init__(self, cfg: PlateauSchedule) -> None:
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
