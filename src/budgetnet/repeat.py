"""Repeats: one run config trained several times, over seeds or over the K folds of K-fold
cross validation, into one folder, and summarized: mean, standard deviation, min and max of
the final and the best validation accuracy.

Folder layout:

    <out>/repeat.json   the base config; running again with another config is refused
    <out>/seed-0/ ...   each member's run directory (fold-0-of-5/ ... for folds)
    <out>/summary.json  the members' figures and the statistics
    <out>/summary.md    the same as two markdown tables, to cite

Resumable like a search: running the same repeat again skips the finished members (those with
a summary.json), resumes a half-finished one from its checkpoint (`train(..., resume=True)`)
and trains the rest; seeds can also come a few a call (`--seeds 3`, then `--seeds 4`), and each
call summarizes every finished seed in the folder. Seeds vary `train.seed` (initialization,
batch order, augmentation) on one validation split; folds vary the split (`data.fold`), each
fold validating once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from budgetnet.config import RunConfig, build_config, read_yaml_mapping
from budgetnet.errors import BudgetnetError, stderr_line
from budgetnet.files import atomic_write_bytes, write_json
from budgetnet.train.engine import train

PLAN, SUMMARY_JSON, SUMMARY_MD = "repeat.json", "summary.json", "summary.md"
METRICS = {"final_val_acc": "final validation accuracy", "best_val_acc": "best validation accuracy"}


@dataclass(frozen=True)
class Member:
    """One training of the repeat: its folder name and config."""

    name: str
    seed: int
    fold: int | None
    config: RunConfig


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise BudgetnetError(f"--seeds {text!r} must be comma-separated integers such as 0,1,2") from None
    if len(set(seeds)) < len(seeds) or any(s < 0 for s in seeds):
        raise BudgetnetError(f"--seeds {text!r} must be distinct integers of 0 or more")
    return seeds


def plan_members(cfg: RunConfig, *, seeds: Sequence[int] | None = None, folds: int | None = None) -> list[Member]:
    """The members: one per seed (the config's split), or one per fold (the config's seed)."""
    if (seeds is None) == (folds is None):
        raise BudgetnetError("give --seeds or --folds (one of them)")
    if cfg.data.val_size == 0:
        raise BudgetnetError("a repeat summarizes validation accuracy, but --val-size is 0; keep a validation split "
                             "(with --folds each fold is the validation split)")
    if cfg.data.fold is not None:
        raise BudgetnetError("the config already fixes data.fold; drop it to repeat over folds or seeds")
    if seeds is not None:
        if not seeds:
            raise BudgetnetError("--seeds is empty; give at least one seed")
        return [Member(f"seed-{s}", s, None, _with(cfg, train={"seed": s})) for s in seeds]
    assert folds is not None
    if folds < 2:
        raise BudgetnetError(f"--folds {folds} must be at least 2")
    return [Member(f"fold-{k}-of-{folds}", cfg.train.seed, k, _with(cfg, data={"fold": {"k": k, "of": folds}}))
            for k in range(folds)]


def _with(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    tree = cfg.model_dump(mode="json")
    for section, values in sections.items():
        tree[section] = {**tree[section], **values}
    return build_config(tree, source="repeat member")


@dataclass
class RepeatResult:
    """What a repeat left in `out`: summary.json's content and summary.md's text."""

    out: Path
    summary: dict[str, Any]
    markdown: str


def run_repeat(
    cfg: RunConfig,
    out: Path | str,
    *,
    seeds: Sequence[int] | None = None,
    folds: int | None = None,
    quiet: bool = True,
    progress: bool = False,
    on_epoch_end: Callable[[str, dict[str, float]], None] | None = None,
) -> RepeatResult:
    """Train (or continue) every member of the repeat of `cfg` into `out`, then summarize.
    `quiet` is train's (no live progress bar); `progress` prints a line per member on stderr;
    `on_epoch_end(member name, metrics row)` sees every epoch (an exception it raises stops
    the repeat, which a later call continues)."""
    members = plan_members(cfg, seeds=seeds, folds=folds)
    out = Path(out)
    _claim(out, cfg)
    for i, m in enumerate(members, 1):
        run_dir = out / m.name
        if (run_dir / "summary.json").is_file():
            _say(progress, f"repeat: {m.name} ({i}/{len(members)}) already finished")
            continue
        # Resumed with its saved config, as `budgetnet train --resume` does; a folder holding
        # nothing but its lock was left before the run wrote anything and starts afresh.
        resume = (run_dir / "config.yaml").is_file()
        member_cfg = build_config(read_yaml_mapping(run_dir / "config.yaml"), source=str(run_dir)) if resume else m.config
        _say(progress, f"repeat: {m.name} ({i}/{len(members)}) {'resumed' if resume else 'started'}")
        hook = (lambda row, name=m.name: on_epoch_end(name, row)) if on_epoch_end is not None else None
        train(member_cfg, run_dir, resume=resume, quiet=quiet, on_epoch_end=hook)
    return write_summary(out, _with_earlier_seeds(out, cfg, members))


def _with_earlier_seeds(out: Path, cfg: RunConfig, members: list[Member]) -> list[Member]:
    """The members plus the finished seeds an earlier call trained into `out` (a repeat run a
    few seeds a call summarizes all of them), in seed order; folds are all named every call."""
    if members[0].fold is not None:
        return members
    named = {m.seed for m in members}
    earlier = [int(p.name.removeprefix("seed-")) for p in out.glob("seed-*")
               if p.name.removeprefix("seed-").isdigit() and (p / "summary.json").is_file()]
    extra = [Member(f"seed-{s}", s, None, _with(cfg, train={"seed": s})) for s in earlier if s not in named]
    return sorted([*members, *extra], key=lambda m: m.seed)


def _claim(out: Path, cfg: RunConfig) -> None:
    """Make `out` this repeat's folder, or check that it already is."""
    plan = {"config": cfg.model_dump(mode="json")}
    path = out / PLAN
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BudgetnetError(f"cannot read {path}: {exc}; use another --out") from None
        if saved != json.loads(json.dumps(plan)):
            raise BudgetnetError(f"{out} holds a repeat of another config; run the same options again to continue "
                                 "it, or use another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BudgetnetError(f"{out} exists and is not a repeat folder; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def _say(progress: bool, line: str) -> None:
    if progress:
        stderr_line(line)


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std (sample: n - 1 in the denominator; None for one value), min, max."""
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(a), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None,
            "min": float(a.min()), "max": float(a.max())}


def write_summary(out: Path, members: Sequence[Member]) -> RepeatResult:
    """summary.json and summary.md of the finished members."""
    rows = []
    for m in members:
        s = json.loads((out / m.name / "summary.json").read_text())
        rows.append({"member": m.name, "seed": m.seed, "fold": m.fold, "run_dir": m.name,
                     **{k: s[k] for k in ("final_val_acc", "best_val_acc", "best_epoch", "epochs_run", "train_seconds")}})
    summary = {"members": rows, **{k: stats([r[k] for r in rows]) for k in METRICS},
               "train_seconds": stats([r["train_seconds"] for r in rows])}
    markdown = _markdown(summary)
    write_json(out / SUMMARY_JSON, summary)
    atomic_write_bytes(out / SUMMARY_MD, markdown.encode())
    return RepeatResult(out, summary, markdown)


def _markdown(summary: dict[str, Any]) -> str:
    def pct(v: float) -> str:
        return f"{100 * v:.2f}%"

    lines = ["| metric | mean | std | min | max | runs |", "|---|---|---|---|---|---|"]
    for key, label in METRICS.items():
        s = summary[key]
        std = "" if s["std"] is None else f"{100 * s['std']:.2f} pp"
        lines.append(f"| {label} | {pct(s['mean'])} | {std} | {pct(s['min'])} | {pct(s['max'])} | {s['n']} |")
    lines += ["", "| member | seed | fold | final val acc | best val acc (epoch) | epochs | train s |",
              "|---|---|---|---|---|---|---|"]
    for r in summary["members"]:
        fold = "" if r["fold"] is None else str(r["fold"])
        lines.append(f"| {r['member']} | {r['seed']} | {fold} | {pct(r['final_val_acc'])} | "
                     f"{pct(r['best_val_acc'])} ({r['best_epoch']}) | {r['epochs_run']} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"
