"""Training: the engine, optimizers, schedules, checkpoints and callbacks."""

from __future__ import annotations

from budgetnet.train.checkpoint import load_checkpoint, save_checkpoint
from budgetnet.train.engine import RunResult, TrainConfig, TrainingInterrupted, train
from budgetnet.train.optim import OptimConfig, build_optimizer
from budgetnet.train.schedules import ScheduleConfig, build_scheduler

__all__ = [
    "OptimConfig", "RunResult", "ScheduleConfig", "TrainConfig", "TrainingInterrupted",
    "build_optimizer", "build_scheduler", "load_checkpoint", "save_checkpoint", "train",
]
