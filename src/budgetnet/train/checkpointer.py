"""A run's checkpoints: last.pt (and previous.pt, the one before it) to resume from, best.pt to
use. Written only from finite weights; a resume takes the newest usable one.

The old last.pt becomes previous.pt (what a damaged last.pt falls back to) only once the new
one is safely written, so a failed write (full disk) leaves both as they were. A run killed
mid-epoch resumes at the batch it stopped at: `Progress.step_in_epoch` says how many the epoch
had done.

In a data-parallel run every rank keeps the same state (rank 0's weights are the run's: see
`Ranks.copy_from_main`), rank 0 alone writes and reads the files, and the others are sent what it
resumes from. A run resumes with as many processes as it trained with: each process's part of a
batch, and so its batch-norm statistics, depend on the count.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from budgetnet.config import RunConfig
from budgetnet.errors import BudgetnetError, warn
from budgetnet.train.callbacks import EarlyStopping, write_metrics
from budgetnet.train.checkpoint import Checkpoint, Progress, Resume, load_checkpoint, save_checkpoint
from budgetnet.train.distributed import Ranks
from budgetnet.train.optim import TrainOptimizer
from budgetnet.train.schedules import Plateau
from budgetnet.train.selection import DataSelection

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"


class Checkpointer:
    """Saves and restores everything of a run that changes while it trains."""

    def __init__(
        self, run_dir: Path, cfg: RunConfig, *, classes: list[str], mean: list[float], std: list[float],
        ranks: Ranks, model: nn.Module, optimizer: TrainOptimizer,
        scaler: torch.amp.GradScaler, ema: AveragedModel | None, plateau: Plateau | None,
        stopper: EarlyStopping | None, progress: Progress, selection: DataSelection | None = None,
    ) -> None:
        self.run_dir, self.config, self.ranks = run_dir, cfg.model_dump(mode="json"), ranks
        self.every_steps = cfg.train.checkpoint_every_steps
        self.classes, self.mean, self.std = list(classes), list(mean), list(std)
        self.model, self.optimizer, self.scaler, self.ema = model, optimizer, scaler, ema
        self.plateau, self.stopper, self.progress, self.selection = plateau, stopper, progress, selection

    # ---- writing --------------------------------------------------------------------------
    def save_last(self) -> None:
        self._check_weights()
        if self.ranks.is_main:
            save_checkpoint(self.run_dir / LAST, self.current(), backup=self.run_dir / PREVIOUS)

    def save_best(self) -> None:
        """The weights validated (the EMA's, when the run keeps one) at the epoch just done."""
        self._check_weights()
        if not self.ranks.is_main:
            return
        validated = self.ema.module if self.ema is not None else self.model
        save_checkpoint(self.run_dir / BEST, Checkpoint(
            config=self.config, model=validated.state_dict(), classes=self.classes, mean=self.mean, std=self.std,
            epoch=self.progress.epoch, val_acc=self.progress.best_val,
        ))

    def mid_epoch_due(self, steps_per_epoch: int) -> bool:
        """`train.checkpoint_every_steps` asks for a last.pt now (the epoch's end writes its own)."""
        every, p = self.every_steps, self.progress
        return bool(every) and p.global_step % every == 0 and p.step_in_epoch < steps_per_epoch

    def current(self) -> Checkpoint:
        """The run as it stands (the live tensors, not copies)."""
        return Checkpoint(
            config=self.config, model=self.model.state_dict(), classes=self.classes, mean=self.mean, std=self.std,
            resume=Resume(
                optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                rng_cpu=torch.get_rng_state(),
                rng_cuda=torch.cuda.get_rng_state_all() if self.ranks.device.type == "cuda" else [],
                progress=self.progress,
                plateau=self.plateau.state_dict() if self.plateau is not None else None,
                early_stopping=self.stopper.state_dict() if self.stopper is not None else None,
                ema=self.ema.state_dict() if self.ema is not None else None,
                selection=self.selection.state_dict() if self.selection is not None else None,
            ),
        )

    def snapshot(self) -> Checkpoint:
        """A copy of `current()`, to `load` after throwaway steps."""
        return copy.deepcopy(self.current())

    # ---- reading --------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the newest usable last.pt (or previous.pt); False if the run stopped before
        writing any. Damaged ones are renamed out of the way, with a warning each."""
        checkpoint = self.ranks.from_main(self._newest)
        if checkpoint is None:
            return False
        assert checkpoint.resume is not None
        check_processes(self.run_dir, checkpoint.resume.progress.processes, self.ranks.world_size)
        self.load(checkpoint)
        if self.ranks.is_main:
            write_metrics(self.run_dir / "metrics.csv", self.progress.history)  # drop rows a kill left beyond it
        return True

    def _newest(self) -> Checkpoint | None:
        """The newest usable last.pt or previous.pt, read on the CPU (so that it can be sent to
        other ranks); None if there is none yet."""
        checkpoint, damaged = None, []
        for name in (LAST, PREVIOUS):
            path = self.run_dir / name
            if not path.exists():
                continue
            try:
                checkpoint = load_checkpoint(path)
                break
            except BudgetnetError as exc:
                damaged.append(path)
                then = "falling back to the previous checkpoint (previous.pt)" if name == LAST else "no older one is left"
                warn(f"{exc}; {then}")
        if checkpoint is None and not damaged:
            warn(f"{self.run_dir} has no checkpoint yet (the run stopped before its first); starting from the beginning")
            return None
        if checkpoint is None or checkpoint.resume is None:
            raise BudgetnetError(f"no usable checkpoint in {self.run_dir}; start a new run instead of --resume")
        for path in damaged:  # kept for inspection, out of the way of the next last.pt -> previous.pt
            os.replace(path, path.with_name(path.name + ".damaged"))
        return checkpoint

    def load(self, checkpoint: Checkpoint) -> None:
        """Put a last.pt's state into the live run."""
        r = checkpoint.resume
        assert r is not None
        self.model.load_state_dict(checkpoint.model)
        built = [(g["peak_lr"], g["horizon"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(r.optimizer)
        for group, (peak, horizon) in zip(self.optimizer.param_groups, built):
            # Checkpoints written before the schedule became a function of the step lack these.
            group.setdefault("peak_lr", peak)
            group.setdefault("horizon", horizon)
        if self.plateau is not None and r.plateau is not None:
            self.plateau.load_state_dict(r.plateau)
        self.scaler.load_state_dict(r.scaler)
        torch.set_rng_state(r.rng_cpu.cpu())
        if r.rng_cuda:
            torch.cuda.set_rng_state_all([s.cpu() for s in r.rng_cuda])
        if self.ema is not None and r.ema is not None:
            self.ema.load_state_dict(r.ema)
        if self.stopper is not None and r.early_stopping is not None:
            self.stopper.load_state_dict(r.early_stopping)
        if self.selection is not None and r.selection is not None:
            self.selection.load_state_dict(r.selection)
        if r.progress is not self.progress:
            vars(self.progress).update(copy.deepcopy(vars(r.progress)))

    # ---- never from non-finite weights ----------------------------------------------------
    def _check_weights(self) -> None:
        """A finite loss can still leave non-finite weights (an inf/NaN gradient); such weights
        must never replace a good checkpoint. One host sync per checkpoint."""
        modules = [self.model] if self.ema is None else [self.model, self.ema]
        tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
            raise BudgetnetError(
                f"the weights became non-finite by global step {self.progress.global_step}; {self.nan_advice()}"
            )

    def nan_advice(self) -> str:
        kept = (
            f"the last good checkpoint is kept in {self.run_dir}" if (self.run_dir / LAST).exists()
            else "no checkpoint had been written yet"
        )
        return f"{kept}; lower the learning rate (optim.lr) or use --on-nan skip"


def check_processes(run_dir: Path, trained: int, resuming: int) -> None:
    """One line naming both counts when a run trained by `trained` processes would resume with
    `resuming`."""
    if trained != resuming:
        raise BudgetnetError(f"{run_dir} was trained by {trained} process{'es' * (trained != 1)} and cannot resume "
                             f"with {resuming}; resume it with --nproc {trained}")


def recorded_processes(run_dir: Path) -> int | None:
    """The processes that trained the run in `run_dir`, from its newest readable last.pt or
    previous.pt; None without one."""
    for name in (LAST, PREVIOUS):
        try:
            resume = load_checkpoint(Path(run_dir) / name).resume
        except BudgetnetError:
            continue
        if resume is not None:
            return resume.progress.processes
    return None
