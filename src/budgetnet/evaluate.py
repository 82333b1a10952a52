"""Accuracy, loss, per-class accuracy and the confusion matrix of a trained model.

`evaluate_loader` is what training calls on the validation split every epoch;
`evaluate_checkpoint` is what `budgetnet evaluate` calls on a run directory, a best.pt or a last.pt,
through `predict_checkpoint`, which keeps every image's log-probabilities (for reports and
ensembles). An exported .onnx is evaluated by `budgetnet.deploy`, which builds on this module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.config import RunConfig, build_config
from budgetnet.data import DataConfig, DeviceLoader, Split, prepare_data
from budgetnet.errors import BudgetnetError
from budgetnet.files import atomic_write_bytes
from budgetnet.models import build_model
from budgetnet.plots import figure_png, pyplot
from budgetnet.runtime import autocast_dtype, resolve_device, use_channels_last
from budgetnet.train.checkpoint import Checkpoint, load_checkpoint


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # [true, predicted] counts
    classes: list[str] = field(default_factory=list)

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> EvalResult:
        """Loss, accuracy and confusion of per-image log-probabilities (N, classes)."""
        if len(labels) == 0:
            raise BudgetnetError("nothing to evaluate: the split is empty")
        confusion = _confusion(labels, log_probs.argmax(1), len(classes)).cpu()
        return cls(
            loss=float(F.nll_loss(log_probs, labels)),
            accuracy=float(confusion.diag().sum()) / len(labels),
            confusion=confusion,
            classes=list(classes),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "images": int(self.confusion.sum()),
            "per_class_accuracy": dict(zip(self.classes, self.per_class_accuracy)),
            "confusion_matrix": self.confusion.tolist(),
            "classes": self.classes,
        }


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`x` (N,C,H,W) translated by (dy, dx) pixels, the border filled by reflection: a TTA view."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., pad - dy: pad - dy + h, pad - dx: pad - dx + w]


def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits, optionally averaged over flips and one-pixel translations (airbench-style TTA)."""
    if not tta:
        return model(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(-1)))

    return 0.5 * mirrored(x) + 0.25 * mirrored(shift(x, -1, -1)) + 0.25 * mirrored(shift(x, 1, 1))


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int | None = None,
    tta: bool = False,
    amp: torch.dtype | None = None,
    classes: list[str] | None = None,
) -> EvalResult:
    """Evaluate on (x, y) batches; one host sync at the end."""
    was_training = model.training
    model.eval()
    n_cls = num_classes or len(classes or []) or _out_features(model)
    loss_sum = None
    confusion = None
    for x, y in batches:
        device = x.device
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
        with ctx:
            logits = predict_logits(model, x, tta).float()
        batch_loss = F.cross_entropy(logits, y, reduction="sum")
        counts = _confusion(y, logits.argmax(1), n_cls)
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        confusion = counts if confusion is None else confusion + counts
    model.train(was_training)
    if confusion is None:
        raise BudgetnetError("nothing to evaluate: the split is empty")
    confusion = confusion.cpu()
    total = int(confusion.sum())
    return EvalResult(
        loss=float(loss_sum) / total,
        accuracy=float(confusion.diag().sum()) / total,
        confusion=confusion,
        classes=list(classes or [str(i) for i in range(n_cls)]),
    )


def _confusion(labels: torch.Tensor, predicted: torch.Tensor, n_cls: int) -> torch.Tensor:
    """Counts indexed [true, predicted]."""
    return torch.bincount(labels * n_cls + predicted, minlength=n_cls * n_cls).view(n_cls, n_cls)


@torch.no_grad()
def predict_log_probs(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, tta: bool = False,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Log-softmax of every image of `batches`, (N, classes) float32 on the batches' device."""
    was_training = model.training
    model.eval()
    parts = []
    for x, _ in batches:
        with torch.autocast(x.device.type, dtype=amp) if amp is not None else nullcontext():
            logits = predict_logits(model, x, tta)
        parts.append(F.log_softmax(logits.float(), 1))
    model.train(was_training)
    if not parts:
        raise BudgetnetError("nothing to evaluate: the split is empty")
    return torch.cat(parts)


def _out_features(model: nn.Module) -> int:
    spec = getattr(model, "spec", None) or getattr(getattr(model, "module", None), "spec", None)
    if spec is None:
        raise BudgetnetError("cannot tell the number of classes of this model")
    return spec.classes


def _names(classes: list[str], most: int = 10) -> str:
    shown = ", ".join(classes[:most]) + (f", ... ({len(classes)} in all)" if len(classes) > most else "")
    return f"[{shown}]"


def find_checkpoint(path: Path) -> Path:
    """A run directory means its best.pt; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise BudgetnetError(f"no checkpoint at {path}; pass a run directory or a .pt file written by budgetnet train")
    return path


@dataclass
class TrainedModel:
    """A trained network read from a checkpoint (on the CPU, eval mode) and what it was trained
    with: the run config, its classes, its training split's statistics and validation accuracy."""

    checkpoint: Path
    config: RunConfig
    model: nn.Module
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_acc: float | None
    epoch: int | None


def load_trained(checkpoint: Path) -> TrainedModel:
    """The model of a run directory (its best.pt) or of a checkpoint file (best.pt, or last.pt:
    the weights as the run last validated them, its EMA's where it keeps one)."""
    path = find_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    cfg = build_config(ckpt.config, source=f"{path} (its run config)")
    model = build_model(cfg.model)
    model.load_state_dict(ckpt.validated_weights())
    classes, mean, std = _classes_and_stats(ckpt, path)
    return TrainedModel(path, cfg, model.eval(), classes, tuple(mean), tuple(std), ckpt.val_acc, ckpt.epoch)


def _classes_and_stats(ckpt: Checkpoint, path: Path) -> tuple[list[str], list[float], list[float]]:
    """Class names and the training split's normalization. A last.pt from before it recorded
    them takes them from the run's summary.json or best.pt beside it: one run, one training split."""
    if ckpt.classes is not None and ckpt.mean is not None and ckpt.std is not None:
        return list(ckpt.classes), list(ckpt.mean), list(ckpt.std)
    keys = ("classes", "mean", "std")
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((path.parent / "summary.json").read_text())
        if all(recorded.get(k) for k in keys):
            return list(recorded["classes"]), list(recorded["mean"]), list(recorded["std"])
    best = path.parent / "best.pt"
    if best.is_file() and best != path:
        return _classes_and_stats(load_checkpoint(best), best)
    raise BudgetnetError(f"{path} does not record the class names and input normalization, and no summary.json "
                         "or best.pt beside it does; use the run's best.pt, or a run directory")


def eval_data_config(cfg: RunConfig, data_path: str | None, split: str) -> DataConfig:
    """The run's data settings (so `val` is exactly the split it validated on), at `data_path`
    when given."""
    data_cfg = cfg.data.model_copy(update={"path": data_path} if data_path else {})
    if data_cfg.path is None:
        raise BudgetnetError("no data path: pass --data PATH")
    if split == "val" and data_cfg.val_size == 0:
        raise BudgetnetError("this run trained on all images (val-size 0), so it has no validation split; use --split test")
    return data_cfg


def load_split(data_cfg: DataConfig, split: str, classes: list[str], device: torch.device) -> Split:
    """Images and labels of `split`, checked to mean what the model's outputs mean."""
    data = prepare_data(data_cfg, device, splits=(split,))
    # Labels are indices into the data's classes: they must mean what the model's outputs mean.
    # Unnamed classes ("0".."k-1", an .npz without names) are taken as indices as they are.
    unnamed = data.classes == [str(i) for i in range(len(data.classes))] and len(data.classes) <= len(classes)
    if data.classes != classes and not unnamed:
        raise BudgetnetError(
            f"{data_cfg.path} has the classes {_names(data.classes)} but the model was trained on "
            f"{_names(classes)}; evaluate on data with the same classes, in the same order"
        )
    return getattr(data, split)


@dataclass
class Predictions:
    """Every image of a split: log-probabilities (N, classes, CPU), labels (CPU), the uint8
    NCHW images (on the evaluation device) and what was evaluated (`info`)."""

    log_probs: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor
    classes: list[str]
    info: dict[str, Any]

    @property
    def result(self) -> EvalResult:
        return EvalResult.from_log_probs(self.log_probs, self.labels, self.classes)


def predict_checkpoint(
    checkpoint: Path,
    *,
    data_path: str | None = None,
    split: str = "val",
    tta: bool = False,
    batch_size: int = 1000,
    device: str = "auto",
) -> Predictions:
    """A saved model's predictions on the validation split it was trained with, or on a test
    split. The validation split is re-carved from the run's own data settings (size, seed,
    subset, fold), so it is exactly the split the run validated on."""
    trained = load_trained(checkpoint)
    data_cfg = eval_data_config(trained.config, data_path, split)
    x, y = load_split(data_cfg, split, trained.classes, resolve_device(device))
    info = {"checkpoint": str(trained.checkpoint), "split": split, "tta": tta, "data": data_cfg.path,
            "epoch": trained.epoch}
    return Predictions(predict_trained(trained, x, y, tta=tta, batch_size=batch_size), y.cpu(), x, trained.classes, info)


def predict_trained(
    trained: TrainedModel, x: torch.Tensor, y: torch.Tensor, *, tta: bool = False, batch_size: int = 1000
) -> torch.Tensor:
    """Log-probabilities (N, classes, CPU) of `trained` on uint8 images `x`, on their device,
    normalized with the model's own training statistics and at its training precision."""
    dev = x.device
    channels_last = use_channels_last(trained.config.train.channels_last, dev)
    model = trained.model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    amp = autocast_dtype(trained.config.train.precision, dev)
    loader = DeviceLoader(
        x, y, batch_size, shuffle=False, drop_last=False, seed=0, augment=None,
        mean=trained.mean, std=trained.std,  # the training split's statistics
        dtype=amp if amp is not None and dev.type == "cpu" else torch.float32, channels_last=channels_last,
    )
    return predict_log_probs(model, loader, tta=tta, amp=amp).cpu()


def evaluate_checkpoint(checkpoint: Path, **options: Any) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate a saved model on the validation split it was trained with, or on a test split;
    `options` are predict_checkpoint's (data_path, split, tta, batch_size, device). An exported
    .onnx is `budgetnet.deploy.evaluate_onnx`'s."""
    predictions = predict_checkpoint(checkpoint, **options)
    return predictions.result, predictions.info


def confusion_png(result: EvalResult, title: str) -> bytes:
    """The confusion matrix as PNG bytes, counts in each cell."""
    cm = result.confusion.numpy()
    n = len(result.classes)
    fig, ax = pyplot().subplots(figsize=(1.0 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), result.classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    return figure_png(fig)


def plot_confusion(path: Path, result: EvalResult, title: str) -> None:
    """The confusion matrix as a PNG file."""
    atomic_write_bytes(Path(path), confusion_png(result, title))
