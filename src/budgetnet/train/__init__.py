"""Training: the engine, optimizers, schedules, checkpoints and callbacks."""

from __future__ import annotations

from budgetnet.train.checkpoint import load_checkpoint, save_checkpoint
from budgetnet.train.engine import RunResult, TrainConfig, TrainingInterrupted, train
from budgetnet.train.optim import OptimConfig, build_optimizer
from budgetnet.train.schedules import Plateau, ScheduleConfig, lr_factor

__all__ = [
    "OptimConfig", "RunResult", "ScheduleConfig", "TrainConfig", "TrainingInterrupted",
    "Plateau", "build_optimizer", "load_checkpoint", "lr_factor", "save_checkpoint", "train",
]
