"""The training loop. The whole step is `_train_epoch`; everything else is bookkeeping.

Resumability rests on three facts: the loader's randomness for epoch e is a pure function of
(seed, e); the learning rate is a pure function of the step (train/schedules.py); the
checkpoint holds model, optimizer, scaler, RNG states and the metrics history; and a checkpoint taken mid-epoch records how many batches were done, which
the resumed run skips. So a run killed at any point and resumed replays what an uninterrupted
run would have done.

A time budget (`time_budget_s`) is planned before the first step: a few throwaway steps (the
model, optimizer and RNG are restored afterwards; compile happens here) give the seconds per
step, hence the steps that fit, and the schedule is spread over that many. Every 10 steps the
plan is revised from the pace actually kept (measured here: the sustained pace of a CPU run
was up to 1.4x slower than its first steps'); the schedule follows the new length at once,
since it is a function of (step, planned steps).

Training compute is counted as 3 x forward FLOPs per image (forward + backward) x images
trained (`train_pflop` in metrics.csv and summary.json), the same on every machine. The plan is checkpointed, so a resumed run keeps it. This is "budgeted
training" (Li et al., ICLR 2020: a schedule that decays to zero at the budget beats cutting a
longer one short).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import budgetnet
from budgetnet.config import RunConfig, dump_config
from budgetnet.data import BatchAugment, DeviceLoader, prepare_data
from budgetnet.errors import BudgetnetError
from budgetnet.evaluate import evaluate_loader
from budgetnet.files import LOCK_NAME, DirLock, atomic_write_bytes, write_json
from budgetnet.models import build_model, count_params, summarize
from budgetnet.runtime import autocast_dtype, compile_model, resolve_device, use_channels_last
from budgetnet.shape_planner import ShapePlan, plan_shape
from budgetnet.train.callbacks import EarlyStopping, ProgressReporter, plot_curves, write_metrics
from budgetnet.train.checkpoint import load_checkpoint, save_checkpoint
from budgetnet.train.optim import build_optimizer
from budgetnet.train.rundir import environment_info, new_run_dir
from budgetnet.train.schedules import Plateau, lr_factor
from budgetnet.train.tracking import epoch_loggers

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


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


@dataclass
class _State:
    """Everything that changes during training and must survive a restart."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches done in the current (incomplete) epoch
    global_step: int = 0
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, seen
    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int | None = None
    nan_skips: int = 0
    train_seconds: float = 0.0
    stopped: bool = False  # early stopping or the time limit ended the run: a resume must not go on
    planned_steps: int = 0  # optimizer steps the run will take (0: not planned yet)
    images_seen: int = 0  # training images stepped on
    train_flop: float = 0.0  # 3 x forward FLOPs at the size trained, summed over images
    calibration: dict[str, float] = field(default_factory=dict)  # what planning a time budget measured


class _SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so we stop at a clean point."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(ValueError):  # not the main thread (e.g. a notebook worker): no graceful stop
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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
    it raises (e.g. a search pruning the trial) ends training and propagates.
    """
    run_dir = Path(out) if out is not None else new_run_dir(runs_root, cfg.name)
    if run_dir.exists() and not run_dir.is_dir():
        raise BudgetnetError(f"{run_dir} is a file, not a run directory; choose another --out")
    # Lock first: a second process on this directory is told who holds it, whatever it asked.
    with DirLock(run_dir):
        for stale in run_dir.glob(".*.tmp-*"):  # half-written files of a killed run; we hold the lock
            stale.unlink(missing_ok=True)
        if not resume and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise BudgetnetError(f"run directory {run_dir} is not empty; use --resume {run_dir} or another --out")
        # Experiment tracking (train.log): trackers wrap the epoch callback (train/tracking.py); made
        # first, so a missing package fails before anything is written. `trainer` is read when called.
        on_epoch_end = epoch_loggers(cfg, run_dir, lambda: trainer.state.global_step, on_epoch_end)
        trainer = _Trainer(cfg, run_dir, quiet, on_epoch_end)  # a bad --data leaves no half-made run behind
        if not resume:
            atomic_write_bytes(run_dir / "config.yaml", dump_config(trainer.cfg).encode())
            if trainer.shape_plan is not None:
                write_json(run_dir / "shape_plan.json", trainer.shape_plan.as_dict())
        return trainer.run(resume)


def _check_budget(cfg: RunConfig) -> None:
    params = count_params(cfg.model)
    if params > cfg.budget and not cfg.allow_over_budget:
        raise BudgetnetError(
            f"model has {params:,} trainable parameters, over the budget of {cfg.budget:,}; "
            "shrink it (budgetnet fit) or pass --allow-over-budget"
        )


class _Trainer:
    def __init__(
        self, cfg: RunConfig, run_dir: Path, quiet: bool, on_epoch_end: Callable[[dict[str, float]], None] | None
    ) -> None:
        self.run_dir, self.quiet, self.on_epoch_end = run_dir, quiet, on_epoch_end
        tc = cfg.train
        if tc.shape_table is None:
            _check_budget(cfg)
        self.device = resolve_device(tc.device)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        splits = ("train", "val") if cfg.data.val_size > 0 else ("train",)
        self.data = prepare_data(cfg.data, self.device, splits=splits)
        x, y = self.data.train
        self.shape_plan: ShapePlan | None = None
        if tc.shape_table is not None and tc.time_budget_s is not None:
            # The time budget picks the shape (and its epochs); the resolved config records it.
            self.shape_plan = plan_shape(cfg, len(y), self.device)
            cfg, tc = self.shape_plan.config, self.shape_plan.config.train
            if not quiet:
                c = self.shape_plan.choice
                print(f"shape for {tc.time_budget_s:g} s here: {c.name} ({c.params:,} params, "
                      f"{c.seconds_per_step:.2f} s/step, {c.epochs:.1f} epochs, expected {c.expected_acc:.1f}%)")
        self.cfg = cfg
        params = count_params(cfg.model)
        self.amp = autocast_dtype(tc.precision, self.device)
        self.channels_last = use_channels_last(tc.channels_last, self.device)
        self.fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        torch.manual_seed(tc.seed)
        self.model = build_model(cfg.model).to(self.device, memory_format=self.fmt)
        self.params = params
        # Data is handed over in the autocast dtype, so the first conv needs no cast of its own.
        in_dtype = self.amp if self.amp is not None and self.device.type == "cpu" else torch.float32
        common = dict(mean=self.data.mean, std=self.data.std, dtype=in_dtype, channels_last=self.channels_last)
        self.loader = DeviceLoader(
            x, y, tc.batch_size, shuffle=True, drop_last=True, seed=tc.seed,
            augment=BatchAugment(cfg.augment), **common,
        )
        if len(self.loader) == 0:
            raise BudgetnetError(f"batch size {tc.batch_size} is larger than the {len(y)} training images; lower --batch-size")
        self.val_loader = (
            DeviceLoader(*self.data.val, tc.eval_batch_size, shuffle=False, drop_last=False, seed=0, augment=None, **common)
            if self.data.val is not None else None
        )
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.plateau = Plateau(cfg.schedule) if cfg.schedule.name == "plateau" else None
        self.flops_per_image = summarize(cfg.model, cfg.budget).flops
        for stage in tc.progressive:  # each size must fit the network: checked before any training
            if stage.size > cfg.model.input_size:
                raise BudgetnetError(f"progressive size {stage.size} is larger than the input size "
                                     f"{cfg.model.input_size}; stages train on downscaled images")
        self.stage_flops = {
            s.size: summarize(cfg.model.model_copy(update={"input_size": s.size}), cfg.budget).flops
            for s in tc.progressive
        }
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16 and self.device.type == "cuda")
        self.ema = (
            torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True
            )
            if tc.ema_decay else None
        )
        self.step_model: nn.Module = compile_model(self.model, cfg.data.cache_dir) if tc.compile else self.model
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
        self.stopper = EarlyStopping(tc.early_stopping) if tc.early_stopping else None
        self.state = _State()

    # ---- the step -------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, guard: _SignalGuard, progress: ProgressReporter) -> bool:
        """One epoch (or its remainder after a resume). False if a signal cut it short."""
        st = self.state
        self.step_model.train()
        self.loader.set_epoch(epoch)
        loss_sum = torch.tensor(st.partial[0], device=self.device)
        correct = torch.tensor(st.partial[1], device=self.device)
        seen = int(st.partial[2])
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(self.loader):
            if i < st.step_in_epoch:
                continue  # replaying a resumed epoch: these batches were trained before the stop
            self._set_lr(st.global_step)
            size = self._size_at(st.global_step)
            if size is not None:  # antialiased downscale: a smaller view of the same augmented batch
                x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            logits, loss = self._step(x, y)
            if loss is None:
                st.nan_skips += 1
            else:
                loss_sum += loss.detach().float() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            st.step_in_epoch, st.global_step, st.images_seen = i + 1, st.global_step + 1, st.images_seen + len(y)
            st.train_flop += 3 * (self.flops_per_image if size is None else self.stage_flops[size]) * len(y)
            if (i + 1) % 10 == 0:  # the only host syncs inside an epoch: every 10 steps
                self._check_finite(loss_sum, epoch, i)
                progress.step(i + 1, loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1))
                self._replan(time.perf_counter() - t0)
            if self._mid_epoch_due():
                self._check_finite(loss_sum, epoch, i)
                st.partial = [loss_sum.item(), correct.item(), float(seen)]
                st.train_seconds, t0 = st.train_seconds + time.perf_counter() - t0, time.perf_counter()
                self._save(LAST)
            if guard.signum is not None or self._out_of_time(time.perf_counter() - t0):
                break
            if st.global_step >= st.planned_steps:
                break  # a time-budgeted plan may end mid-epoch
        self._check_finite(loss_sum, epoch, st.step_in_epoch - 1)
        st.partial = [loss_sum.item(), correct.item(), float(seen)]  # syncs, so the time below is real
        st.train_seconds += time.perf_counter() - t0
        return st.step_in_epoch >= len(self.loader) or guard.signum is None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward, backward, optimizer (and EMA) update; a batch larger than `micro_batch` is
        forwarded and backpropagated in slices whose gradients add up to the batch's. The loss
        is None for a skipped non-finite batch (on_nan: skip); that check is the one host sync,
        and only then."""
        tc, opt = self.cfg.train, self.optimizer
        opt.zero_grad(set_to_none=True)
        size = tc.micro_batch or len(y)
        logits, loss = [], torch.zeros((), device=self.device)
        for xs, ys in zip(x.split(size), y.split(size)):
            with torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext():
                out = self.step_model(xs)
                part = self.criterion(out, ys) * (len(ys) / len(y))
            self.scaler.scale(part).backward()
            logits.append(out.detach())
            loss = loss + part.detach().float()
        if tc.on_nan == "skip" and not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            return torch.cat(logits), None
        if tc.grad_clip:
            self.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return torch.cat(logits), loss

    # ---- planning -------------------------------------------------------------------------
    def _plan(self) -> None:
        """Fix the number of optimizer steps: all the epochs', or fewer where a compute budget
        (whole batches of P PFLOP) or a time budget (timed steps) holds fewer."""
        st, tc = self.state, self.cfg.train
        st.planned_steps = self._step_cap()
        if tc.time_budget_s is None:
            return
        seconds_per_step, warmup_seconds, calibration_seconds = self._time_steps()
        st.planned_steps = self._steps_that_fit(0.0, seconds_per_step)
        st.calibration = {
            "seconds_per_step": seconds_per_step, "warmup_seconds": warmup_seconds,
            "calibration_seconds": calibration_seconds,
        }

    def _step_cap(self) -> int:
        """The most steps a run may take: its epochs', or the whole batches its PFLOP budget pays for."""
        tc = self.cfg.train
        cap = len(self.loader) * tc.epochs
        if tc.pflop_budget is not None:
            per_step = 3 * self._mean_flops_per_image() * tc.batch_size / 1e15
            cap = min(cap, max(1, int(tc.pflop_budget / per_step)))
        return cap

    def _replan(self, running: float) -> None:
        """Revise a time-budgeted plan from the pace so far; a change under 2% is not worth
        rebuilding the schedule for."""
        st, tc = self.state, self.cfg.train
        if tc.time_budget_s is None or st.global_step == 0:
            return
        elapsed = st.train_seconds + running
        steps = self._steps_that_fit(elapsed, elapsed / st.global_step)
        if abs(steps - st.planned_steps) <= 0.02 * st.planned_steps:
            return
        st.planned_steps = steps
        st.calibration["replans"] = st.calibration.get("replans", 0) + 1

    def _steps_that_fit(self, elapsed: float, seconds_per_step: float) -> int:
        """Steps done plus those the rest of the time budget holds at this pace: at least one
        more, at most the recipe's epochs. 3% headroom for what a step's time does not show:
        progress syncs, checkpoints, epoch turns."""
        st, tc = self.state, self.cfg.train
        assert tc.time_budget_s is not None
        fit = st.global_step + int((0.97 * tc.time_budget_s - elapsed) / seconds_per_step)
        return min(self._step_cap(), max(st.global_step + 1, fit))

    def _set_lr(self, step: int) -> None:
        """Every group's lr at `step`: its peak times the schedule's factor over the planned
        steps (over its `horizon` share of them: a group may stop training early), times the
        plateau's scale."""
        sched, epochs = self.cfg.schedule, self.cfg.train.epochs
        scale = self.plateau.scale if self.plateau is not None else 1.0
        for group in self.optimizer.param_groups:
            total = max(1, round(group["horizon"] * self.state.planned_steps))
            factor = lr_factor(sched, step, total, epochs * group["horizon"]) if step < total else 0.0
            group["lr"] = group["peak_lr"] * factor * scale

    def _train_pflop(self) -> float:
        """Training compute so far: forward + backward = 3 forward passes per image trained, at
        the size it was trained at."""
        return self.state.train_flop / 1e15

    def _mean_flops_per_image(self) -> float:
        """Forward FLOPs per image averaged over the run: progressive stages cover fixed
        fractions of it, the rest is at full size."""
        mean, start = 0.0, 0.0
        for stage in self.cfg.train.progressive:
            mean += (stage.until - start) * self.stage_flops[stage.size]
            start = stage.until
        return mean + (1 - start) * self.flops_per_image

    def _size_at(self, step: int) -> int | None:
        """The progressive-resizing size of `step` (None: full size)."""
        for stage in self.cfg.train.progressive:
            if step < stage.until * self.state.planned_steps:
                return stage.size
        return None

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

    def _planned_epochs(self) -> int:
        return math.ceil(self.state.planned_steps / len(self.loader))

    def _time_steps(self) -> tuple[float, float, float]:
        """Seconds per training step, from throwaway steps on the first batches. The first one
        (two with compile: forward and backward graphs) is warm-up and not timed; the model,
        optimizer, EMA, scaler and RNG are put back as they were."""
        saved = copy.deepcopy({
            "model": self.model.state_dict(), "opt": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "rng": torch.get_rng_state(),
        })
        self.step_model.train()
        self.loader.set_epoch(0)
        warm = 2 if self.cfg.train.compile else 1
        times: list[float] = []
        started = time.perf_counter()
        batches = iter(self.loader)
        while len(times) < warm + 2 or (sum(times[warm:]) < 1.0 and len(times) < warm + 20):
            t = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(self.loader)
                continue
            _, loss = self._step(x, y)
            if loss is not None:
                loss.item()  # waits for the device, so the time is the step's own
            times.append(time.perf_counter() - t)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["opt"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["rng"])
        timed = times[warm:]
        return sum(timed) / len(timed), sum(times[:warm]), time.perf_counter() - started

    # ---- bookkeeping ----------------------------------------------------------------------
    def _mid_epoch_due(self) -> bool:
        every = self.cfg.train.checkpoint_every_steps
        return bool(every) and self.state.global_step % every == 0 and self.state.step_in_epoch < len(self.loader)

    def _out_of_time(self, running: float) -> bool:
        limit = self.cfg.train.max_train_seconds
        return limit is not None and self.state.train_seconds + running >= limit

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if self.cfg.train.on_nan == "stop" and not math.isfinite(loss_sum.item()):
            raise BudgetnetError(
                f"loss became non-finite in epoch {epoch + 1} by step {step + 1} "
                f"(global step {self.state.global_step}); {self._nan_advice()}"
            )

    def _nan_advice(self) -> str:
        kept = (
            f"the last good checkpoint is kept in {self.run_dir}" if (self.run_dir / LAST).exists()
            else "no checkpoint had been written yet"
        )
        return f"{kept}; lower the learning rate (optim.lr) or use --on-nan skip"

    def _check_weights(self) -> None:
        """A finite loss can still leave non-finite weights (an inf/NaN gradient); such weights
        must never replace a good checkpoint. One host sync per checkpoint."""
        modules = [self.model] if self.ema is None else [self.model, self.ema]
        tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            raise BudgetnetError(
                f"the weights became non-finite by global step {self.state.global_step}; {self._nan_advice()}"
            )

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _checkpoint_state(self) -> dict[str, Any]:
        st = self.state
        state: dict[str, Any] = {
            "budgetnet_version": budgetnet.__version__,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "progress": {
                "epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step,
                "partial": list(st.partial), "best_val": st.best_val, "best_epoch": st.best_epoch,
                "nan_skips": st.nan_skips, "train_seconds": st.train_seconds, "stopped": st.stopped,
                "planned_steps": st.planned_steps, "calibration": st.calibration, "images_seen": st.images_seen,
                "train_flop": st.train_flop,
            },
            "history": st.history,
            "early_stopping": self.stopper.state_dict() if self.stopper else None,
            # What evaluate, export and predict need to use last.pt as they use best.pt.
            "classes": list(self.data.classes),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _save(self, name: str) -> None:
        self._check_weights()
        # The old last.pt becomes previous.pt (what a damaged last.pt falls back to) only once the
        # new one is safely written, so a failed write (full disk) leaves both as they were.
        backup = self.run_dir / PREVIOUS if name == LAST else None
        save_checkpoint(self.run_dir / name, self._checkpoint_state(), backup=backup)

    def _save_best(self) -> None:
        self._check_weights()
        save_checkpoint(
            self.run_dir / BEST,
            {
                "budgetnet_version": budgetnet.__version__,
                "config": self.cfg.model_dump(mode="json"),
                "model": self._eval_model().state_dict(),
                "classes": list(self.data.classes),
                "mean": list(self.data.mean),
                "std": list(self.data.std),
                "epoch": self.state.epoch,
                "val_acc": self.state.best_val,
            },
        )

    def _restore(self) -> bool:
        """Load the newest usable checkpoint; False if the run stopped before writing any."""
        state, damaged = None, []
        for name in (LAST, PREVIOUS):
            path = self.run_dir / name
            if not path.exists():
                continue
            try:
                state = load_checkpoint(path, map_location=self.device)
                break
            except BudgetnetError as exc:
                damaged.append(path)
                then = "falling back to the previous checkpoint (previous.pt)" if name == LAST else "no older one is left"
                print(f"budgetnet: warning: {exc}; {then}", file=sys.stderr, flush=True)
        if state is None and not damaged:
            print(f"budgetnet: warning: {self.run_dir} has no checkpoint yet (the run stopped before its first); "
                  "starting from the beginning", file=sys.stderr, flush=True)
            return False
        if state is None:
            raise BudgetnetError(f"no usable checkpoint in {self.run_dir}; start a new run instead of --resume")
        for path in damaged:  # kept for inspection, out of the way of the next last.pt -> previous.pt
            os.replace(path, path.with_name(path.name + ".damaged"))
        self.model.load_state_dict(state["model"])
        built = [(g["peak_lr"], g["horizon"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (peak, horizon) in zip(self.optimizer.param_groups, built):
            # Checkpoints written before the schedule became a function of the step lack these.
            group.setdefault("peak_lr", peak)
            group.setdefault("horizon", horizon)
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.stopper is not None and state["early_stopping"] is not None:
            self.stopper.load_state_dict(state["early_stopping"])
        p = state["progress"]
        st = self.state
        st.epoch, st.step_in_epoch, st.global_step = p["epoch"], p["step_in_epoch"], p["global_step"]
        st.partial, st.best_val, st.best_epoch = list(p["partial"]), p["best_val"], p["best_epoch"]
        st.nan_skips, st.train_seconds = p["nan_skips"], p["train_seconds"]
        st.stopped = p.get("stopped", False)
        st.planned_steps, st.calibration = p.get("planned_steps", 0), p.get("calibration", {})
        st.images_seen = p.get("images_seen", st.global_step * self.cfg.train.batch_size)
        st.train_flop = p.get("train_flop", 3 * self.flops_per_image * st.images_seen)
        st.history = list(state["history"])
        write_metrics(self.run_dir / "metrics.csv", st.history)  # drop rows a kill left beyond the checkpoint
        return True

    def _validate(self, last: bool) -> tuple[float, float]:
        if self.val_loader is None:
            return math.nan, math.nan
        tta = self.cfg.train.tta == "final" and last or self.cfg.train.tta is True
        result = evaluate_loader(self._eval_model(), self.val_loader, tta=tta, amp=self.amp)
        return result.loss, result.accuracy

    def run(self, resume: bool) -> RunResult:
        tc, st = self.cfg.train, self.state
        started = time.perf_counter()
        restored = resume and self._restore()
        if not restored:
            write_json(self.run_dir / "environment.json", environment_info(self.device))
            self._init_whitening()
        if not st.planned_steps:  # a resumed run keeps its plan
            self._plan()
        progress = ProgressReporter(self._planned_epochs(), len(self.loader), quiet=self.quiet)
        stop_early = st.stopped
        with _SignalGuard() as guard:
            try:
                while st.epoch < self._planned_epochs() and not stop_early:
                    progress.epochs = self._planned_epochs()
                    epoch = st.epoch
                    progress.start_epoch(epoch)
                    finished = self._train_epoch(epoch, guard, progress)
                    if guard.signum is not None and not finished:
                        self._save(LAST)
                        raise TrainingInterrupted(guard.signum, self.run_dir)
                    last = st.global_step >= st.planned_steps or self._out_of_time(0.0)
                    val_loss, val_acc = self._validate(last)
                    self._set_lr(st.global_step)  # the row's lr is the next step's: 0 at the plan's end
                    loss_sum, correct, seen = st.partial
                    row = {
                        "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                        "val_loss": val_loss, "val_acc": val_acc, "lr": self.optimizer.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - started, "train_seconds": st.train_seconds,
                        "train_pflop": self._train_pflop(), "nan_skips": st.nan_skips,
                    }
                    st.history.append(row)
                    st.epoch, st.step_in_epoch, st.partial = epoch + 1, 0, [0.0, 0.0, 0.0]
                    if self.plateau is not None:
                        metric = val_acc if self.cfg.schedule.plateau_mode == "val_acc" else val_loss
                        fallback = row["train_acc"] if self.cfg.schedule.plateau_mode == "val_acc" else row["train_loss"]
                        self.plateau.update(fallback if math.isnan(metric) else metric)
                    # Best is chosen on validation only; with no validation split, the latest wins.
                    if self.val_loader is None or st.best_val is None or val_acc > st.best_val:
                        st.best_val, st.best_epoch = (None if self.val_loader is None else val_acc), epoch + 1
                        self._save_best()
                    if self.stopper is not None:
                        key = "val_acc" if tc.early_stopping.monitor == "val_acc" else "val_loss"
                        stop_early = self.stopper.update(row[key])
                    stop_early = stop_early or self._out_of_time(0.0)
                    st.stopped = stop_early
                    self._save(LAST)
                    write_metrics(self.run_dir / "metrics.csv", st.history)
                    progress.end_epoch(row)
                    if self.on_epoch_end is not None:
                        self.on_epoch_end(row)
                    if guard.signum is not None:
                        raise TrainingInterrupted(guard.signum, self.run_dir)
            finally:
                progress.close()
        plot_curves(self.run_dir / "curves.png", st.history)
        summary = {
            "params": self.params,
            "flops": self.flops_per_image,
            "images_seen": st.images_seen,
            "train_pflop": self._train_pflop(),
            "budget": self.cfg.budget,
            "epochs_run": st.epoch,
            "steps_run": st.global_step,
            "planned_steps": st.planned_steps,
            "time_budget_s": tc.time_budget_s,
            "pflop_budget": tc.pflop_budget,
            **st.calibration,
            "stopped_early": stop_early and st.epoch < self._planned_epochs(),
            "best_val_acc": st.best_val,
            "best_epoch": st.best_epoch,
            "final_val_acc": st.history[-1]["val_acc"] if self.val_loader is not None else None,
            "final_train_acc": st.history[-1]["train_acc"],
            "train_seconds": st.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "nan_skips": st.nan_skips,
            "device": str(self.device),
            "precision": str(self.amp).removeprefix("torch.") if self.amp else "fp32",
            "classes": list(self.data.classes),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "data": self.data.info,
        }
        write_json(self.run_dir / "summary.json", summary)
        return RunResult(self.run_dir, summary)
