"""Accuracy, loss, per-class accuracy and the confusion matrix of a trained model.

`evaluate_loader` is what training calls on the validation split every epoch;
`evaluate_checkpoint` is what `budgetnet evaluate` calls on a run directory, a best.pt or an
exported .onnx (that one is run by `budgetnet.deploy`).
"""

from __future__ import annotations

import io
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from budgetnet.errors import BudgetnetError

if TYPE_CHECKING:
    from budgetnet.data import DataConfig


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "images": int(self.confusion.sum()),
            "per_class_accuracy": dict(zip(self.classes, self.per_class_accuracy)),
            "confusion_matrix": self.confusion.tolist(),
            "classes": self.classes,
        }


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling the border by reflection."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., 1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w]


def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Logits, optionally averaged over flips and one-pixel translations (airbench-style TTA)."""
    if not tta:
        return model(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(-1)))

    return 0.5 * mirrored(x) + 0.25 * mirrored(_shift(x, -1, -1)) + 0.25 * mirrored(_shift(x, 1, 1))


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
        counts = torch.bincount(y * n_cls + logits.argmax(1), minlength=n_cls * n_cls).view(n_cls, n_cls)
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


def _out_features(model: nn.Module) -> int:
    spec = getattr(model, "spec", None) or getattr(getattr(model, "module", None), "spec", None)
    if spec is None:
        raise BudgetnetError("cannot tell the number of classes of this model")
    return spec.classes


DEVICES = ("auto", "cpu", "cuda", "mps")


def _names(classes: list[str], most: int = 10) -> str:
    shown = ", ".join(classes[:most]) + (f", ... ({len(classes)} in all)" if len(classes) > most else "")
    return f"[{shown}]"


def find_checkpoint(path: Path) -> Path:
    """A run directory means its best.pt; a file (a .pt, or an exported .onnx) is taken as is."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise BudgetnetError(f"no checkpoint at {path}; pass a run directory, a .pt file written by budgetnet train "
                             "or a .onnx file written by budgetnet export")
    return path


def load_split(data_cfg: DataConfig, classes: list[str], split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 NCHW) and labels of `split` under a run's data settings, checked to carry
    the model's `classes`. The validation split is re-carved from the run's own settings (size,
    seed, subset), so it is exactly the split the run validated on."""
    from budgetnet.data import prepare_data

    if data_cfg.path is None:
        raise BudgetnetError("no data path: pass --data PATH")
    if split == "val" and data_cfg.val_size == 0:
        raise BudgetnetError("this run trained on all images (val-size 0), so it has no validation split; use --split test")
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


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    data_path: str | None = None,
    split: str = "val",
    tta: bool = False,
    batch_size: int = 1000,
    device: str = "auto",
) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate a saved model (or an exported .onnx) on the validation split it was trained
    with, or on a test split (see `load_split`)."""
    from budgetnet.config import RunConfig
    from budgetnet.data import DeviceLoader
    from budgetnet.models import build_model
    from budgetnet.train.checkpoint import load_checkpoint
    from budgetnet.train.engine import autocast_dtype, resolve_device, use_channels_last

    ckpt_path = find_checkpoint(checkpoint)
    if ckpt_path.suffix.lower() == ".onnx":
        from budgetnet.deploy import evaluate_onnx

        return evaluate_onnx(ckpt_path, data_path=data_path, split=split, tta=tta, batch_size=batch_size)
    state = load_checkpoint(ckpt_path)
    cfg = RunConfig.model_validate(state["config"])
    data_cfg = cfg.data.model_copy(update={"path": data_path} if data_path else {})
    if device not in DEVICES:
        raise BudgetnetError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    dev = resolve_device(device)
    classes = list(state["classes"])
    x, y = load_split(data_cfg, classes, split, dev)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    channels_last = use_channels_last(cfg.train.channels_last, dev)
    model = model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    amp = autocast_dtype(cfg.train.precision, dev)
    loader = DeviceLoader(
        x, y, batch_size, shuffle=False, drop_last=False, seed=0, augment=None,
        mean=tuple(state["mean"]), std=tuple(state["std"]),  # the training split's statistics
        dtype=amp if amp is not None and dev.type == "cpu" else torch.float32, channels_last=channels_last,
    )
    result = evaluate_loader(model, loader, tta=tta, amp=amp, classes=classes)
    info = {"checkpoint": str(ckpt_path), "split": split, "tta": tta, "data": data_cfg.path, "epoch": state.get("epoch")}
    return result, info


def plot_confusion(path: Path, result: EvalResult, title: str) -> None:
    """The confusion matrix as a PNG, counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from budgetnet.train.checkpoint import atomic_write_bytes

    cm = result.confusion.numpy()
    n = len(result.classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), result.classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
