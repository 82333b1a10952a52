"""One self-contained HTML report of one or more runs.

Everything is inlined (figures and images as base64 PNG, CSS in the page; no script, no
network), so the file can be mailed or archived alone. Per run: the config and model summary
(parameters, FLOPs, per-layer table, budget use), training curves against epochs, training
time, wall-clock time and training PFLOP (when the run recorded `train_pflop`), and, from the
best checkpoint on the run's own validation split: the confusion matrix, per-class accuracy,
calibration (expected calibration error and a reliability diagram) and the most confidently
wrong images. Several runs add a comparison table and overlaid curves.

The validation parts need the dataset: `data_path`, else the path in the run's config. When
neither can be read (or the run kept no validation split) the report says so in their place.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import budgetnet
from budgetnet.config import RunConfig, build_config, dump_config, read_yaml_mapping
from budgetnet.errors import BudgetnetError
from budgetnet.evaluate import EvalResult, Predictions, confusion_png, predict_checkpoint
from budgetnet.files import atomic_write_bytes
from budgetnet.models import summarize
from budgetnet.models.budget import ModelSummary
from budgetnet.plots import figure_png, pyplot
from budgetnet.train.callbacks import read_metrics
from budgetnet.train.engine import BEST

CALIBRATION_BINS = 15


@dataclass
class Calibration:
    """Confidence (top probability) against accuracy in equal-width confidence bins. `ece`:
    the expected calibration error, sum over bins of (bin share) x |accuracy - confidence|."""

    ece: float
    mean_confidence: float
    accuracy: float
    counts: list[int]
    confidence: list[float]  # mean per bin (NaN where empty)
    bin_accuracy: list[float]


def calibration(log_probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> Calibration:
    """Calibration of predictions given as log-probabilities (N, classes)."""
    confidence, predicted = log_probs.exp().max(1)
    correct = (predicted == labels).double()
    confidence = confidence.double()
    index = (confidence * bins).long().clamp(max=bins - 1)  # a confidence of 1.0 goes in the top bin
    counts = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, confidence, minlength=bins)
    correct_sum = torch.bincount(index, correct, minlength=bins)
    n = max(len(labels), 1)
    ece = float((conf_sum - correct_sum).abs().sum() / n)
    per = counts.clamp(min=1).double()
    empty = counts == 0
    return Calibration(
        ece=ece, mean_confidence=float(confidence.mean()), accuracy=float(correct.mean()), counts=counts.tolist(),
        confidence=(conf_sum / per).masked_fill(empty, math.nan).tolist(),
        bin_accuracy=(correct_sum / per).masked_fill(empty, math.nan).tolist(),
    )


def confidently_wrong(predictions: Predictions, most: int) -> list[tuple[int, int, int, float]]:
    """(image index, true class, predicted class, confidence) of the `most` wrong predictions
    made with the highest confidence, most confident first."""
    confidence, predicted = predictions.log_probs.exp().max(1)
    wrong = torch.nonzero(predicted != predictions.labels).flatten()
    order = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)][:most]
    return [(int(i), int(predictions.labels[i]), int(predicted[i]), float(confidence[i])) for i in order]


@dataclass
class RunRecord:
    """What the report shows of one run."""

    name: str
    path: Path
    config: RunConfig
    model: ModelSummary
    summary: dict[str, Any] | None
    history: list[dict[str, float]]
    predictions: Predictions | None = None
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)  # why parts are missing

    @property
    def pflop_axis(self) -> list[float] | None:
        """Cumulative training PFLOP at each epoch's end: recorded per epoch, or the run's total
        shared out by the optimizer steps each epoch took (steps cost the same FLOPs)."""
        column = [r.get("train_pflop", math.nan) for r in self.history]
        if self.history and not any(math.isnan(v) for v in column):
            return column
        s = self.summary or {}
        try:
            total, steps = float(s["train_pflop"]), int(s["steps_run"])
            per_epoch = sum(s["data"]["counts"]["train"].values()) // self.config.train.batch_size
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if steps <= 0 or per_epoch <= 0:
            return None
        return [total * min(int(r["epoch"]) * per_epoch, steps) / steps for r in self.history]

    @property
    def wall_axis(self) -> list[float]:
        """Wall-clock seconds at each epoch's end; a resumed run's clock restarts, so each
        restart adds on to the time before it (the time between a kill and its resume is left out)."""
        out, offset, previous = [], 0.0, 0.0
        for r in self.history:
            if r["seconds"] < previous:
                offset += previous
            previous = r["seconds"]
            out.append(offset + r["seconds"])
        return out


def load_run(path: Path | str) -> RunRecord:
    """A run directory's config, model summary, summary.json (absent while it trains) and
    metrics.csv."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise BudgetnetError(f"{path} is not a budgetnet run directory (no config.yaml); pass the folder budgetnet train wrote")
    cfg = build_config(read_yaml_mapping(path / "config.yaml"), source=str(path / "config.yaml"))
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BudgetnetError(f"cannot read {path / 'summary.json'}: {exc}; let the run finish or resume it") from None
    history = read_metrics(path / "metrics.csv") if (path / "metrics.csv").is_file() else []
    return RunRecord(path.resolve().name, path, cfg, summarize(cfg.model, cfg.budget), summary, history)


def add_predictions(
    record: RunRecord, *, data_path: str | None = None, tta: bool | None = None, batch_size: int = 1000,
    device: str = "auto",
) -> None:
    """The best checkpoint's predictions on the run's validation split (with the run's own TTA
    setting unless `tta` says otherwise), and their calibration. An explicit `data_path` that
    fails is an error; a missing default one leaves a note."""
    cfg = record.config
    if not (record.path / BEST).is_file():
        record.notes.append("no best.pt yet (the run has not finished an epoch)")
        return
    if cfg.data.val_size == 0:
        record.notes.append("the run trained on all images (val-size 0), so it has no validation split")
        return
    if data_path is None and (cfg.data.path is None or not Path(cfg.data.path).expanduser().exists()):
        record.notes.append(f"the run's dataset {cfg.data.path} is not here; pass --data PATH for the validation parts")
        return
    record.predictions = predict_checkpoint(
        record.path, data_path=data_path, split="val", tta=bool(cfg.train.tta) if tta is None else tta,
        batch_size=batch_size, device=device,
    )
    record.calibration = calibration(record.predictions.log_probs, record.predictions.labels)


def build_report(
    runs: Sequence[Path | str],
    *,
    data_path: str | None = None,
    tta: bool | None = None,
    wrong: int = 24,
    batch_size: int = 1000,
    device: str = "auto",
) -> str:
    """The report of `runs` as one HTML page (see the module docstring)."""
    if not runs:
        raise BudgetnetError("no runs to report on; pass one or more run directories")
    records = [load_run(r) for r in runs]
    names = [r.name for r in records]
    if len(set(names)) < len(names):  # two runs of the same folder name: tell them apart by path
        for r in records:
            r.name = str(r.path)
    for r in records:
        add_predictions(r, data_path=data_path, tta=tta, batch_size=batch_size, device=device)
    title = "budgetnet report: " + ", ".join(r.name for r in records)
    body = [f"<header><h1>{_e(title)}</h1><p>Written {datetime.now():%Y-%m-%d %H:%M} by budgetnet "
            f"{_e(budgetnet.__version__)}.</p>"]
    links = ([("comparison", "Comparison")] if len(records) > 1 else []) + [(f"run-{i}", r.name) for i, r in enumerate(records)]
    body.append("<nav>" + " · ".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in links) + "</nav></header>")
    if len(records) > 1:
        body.append(_comparison(records))
    body += [_run_section(i, r, wrong) for i, r in enumerate(records)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(runs: Sequence[Path | str], out: Path | str, **options: Any) -> Path:
    """`build_report` written atomically to `out`; `options` are build_report's."""
    out = Path(out)
    if out.is_dir():
        raise BudgetnetError(f"{out} is a folder; give --out a file name such as report.html")
    page = build_report(runs, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return out


# ---- sections ----------------------------------------------------------------------------


def _run_section(i: int, r: RunRecord, wrong: int) -> str:
    parts = [f'<section class="run" id="run-{i}"><h2>{_e(r.name)}</h2><p class="path">{_e(str(r.path))}</p>',
             _model_section(r), _curves_section(r), _validation_section(r, wrong), "</section>"]
    return "\n".join(parts)


def _model_section(r: RunRecord) -> str:
    m, s = r.model, r.summary or {}
    facts = [
        ("trainable parameters", f"{m.params:,}"),
        ("budget", f"{m.budget:,} ({_share(m)} used{'' if m.within_budget else ', OVER'})"),
        ("FLOPs per image (forward)", f"{m.flops:,}"),
        ("weights (fp32)", f"{m.bytes['fp32'] / 1e6:.2f} MB"),
    ]
    if not s:
        facts.append(("status", "no summary.json: the run has not finished (or was cut short)"))
    for key, label, fmt in _SUMMARY_FACTS:
        if s.get(key) is not None:
            facts.append((label, fmt(s[key])))
    layers = _table(("layer", "type", "output shape", "params"),
                    [(row.name, row.type, "x".join(map(str, row.output_shape)), f"{row.params:,}") for row in m.layers])
    return (
        '<section class="model"><h3>Model and config</h3>' + _table(("", ""), facts, cls="facts")
        + f"<details><summary>Per-layer table ({len(m.layers)} layers)</summary>{layers}</details>"
        + f"<details><summary>Config (config.yaml)</summary><pre>{_e(dump_config(r.config))}</pre></details></section>"
    )


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _share(m: ModelSummary) -> str:
    return f"{100 * m.params / m.budget:.3g}%"  # 3 digits: a tiny model's share is not 0.0%


_SUMMARY_FACTS = (
    ("best_val_acc", "best validation accuracy", _pct),
    ("best_epoch", "best epoch", str),
    ("final_val_acc", "final validation accuracy", _pct),
    ("final_train_acc", "final training accuracy", _pct),
    ("epochs_run", "epochs run", str),
    ("steps_run", "optimizer steps", lambda v: f"{v:,}"),
    ("train_seconds", "training time", lambda v: f"{v:.1f} s"),
    ("wall_seconds", "wall-clock time", lambda v: f"{v:.1f} s"),
    ("time_budget_s", "time budget", lambda v: f"{v:g} s"),
    ("train_pflop", "training compute", lambda v: f"{v:.4g} PFLOP"),
    ("device", "device", str),
    ("precision", "precision", str),
    ("stopped_early", "stopped early", lambda v: "yes" if v else "no"),
)


def _x_axes(r: RunRecord) -> list[tuple[str, list[float]]]:
    axes = [("epoch", [row["epoch"] for row in r.history]),
            ("training time (s)", [row["train_seconds"] for row in r.history]),
            ("wall-clock time (s)", r.wall_axis)]
    pflop = r.pflop_axis
    return axes + ([("training PFLOP", pflop)] if pflop is not None else [])


def _curves_section(r: RunRecord) -> str:
    if not r.history:
        return '<section class="curves"><h3>Training curves</h3><p class="note">No metrics.csv yet.</p></section>'
    axes = _x_axes(r)
    plt = pyplot()
    fig, grid = plt.subplots(3, len(axes), figsize=(3.6 * len(axes), 8.4), squeeze=False)
    for col, (xlabel, xs) in enumerate(axes):
        loss_ax, acc_ax, lr_ax = grid[:, col]
        for split in ("train", "val"):
            label = "train" if split == "train" else "validation"
            loss_ax.plot(xs, [row[f"{split}_loss"] for row in r.history], marker=".", label=label)
            acc_ax.plot(xs, [100 * row[f"{split}_acc"] for row in r.history], marker=".", label=label)
        lr_ax.plot(xs, [row["lr"] for row in r.history], marker=".", color="tab:green")
        loss_ax.set(ylabel="cross-entropy", title=f"Loss vs {xlabel}")
        acc_ax.set(ylabel="accuracy (%)", title=f"Accuracy vs {xlabel}")
        lr_ax.set(ylabel="learning rate (epoch end)", xlabel=xlabel, title=f"LR vs {xlabel}")
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=8)
        acc_ax.legend(fontsize=8)
    return ('<section class="curves"><h3>Training curves</h3>'
            + _img(figure_png(fig), f"training curves of {r.name}") + "</section>")


def _validation_section(r: RunRecord, wrong: int) -> str:
    head = '<section class="validation"><h3>Validation</h3>'
    p, cal = r.predictions, r.calibration
    if p is None or cal is None:
        return head + "".join(f'<p class="note">{_e(n)}</p>' for n in r.notes) + "</section>"
    result = p.result
    epoch = f"epoch {p.info['epoch']}" if p.info.get("epoch") is not None else "best"
    intro = (f"<p>The best checkpoint ({epoch}) on the run's validation split: {len(p.labels):,} images, accuracy "
             f"<b>{_pct(result.accuracy)}</b>, loss {result.loss:.4f}{', with TTA' if p.info['tta'] else ''}.</p>")
    confusion = ('<section class="confusion"><h4>Confusion matrix</h4>'
                 + _img(confusion_png(result, "validation split"), "confusion matrix")
                 + "</section>")
    return head + intro + confusion + _per_class(result) + _calibration_section(cal) + _wrong_section(p, wrong) + "</section>"


def _per_class(result: EvalResult) -> str:
    cm = result.confusion
    rows = []
    for i, name in enumerate(result.classes):
        others = cm[i].clone()
        others[i] = -1
        j = int(others.argmax())
        confused = f"{result.classes[j]} ({int(cm[i, j])})" if cm[i, j] > 0 else ""
        rows.append((name, f"{int(cm[i].sum()):,}", f"{int(cm[i, i]):,}", _pct(result.per_class_accuracy[i]), confused))
    return ('<section class="per-class"><h4>Per-class accuracy</h4>'
            + _table(("class", "images", "correct", "accuracy", "most often taken for"), rows) + "</section>")


def _calibration_section(cal: Calibration) -> str:
    plt = pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    edges = np.linspace(0, 1, len(cal.counts) + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / len(cal.counts)
    acc = np.nan_to_num(np.array(cal.bin_accuracy))
    conf = np.array(cal.confidence)
    ax.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centers, np.nan_to_num(conf) - acc, bottom=acc, width=width, color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="0.3", label="perfect calibration")
    ax.set(ylabel="accuracy", title=f"Reliability diagram (ECE {100 * cal.ece:.2f}%)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    hist.bar(centers, cal.counts, width=width, color="0.5", edgecolor="black")
    hist.set(xlabel="confidence (top probability)", ylabel="images")
    text = (f"<p>Expected calibration error <b>{100 * cal.ece:.2f}%</b> ({len(cal.counts)} equal-width bins); mean "
            f"confidence {_pct(cal.mean_confidence)} against accuracy {_pct(cal.accuracy)}: the model is "
            f"{'over' if cal.mean_confidence > cal.accuracy else 'under'}confident.</p>")
    return ('<section class="calibration"><h4>Calibration</h4>' + text
            + _img(figure_png(fig), "reliability diagram") + "</section>")


def _wrong_section(p: Predictions, most: int) -> str:
    picks = confidently_wrong(p, most)
    head = f'<section class="wrong"><h4>Most confidently wrong ({len(picks)} shown)</h4>'
    if not picks:
        return head + '<p class="note">No validation image is misclassified.</p></section>'
    images = p.images[torch.tensor([i for i, *_ in picks], device=p.images.device)].cpu().numpy()
    cells = []
    for img, (i, true, pred, conf) in zip(images, picks):
        caption = f"#{i}: {p.classes[true]} taken for {p.classes[pred]} ({_pct(conf)})"
        cells.append(f"<figure>{_img(_image_png(img), caption)}<figcaption>true <b>{_e(p.classes[true])}</b><br>"
                     f"predicted <b>{_e(p.classes[pred])}</b> {_pct(conf)}<br>image {i}</figcaption></figure>")
    return head + '<div class="grid">' + "".join(cells) + "</div></section>"


def _comparison(records: list[RunRecord]) -> str:
    rows = []
    for r in records:
        s = r.summary or {}
        best = f"{_pct(s['best_val_acc'])} (epoch {s['best_epoch']})" if s.get("best_val_acc") is not None else ""
        pflop = r.pflop_axis
        rows.append((
            r.name, f"{r.model.params:,}", _share(r.model), f"{r.model.flops:,}",
            str(s.get("epochs_run", len(r.history))), f"{s['train_seconds']:.1f}" if "train_seconds" in s else "",
            f"{pflop[-1]:.4g}" if pflop else "", best,
            _pct(s["final_val_acc"]) if s.get("final_val_acc") is not None else "",
            _pct(r.predictions.result.accuracy) if r.predictions is not None else "",
            f"{100 * r.calibration.ece:.2f}%" if r.calibration is not None else "",
        ))
    table = _table(("run", "params", "budget used", "FLOPs/image", "epochs", "train s", "train PFLOP",
                    "best val acc", "final val acc", "best.pt val acc (here)", "ECE"), rows)
    return ('<section class="comparison" id="comparison"><h2>Comparison</h2>' + table
            + _img(_overlay_png(records), "overlaid curves of all runs") + "</section>")


def _overlay_png(records: list[RunRecord]) -> bytes:
    """Validation accuracy and training loss of every run on shared axes."""
    with_history = [r for r in records if r.history]
    axes_per_run = [_x_axes(r) for r in with_history]
    n_axes = min((len(a) for a in axes_per_run), default=3)  # PFLOP only when every run has it
    plt = pyplot()
    fig, grid = plt.subplots(2, n_axes, figsize=(3.8 * n_axes, 6), squeeze=False)
    for r, axes in zip(with_history, axes_per_run):
        for col, (xlabel, xs) in enumerate(axes[:n_axes]):
            grid[0, col].plot(xs, [100 * row["val_acc"] for row in r.history], marker=".", label=r.name)
            grid[1, col].plot(xs, [row["train_loss"] for row in r.history], marker=".", label=r.name)
            grid[0, col].set(ylabel="validation accuracy (%)", title=f"Validation accuracy vs {xlabel}")
            grid[1, col].set(ylabel="training loss", xlabel=xlabel, title=f"Training loss vs {xlabel}")
    for ax in grid.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return figure_png(fig)


# ---- HTML pieces -------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _image_png(chw: np.ndarray) -> bytes:
    """A uint8 CHW image (1 or 3 channels) as PNG."""
    pixels = chw[0] if chw.shape[0] == 1 else np.ascontiguousarray(chw.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    opening = f'<table class="{cls}">' if cls else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1500px;padding:0 1.5em 3em;color:#222}
h1{font-size:1.5em}h2{border-bottom:2px solid #ccc;margin-top:2em}nav a{margin:0 .3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f0f0f0}table.facts thead{display:none}td:first-child{font-weight:600}
img{max-width:100%}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.path,.note{color:#666}.grid{display:flex;flex-wrap:wrap;gap:.8em}
.grid figure{margin:0;width:8.5em;font-size:.8em}.grid img{width:8em;height:8em;image-rendering:pixelated;border:1px solid #999}
"""
