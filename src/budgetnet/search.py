"""Optuna search for the most accurate network under a parameter budget.

A *space file* (`SearchSpace`, YAML) names the run config every trial starts from (`base`) and
the knobs to vary (`params`: dotted keys into that config, e.g. ``optim.lr``). A trial samples
one value per knob, resolves them into a `RunConfig` (the model's classes and input size from
the data), counts its parameters (instant, on the meta device) and rejects it untrained when it
is over the budget or any other limit (FLOPs, bytes, latency). Otherwise it trains into
``<out>/trials/<number>/`` (a normal run directory) and reports validation accuracy after
every epoch, so a Hyperband or successive-halving pruner can stop weak candidates early.

The study lives in Optuna's journal file ``<out>/study.journal``, or in a PostgreSQL database
for workers on several machines (`search_workers` holds what sharing a study takes). ``trials``
counts the finished trials already there, so running a search again continues it; ``workers``
runs that many worker processes on this machine, and any number of machines given the same
database URL and study name share one study. The report (trials.csv, best.yaml, ...) is
written once, by the worker that ends the study's last trial.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args

import optuna
import sqlalchemy
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from budgetnet.config import (
    DEFAULT_RECIPE,
    LIMIT_KEYS,
    RunConfig,
    build_config,
    deep_merge,
    dump_config,
    fit_to_data,
    load_config,
    read_data_shape,
    read_yaml_mapping,
    settings_kept,
)
from budgetnet.data import DataShape
from budgetnet.errors import BudgetnetError, stderr_line, warn
from budgetnet.files import atomic_write_bytes, write_csv, write_json, write_png
from budgetnet.models import (
    Budget,
    ResNetSpec,
    fit_to_budget,
    format_validation_error,
    parse_budget,
    summarize,
)
from budgetnet.models.budget import over_limits
from budgetnet.models.limits import ByteSize, Flops
from budgetnet.models.spec import BOTTLENECK_EXPANSION, validate_spec
from budgetnet.plots import pyplot
from budgetnet.search_workers import (
    FINISHED,
    HEARTBEAT_SECONDS,
    JOURNAL,
    WORKER_ATTR,
    StudyStore,
    leaving,
    retried_trial,
    retry,
    run_processes,
    running_trial,
    work,
)
from budgetnet.train.callbacks import read_metrics
from budgetnet.train.engine import BEST, LAST, PREVIOUS, TrainingInterrupted, train
from budgetnet.train.tracking import check_trackers

SamplerName = Literal["tpe", "random", "grid"]
PrunerName = Literal["hyperband", "halving", "none"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
PRUNERS: tuple[str, ...] = get_args(PrunerName)

# Not a run-config field: scales every layer's width of the resolved model by the sampled value.
WIDTH_KEY = "width_multiplier"
MODEL_KEYS = frozenset(ResNetSpec.model_fields) | {"preset"}
# Importance from fewer complete trials ranks parameters by noise.
MIN_IMPORTANCE_TRIALS = 4
_PRIMITIVES = (str, int, float, bool, type(None))
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ParamSpec(BaseModel):
    """One knob: `choices` (a list of YAML values, or a mapping label -> value) or a numeric
    range `low`..`high` (integers if both are written as integers) with an optional `step` or
    `log`. A choice replaces what the base has at the key; with `merge`, a mapping choice is
    laid over it instead (nested keys merged)."""

    model_config = ConfigDict(extra="forbid")

    choices: list[Any] | dict[str, Any] | None = None
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = Field(None, gt=0)
    log: bool = False
    merge: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        ranged = self.low is not None or self.high is not None or self.step is not None or self.log
        if self.choices is not None:
            if ranged:
                raise ValueError("give either choices or a low/high range, not both")
            if not self.choices:
                raise ValueError("choices is empty; give at least one")
            labels = self.labels
            if len(set(labels)) != len(labels):
                raise ValueError("choices has duplicates; give each value once")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or a range with both low and high")
        if self.merge:
            raise ValueError("merge applies to mapping choices, not to a range")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.step is not None:
            raise ValueError("a range takes step or log, not both")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    @property
    def is_int(self) -> bool:
        bounds = (self.low, self.high, 1 if self.step is None else self.step)
        return all(isinstance(v, int) and not isinstance(v, bool) for v in bounds)

    @property
    def values(self) -> list[Any]:
        assert self.choices is not None
        return list(self.choices.values()) if isinstance(self.choices, dict) else list(self.choices)

    @property
    def labels(self) -> list[Any]:
        """What Optuna stores for each choice. Its categorical values must be hashable
        primitives, so lists and mappings are stored as their compact JSON."""
        assert self.choices is not None
        if isinstance(self.choices, dict):
            return list(self.choices)
        if all(isinstance(c, _PRIMITIVES) for c in self.choices):
            return list(self.choices)
        return [json.dumps(c, sort_keys=True, separators=(",", ":"), default=str) for c in self.choices]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Sample this knob in `trial`; choices come back decoded to their YAML values."""
        if self.choices is not None:
            label = trial.suggest_categorical(name, self.labels)
            return dict(zip(self.labels, self.values))[label]
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)


class FillBudget(BaseModel):
    """Fit every sampled shape to the budget with `fit_to_budget`: `width` scales all widths
    (keeping their ratios) to the largest that fits, `depth` adds blocks round-robin from the
    sampled ones. A shape whose smallest form is over the budget is rejected untrained."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["width", "depth"]
    multiple: int = Field(1, ge=1, description="width mode: channels snap to a multiple of this")


class SearchSpace(BaseModel):
    """A space file: the base run config, the knobs to vary, and search defaults."""

    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any] | None = Field(
        None,
        description="a recipe name, a run-config file (relative to the space file), or a mapping "
        "with optional `recipe` and `config` keys plus inline run-config sections; absent: the "
        "flagship recipe",
    )
    budget: Budget | None = None
    max_flops: Flops | None = None
    max_bytes: ByteSize | None = None
    int8_bytes: bool | None = None
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    latency_batch: int | None = Field(None, ge=1, le=4096)
    fill_budget: FillBudget | None = None
    params: dict[str, ParamSpec] = Field(min_length=1)
    trials: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    sampler: SamplerName = "tpe"
    pruner: PrunerName = "hyperband"
    seed: int | None = None
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="trials a new study runs first, e.g. a baseline to beat: each maps knob names to "
        "values (a labelled choice by its label); knobs left out are sampled",
    )
    _root: Path = PrivateAttr(default_factory=lambda: Path("."))

    @field_validator("fill_budget", mode="before")
    @classmethod
    def _fill_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @field_validator("params")
    @classmethod
    def _known_keys(cls, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        sections = ", ".join(RunConfig.model_fields)
        for name, spec in params.items():
            if name == WIDTH_KEY:
                continue
            parts = name.split(".")
            if not all(_SEGMENT.fullmatch(p) for p in parts):
                raise ValueError(f"parameter {name!r} must be a dotted key such as optim.lr")
            if parts[0] not in RunConfig.model_fields:
                raise ValueError(f"parameter {name!r} must start with a run-config section ({sections}) or be {WIDTH_KEY}")
            if parts[0] == "model" and len(parts) > 1 and parts[1] not in MODEL_KEYS:
                raise ValueError(f"parameter {name!r}: {parts[1]!r} is not a model field (see budgetnet summary --help)")
            if name == "model" and spec.choices is not None:
                for value in spec.values:
                    if not isinstance(value, dict) or not set(value) <= MODEL_KEYS:
                        raise ValueError(f"every choice of parameter 'model' must be a mapping of model fields, got {value!r}")
        return params

    @model_validator(mode="after")
    def _enqueued_in_space(self) -> SearchSpace:
        for i, fixed in enumerate(self.enqueue):
            for name, value in fixed.items():
                spec = self.params.get(name)
                if spec is None:
                    raise ValueError(f"enqueue[{i}]: {name!r} is not one of the params")
                if spec.choices is not None and value not in spec.labels:
                    raise ValueError(f"enqueue[{i}]: {name}={value!r} is not one of its choices {spec.labels}")
                ranged = spec.choices is None and isinstance(value, (int, float)) and not isinstance(value, bool)
                if spec.choices is None and not (ranged and spec.low <= value <= spec.high):
                    raise ValueError(f"enqueue[{i}]: {name}={value!r} is outside its range {spec.low}..{spec.high}")
        return self

    @model_validator(mode="after")
    def _width_knob(self) -> SearchSpace:
        width = self.params.get(WIDTH_KEY)
        if width is None:
            return self
        if self.fill_budget is not None and self.fill_budget.mode == "width":
            raise ValueError(f"fill_budget: width already sets the width; drop {WIDTH_KEY} or fill by depth")
        factors = width.values if width.choices is not None else [width.low, width.high]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in factors):
            raise ValueError(f"{WIDTH_KEY} must be positive numbers (choices or a low/high range)")
        return self

    def base_mapping(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`base_config` as a plain mapping."""
        return self.base_config(overrides).model_dump(mode="json")

    def base_config(self, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """The run config trials start from: the base (recipe <- config file <- inline
        sections), then this file's limits and epochs, then `overrides`. As with
        `load_config`, inline sections without a recipe or file stand on their own (defaults
        fill the rest) and no base at all means the flagship recipe."""
        if self.base is None:
            base: dict[str, Any] = {"recipe": DEFAULT_RECIPE}
        elif isinstance(self.base, str):
            base = {"config": self.base} if self.base.endswith((".yaml", ".yml")) else {"recipe": self.base}
        else:
            base = self.base
        inline = dict(base)
        recipe, config = inline.pop("recipe", None), inline.pop("config", None)
        if not isinstance(recipe, (str, type(None))) or not isinstance(config, (str, type(None))):
            raise BudgetnetError("base: recipe and config must be a name and a file path")
        own: dict[str, Any] = {key: getattr(self, key) for key in LIMIT_KEYS if getattr(self, key) is not None}
        if self.epochs is not None:
            own["train"] = {"epochs": self.epochs}
        inline = deep_merge(deep_merge(inline, own), dict(overrides or {}))
        if recipe is None and config is None:
            return build_config(inline, source="base")
        path = self._root / config if config is not None else None
        return load_config(path, inline, recipe=recipe)

    def resolve(self, values: Mapping[str, Any], base: Mapping[str, Any], shape: DataShape | None = None) -> RunConfig:
        """The run config of one candidate: `values` (param -> value) laid over `base` in the
        order the params are written, the model fitted to the data's `shape` (classes, input
        size) when given, then the width multiplier or budget fill applied to the model.
        `BudgetnetError` when the combination is not a valid config; an unfillable shape comes
        back unfitted (over a limit) for the caller to reject."""
        tree = copy.deepcopy(dict(base))
        for name, value in values.items():
            if name != WIDTH_KEY:
                _set_in(tree, name, value, self.params[name].merge)
        cfg = build_config(tree, source="candidate")
        if shape is not None:
            cfg = fit_to_data(cfg, shape)
        spec = cfg.model
        if WIDTH_KEY in values:
            spec = _scale_widths(spec, float(values[WIDTH_KEY]))
        if self.fill_budget is not None:
            fill = self.fill_budget
            try:
                spec = fit_to_budget(
                    cfg.limits, mode=fill.mode, base=spec, multiple=fill.multiple,
                    blocks=spec.blocks if fill.mode == "depth" else None,
                )
            except BudgetnetError:
                if over_limits(spec, cfg.limits) is None:
                    raise  # not a limit problem: report it as the candidate's error
        return cfg.model_copy(update={"model": spec})

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's space: each choice label, or each integer of an int range."""
        grid: dict[str, list[Any]] = {}
        for name, spec in self.params.items():
            if spec.choices is not None:
                grid[name] = spec.labels
            elif spec.is_int:
                grid[name] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
            else:
                raise BudgetnetError(
                    f"the grid sampler needs choices or an integer range for every parameter; {name} is a "
                    "float range (list its values as choices, or use --sampler tpe)"
                )
        return grid

    def check(self) -> None:
        """Fail early on knobs that can never fit the run config: each choice (or both ends of
        a range) of every non-model knob is validated on the base alone. Model knobs are only
        checked by name here: their values may be valid only together (blocks with channels)."""
        base = self.base_mapping()
        for name, spec in self.params.items():
            if name == WIDTH_KEY or name.split(".")[0] == "model":
                continue
            for value in spec.values if spec.choices is not None else [spec.low, spec.high]:
                tree = copy.deepcopy(base)
                _set_in(tree, name, value, spec.merge)
                try:
                    RunConfig.model_validate(tree)
                except ValidationError as exc:
                    raise BudgetnetError(f"params.{name}: {value!r} does not fit the run config: {format_validation_error(exc)}") from None


def _set_in(tree: dict[str, Any], key: str, value: Any, merge: bool) -> None:
    """Put `value` at dotted `key` of `tree` (in place), making missing mappings on the way."""
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    value = copy.deepcopy(value)
    if merge and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)
    else:
        if last == "name":  # another optimizer or schedule: the base's settings it does not take go
            kept = settings_kept(node, value)
            node.clear()
            node.update(kept)
        node[last] = value


def _scale_widths(spec: ResNetSpec, factor: float) -> ResNetSpec:
    snap = BOTTLENECK_EXPANSION if spec.block == "bottleneck" else 1

    def scaled(width: int) -> int:
        return max(snap, snap * math.floor(width * factor / snap + 0.5))

    fields = spec.model_dump(exclude_unset=True)
    fields["channels"] = [scaled(c) for c in spec.channels]
    if spec.stem_width is not None:
        fields["stem_width"] = scaled(spec.stem_width)
    return validate_spec(fields)


def load_space(path: Path | str) -> SearchSpace:
    """Read and validate a space file; every problem is a one-line `BudgetnetError`."""
    path = Path(path)
    if not path.is_file():
        raise BudgetnetError(f"space file {path} does not exist")
    try:
        space = SearchSpace.model_validate(read_yaml_mapping(path))
    except ValidationError as exc:
        raise BudgetnetError(f"{path}: {format_validation_error(exc)}") from None
    space._root = path.parent
    try:
        space.check()
    except BudgetnetError as exc:
        raise BudgetnetError(f"{path}: {exc}") from None
    return space


# ---- running a study ---------------------------------------------------------------------


@dataclass
class SearchResult:
    """A search's study: the ranked trials (as in trials.csv), the best trial, parameter
    importances (or why there are none) and the report files written into `out` (none when
    another worker writes them)."""

    out: Path
    study: str
    storage: str  # the journal file, or the database URL without its password
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    importance: dict[str, float] | None
    importance_note: str | None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("complete", "pruned", "over budget", "error", "failed", "running", "waiting")}
        for row in self.rows:
            counts[row["state"]] += 1
        return {"total": len(self.rows), **counts}

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study, "storage": self.storage, "out": str(self.out), "trials": self.counts,
            "best": self.best, "importance": self.importance, "importance_note": self.importance_note,
            "files": self.files,
        }


def run_search(
    space: SearchSpace,
    *,
    out: Path | str,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str = "search",
    sampler: SamplerName | None = None,
    pruner: PrunerName | None = None,
    budget: int | str | None = None,
    limits: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    data_overrides: Mapping[str, Any] | None = None,
    log: Sequence[str] | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    workers: int = 1,
    heartbeat: int = HEARTBEAT_SECONDS,
    quiet: bool = True,
    verbose: bool = False,
) -> SearchResult:
    """Run (or continue) the study until it holds `trials` finished trials, then, if this is
    the last worker to leave it, write trials.csv, pareto.png, importance.png, best.yaml and
    summary.json into `out` (`files` of the result; empty while trials still run elsewhere:
    the last worker writes them, and `report_search` any time).

    `trials`, `sampler`, `pruner`, `epochs` and `seed` default to the space file's; `budget`,
    `limits` (run-config limit keys, e.g. ``{"max_flops": "300M"}``), `epochs`,
    `data_overrides` and `log` (experiment trackers of every trial, e.g. ["tensorboard"])
    override its base config. `timeout` (seconds) stops starting
    new trials. `workers` runs that many worker processes here, each with its share of this
    process's threads (worker i samples with `seed` + i). `storage`, a PostgreSQL URL, shares
    the study with workers on other machines; one silent for 4 x `heartbeat` seconds is taken
    for dead, and its trial is run again. `quiet=False` prints a line per finished trial on
    stderr; `verbose` adds Optuna's log and each trial's epoch lines.
    """
    sampler = sampler or space.sampler
    pruner = pruner or space.pruner
    if sampler not in SAMPLERS:
        raise BudgetnetError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise BudgetnetError(f"unknown pruner {pruner!r}; choose one of: {', '.join(PRUNERS)}")
    if workers < 1 or heartbeat < 1:
        raise BudgetnetError("--workers and --heartbeat must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    overrides: dict[str, Any] = {}
    if data_overrides:
        overrides["data"] = dict(data_overrides)
    if budget is not None:
        overrides["budget"] = parse_budget(budget)
    overrides.update(limits or {})
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = epochs
    if log:
        overrides.setdefault("train", {})["log"] = list(log)
    base_cfg = space.base_config(overrides)
    _check_data(base_cfg)
    # Read once; the base's model and every candidate's take their classes and input size from it.
    shape = read_data_shape(base_cfg)
    base = fit_to_data(base_cfg, shape).model_dump(mode="json")
    check_trackers(base_cfg.train.log)
    grid = space.grid() if sampler == "grid" else None
    total = trials or space.trials or (math.prod(len(v) for v in grid.values()) if grid else None)
    if total is None:
        raise BudgetnetError("how many trials? pass --trials N (or put trials: N in the space file)")

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = StudyStore.resolve(out, storage, heartbeat)
    worker = _Worker(
        space, base, shape, store, study_name, sampler, grid, seed if seed is not None else space.seed, total, pruner,
        # Searched epochs vary per trial, so Hyperband then learns its top rung from the trials.
        "auto" if "train.epochs" in space.params else base_cfg.train.epochs,
        base_cfg.limits.to_dict(), timeout, quiet, verbose,
    )
    study = worker.open_study()
    if workers == 1:
        worker.run(study)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        jobs = [replace(worker, seed=None if worker.seed is None else worker.seed + i, threads=threads)
                for i in range(workers)]
        _check_workers(run_processes(_run_worker, jobs), study, total, out)
    with leaving(study, store) as last:
        return write_report(study, store) if last else study_result(study, store)


def report_search(out: Path | str, url: str | None = None, study_name: str | None = None) -> SearchResult:
    """Write the report of a search's study into `out` now, whichever worker ran its trials:
    the study in `out`'s journal, or in the database at `url` (then `out` may be any
    directory). The study name may be left out when the storage holds one study."""
    out = Path(out).resolve()
    store = StudyStore.resolve(out, url)
    if store.url is None and not (out / JOURNAL).is_file():
        raise BudgetnetError(f"{out} holds no search; pass the search's --out, or --storage with its database URL")
    try:
        storage = store.storage()
        names = optuna.get_all_study_names(storage)
    except (ImportError, ValueError, OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise BudgetnetError(f"cannot read {store.label}: {exc}") from None
    if study_name is None and len(names) != 1:
        raise BudgetnetError(f"{store.label} holds {len(names)} studies ({', '.join(names)}); name one with --study")
    name = study_name or names[0]
    if name not in names:
        raise BudgetnetError(f"{store.label} holds no study {name!r}; it holds: {', '.join(names) or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    return write_report(optuna.load_study(study_name=name, storage=storage), store)


def _check_data(cfg: RunConfig) -> None:
    """Problems every trial would hit, reported once instead of as N failed trials."""
    if cfg.data.path is None and not cfg.data.download:
        raise BudgetnetError("no data: pass --data PATH (or --download to fetch CIFAR-10)")
    if cfg.data.path is not None and not cfg.data.download and not Path(cfg.data.path).expanduser().exists():
        raise BudgetnetError(f"dataset {cfg.data.path} does not exist; check --data")
    if cfg.data.val_size == 0:
        raise BudgetnetError("a search ranks trials by validation accuracy; --val-size must be above 0")


def _make_sampler(name: str, grid: dict[str, list[Any]] | None, seed: int | None, total: int) -> optuna.samplers.BaseSampler:
    if name == "grid":
        assert grid is not None
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Optuna's 10 random start-up trials would be most of a short search. The constant liar
    # keeps workers sampling at once from all picking the same promising region.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, total // 4)), constant_liar=True)


def _make_pruner(name: str, max_epochs: int | str) -> optuna.pruners.BasePruner:
    # Rungs at 1, 3, 9, ... epochs: a third of the trials reaching a rung go on to the next.
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class _Worker:
    """What a worker needs to open the study and run trials; sent to worker processes."""

    space: SearchSpace
    base: dict[str, Any]
    shape: DataShape
    store: StudyStore
    study_name: str
    sampler: str
    grid: dict[str, list[Any]] | None
    seed: int | None
    total: int
    pruner: str
    max_epochs: int | str
    limits: dict[str, Any]  # Limits.to_dict(): a study keeps the limits it started with
    timeout: float | None
    quiet: bool
    verbose: bool
    threads: int | None = None  # torch threads of a worker process (None: as this process)

    def open_study(self) -> optuna.Study:
        return _open_study(
            self.store, self.study_name, _make_sampler(self.sampler, self.grid, self.seed, self.total),
            _make_pruner(self.pruner, self.max_epochs), self.limits, self.space.enqueue,
        )

    def run(self, study: optuna.Study) -> None:
        work(study, self.store, _Objective(self.space, self.base, self.shape, self.store.out, self.verbose), total=self.total,
             timeout=self.timeout, callbacks=None if self.quiet else [_print_trial])


def _run_worker(worker: _Worker) -> None:
    """A worker process: its share of the threads, then trials until the study is done."""
    if worker.threads is not None:
        torch.set_num_threads(worker.threads)
    optuna.logging.set_verbosity(optuna.logging.INFO if worker.verbose else optuna.logging.WARNING)
    worker.run(worker.open_study())


def _check_workers(codes: list[int], study: optuna.Study, total: int, out: Path) -> None:
    """The workers' ends as the search's: interrupted (a Ctrl-C reaches every worker), failed,
    or some killed while the others ran their trials again and ended the study."""
    ended = [code for code in codes if code != 0]
    if not ended:
        return
    interrupted = [code - 128 for code in ended if code - 128 in (signal.SIGINT, signal.SIGTERM)]
    if interrupted:
        raise TrainingInterrupted(interrupted[0], out)
    how = ", ".join(f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}" for code in ended)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < total:
        raise BudgetnetError(f"{len(ended)} of {len(codes)} search workers failed ({how}); "
                             "run the same command again to continue the study")
    warn(f"{len(ended)} of {len(codes)} search workers ended early ({how}); the others ran their trials again")


def _open_study(
    store: StudyStore, name: str, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
    limits: dict[str, Any], enqueue: list[dict[str, Any]],
) -> optuna.Study:
    trials_dir = store.out / "trials"
    leftovers = trials_dir.is_dir() and any(trials_dir.iterdir())  # before counting: see below
    try:
        # Workers starting together must not both create the study and queue its first trials.
        with store.lock(name):
            study = optuna.create_study(
                storage=store.storage(), study_name=name, sampler=sampler, pruner=pruner, direction="maximize",
                load_if_exists=True,
            )
            if "budget" not in study.user_attrs:  # a new study
                study.set_user_attr("budget", limits["params"])
                study.set_user_attr("limits", limits)
                for params in enqueue:
                    study.enqueue_trial(params, user_attrs={"enqueued": True})
    except (ImportError, ValueError, OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise BudgetnetError(f"cannot open study {name!r} in {store.label}: {exc}") from None
    if study.user_attrs["budget"] != limits["params"]:
        raise BudgetnetError(
            f"study {name!r} searches under a budget of {study.user_attrs['budget']:,}, not {limits['params']:,}; "
            "use another --study or --out for a new budget"
        )
    # Trials judged under other limits would rank networks that this search rejects, or miss some.
    saved = study.user_attrs.get("limits", limits)
    for key, value in limits.items():
        if saved.get(key, value) != value:
            raise BudgetnetError(f"study {name!r} searches under {key} = {saved[key]}, not {value}; "
                                 "use another --study or --out for other limits")
    # A trial directory exists only after its trial does, so trial dirs here with no trials in
    # the study mean another study's leftovers, whose numbers would clash with this one's.
    if leftovers and not study.get_trials(deepcopy=False):
        raise BudgetnetError(
            f"{trials_dir} holds trials of another study; use a new --out, or the study's own --storage/--study"
        )
    return study


def _prune(trial: optuna.Trial, note: str, **attrs: Any) -> NoReturn:
    """End a trial as pruned, so it counts as done and TPE learns to avoid its region."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("note", " ".join(note.split())[:300])
    raise optuna.TrialPruned(note)


@contextmanager
def _silenced(enabled: bool) -> Iterator[None]:
    """Hide a trial's per-epoch lines (the engine prints them on stderr)."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stderr(sink):
        yield


def _drop_checkpoints(run_dir: Path, keep_best: bool) -> None:
    """A finished trial never resumes: keep only a complete trial's best.pt (disk: a 5M-param
    trial would otherwise leave 60 MB of checkpoints)."""
    for name in (LAST, PREVIOUS) if keep_best else (LAST, PREVIOUS, BEST):
        (run_dir / name).unlink(missing_ok=True)


class _Objective:
    """One trial: sample, resolve, reject over a limit, train with per-epoch pruning."""

    def __init__(self, space: SearchSpace, base: dict[str, Any], shape: DataShape, out: Path, verbose: bool) -> None:
        self.space, self.base, self.shape, self.out, self.verbose = space, base, shape, out, verbose

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except (TrainingInterrupted, KeyboardInterrupt):
            retry(trial.study, running_trial(trial))
            trial.set_user_attr("note", "interrupted; queued again")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        # Every knob is suggested, also for a retry (whose values are fixed), so each trial
        # row carries its parameters.
        values = {name: spec.suggest(trial, name) for name, spec in self.space.params.items()}
        resumed = self._resumable(trial)
        if resumed is not None:
            cfg, run_dir = resumed
        else:
            try:
                cfg = self.space.resolve(values, self.base, self.shape)
            except BudgetnetError as exc:
                _prune(trial, f"error: {exc}", error=True)
            run_dir = self.out / "trials" / str(trial.number)
        counted = summarize(cfg.model, cfg.budget)
        trial.set_user_attr("params", counted.params)
        trial.set_user_attr("flops", counted.flops)
        if (reason := over_limits(cfg.model, cfg.limits)) is not None:
            _prune(trial, f"over budget: the candidate {reason}", over_budget=True)
        trial.set_user_attr("run_dir", run_dir.relative_to(self.out).as_posix())
        trial.set_user_attr("config", cfg.model_dump(mode="json"))
        reported: set[int] = set()
        try:
            with _silenced(not self.verbose):
                result = train(cfg, run_dir, resume=resumed is not None, quiet=True,
                               on_epoch_end=lambda row: self._epoch_end(trial, row, cfg.train.epochs, run_dir, reported))
        except optuna.TrialPruned:
            _drop_checkpoints(run_dir, keep_best=False)
            raise
        # Divergence, a batch larger than the data, a candidate too big for the device's memory:
        # that candidate's problem, not the search's.
        except (BudgetnetError, torch.OutOfMemoryError) as exc:
            _drop_checkpoints(run_dir, keep_best=False)
            _prune(trial, f"error: {exc}", error=True)
        _drop_checkpoints(run_dir, keep_best=True)
        s = result.summary
        trial.set_user_attr("epochs_run", s["epochs_run"])
        trial.set_user_attr("train_seconds", s["train_seconds"])
        return float(s["best_val_acc"])

    def _resumable(self, trial: optuna.Trial) -> tuple[RunConfig, Path] | None:
        """For a retry whose trial left a checkpoint here: that trial's config and directory
        (a retry starts with the attributes of the trial it retries). Elsewhere (another
        machine, or killed before its first checkpoint) the retry trains afresh."""
        number = retried_trial(running_trial(trial))
        if number is None:
            return None
        attrs = trial.user_attrs
        if "config" not in attrs or not (self.out / attrs["run_dir"] / LAST).exists():
            trial.set_user_attr("note", f"retry of trial {number}")
            return None
        trial.set_user_attr("note", f"resumed trial {number}")
        return build_config(attrs["config"]), self.out / attrs["run_dir"]

    def _epoch_end(self, trial: optuna.Trial, row: dict[str, float], epochs: int, run_dir: Path,
                   reported: set[int]) -> None:
        epoch = int(row["epoch"])
        # The pruner sees a resumed trial's earlier epochs too, read at its first epoch's end: by
        # then the restore has rewritten metrics.csv from the checkpoint's own history, which a kill
        # between the checkpoint and the metrics file cannot leave one epoch short.
        for earlier in [*read_metrics(run_dir / "metrics.csv"), row] if not reported else [row]:
            if (e := int(earlier["epoch"])) <= epoch and e not in reported:
                trial.report(earlier["val_acc"], e)
                reported.add(e)
        trial.set_user_attr("epochs_run", epoch)
        trial.set_user_attr("train_seconds", row["train_seconds"])
        # Pruning after the last epoch would save nothing and throw a finished result away.
        if epoch < epochs and trial.should_prune():
            _prune(trial, f"pruned after epoch {epoch}")


# ---- reporting ---------------------------------------------------------------------------


def _state(t: FrozenTrial) -> str:
    if t.state == TrialState.PRUNED:
        return "over budget" if t.user_attrs.get("over_budget") else "error" if t.user_attrs.get("error") else "pruned"
    return {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed", TrialState.RUNNING: "running",
            TrialState.WAITING: "waiting"}[t.state]


def _val_acc(t: FrozenTrial) -> float | None:
    """A complete trial's value; for a pruned one the best epoch it reached (fewer epochs, so
    not comparable with complete ones: they rank below them)."""
    if t.state == TrialState.COMPLETE:
        return t.value
    return max(t.intermediate_values.values()) if t.intermediate_values else None


def trial_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per trial, ranked: complete by validation accuracy, then pruned by the accuracy
    they reached, then the rest; ties go to fewer parameters. `pareto` marks complete trials on the params/accuracy front."""
    rows = []
    for t in trials:
        rows.append({
            "trial": t.number, "state": _state(t), "val_acc": _val_acc(t), "params": t.user_attrs.get("params"),
            "flops": t.user_attrs.get("flops"), "epochs": t.user_attrs.get("epochs_run"),
            "train_seconds": t.user_attrs.get("train_seconds"), "pareto": False,
            "note": t.user_attrs.get("note", ""), "run_dir": t.user_attrs.get("run_dir", ""),
            "worker": t.user_attrs.get(WORKER_ATTR, ""), "values": dict(t.params),
        })
    group = {"complete": 0, "pruned": 1}
    # Equal accuracy: the smaller network first (it leaves budget for width or an ensemble).
    rows.sort(key=lambda r: (group.get(r["state"], 2), r["val_acc"] is None, -(r["val_acc"] or 0.0),
                             r["params"] if r["params"] is not None else math.inf, r["trial"]))
    best = -math.inf
    for row in sorted((r for r in rows if r["state"] == "complete"), key=lambda r: (r["params"], -r["val_acc"])):
        if row["val_acc"] > best:
            row["pareto"], best = True, row["val_acc"]
    return [{"rank": i, **row} for i, row in enumerate(rows, 1)]


def study_result(study: optuna.Study, store: StudyStore) -> SearchResult:
    """The study as it is now (ranked trials, the best, importances), without writing files."""
    rows = trial_rows(study.get_trials(deepcopy=False))
    importance, note = _importance(study)
    top = next((r for r in rows if r["state"] == "complete"), None)
    best = None if top is None else {
        k: top[k] for k in ("trial", "val_acc", "params", "flops", "epochs", "train_seconds", "run_dir", "worker", "values")
    }
    return SearchResult(store.out, study.study_name, store.label, rows, best, importance, note)


def write_report(study: optuna.Study, store: StudyStore) -> SearchResult:
    """Write trials.csv, pareto.png, importance.png (when it can be computed), best.yaml and
    summary.json into the search directory for the study as it is now."""
    result = study_result(study, store)
    out, files = store.out, result.files
    _write_csv(out / "trials.csv", result.rows)
    _plot_pareto(out / "pareto.png", result.rows, study.user_attrs.get("budget"))
    files.update(trials_csv=str(out / "trials.csv"), pareto_png=str(out / "pareto.png"))
    if result.importance is not None:
        _plot_importance(out / "importance.png", result.importance)
        files["importance_png"] = str(out / "importance.png")
    if result.best is not None:
        best = result.best
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == best["trial"])
        path = out / "best.yaml"
        header = (
            f"# Best trial {best['trial']} of search {study.study_name!r}: validation accuracy "
            f"{100 * best['val_acc']:.2f}%, {best['params']:,} parameters.\n# Train it: budgetnet train --config {path}\n"
        )
        atomic_write_bytes(path, (header + dump_config(build_config(trial.user_attrs["config"]))).encode())
        files["best_yaml"] = best["config"] = str(path)
    files["summary_json"] = str(out / "summary.json")
    write_json(out / "summary.json", result.to_dict())
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(name for row in rows for name in row["values"]))
    columns = ["rank", "trial", "state", "val_acc", "params", "flops", "epochs", "train_seconds", "pareto", "note", "run_dir",
               "worker"]
    write_csv(path, columns + names, (
        ["" if row[c] is None else f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in columns]
        + [row["values"].get(n, "") for n in names]
        for row in rows
    ))


def _plot_pareto(path: Path, rows: list[dict[str, Any]], budget: int | None) -> None:
    """Validation accuracy against parameters: complete trials, the front of the best accuracy
    for fewer parameters, pruned trials faintly (their accuracy is from fewer epochs)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pruned = [r for r in rows if r["state"] == "pruned" and r["val_acc"] is not None]
    done = [r for r in rows if r["state"] == "complete"]
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["params"])
    if pruned:
        ax.scatter([r["params"] for r in pruned], [100 * r["val_acc"] for r in pruned], s=12, c="0.75", label="pruned (partial)")
    if done:
        ax.scatter([r["params"] for r in done], [100 * r["val_acc"] for r in done], s=20, c="tab:blue", label="complete")
        ax.step([r["params"] for r in front], [100 * r["val_acc"] for r in front], where="post", c="tab:red",
                marker="o", ms=5, label="Pareto front")
        for r in front:
            ax.annotate(str(r["trial"]), (r["params"], 100 * r["val_acc"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if budget:
        ax.axvline(budget, ls="--", c="0.4", lw=1, label=f"budget {budget:,}")
    if not (done or pruned):
        ax.text(0.5, 0.5, "no trial has trained yet", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 4.8M, 500k
    ax.set(xlabel="trainable parameters", ylabel="validation accuracy (%)", title="Parameters vs validation accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    write_png(path, fig)


def _importance(study: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = list(dict.fromkeys(n for t in complete for n in t.params))
    varied = [n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1]
    if len(complete) < MIN_IMPORTANCE_TRIALS or not varied:
        return None, (
            f"no parameter importance: it needs at least {MIN_IMPORTANCE_TRIALS} complete trials that differ in "
            f"their parameters; the study has {len(complete)} complete"
        )
    # PED-ANOVA (no scikit-learn needed) compares the best trials' parameters with all of
    # them; Optuna's default top 10% holds under two trials until 20 are complete.
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=max(0.1, 2 / len(complete)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)), None
    except (ValueError, RuntimeError) as exc:
        return None, f"no parameter importance: {exc}"


def _plot_importance(path: Path, importance: dict[str, float]) -> None:
    plt = pyplot()
    names = list(importance)[::-1]  # most important on top
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * len(names)))
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance for reaching the best validation accuracies (PED-ANOVA)", title="Parameter importance")
    ax.grid(axis="x", alpha=0.3)
    write_png(path, fig)


def _print_trial(study: optuna.Study, t: FrozenTrial) -> None:
    a = t.user_attrs
    if t.state == TrialState.COMPLETE:
        line = f"val acc {100 * t.value:.2f}%, {a['params']:,} params, {a['train_seconds']:.1f}s training"
    else:
        line = a.get("note") or t.state.name.lower()
    stderr_line(f"trial {t.number}: {line}")
