"""Training: the loop (`budgetnet.train.engine.train`), optimizers, schedules, checkpoints
and callbacks.

The package re-exports only the pieces below the loop: the config and evaluation layers
import them, and the loop imports those layers.
"""

from __future__ import annotations

from budgetnet.train.checkpoint import load_checkpoint, save_checkpoint
from budgetnet.train.optim import OptimConfig, build_optimizer
from budgetnet.train.schedules import Plateau, ScheduleConfig, lr_factor

__all__ = [
    "OptimConfig", "Plateau", "ScheduleConfig", "build_optimizer", "load_checkpoint", "lr_factor", "save_checkpoint",
]
