"""Experiment tracking: every epoch's metrics, and the config, sent to a tracker as a run goes.

`train.log: [tensorboard]` (`--log tensorboard`) writes TensorBoard event files into
`<run>/tensorboard/` (view them with `tensorboard --logdir runs`): the scalars loss/train,
loss/val, accuracy/train, accuracy/val, lr, throughput/images_per_s, time/train_seconds,
time/wall_seconds (and compute/train_pflop where the rows carry it), one point per epoch, and
the resolved config as text. The optional `tensorboard` package (`budgetnet[tracking]`) is
imported only when asked for.

The trackers ride on the engine's epoch callback (`epoch_loggers`), so the training loop knows
nothing of them. Each epoch is written and closed at once: a killed run loses no logged epoch
and leaves no writer thread behind; TensorBoard reads the folder's event files as one log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from budgetnet.config import RunConfig, dump_config
from budgetnet.errors import BudgetnetError

TENSORBOARD_DIR = "tensorboard"
# metrics.csv column -> TensorBoard tag
_SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
    "lr": "lr", "train_seconds": "time/train_seconds", "seconds": "time/wall_seconds",
    "train_pflop": "compute/train_pflop",
}

EpochCallback = Callable[[dict[str, float]], None]


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise BudgetnetError(
            "logging to TensorBoard needs the tensorboard package; install it with "
            "pip install 'budgetnet[tracking]' (or drop --log tensorboard)"
        ) from None
    return SummaryWriter


def check_trackers(names: Sequence[str]) -> None:
    """A BudgetnetError now if a named tracker's package is missing (e.g. before a search,
    rather than as every trial's error)."""
    if "tensorboard" in names:
        _summary_writer()


class TensorBoardLogger:
    """One run's TensorBoard log. `global_step()` gives the optimizer steps taken so far, for
    the throughput."""

    def __init__(self, run_dir: Path, cfg: RunConfig, global_step: Callable[[], int]) -> None:
        self._writer_class = _summary_writer()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.config_text = dump_config(cfg)
        self.batch_size = cfg.train.batch_size
        self.global_step = global_step
        # Where this process started counting throughput: a resumed run's first epoch is
        # measured over the whole run so far (its earlier steps' times are not kept apart).
        self._last: tuple[int, float] = (0, 0.0)
        self._config_written = False

    def __call__(self, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        steps, seconds = self.global_step(), row["train_seconds"]
        writer = self._writer_class(log_dir=str(self.log_dir))
        try:
            if not self._config_written:  # once per process, so a resumed run's log has it too
                writer.add_text("config", "```yaml\n" + self.config_text + "```", epoch)
                self._config_written = True
            for column, tag in _SCALARS.items():
                value = row.get(column)
                if value is not None and math.isfinite(value):
                    writer.add_scalar(tag, value, epoch)
            last_steps, last_seconds = self._last
            if seconds > last_seconds and steps > last_steps:
                writer.add_scalar("throughput/images_per_s", (steps - last_steps) * self.batch_size / (seconds - last_seconds), epoch)
        finally:
            writer.close()
        self._last = (steps, seconds)


def epoch_loggers(
    cfg: RunConfig, run_dir: Path, global_step: Callable[[], int], then: EpochCallback | None
) -> EpochCallback | None:
    """The epoch callback with the trackers `cfg.train.log` names in front of `then`; `then`
    itself when there are none. A missing tracker package is a BudgetnetError here, before
    training starts."""
    loggers: list[EpochCallback] = []
    if "tensorboard" in cfg.train.log:
        loggers.append(TensorBoardLogger(run_dir, cfg, global_step))
    if not loggers:
        return then

    def on_epoch_end(row: dict[str, Any]) -> None:
        for log in loggers:
            log(row)
        if then is not None:
            then(row)

    return on_epoch_end
