"""Checkpoints that survive kills and never run code from the file, in one typed layout.

File layout: one header line `BUDGETNET-CKPT v1 sha256=<hex> len=<n>\n`, then the `torch.save`
payload. The checksum catches truncation and bit rot before torch ever parses the payload, and
the payload is read with `weights_only=True`, so a crafted pickle is refused rather than run.
Writes are atomic (`budgetnet.files`): a kill at any moment leaves either the old file or the
new one, never half of one.

The payload is a `Checkpoint`: what every checkpoint holds (config, weights, classes and the
training split's statistics), what best.pt adds (the epoch and validation accuracy it was
chosen at) and what last.pt adds (`Resume`: everything a resumed run continues from). It
carries `FORMAT_VERSION`; a file of another version is refused with one line naming it.
Fields added to version 1 after its first files (`Progress.stopped`, the plan, the compute
count, the process count; classes and statistics in last.pt; the data selection's losses) have
defaults, so every version-1 file still loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import budgetnet
from budgetnet.errors import BudgetnetError
from budgetnet.files import atomic_write_bytes

_MAGIC = b"BUDGETNET-CKPT v1 "
FORMAT_VERSION = 1


@dataclass
class Progress:
    """Where a run stands: everything the loop changes that a resume must get back."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches done in the current (incomplete) epoch
    global_step: int = 0
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, seen
    best_val: float | None = None
    best_epoch: int | None = None
    nan_skips: int = 0
    train_seconds: float = 0.0
    stopped: bool = False  # early stopping or the time limit ended the run: a resume must not go on
    planned_steps: int = 0  # optimizer steps the run will take (0: not planned yet)
    processes: int = 1  # data-parallel processes the run trains with; a resume needs as many
    images_seen: int | None = 0  # training images stepped on (None: a file from before they were counted)
    train_flop: float | None = 0.0  # 3 x forward FLOPs at the size trained, summed over images (None: as above)
    calibration: dict[str, float] = field(default_factory=dict)  # what planning a time budget measured
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics row per finished epoch


@dataclass
class Resume:
    """What only last.pt (and previous.pt) holds: the state a resumed run continues from."""

    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng_cpu: torch.Tensor
    rng_cuda: list[torch.Tensor]
    progress: Progress
    plateau: dict[str, Any] | None = None
    early_stopping: dict[str, Any] | None = None
    ema: dict[str, torch.Tensor] | None = None  # the AveragedModel's state, when the run keeps an EMA
    selection: dict[str, Any] | None = None  # the data selection's losses, when the run selects


@dataclass
class Checkpoint:
    """best.pt, last.pt and previous.pt. `model` is the weights trained (last.pt) or validated
    (best.pt: the EMA's when the run keeps one); `config` is the run config as dumped (the
    config layer validates it: it sits above this one)."""

    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    classes: list[str] | None
    mean: list[float] | None
    std: list[float] | None
    epoch: int | None = None  # best.pt: the epoch it was chosen at
    val_acc: float | None = None  # best.pt: its validation accuracy (None without a validation split)
    resume: Resume | None = None
    budgetnet_version: str = budgetnet.__version__

    def validated_weights(self) -> dict[str, torch.Tensor]:
        """The weights the run validated: the EMA's where last.pt keeps one, else `model`."""
        ema = self.resume.ema if self.resume is not None else None
        if ema is None:
            return self.model
        return {key.removeprefix("module."): value for key, value in ema.items() if key.startswith("module.")}

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "budgetnet_version": self.budgetnet_version, "config": self.config,
            "model": self.model, "classes": self.classes, "mean": self.mean, "std": self.std,
        }
        if self.resume is None:
            return {**payload, "epoch": self.epoch, "val_acc": self.val_acc}
        r = self.resume
        progress = dataclasses.asdict(r.progress)
        history = progress.pop("history")
        payload.update(optimizer=r.optimizer, scaler=r.scaler, rng_cpu=r.rng_cpu, rng_cuda=r.rng_cuda,
                       progress=progress, history=history, plateau=r.plateau, early_stopping=r.early_stopping)
        if r.ema is not None:
            payload["ema"] = r.ema
        if r.selection is not None:
            payload["selection"] = r.selection
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path) -> Checkpoint:
        """The checkpoint in a version-1 payload; BudgetnetError naming a missing part."""

        def need(key: str) -> Any:
            if key not in payload:
                raise BudgetnetError(f"{path} lacks {key!r}, which every version-{FORMAT_VERSION} checkpoint holds; "
                                     "it was not written by budgetnet train")
            return payload[key]

        resume = None
        if "progress" in payload:  # last.pt
            known = {f.name for f in dataclasses.fields(Progress)} - {"history"}
            recorded = {k: v for k, v in payload["progress"].items() if k in known}
            progress = Progress(**{"images_seen": None, "train_flop": None, **recorded},
                                history=list(need("history")))
            resume = Resume(
                optimizer=need("optimizer"), scaler=need("scaler"), rng_cpu=need("rng_cpu"),
                rng_cuda=list(need("rng_cuda")), progress=progress, plateau=payload.get("plateau"),
                early_stopping=payload.get("early_stopping"), ema=payload.get("ema"),
                selection=payload.get("selection"),
            )
        return cls(
            config=need("config"), model=need("model"), classes=payload.get("classes"),
            mean=payload.get("mean"), std=payload.get("std"), epoch=payload.get("epoch"),
            val_acc=payload.get("val_acc"), resume=resume,
            budgetnet_version=str(payload.get("budgetnet_version", "unknown")),
        )


def save_checkpoint(path: Path, checkpoint: Checkpoint, backup: Path | None = None) -> None:
    """Write `checkpoint` atomically with a checksum; `backup`: where the replaced checkpoint
    goes (see `atomic_write_bytes`)."""
    buf = io.BytesIO()
    torch.save(checkpoint.to_payload(), buf)
    payload = buf.getvalue()
    header = _MAGIC + f"sha256={hashlib.sha256(payload).hexdigest()} len={len(payload)}\n".encode()
    atomic_write_bytes(Path(path), header + payload, backup=backup)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; BudgetnetError if it is damaged, foreign
    or of another format version."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BudgetnetError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    end = raw.find(b"\n", 0, 200)
    if not raw.startswith(_MAGIC) or end < 0:
        raise BudgetnetError(f"{path} is not a budgetnet checkpoint")
    try:
        fields = dict(item.split("=", 1) for item in raw[len(_MAGIC):end].decode().split())
        digest, length = fields["sha256"], int(fields["len"])
    except (ValueError, KeyError, UnicodeDecodeError):
        raise BudgetnetError(f"{path} has a damaged checkpoint header") from None
    payload = raw[end + 1:]
    if len(payload) != length:
        raise BudgetnetError(f"{path} is truncated ({len(payload)} of {length} bytes)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise BudgetnetError(f"{path} is corrupted (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means we refuse the file
        raise BudgetnetError(f"{path} was refused by the safe loader: {str(exc).splitlines()[0]}") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        named = "no format version" if version is None else f"format version {version!r}"
        raise BudgetnetError(f"{path} has an unsupported checkpoint format ({named}; budgetnet "
                             f"{budgetnet.__version__} reads version {FORMAT_VERSION})")
    return Checkpoint.from_payload(state, path)
