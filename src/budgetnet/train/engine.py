"""The training loop: `_Trainer._train_epoch` and `_Trainer._step` are the whole of training
(lr, step, optimizer); the bookkeeping around them lives in small collaborators:
`planner.Planner` (the steps a time or compute budget allows, re-planned as the run goes, and
the `train_pflop` count), `checkpointer.Checkpointer` (last/previous/best, resuming) and
`bookkeeping.EpochBooks` (running sums, non-finite losses, progress, the clock, when to stop).

Resumability rests on four facts: the loader's randomness for epoch e is a pure function of
(seed, e), and with data selection also of the losses recorded when the epoch began
(train/selection.py); the learning rate is a pure function of the step (train/schedules.py);
the checkpoint holds model, optimizer, scaler, RNG states, those losses and the metrics
history; and a checkpoint taken mid-epoch records how many batches were done, which the resumed
run skips. So a run killed at any point and resumed replays what an uninterrupted run would
have done. The plan is checkpointed too, so a resumed run keeps it.

Under torchrun every process runs `train` alike, as one rank of a data-parallel run
(train/distributed.py): DistributedDataParallel around the model, each rank on its part of every
batch, rank 0 writing the run directory. What the books, the plan, the best epoch and the
decisions to stop read (losses, accuracies, validation) is of the whole batch or split, gathered
from all ranks, so every rank goes the same way. Validation is shared out too: each rank
evaluates rank 0's weights on every N-th image.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from budgetnet.config import RunConfig, dump_config, fit_to_data
from budgetnet.data import BatchAugment, DeviceLoader, prepare_data
from budgetnet.data.augment import random_crop
from budgetnet.data.loader import epoch_seed
from budgetnet.errors import BudgetnetError
from budgetnet.evaluate import evaluate_loader
from budgetnet.files import LOCK_NAME, DirLock, atomic_write_bytes, write_json
from budgetnet.models import build_model, count_params
from budgetnet.models.budget import over_limits
from budgetnet.runtime import autocast_dtype, compile_model, use_channels_last
from budgetnet.shape_planner import ShapePlan, plan_shape
from budgetnet.train.bookkeeping import EpochBooks, SignalGuard
from budgetnet.train.callbacks import EarlyStopping, ProgressReporter, plot_curves, write_metrics
from budgetnet.train.checkpoint import Progress
from budgetnet.train.checkpointer import BEST, LAST, PREVIOUS, Checkpointer
from budgetnet.train.distributed import Ranks, process_group
from budgetnet.train.optim import build_optimizer
from budgetnet.train.planner import Planner, Timing, time_steps
from budgetnet.train.rundir import environment_info, new_run_dir, record_resume
from budgetnet.train.schedules import Plateau, PlateauSchedule, lr_factor
from budgetnet.train.selection import DataSelection
from budgetnet.train.tracking import epoch_loggers

# The random stream of a step's progressive crops (rank r: this + r), keyed by the step, not the
# epoch; the loader's shuffle is stream 0, the data selection's 1.
_CROP_STREAM = 2

__all__ = ["BEST", "LAST", "PREVIOUS", "RunResult", "TrainingInterrupted", "train"]


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written. `exit_code` is 130 or 143."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        self.exit_code = 128 + signum
        self.run_dir = run_dir
        super().__init__(f"interrupted by {signal.Signals(signum).name}; resume with: budgetnet train --resume {run_dir}")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def train(
    cfg: RunConfig,
    out: Path | None = None,
    *,
    resume: bool = False,
    runs_root: Path = Path("runs"),
    quiet: bool = False,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> RunResult:
    """Train `cfg` into a run directory (new, or `out`); with `resume`, continue the run in `out`.

    `on_epoch_end(row)` sees each epoch's metrics row after it is checkpointed; an exception
    it raises (e.g. a search pruning the trial) ends training and propagates. In a data-parallel
    run (under torchrun, or in a process group already started) every rank calls `train` alike
    and `on_epoch_end` runs on every rank; rank 0 picks the run directory and alone writes it.
    """
    with process_group(cfg.train.device) as ranks, ExitStack() as held:

        def open_run_dir() -> Path:  # on rank 0
            nonlocal on_epoch_end
            run_dir = Path(out) if out is not None else new_run_dir(runs_root, cfg.name)
            if run_dir.exists() and not run_dir.is_dir():
                raise BudgetnetError(f"{run_dir} is a file, not a run directory; choose another --out")
            # Lock first: a second process on this directory is told who holds it, whatever it asked.
            held.enter_context(DirLock(run_dir))
            for stale in run_dir.glob(".*.tmp-*"):  # half-written files of a killed run; we hold the lock
                stale.unlink(missing_ok=True)
            if not resume and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
                raise BudgetnetError(f"run directory {run_dir} is not empty; use --resume {run_dir} or another --out")
            # Experiment tracking (train.log): trackers wrap the epoch callback (train/tracking.py); made
            # first, so a missing package fails before anything is written. `trainer` is read when called.
            on_epoch_end = epoch_loggers(cfg, run_dir, lambda: trainer.progress.global_step, on_epoch_end)
            return run_dir

        run_dir = ranks.from_main(open_run_dir)
        # A bad --data leaves no half-made run behind; the other ranks print nothing.
        trainer = _Trainer(cfg, run_dir, ranks, quiet or not ranks.is_main, on_epoch_end)
        if not resume and ranks.is_main:
            atomic_write_bytes(run_dir / "config.yaml", dump_config(trainer.cfg).encode())
            if trainer.shape_plan is not None:
                write_json(run_dir / "shape_plan.json", trainer.shape_plan.as_dict())
        return trainer.run(resume)


def _check_budget(cfg: RunConfig) -> None:
    if not cfg.allow_over_budget and (reason := over_limits(cfg.model, cfg.limits)) is not None:
        raise BudgetnetError(f"the model {reason}; shrink it (budgetnet fit) or pass --allow-over-budget")


class _Trainer:
    def __init__(
        self, cfg: RunConfig, run_dir: Path, ranks: Ranks, quiet: bool,
        on_epoch_end: Callable[[dict[str, float]], None] | None,
    ) -> None:
        cfg = fit_to_data(cfg)  # the model's classes and input size follow the data, then the limits apply
        self.run_dir, self.ranks, self.quiet, self.on_epoch_end = run_dir, ranks, quiet, on_epoch_end
        tc = cfg.train
        if tc.shape_table is None or tc.time_budget_s is None:  # else the planner picks within the limits
            ranks.from_main(lambda: _check_budget(cfg))  # a latency limit is timed: one rank's verdict for all
        if tc.batch_size % ranks.world_size:
            raise BudgetnetError(f"batch size {tc.batch_size} does not split evenly among {ranks.world_size} "
                                 f"processes; choose a multiple of {ranks.world_size}")
        self.device = ranks.device
        if tc.threads:
            torch.set_num_threads(tc.threads)
        splits = ("train", "val") if cfg.data.val_size > 0 else ("train",)
        self.data = prepare_data(cfg.data, self.device, splits=splits)
        x, y = self.data.train
        if self.data.val is not None and len(self.data.val[1]) < ranks.world_size:
            raise BudgetnetError(f"a validation split of {len(self.data.val[1])} images cannot be shared among "
                                 f"{ranks.world_size} processes; keep at least {ranks.world_size} (--val-size)")
        self.shape_plan: ShapePlan | None = None
        if tc.shape_table is not None and tc.time_budget_s is not None:
            # The time budget picks the shape (and its epochs); the resolved config records it. Rank 0
            # times each shape at one process's part of the batch; every rank trains its pick.
            self.shape_plan = ranks.from_main(lambda: plan_shape(cfg, len(y), self.device, world_size=ranks.world_size))
            cfg, tc = self.shape_plan.config, self.shape_plan.config.train
            if not quiet:
                c = self.shape_plan.choice
                print(f"shape for {tc.time_budget_s:g} s here: {c.name} ({c.params:,} params, "
                      f"{c.seconds_per_step:.2f} s/step, {c.epochs:.1f} epochs, expected {c.expected_acc:.1f}%)")
        self.cfg = cfg
        self.params = count_params(cfg.model)
        self.amp = autocast_dtype(tc.precision, self.device)
        self.channels_last = use_channels_last(tc.channels_last, self.device)

        torch.manual_seed(tc.seed)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = build_model(cfg.model).to(self.device, memory_format=fmt)
        # Data is handed over in the autocast dtype, so the first conv needs no cast of its own.
        in_dtype = self.amp if self.amp is not None and self.device.type == "cpu" else torch.float32
        common = dict(mean=self.data.mean, std=self.data.std, dtype=in_dtype, channels_last=self.channels_last)
        self.loader = DeviceLoader(
            x, y, tc.batch_size, shuffle=True, drop_last=True, seed=tc.seed,
            augment=BatchAugment(cfg.augment), shard=(ranks.rank, ranks.world_size), with_index=True, **common,
        )
        if len(self.loader) == 0:
            raise BudgetnetError(f"batch size {tc.batch_size} is larger than the {len(y)} training images; lower --batch-size")
        self.val_loader = (  # every world_size-th image, from the rank-th
            DeviceLoader(*(t[ranks.rank::ranks.world_size] for t in self.data.val), tc.eval_batch_size,
                         shuffle=False, drop_last=False, seed=0, augment=None, **common)
            if self.data.val is not None else None
        )
        self.selection = DataSelection(tc.data_selection, len(y), tc.seed, self.device) if tc.data_selection else None
        self.optimizer = build_optimizer(self.model, cfg.optim, lookahead=tc.lookahead)
        self.plateau = Plateau(cfg.schedule) if isinstance(cfg.schedule, PlateauSchedule) else None
        self.progress = Progress()
        self.planner = Planner(cfg, len(self.loader), self.progress, ranks)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16 and self.device.type == "cuda")
        self.ema = (
            torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True
            )
            if tc.ema_decay else None
        )
        self.ddp = ranks.data_parallel(self.model, tc.sync_bn)  # after the EMA's copy: not of DDP's hooks
        stepped: nn.Module = self.ddp or self.model
        self.step_model = compile_model(stepped, cfg.data.cache_dir) if tc.compile else stepped
        # Per image: the data selection weighs and records each image's loss.
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing, reduction="none")
        self.stopper = EarlyStopping(tc.early_stopping) if tc.early_stopping else None
        self.checkpointer = Checkpointer(
            run_dir, cfg, classes=self.data.classes, mean=self.data.mean, std=self.data.std, ranks=ranks,
            model=self.model, optimizer=self.optimizer, scaler=self.scaler, ema=self.ema, plateau=self.plateau,
            stopper=self.stopper, progress=self.progress, selection=self.selection,
        )

    # ---- training -------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, books: EpochBooks) -> None:
        """One epoch, or what a resume left of it."""
        self.step_model.train()
        subset = None
        if self.selection is not None:
            if self.progress.step_in_epoch == 0:  # a resumed epoch keeps the selection it began with
                self.selection.begin_epoch(self.progress.global_step / self.progress.planned_steps)
            subset = self.selection.epoch_subset(epoch)
        self.loader.set_epoch(epoch, subset)
        books.start(epoch)
        for i, (x, y, index) in books.remaining(self.loader):
            step = self.progress.global_step
            self._set_lr(step)
            stage = self.planner.stage_at(step)
            side = None  # full size
            if stage is not None:
                side = stage.side(self.planner.input_size)
                x = self._smaller(x, stage.mode, side, step)
            correct, loss = self._step(x, y, index)
            books.stepped(i, correct, loss, len(y) * self.ranks.world_size, side)
            if books.stop_now():
                break
        books.end()

    def _smaller(self, x: torch.Tensor, mode: str, side: int, step: int) -> torch.Tensor:
        """A progressive stage's smaller view of the augmented batch: downscaled (antialiased),
        or a random window per image whose places depend only on (seed, step, rank), so a
        resumed run crops as the uninterrupted one did."""
        if mode == "resize":
            return nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True,
                                             align_corners=False)
        generator = torch.Generator(device=x.device)
        generator.manual_seed(epoch_seed(self.cfg.train.seed, step, stream=_CROP_STREAM + self.ranks.rank))
        return random_crop(x, side, generator)

    def _set_lr(self, step: int) -> None:
        """Every group's lr at `step`: its peak times the schedule's factor over the planned
        steps (over its `horizon` share of them: a group may stop training early), times the
        plateau's scale."""
        sched, epochs = self.cfg.schedule, self.cfg.train.epochs
        scale = self.plateau.scale if self.plateau is not None else 1.0
        for group in self.optimizer.param_groups:
            total = max(1, round(group["horizon"] * self.progress.planned_steps))
            factor = lr_factor(sched, step, total, epochs * group["horizon"]) if step < total else 0.0
            group["lr"] = group["peak_lr"] * factor * scale

    def _step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward, backward, optimizer (and EMA) update on images `index`; a batch larger than
        `micro_batch` is forwarded and backpropagated in slices whose gradients add up to the
        batch's. Returns the correct count and mean loss of the whole batch (all ranks' parts);
        the loss is None for a skipped non-finite batch (on_nan: skip); that check is the one
        host sync, and only then."""
        tc, opt, selection = self.cfg.train, self.optimizer, self.selection
        opt.zero_grad(set_to_none=True)
        size = tc.micro_batch or len(y)
        weights = selection.weights[index] if selection is not None else torch.ones(len(y), device=self.device)
        slices = list(zip(x.split(size), y.split(size), weights.split(size)))
        correct, loss = torch.zeros((), dtype=torch.long, device=self.device), torch.zeros((), device=self.device)
        losses = []
        for k, (xs, ys, ws) in enumerate(slices):
            with self._accumulating(k < len(slices) - 1):
                with torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext():
                    out = self.step_model(xs)
                    per_image = self.criterion(out, ys)
                    part = (per_image * ws).sum() / len(y)
                self.scaler.scale(part).backward()
            correct = correct + (out.detach().argmax(1) == ys).sum()
            loss = loss + part.detach().float()
            losses.append(per_image.detach())
        if selection is not None:
            selection.record(self.ranks.gathered(index), self.ranks.gathered(torch.cat(losses)))
        correct, loss = self.ranks.whole_batch(correct, loss)
        if tc.on_nan == "skip" and not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            return correct, None
        if tc.grad_clip:
            self.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return correct, loss

    def _accumulating(self, more_slices: bool) -> AbstractContextManager[Any]:
        """A slice's gradients stay on this rank while more slices of the batch follow: the ranks
        average the batch's once, after its last slice."""
        return self.ddp.no_sync() if self.ddp is not None and more_slices else nullcontext()

    # ---- around the training --------------------------------------------------------------
    def _time_steps(self) -> Timing:
        """Throwaway steps on the first batches (`planner.time_steps`); the model, optimizer,
        EMA, scaler and RNG are put back as they were."""
        saved = self.checkpointer.snapshot()
        self.step_model.train()
        self.loader.set_epoch(0)
        timing = time_steps(lambda x, y, index: self._step(x, y, index)[1], self.loader, warm=2 if self.cfg.train.compile else 1,
                            ranks=self.ranks)
        self.checkpointer.load(saved)
        return timing

    def _init_whitening(self) -> None:
        """A whitening stem's filters from the first (up to) 5,000 training images, normalized
        as the loader hands them over. A resumed run loads them from its checkpoint instead."""
        stem = getattr(self.model, "stem", None)
        if not hasattr(stem, "init_whitening"):
            return
        x = self.data.train[0][:5000].float().div_(255)
        mean = torch.tensor(self.data.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std, device=x.device).view(1, -1, 1, 1)
        stem.init_whitening((x - mean) / std)

    def _validate(self, last: bool) -> tuple[float, float]:
        """Loss and accuracy on the validation split: each rank's share, summed over the ranks, of
        rank 0's weights (the ones checkpointed)."""
        if self.val_loader is None:
            return math.nan, math.nan
        tta = self.cfg.train.tta == "final" and last or self.cfg.train.tta is True
        self.ranks.copy_from_main(self.ema if self.ema is not None else self.model)
        model = self.ema.module if self.ema is not None else self.model
        result = evaluate_loader(model, self.val_loader, tta=tta, amp=self.amp)
        images = int(result.confusion.sum())
        totals = torch.tensor([result.loss * images, float(result.confusion.diag().sum()), images],
                              dtype=torch.float64, device=self.device)
        loss_sum, correct, seen = self.ranks.summed(totals).tolist()
        return loss_sum / seen, correct / seen

    def _end_epoch(self, epoch: int, books: EpochBooks, started: float) -> dict[str, float]:
        """Validate, record the epoch's row, keep the best, decide on stopping, checkpoint."""
        p = self.progress
        val_loss, val_acc = self._validate(last=self.planner.done or books.time_up)
        self._set_lr(p.global_step)  # the row's lr is the next step's: 0 at the plan's end
        loss_sum, correct, seen = p.partial
        row = {
            "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "val_loss": val_loss, "val_acc": val_acc, "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started, "train_seconds": p.train_seconds,
            "train_pflop": self.planner.train_pflop, "nan_skips": p.nan_skips,
        }
        p.history.append(row)
        p.epoch, p.step_in_epoch, p.partial = epoch + 1, 0, [0.0, 0.0, 0.0]
        if self.plateau is not None:
            on_acc = self.plateau.cfg.plateau_mode == "val_acc"
            metric = val_acc if on_acc else val_loss
            self.plateau.update((row["train_acc"] if on_acc else row["train_loss"]) if math.isnan(metric) else metric)
        # Best is chosen on validation only; with no validation split, the latest wins.
        if self.val_loader is None or p.best_val is None or val_acc > p.best_val:
            p.best_val, p.best_epoch = (None if self.val_loader is None else val_acc), epoch + 1
            self.checkpointer.save_best()
        stop = self.stopper is not None and self.stopper.update(row[self.stopper.cfg.monitor])
        p.stopped = stop or books.time_up
        self.checkpointer.save_last()
        if self.ranks.is_main:
            write_metrics(self.run_dir / "metrics.csv", p.history)
        return row

    def run(self, resume: bool) -> RunResult:
        p, planner = self.progress, self.planner
        started = time.perf_counter()
        if resume and self.checkpointer.restore():
            planner.count_unrecorded()
            if self.ranks.is_main:
                record_resume(self.run_dir, self.device, {"epoch": p.epoch, "step_in_epoch": p.step_in_epoch,
                                                          "train_seconds": round(p.train_seconds, 3)})
        else:
            p.processes = self.ranks.world_size
            if self.ranks.is_main:
                write_json(self.run_dir / "environment.json", environment_info(self.device))
            self._init_whitening()
            self.ranks.copy_from_main(self.model)
        if not p.planned_steps:  # a resumed run keeps its plan
            planner.plan(self._time_steps)
            paid = planner.compute_steps
            if paid is not None and paid < planner.epoch_steps and not self.quiet and self.ranks.is_main:
                # Said up front: more --epochs alone do not lengthen a compute-capped run.
                print(f"compute budget {self.cfg.train.pflop_budget:g} PFLOP: {paid} of the {self.cfg.train.epochs} "
                      f"epochs' {planner.epoch_steps} steps (pflop_budget none trains them all)")
        reporter = ProgressReporter(planner.planned_epochs, len(self.loader), quiet=self.quiet,
                                    silent=not self.ranks.is_main)
        with SignalGuard() as guard:
            books = EpochBooks(self.cfg.train, p, planner, self.checkpointer, reporter, guard, len(self.loader),
                               self.ranks)
            try:
                while p.epoch < planner.planned_epochs and not p.stopped:
                    epoch = p.epoch
                    reporter.epochs = planner.planned_epochs
                    reporter.start_epoch(epoch)
                    self._train_epoch(epoch, books)
                    if books.interrupted_mid_epoch:
                        self.checkpointer.save_last()
                        raise TrainingInterrupted(books.stop_signal, self.run_dir)
                    row = self._end_epoch(epoch, books, started)
                    reporter.end_epoch(row)
                    if self.on_epoch_end is not None:
                        self.on_epoch_end(row)
                    if books.signalled():
                        raise TrainingInterrupted(books.stop_signal, self.run_dir)
            finally:
                reporter.close()
        summary = self._summary(time.perf_counter() - started)
        if self.ranks.is_main:
            plot_curves(self.run_dir / "curves.png", p.history)
            write_json(self.run_dir / "summary.json", summary)
        return RunResult(self.run_dir, summary)

    def _summary(self, wall_seconds: float) -> dict[str, Any]:
        p, tc = self.progress, self.cfg.train
        return {
            "params": self.params,
            "flops": self.planner.flops_per_image,
            "images_seen": p.images_seen,
            "train_pflop": self.planner.train_pflop,
            "budget": self.cfg.budget,
            "epochs_run": p.epoch,
            "steps_run": p.global_step,
            "planned_steps": p.planned_steps,
            "time_budget_s": tc.time_budget_s,
            "pflop_budget": tc.pflop_budget,
            **p.calibration,
            "stopped_early": p.stopped and p.epoch < self.planner.planned_epochs,
            "best_val_acc": p.best_val,
            "best_epoch": p.best_epoch,
            "final_val_acc": p.history[-1]["val_acc"] if self.val_loader is not None else None,
            "final_train_acc": p.history[-1]["train_acc"],
            "train_seconds": p.train_seconds,
            "wall_seconds": wall_seconds,
            "nan_skips": p.nan_skips,
            "device": str(self.device),
            "processes": self.ranks.world_size,
            "precision": str(self.amp).removeprefix("torch.") if self.amp else "fp32",
            "classes": list(self.data.classes),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "data": self.data.info,
        }
