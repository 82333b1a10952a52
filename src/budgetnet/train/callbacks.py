"""What happens around the step: early stopping, metrics.csv, curves.png, progress output."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from budgetnet.errors import stderr_line
from budgetnet.files import write_csv, write_png
from budgetnet.plots import pyplot

METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds", "train_pflop",
    "nan_skips",
]


class EarlyStoppingConfig(BaseModel):
    """Stop when the monitored validation metric has not improved for `patience` epochs."""

    model_config = ConfigDict(extra="forbid")

    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


@dataclass
class EarlyStopping:
    cfg: EarlyStoppingConfig
    best: float | None = None
    bad_epochs: int = 0

    def improved(self, value: float) -> bool:
        sign = 1.0 if self.cfg.monitor == "val_acc" else -1.0
        return self.best is None or sign * (value - self.best) > self.cfg.min_delta

    def update(self, value: float) -> bool:
        """Record an epoch's metric; True when training should stop."""
        if self.improved(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.cfg.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite metrics.csv from the full history (atomic, so a kill never leaves half a row)."""
    write_csv(path, METRIC_COLUMNS, ([_fmt(row.get(k)) for k in METRIC_COLUMNS] for row in rows))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(path: Path, rows: list[dict[str, float]]) -> None:
    """Accuracy and loss vs epoch, train vs val, as in the seed reports' figures."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train", "train"), ("val", "validation")):
        if any(r.get(f"{key}_acc") is not None and not math.isnan(r.get(f"{key}_acc", math.nan)) for r in rows):
            ax_acc.plot(epochs, [100 * r[f"{key}_acc"] for r in rows], marker=".", label=label)
            ax_loss.plot(epochs, [r[f"{key}_loss"] for r in rows], marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    write_png(path, fig)


@dataclass
class ProgressReporter:
    """A live Rich bar on a terminal; one plain line per epoch otherwise (or with quiet);
    nothing when `silent` (the ranks but rank 0 of a data-parallel run)."""

    epochs: int
    steps_per_epoch: int
    quiet: bool = False
    silent: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    _progress: Progress | None = None
    _task: Any = None

    @property
    def live(self) -> bool:
        return not (self.quiet or self.silent) and sys.stderr.isatty()

    def start_epoch(self, epoch: int) -> None:
        if not self.live:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._progress.start()
        self._task = self._progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps_per_epoch, stats="")

    def step(self, done: int, loss: float, acc: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, stats=f"loss {loss:.3f} acc {100 * acc:.1f}%")

    def end_epoch(self, row: dict[str, float]) -> None:
        line = (
            f"epoch {int(row['epoch'])}/{self.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
        )
        if not math.isnan(row.get("val_acc", math.nan)):
            line += f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%"
        line += f"  lr {row['lr']:.4g}  {row['train_seconds']:.1f}s"
        if "train_pflop" in row:
            line += f"  {row['train_pflop']:.4f} PFLOP"
        if self._progress is not None:
            self._progress.update(self._task, completed=self.steps_per_epoch, stats=line.split("  ", 1)[1])
        elif not self.silent:
            stderr_line(line)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
