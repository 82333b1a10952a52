"""Repeats: one run config trained several times, over seeds or over the K folds of K-fold
cross validation, into one folder, and summarized: mean, standard deviation, min and max of
the final and the best validation accuracy.

Folder layout:

    <out>/repeat.json   the base config; running again with another config is refused
    <out>/seed-0/ ...   each member's run directory (fold-0-of-5/ ... for folds)
    <out>/summary.json  the members' figures and the statistics
    <out>/summary.md    the same as two markdown tables, to cite

Two repeats of the same validation split compare seed by seed (`compare_repeats`): runs of
one seed share initialization, batch order and augmentation draws, so the paired differences
cancel part of the seed noise that separate means carry; both readings are given.

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
        if _through_schema(saved.get("config") if isinstance(saved, dict) else None) != plan["config"]:
            raise BudgetnetError(f"{out} holds a repeat of another config; run the same options again to continue "
                                 "it, or use another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BudgetnetError(f"{out} exists and is not a repeat folder; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def _through_schema(config: Any) -> dict[str, Any] | None:
    """A saved config read through today's schema, so that a setting added since counts at its
    default (the same options still continue a repeat; a comparison shows the value trained);
    None if it no longer validates."""
    try:
        return build_config(config).model_dump(mode="json")
    except BudgetnetError:
        return None


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


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["| metric | mean | std | min | max | runs |", "|---|---|---|---|---|---|"]
    for key, label in METRICS.items():
        s = summary[key]
        std = "" if s["std"] is None else f"{100 * s['std']:.2f} pp"
        lines.append(f"| {label} | {_pct(s['mean'])} | {std} | {_pct(s['min'])} | {_pct(s['max'])} | {s['n']} |")
    lines += ["", "| member | seed | fold | final val acc | best val acc (epoch) | epochs | train s |",
              "|---|---|---|---|---|---|---|"]
    for r in summary["members"]:
        fold = "" if r["fold"] is None else str(r["fold"])
        lines.append(f"| {r['member']} | {r['seed']} | {fold} | {_pct(r['final_val_acc'])} | "
                     f"{_pct(r['best_val_acc'])} ({r['best_epoch']}) | {r['epochs_run']} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


# Data settings that decide which images validate; two repeats pair only when these match.
VALIDATION_DATA = ("val_size", "split_seed", "subset", "labels")


@dataclass
class Comparison:
    """Two repeats compared: the figures (`summary`, JSON-ready) and the same as markdown."""

    summary: dict[str, Any]
    markdown: str


def compare_repeats(base: Path | str, other: Path | str, metric: str = "final_val_acc") -> Comparison:
    """`other` against `base`, member by member (the same seed, or the same fold): each pair's
    difference in `metric` (final_val_acc or best_val_acc), their mean, standard deviation and
    standard error, how many are ahead and behind, and the unpaired means of every member; the
    config fields the two differ in, read from the first pair's saved configs (as trained, through
    today's schema).
    Refused unless both validate on the same images."""
    if metric not in METRICS:
        raise BudgetnetError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    base, other = Path(base), Path(other)
    base_rows, other_rows = _finished_members(base), _finished_members(other)
    by_key = {(r["seed"], r["fold"]): r for r in base_rows}
    matched = [(by_key[(r["seed"], r["fold"])], r) for r in other_rows if (r["seed"], r["fold"]) in by_key]
    if not matched:
        raise BudgetnetError(f"{base} and {other} share no seed (or fold); train the same seeds in both to pair them")
    configs = [(read_yaml_mapping(base / a["run_dir"] / "config.yaml"), read_yaml_mapping(other / b["run_dir"] / "config.yaml"))
               for a, b in matched]
    for a, b in configs:
        if mismatch := [f"data.{k}: {a['data'].get(k)!r} vs {b['data'].get(k)!r}"
                        for k in VALIDATION_DATA if a["data"].get(k) != b["data"].get(k)]:
            raise BudgetnetError(f"{base} and {other} validate on different images ({'; '.join(mismatch)}); "
                                 "their accuracies do not pair")
    hashes = {_content_hash(folder / row["run_dir"]) for folder, rows in ((base, base_rows), (other, other_rows))
              for row in rows}
    if len(hashes - {None}) > 1:
        raise BudgetnetError(f"{base} and {other} trained on different datasets (their content hashes differ); "
                             "their accuracies do not pair")
    pairs = [{"seed": b["seed"], "fold": b["fold"], "base": a[metric], "other": b[metric],
              "difference": b[metric] - a[metric]} for a, b in matched]
    diffs = [p["difference"] for p in pairs]
    paired = stats(diffs)
    paired["standard_error"] = None if paired["std"] is None else paired["std"] / len(diffs) ** 0.5
    paired["ahead"], paired["behind"] = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    base_all, other_all = stats([r[metric] for r in base_rows]), stats([r[metric] for r in other_rows])
    unpaired = {"difference": other_all["mean"] - base_all["mean"], "standard_error": None}
    if base_all["std"] is not None and other_all["std"] is not None:
        unpaired["standard_error"] = (base_all["std"] ** 2 / base_all["n"] + other_all["std"] ** 2 / other_all["n"]) ** 0.5
    summary = {"base": str(base), "other": str(other), "metric": metric, "pairs": pairs, "paired": paired,
               "base_all": base_all, "other_all": other_all, "unpaired": unpaired,
               "config_differences": _differences(*(_through_schema(c) or c for c in configs[0]))}
    return Comparison(summary, _comparison_markdown(summary))


def _finished_members(folder: Path) -> list[dict[str, Any]]:
    """The members a repeat folder's summary.json lists, or an error saying what is missing."""
    try:
        return json.loads((folder / SUMMARY_JSON).read_text())["members"]
    except FileNotFoundError:
        raise BudgetnetError(f"{folder} is not a repeat folder (no {SUMMARY_JSON}); "
                             "give the --out of a `budgetnet repeat`") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BudgetnetError(f"cannot read the repeat in {folder}: {exc}") from None


def _content_hash(run_dir: Path) -> str | None:
    """The data content hash a run recorded (None where it recorded none)."""
    try:
        return json.loads((run_dir / "summary.json").read_text())["data"]["content_hash"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """`section.key: a -> b` for every leaf of two config trees that differs."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} -> {y!r}")
    return out


def _comparison_markdown(c: dict[str, Any]) -> str:
    base, other = Path(c["base"]).name, Path(c["other"]).name
    lines = [f"| member | {base} | {other} | paired |", "|---|---|---|---|"]
    for p in c["pairs"]:
        name = f"seed-{p['seed']}" if p["fold"] is None else f"fold {p['fold']}, seed {p['seed']}"
        lines.append(f"| {name} | {_pct(p['base'])} | {_pct(p['other'])} | {100 * p['difference']:+.2f} |")
    mean_base = sum(p["base"] for p in c["pairs"]) / len(c["pairs"])
    mean_other = sum(p["other"] for p in c["pairs"]) / len(c["pairs"])
    lines.append(f"| mean | {_pct(mean_base)} | {_pct(mean_other)} | {100 * c['paired']['mean']:+.2f} |")
    lines.append("")
    paired, unpaired = c["paired"], c["unpaired"]
    lines.append(f"paired ({METRICS[c['metric']]}, {paired['n']} pairs): {100 * paired['mean']:+.2f} points"
                 f"{_standard_error(paired['mean'], paired['standard_error'])}; "
                 f"{paired['ahead']} ahead, {paired['behind']} behind")
    lines.append(f"unpaired (every member): {_pct(c['base_all']['mean'])} ({c['base_all']['n']} runs) -> "
                 f"{_pct(c['other_all']['mean'])} ({c['other_all']['n']} runs): "
                 f"{100 * unpaired['difference']:+.2f} points{_standard_error(unpaired['difference'], unpaired['standard_error'])}")
    lines.append("configs differ in: " + ("; ".join(c["config_differences"]) or "nothing"))
    return "\n".join(lines) + "\n"


def _standard_error(mean: float, se: float | None) -> str:
    if se is None:
        return " (no standard error: one value)"
    return f" (standard error {100 * se:.2f}" + (f", {mean / se:+.1f} SE)" if se > 0 else ")")
