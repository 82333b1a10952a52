"""Ensembles of trained runs: the members' softmax, averaged (optionally weighted by each
member's validation accuracy).

`budgetnet ensemble RUN... --out ensemble.json` writes a *manifest*, which `budgetnet evaluate`
and `load_ensemble` read. Manifest format (JSON, version 1):

    {
      "format": "budgetnet-ensemble", "version": 1,
      "classes": ["airplane", ...], "input_size": 32, "in_channels": 3,
      "weighted": false,
      "members": [
        {"checkpoint": "../runs/a/best.pt",  # relative to the manifest's folder
         "sha256": "...",                    # of the checkpoint file: a changed member is refused
         "weight": 0.5,                      # the weights sum to 1
         "params": 105338, "flops": 15012352, "val_acc": 0.8078},
        ...
      ],
      "params": 210676, "flops": 30024704,   # summed over the members: what the ensemble costs
      "budget": 5000000, "within_budget": true,  # the strictest member budget
      "evaluation": {...}                    # what `budgetnet ensemble` measured, or null
    }

`load_ensemble(path)` returns an `Ensemble` module: it takes float NCHW images scaled to [0, 1]
(uint8 / 255; each member applies its own training statistics) and returns the log of the
weighted mean of the members' softmax, so its softmax is the ensemble's probabilities and its
argmax the ensemble's prediction.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from budgetnet.errors import BudgetnetError
from budgetnet.evaluate import (
    EvalResult,
    TrainedModel,
    eval_data_config,
    load_split,
    load_trained,
    predict_trained,
)
from budgetnet.files import write_json
from budgetnet.models import summarize
from budgetnet.runtime import resolve_device

MANIFEST_FORMAT, MANIFEST_VERSION = "budgetnet-ensemble", 1
# Data settings that decide which images form the validation split.
_SPLIT_FIELDS = ("val_size", "split_seed", "subset", "fold", "resize", "input_size")


class Member(nn.Module):
    """A trained network behind its own input normalization: takes images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class Ensemble(nn.Module):
    """Members voting with their weighted mean softmax; the output is its log (see the module
    docstring). `classes` and `input_size` say what it takes and predicts."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], classes: list[str], input_size: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("log_weights", torch.tensor(weights, dtype=torch.float32).log())
        self.classes, self.input_size = list(classes), input_size

    @staticmethod
    def combine(log_probs: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """log sum_m w_m p_m from members' log-probabilities (members, N, classes), without
        leaving log space (a confident member's tiny probabilities would underflow there)."""
        return torch.logsumexp(log_probs + log_weights.to(log_probs).view(-1, 1, 1), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(m(x).float(), 1) for m in self.members])
        return self.combine(log_probs, self.log_weights)


def open_members(runs: Sequence[Path | str]) -> list[TrainedModel]:
    """The trained models of `runs` (run directories or checkpoints), checked to be able to
    vote together: same classes in the same order, same input shape."""
    if len(runs) < 2:
        raise BudgetnetError("an ensemble needs at least two runs; pass two or more run directories")
    members = [load_trained(Path(r)) for r in runs]
    first = members[0]
    seen: dict[Path, Path | str] = {}
    for run, m in zip(runs, members):
        key = m.checkpoint.resolve()
        if key in seen:
            raise BudgetnetError(f"{run} and {seen[key]} are the same checkpoint; give each member once")
        seen[key] = run
        if m.classes != first.classes:
            raise BudgetnetError(
                f"{run} was trained on the classes {m.classes} but {runs[0]} on {first.classes}; "
                "ensemble runs trained on the same classes, in the same order"
            )
        if _input_shape(m) != _input_shape(first):
            raise BudgetnetError(
                f"{run} takes {_input_shape(m)} images but {runs[0]} takes {_input_shape(first)}; "
                "ensemble runs with the same input size"
            )
    return members


def _input_shape(m: TrainedModel) -> str:
    spec = m.config.model
    return f"{spec.in_channels}x{spec.input_size}x{spec.input_size}"


def member_weights(members: Sequence[TrainedModel], weighted: bool) -> list[float]:
    """Equal weights, or weights proportional to each member's validation accuracy (from its
    own training, so a test split never shapes them); they sum to 1."""
    if not weighted:
        return [1 / len(members)] * len(members)
    for m in members:
        if m.val_acc is None:
            raise BudgetnetError(
                f"{m.checkpoint} has no validation accuracy (trained without a validation split); drop --weighted"
            )
    total = sum(m.val_acc for m in members)
    if total <= 0:
        raise BudgetnetError("every member has a validation accuracy of 0, so there is nothing to weight by; drop --weighted")
    return [m.val_acc / total for m in members]


def build_ensemble(members: Sequence[TrainedModel], weights: Sequence[float]) -> Ensemble:
    """The members as one module (see the module docstring for what it takes and returns)."""
    return Ensemble(
        [Member(m.model, m.mean, m.std) for m in members], weights, members[0].classes,
        members[0].config.model.input_size,
    ).eval()


def _member_cost(m: TrainedModel) -> dict[str, int]:
    s = summarize(m.config.model, m.config.budget)
    return {"params": s.params, "flops": s.flops}


def cost(members: Sequence[TrainedModel]) -> dict[str, Any]:
    """What the ensemble costs against the budget: every member's parameters and FLOPs count,
    against the strictest member's budget."""
    each = [_member_cost(m) for m in members]
    params = sum(c["params"] for c in each)
    budget = min(m.config.budget for m in members)
    return {"params": params, "flops": sum(c["flops"] for c in each), "budget": budget, "within_budget": params <= budget}


@dataclass
class EnsembleEvaluation:
    """The ensemble's result on a split, each member's, and what was evaluated."""

    result: EvalResult
    members: list[dict[str, Any]]
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.result.accuracy, "loss": self.result.loss, "members": self.members, **self.info}


def evaluate_members(
    members: Sequence[TrainedModel],
    weights: Sequence[float],
    *,
    names: Sequence[str] | None = None,
    data_path: str | None = None,
    split: str = "val",
    tta: bool = False,
    batch_size: int = 1000,
    device: str = "auto",
) -> EnsembleEvaluation:
    """Every member's accuracy and the ensemble's on `split` (the members' shared validation
    split, or a test split); `names` label the members (default: their checkpoints)."""
    names = list(names) if names is not None else [str(m.checkpoint) for m in members]
    first = members[0]
    if split == "val":
        for name, m in zip(names, members):
            differ = [f for f in _SPLIT_FIELDS if getattr(m.config.data, f) != getattr(first.config.data, f)]
            if differ:
                raise BudgetnetError(
                    f"{name} validated on other images than {names[0]} (their data.{', data.'.join(differ)} "
                    "differ); compare them on --split test, or ensemble runs trained with the same split settings"
                )
    data_cfg = eval_data_config(first.config, data_path, split)
    x, y = load_split(data_cfg, split, first.classes, resolve_device(device))
    log_probs = torch.stack([predict_trained(m, x, y, tta=tta, batch_size=batch_size) for m in members])
    labels = y.cpu()
    rows = []
    for name, m, weight, lp in zip(names, members, weights, log_probs):
        r = EvalResult.from_log_probs(lp, labels, first.classes)
        rows.append({"run": name, "checkpoint": str(m.checkpoint), "weight": weight, "accuracy": r.accuracy,
                     "loss": r.loss, **_member_cost(m)})
    combined = Ensemble.combine(log_probs, torch.tensor(weights).log())
    info = {"split": split, "tta": tta, "data": data_cfg.path, "images": len(labels), **cost(members)}
    return EnsembleEvaluation(EvalResult.from_log_probs(combined, labels, first.classes), rows, info)


def write_manifest(
    path: Path, members: Sequence[TrainedModel], weights: Sequence[float], weighted: bool,
    evaluation: EnsembleEvaluation | None = None,
) -> None:
    """The manifest (format in the module docstring), atomically."""
    path = _manifest_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"checkpoint": os.path.relpath(m.checkpoint.resolve(), path.parent.resolve()), "sha256": _sha256(m.checkpoint),
         "weight": weight, **_member_cost(m), "val_acc": m.val_acc}
        for m, weight in zip(members, weights)
    ]
    first = members[0]
    write_json(path, {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "classes": first.classes,
        "input_size": first.config.model.input_size, "in_channels": first.config.model.in_channels,
        "weighted": weighted, "members": rows, **cost(members),
        "evaluation": evaluation.to_dict() if evaluation is not None else None,
    })


def _manifest_path(path: Path | str) -> Path:
    path = Path(path)
    if path.suffix != ".json":  # `budgetnet evaluate` tells a manifest from a run by it
        raise BudgetnetError(f"the ensemble manifest {path} must end in .json; choose another --out")
    return path


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_manifest(path: Path | str) -> bool:
    """A .json file, which `budgetnet evaluate` then reads as an ensemble manifest."""
    return Path(path).suffix == ".json" and Path(path).is_file()


def read_manifest(path: Path | str) -> tuple[list[TrainedModel], list[float], dict[str, Any]]:
    """The members (checked unchanged since the manifest was written), their weights and the
    manifest itself."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BudgetnetError(f"cannot read the ensemble manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BudgetnetError(f"{path} is not a budgetnet ensemble manifest (write one with budgetnet ensemble --out)")
    if manifest.get("version") != MANIFEST_VERSION:
        raise BudgetnetError(f"{path} is an ensemble manifest of version {manifest.get('version')}; "
                             f"this budgetnet reads version {MANIFEST_VERSION}")
    try:
        rows = [(path.parent / row["checkpoint"], row["sha256"], float(row["weight"])) for row in manifest["members"]]
    except (KeyError, TypeError, ValueError):
        raise BudgetnetError(f"{path}: every member needs checkpoint, sha256 and weight") from None
    for checkpoint, digest, _ in rows:
        if not checkpoint.is_file():
            raise BudgetnetError(f"{path}: member {checkpoint} is missing; keep the runs beside the manifest")
        if _sha256(checkpoint) != digest:
            raise BudgetnetError(f"{path}: member {checkpoint} changed since the ensemble was made; "
                                 "run budgetnet ensemble again")
    weights = [w for _, _, w in rows]
    if not all(w >= 0 for w in weights) or not math.isclose(sum(weights), 1.0, rel_tol=1e-6):
        raise BudgetnetError(f"{path}: member weights must be at least 0 and sum to 1")
    return open_members([c for c, _, _ in rows]), weights, manifest


def load_ensemble(path: Path | str) -> Ensemble:
    """The ensemble of a manifest as one module, on the CPU in eval mode."""
    members, weights, _ = read_manifest(path)
    return build_ensemble(members, weights)


def evaluate_manifest(path: Path | str, **options: Any) -> EnsembleEvaluation:
    """`evaluate_members` on the ensemble of a manifest; `options` are evaluate_members' (data_path,
    split, tta, batch_size, device)."""
    members, weights, manifest = read_manifest(path)
    names = [row["checkpoint"] for row in manifest["members"]]
    evaluation = evaluate_members(members, weights, names=names, **options)
    evaluation.info.update(weighted=bool(manifest.get("weighted")), manifest=str(path))
    return evaluation


def run_ensemble(
    runs: Sequence[Path | str],
    *,
    data_path: str | None = None,
    split: str = "val",
    tta: bool = False,
    weighted: bool = False,
    out: Path | None = None,
    batch_size: int = 1000,
    device: str = "auto",
) -> EnsembleEvaluation:
    """Evaluate the ensemble of `runs` (and each member) and, with `out`, write its manifest."""
    if out is not None:
        out = _manifest_path(out)
    members = open_members(runs)
    weights = member_weights(members, weighted)
    evaluation = evaluate_members(members, weights, names=[str(r) for r in runs], data_path=data_path, split=split,
                                  tta=tta, batch_size=batch_size, device=device)
    evaluation.info["weighted"] = weighted
    if out is not None:
        write_manifest(out, members, weights, weighted, evaluation)
        evaluation.info["manifest"] = str(out)
    return evaluation
