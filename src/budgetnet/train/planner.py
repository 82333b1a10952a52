"""How many optimizer steps a run takes, at which image size each trains, and what they cost.

A run takes its epochs' steps, or fewer where a compute budget (`pflop_budget`: the whole
batches P PFLOP pays for) or a time budget (`time_budget_s`) holds fewer. A time budget is
planned before the first step: a few throwaway steps (`time_steps`; the caller puts model,
optimizer and RNG back afterwards; compile happens here) give the seconds per step, hence the
steps that fit. Every 10 steps the plan is revised from the pace actually kept (measured here:
the sustained pace of a CPU run was up to 1.4x slower than its first steps'); the schedule
follows the new length at once, since it is a function of (step, planned steps). This is
"budgeted training" (Li et al., ICLR 2020: a schedule that decays to zero at the budget beats
cutting a longer one short).

Training compute is counted as 3 x forward FLOPs per image (forward + backward) x images
trained, at the size each was trained at (`train.progressive` downscales or crops early steps), the
same on every machine. Plan and counts live in the run's `Progress`, so a checkpoint keeps them.

In a data-parallel run the ranks take their steps together, so rank 0's clock stands for all:
the ranks time the same throwaway steps as long as rank 0 wants, and every plan and re-plan is
rank 0's, sent to the others. Images and compute count the whole batch, all ranks' parts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch

from budgetnet.config import ResizeStage, RunConfig
from budgetnet.errors import BudgetnetError
from budgetnet.models import summarize
from budgetnet.train.checkpoint import Progress
from budgetnet.train.distributed import Ranks

# What planning a time budget measured: seconds per step, warm-up seconds (the first step,
# compile included), seconds spent timing.
Timing = tuple[float, float, float]


class Planner:
    """The plan (`progress.planned_steps`) and the compute count of one run."""

    def __init__(self, cfg: RunConfig, steps_per_epoch: int, progress: Progress, ranks: Ranks) -> None:
        self.train, self.steps_per_epoch, self.progress, self.ranks = cfg.train, steps_per_epoch, progress, ranks
        self.input_size = cfg.model.input_size
        for stage in cfg.train.progressive:  # each size must fit the network: checked before any training
            side = stage.side(self.input_size)
            if side > self.input_size:
                raise BudgetnetError(f"progressive size {side} is larger than the input size "
                                     f"{self.input_size}; stages train on smaller images")
        self.flops_per_image, self.stage_flops = _flops_by_size(cfg)
        self.mean_flops_per_image = mean_over_stages(cfg, self.flops_per_image, self.stage_flops)

    # ---- the plan -------------------------------------------------------------------------
    def plan(self, time_steps: Callable[[], Timing]) -> None:
        """Fix the number of optimizer steps: all the epochs', or fewer where a compute budget
        or a time budget (`time_steps()` times a few) holds fewer."""
        p = self.progress
        p.planned_steps = self._step_cap()
        if self.train.time_budget_s is None:
            return
        seconds_per_step, warmup_seconds, calibration_seconds = time_steps()
        p.planned_steps, p.calibration = self.ranks.from_main(lambda: (self._steps_that_fit(0.0, seconds_per_step), {
            "seconds_per_step": seconds_per_step, "warmup_seconds": warmup_seconds,
            "calibration_seconds": calibration_seconds,
        }))

    def replan(self, running: float) -> None:
        """Revise a time-budgeted plan from the pace so far (`running`: seconds of training not
        yet in `progress.train_seconds`); a change under 2% is not worth rebuilding the schedule for."""
        p = self.progress
        if self.train.time_budget_s is None or p.global_step == 0:
            return
        elapsed = p.train_seconds + running
        steps = self.ranks.from_main(lambda: self._steps_that_fit(elapsed, elapsed / p.global_step))
        if abs(steps - p.planned_steps) <= 0.02 * p.planned_steps:
            return
        p.planned_steps = steps
        p.calibration["replans"] = p.calibration.get("replans", 0) + 1

    @property
    def done(self) -> bool:
        return self.progress.global_step >= self.progress.planned_steps

    @property
    def planned_epochs(self) -> int:
        return math.ceil(self.progress.planned_steps / self.steps_per_epoch)

    def stage_at(self, step: int) -> ResizeStage | None:
        """The progressive-resizing stage of `step` (None: full size)."""
        for stage in self.train.progressive:
            if step < stage.until * self.progress.planned_steps:
                return stage
        return None

    @property
    def epoch_steps(self) -> int:
        """The steps of all the run's epochs."""
        return self.steps_per_epoch * self.train.epochs

    @property
    def compute_steps(self) -> int | None:
        """The whole batches the PFLOP budget pays for (None: no compute budget)."""
        if self.train.pflop_budget is None:
            return None
        per_step = 3 * self.mean_flops_per_image * self.train.batch_size / 1e15
        return max(1, int(self.train.pflop_budget / per_step))

    def _step_cap(self) -> int:
        """The most steps a run may take: its epochs', or the whole batches its PFLOP budget pays for."""
        paid = self.compute_steps
        return self.epoch_steps if paid is None else min(self.epoch_steps, paid)

    def _steps_that_fit(self, elapsed: float, seconds_per_step: float) -> int:
        """Steps done plus those the rest of the time budget holds at this pace: at least one
        more, at most the recipe's epochs. 3% headroom for what a step's time does not show:
        progress syncs, checkpoints, epoch turns."""
        p, budget = self.progress, self.train.time_budget_s
        assert budget is not None
        fit = p.global_step + int((0.97 * budget - elapsed) / seconds_per_step)
        return min(self._step_cap(), max(p.global_step + 1, fit))

    # ---- the compute count ----------------------------------------------------------------
    def count(self, images: int, size: int | None) -> None:
        """`images` trained on at `size` (None: full size)."""
        p = self.progress
        assert p.images_seen is not None and p.train_flop is not None
        p.images_seen += images
        p.train_flop += 3 * (self.flops_per_image if size is None else self.stage_flops[size]) * images

    def count_unrecorded(self) -> None:
        """A resumed checkpoint from before images and compute were counted: every step so far
        was one batch at full size."""
        p = self.progress
        if p.images_seen is None:
            p.images_seen = p.global_step * self.train.batch_size
        if p.train_flop is None:
            p.train_flop = 3 * self.flops_per_image * p.images_seen

    @property
    def train_pflop(self) -> float:
        """Training compute so far: forward + backward = 3 forward passes per image trained, at
        the size it was trained at."""
        assert self.progress.train_flop is not None
        return self.progress.train_flop / 1e15


def mean_train_flops_per_image(cfg: RunConfig) -> float:
    """Forward FLOPs per image averaged over a run of `cfg`, what a compute budget is divided
    by: progressive stages at their sizes, the rest at full size. Training counts 3x this per
    image (forward + backward)."""
    full, stages = _flops_by_size(cfg)
    return mean_over_stages(cfg, full, stages)


def _flops_by_size(cfg: RunConfig) -> tuple[int, dict[int, int]]:
    """Forward FLOPs per image at full size, and at each progressive stage's size."""
    # Resolved first: a smaller image goes through the strides built at full size.
    resolved = cfg.model.resolved()
    sides = {stage.side(cfg.model.input_size) for stage in cfg.train.progressive}
    stages = {side: summarize(resolved.model_copy(update={"input_size": side}), cfg.budget).flops for side in sides}
    return summarize(cfg.model, cfg.budget).flops, stages


def mean_over_stages(cfg: RunConfig, full: float, by_size: dict[int, float]) -> float:
    """The mean over a run of `cfg` of what a step or image costs at full size (`full`) and at each
    progressive stage's side in pixels (`by_size`): FLOPs, seconds. Stages cover fixed fractions of a
    run's steps; the rest is at full size."""
    mean, start = 0.0, 0.0
    for stage in cfg.train.progressive:
        mean += (stage.until - start) * by_size[stage.side(cfg.model.input_size)]
        start = stage.until
    return mean + (1 - start) * full


def time_steps(step: Callable[..., torch.Tensor | None],
               batches: Iterable[tuple[torch.Tensor, ...]], warm: int, ranks: Ranks) -> Timing:
    """Seconds per training step from throwaway `step(*batch)` calls (returning the loss, or
    None for a skipped batch) on `batches` (iterated again if they run out). The first `warm` (one;
    two with compile: forward and backward graphs) are warm-up and not timed. Several ranks take
    as many steps as rank 0 times."""
    times: list[float] = []
    started = time.perf_counter()
    pending = iter(batches)
    while ranks.from_main(lambda: len(times) < warm + 2 or (sum(times[warm:]) < 1.0 and len(times) < warm + 20)):
        t = time.perf_counter()
        try:
            batch = next(pending)
        except StopIteration:
            pending = iter(batches)
            continue
        loss = step(*batch)
        if loss is not None:
            loss.item()  # waits for the device, so the time is the step's own
        times.append(time.perf_counter() - t)
    timed = times[warm:]
    return sum(timed) / len(timed), sum(times[:warm]), time.perf_counter() - started
