"""What the training loop does around each step besides training: the epoch's running loss and
accuracy (on the device), non-finite losses, the progress line, re-planning, mid-epoch
checkpoints, the clock, and when to stop (a signal, the time limit, the end of the plan).

The device is synced every `SYNC_EVERY` steps and at checkpoints only: a step never waits for
the host. SIGINT/SIGTERM become a flag (`SignalGuard`) checked between steps, so a run stops at
a clean point, checkpointed. In a data-parallel run the ranks agree on stopping (a signal, the
time limit) at those syncs and at the end of each epoch, so they stop at the same step; the
sums are of the whole batch's (the engine gathers them), so every rank keeps the same books.
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Any

import torch

from budgetnet.config import TrainConfig
from budgetnet.errors import BudgetnetError
from budgetnet.train.callbacks import ProgressReporter
from budgetnet.train.checkpoint import Progress
from budgetnet.train.checkpointer import Checkpointer
from budgetnet.train.distributed import Ranks
from budgetnet.train.planner import Planner

SYNC_EVERY = 10  # steps between the host syncs inside an epoch (progress line, NaN check, re-plan)


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so we stop at a clean point."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(ValueError):  # not the main thread (e.g. a notebook worker): no graceful stop
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class EpochBooks:
    """The bookkeeping of one run's epochs; `start(epoch)` opens each, `end()` closes it."""

    def __init__(
        self, tc: TrainConfig, progress: Progress, planner: Planner, checkpointer: Checkpointer,
        reporter: ProgressReporter, guard: SignalGuard, steps_per_epoch: int, ranks: Ranks,
    ) -> None:
        self.tc, self.progress, self.planner, self.checkpointer = tc, progress, planner, checkpointer
        self.reporter, self.guard, self.steps_per_epoch, self.ranks = reporter, guard, steps_per_epoch, ranks
        # What the ranks agreed on at the last check: the signal that stops the run, the time limit reached.
        self.stop_signal: int | None = None
        self.time_up = False

    def start(self, epoch: int) -> None:
        """Open `epoch`, with what a resume left of its loss and accuracy sums."""
        loss_sum, correct, seen = self.progress.partial
        self.epoch, self.seen = epoch, int(seen)
        self.loss_sum = torch.tensor(loss_sum, device=self.ranks.device)
        self.correct = torch.tensor(correct, device=self.ranks.device)
        self.clock = time.perf_counter()

    def remaining(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[int, Any]]:
        """(index, batch) of the batches the epoch has left: after a resume, those after the
        ones trained before the stop (still drawn, so the rest are the batches they were)."""
        return itertools.islice(enumerate(batches), self.progress.step_in_epoch, None)

    def stepped(self, i: int, correct: torch.Tensor, loss: torch.Tensor | None, images: int,
                size: int | None) -> None:
        """Batch `i` of `images` (of `size` pixels a side; None: full size) was stepped on, with
        `correct` right and a mean `loss`, None for a non-finite batch skipped."""
        p = self.progress
        if loss is None:
            p.nan_skips += 1
        else:
            self.loss_sum += loss.detach().float() * images
            self.correct += correct
            self.seen += images
        p.step_in_epoch, p.global_step = i + 1, p.global_step + 1
        self.planner.count(images, size)
        if (i + 1) % SYNC_EVERY == 0:
            self._check_finite(i)
            self.reporter.step(i + 1, self.loss_sum.item() / max(self.seen, 1), self.correct.item() / max(self.seen, 1))
            self.planner.replan(self._running())
        if self.checkpointer.mid_epoch_due(self.steps_per_epoch):
            self._bank(i)
            self.checkpointer.save_last()

    def stop_now(self) -> bool:
        """A signal came, the time limit is reached, or the plan ends (perhaps mid-epoch). Several
        ranks look at signal and clock together, every `SYNC_EVERY` steps."""
        if not self.ranks.distributed or self.progress.step_in_epoch % SYNC_EVERY == 0:
            self.signalled()
        return self.stop_signal is not None or self.time_up or self.planner.done

    def end(self) -> None:
        """Close the epoch (the sums synced into `progress.partial`, its time banked)."""
        self._bank(self.progress.step_in_epoch - 1)
        self.signalled()

    def signalled(self) -> bool:
        """Whether a signal asks the run to stop, on any rank; the ranks also agree whether
        `train.max_train_seconds` is used up (`time_up`)."""
        limit = self.tc.max_train_seconds
        late = limit is not None and self.progress.train_seconds + self._running() >= limit
        signum, lapsed = self.ranks.maxima([self.guard.signum or 0, int(late)])
        self.stop_signal, self.time_up = signum or None, bool(lapsed)
        return self.stop_signal is not None

    @property
    def interrupted_mid_epoch(self) -> bool:
        return self.stop_signal is not None and self.progress.step_in_epoch < self.steps_per_epoch

    def _running(self) -> float:
        return time.perf_counter() - self.clock

    def _bank(self, step: int) -> None:
        """Sync the sums into `progress.partial` (waiting for the device, so the time banked
        is real) and add the time since the last bank to `progress.train_seconds`."""
        self._check_finite(step)
        self.progress.partial = [self.loss_sum.item(), self.correct.item(), float(self.seen)]
        now = time.perf_counter()
        self.progress.train_seconds += now - self.clock
        self.clock = now

    def _check_finite(self, step: int) -> None:
        if self.tc.on_nan == "stop" and not math.isfinite(self.loss_sum.item()):
            raise BudgetnetError(
                f"loss became non-finite in epoch {self.epoch + 1} by step {step + 1} "
                f"(global step {self.progress.global_step}); {self.checkpointer.nan_advice()}"
            )
