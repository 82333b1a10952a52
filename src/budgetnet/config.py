"""The one run schema: every section of a run config, validated together.

A run config is YAML; CLI flags override it; the resolved config (presets expanded, defaults
filled in) is saved as `config.yaml` in every run directory, so any run can be repeated with
`budgetnet train --config RUN/config.yaml`.

Each section's schema lives next to the code it configures (`data`, `models`, `train.optim`,
`train.schedules`), except the training loop's `TrainConfig`: it is here, so that this module
never imports the loop (`train.engine`), which imports it.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from budgetnet.data import AugmentConfig, DataConfig, DataShape, data_shape
from budgetnet.errors import BudgetnetError
from budgetnet.models import Budget, ResNetSpec, format_validation_error, get_preset, load_model_section
from budgetnet.models.limits import ByteSize, Flops, Limits
from budgetnet.models.spec import match_data, validate_spec
from budgetnet.train.callbacks import EarlyStoppingConfig
from budgetnet.train.optim import LookaheadConfig, OptimConfig, SGDConfig
from budgetnet.train.schedules import CosineSchedule, ScheduleConfig
from budgetnet.train.selection import DataSelectionConfig
from budgetnet.train.tagged import kinds

DEFAULT_RECIPE = "flagship"
# The run-config keys of the limits (`RunConfig.limits`); space files take them too.
LIMIT_KEYS = ("budget", "max_flops", "max_bytes", "int8_bytes", "max_latency_ms", "latency_batch")


class ResizeStage(BaseModel):
    """Train on smaller images until `until` (a fraction of the planned steps): `size` pixels a
    side, or `scale` times the input's side."""

    model_config = ConfigDict(extra="forbid")

    until: float = Field(gt=0, le=1)
    size: int | None = Field(None, ge=4, le=4096, description="the side in pixels")
    scale: float | None = Field(
        None, gt=0, lt=1, description="the side as a fraction of the input's, rounded (0.875: 28 of 32, 56 of "
        "64): for a recipe meant for images of any size")
    mode: Literal["resize", "crop"] = Field(
        "resize", description="resize: the whole augmented image, downscaled (objects shrink); crop: a random "
        "square window of it per image at the stage's side (objects keep their scale, the borders are left out)")

    @model_validator(mode="after")
    def _one_side(self) -> ResizeStage:
        if (self.size is None) == (self.scale is None):
            raise ValueError("a progressive stage takes either `size` (pixels) or `scale` (of the input's side)")
        return self

    def side(self, input_size: int) -> int:
        """The stage's side in pixels, for inputs of `input_size` a side."""
        if self.size is not None:
            return self.size
        assert self.scale is not None
        return max(1, math.floor(self.scale * input_size + 0.5))


def require_increasing(values: list[float], rule: str) -> None:
    """A validator's check: `values` strictly increase, or a ValueError stating `rule`."""
    if values != sorted(set(values)):
        raise ValueError(f"{rule}, got {values}")


class TrainConfig(BaseModel):
    """Training-loop section of a run config."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(512, ge=1, le=65_536)
    eval_batch_size: int = Field(1000, ge=1, le=65_536)
    seed: int = Field(0, ge=0, lt=2**63)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    micro_batch: int | None = Field(
        None, ge=1, le=65_536,
        description="forward/backward the batch in slices of this many images (same update, BN "
        "statistics per slice): large batches run slower per image on CPUs (speedrun_2m on 2 AVX2 "
        "cores: 0.106 TFLOP/s at 500 images, 0.065 at 2,000)",
    )
    threads: int | None = Field(None, ge=1, le=1024)
    sync_bn: bool = Field(
        False, description="with several processes (torchrun, --nproc): batch-norm statistics over the whole "
        "batch (SyncBatchNorm, CUDA only) instead of each process's part of it",
    )
    early_stopping: EarlyStoppingConfig | None = None
    ema_decay: float | None = Field(None, gt=0, lt=1, description="evaluate an EMA of the weights")
    lookahead: LookaheadConfig | None = Field(
        None, description="Lookahead around the optimizer: every `steps` steps the weights are set `alpha` of "
        "the way from where they stood `steps` steps before to where the optimizer took them"
    )
    tta: bool | Literal["final"] = Field(
        False, description="flip+translate test-time augmentation for validation; final: only after the last "
        "epoch (TTA is 6 forward passes: on a CPU, 8 TTA validations cost speedrun_2m ~8 minutes)",
    )
    on_nan: Literal["stop", "skip"] = "stop"
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint mid-epoch")
    max_train_seconds: float | None = Field(None, gt=0, description="stop after this much training time")
    time_budget_s: float | None = Field(
        None, gt=0,
        description="plan the run to fit this much training time: the steps that fit are timed "
        "before training, and the epochs and schedule are compressed to them (never stretched); "
        "none (or off) for no time budget",
    )
    pflop_budget: float | None = Field(
        None, gt=0,
        description="plan the run to fit this much training compute (PFLOP: 3 x forward FLOPs x images "
        "trained), compressing epochs and schedule like time_budget_s; with both, the tighter wins; "
        "none (or off) for no compute budget",
    )
    shape_table: str | None = Field(
        None,
        description="with time_budget_s: train the shape of this table (a shipped name or a YAML path) "
        "expected to be most accurate in that time on this machine, not the model section's "
        "(shape_planner.py); the resolved config records the shape chosen",
    )
    progressive: list[ResizeStage] = Field(
        default_factory=list,
        description="progressive resizing: early steps on smaller images (downscaled or cropped), which "
        "cost fewer FLOPs (FLOPs scale with pixels); stages in order of `until`, full size after the last",
    )
    data_selection: DataSelectionConfig | None = Field(
        None, description="InfoBatch: each epoch, images whose last loss is below the mean sit out with "
        "probability `prune` and the rest of them count 1/(1-prune); the epoch keeps its steps, drawn from the "
        "images kept (train/selection.py)",
    )
    log: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="experiment trackers fed every epoch (see train/tracking.py)"
    )

    @field_validator("progressive")
    @classmethod
    def _stages_in_order(cls, value: list[ResizeStage]) -> list[ResizeStage]:
        require_increasing([stage.until for stage in value], "progressive stages must have increasing `until` fractions")
        return value

    @field_validator("time_budget_s", "pflop_budget", mode="before")
    @classmethod
    def _budget_off(cls, value: Any, info: ValidationInfo) -> Any:
        # "none"/"off" lift a budget; so does a time beyond a year, which cannot be planned.
        if isinstance(value, str) and value.strip().lower() in ("none", "off", "null", ""):
            return None
        if (info.field_name == "time_budget_s" and isinstance(value, (int, float)) and not isinstance(value, bool)
                and value > 365 * 86400):
            return None
        return value


class RunConfig(BaseModel):
    """Everything that defines a training run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    budget: Budget = 5_000_000
    max_flops: Flops | None = Field(None, description="forward FLOPs per image at most (300M, 1.5G)")
    max_bytes: ByteSize | None = Field(None, description="stored weight bytes at most (2MB, 1.5MiB): fp32, or int8 "
                                                         "with int8_bytes")
    int8_bytes: bool = Field(False, description="max_bytes counts the weights as the int8 export stores them")
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                         description="milliseconds per image at latency_batch on this machine's CPU")
    latency_batch: int = Field(1, ge=1, le=4096, description="batch size the latency is measured at")
    allow_over_budget: bool = False
    model: ResNetSpec = Field(default_factory=lambda: get_preset(DEFAULT_RECIPE))
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=SGDConfig)
    schedule: ScheduleConfig = Field(default_factory=CosineSchedule)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def limits(self) -> Limits:
        """The parameter budget and every other limit the config sets."""
        return Limits(params=self.budget, flops=self.max_flops, bytes=self.max_bytes, int8_bytes=self.int8_bytes,
                      latency_ms=self.max_latency_ms, latency_batch=self.latency_batch)

    @field_validator("model", mode="before")
    @classmethod
    def _expand_preset(cls, value: Any) -> Any:
        if isinstance(value, dict):
            try:
                return load_model_section(value)
            except BudgetnetError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("train")
    @classmethod
    def _early_stopping_needs_validation(cls, value: TrainConfig, info: ValidationInfo) -> TrainConfig:
        # Without a validation split the monitored metric is NaN, never an improvement, so the
        # run would stop after `patience` epochs whatever it learned.
        data = info.data.get("data")
        if value.early_stopping is not None and data is not None and data.val_size == 0:
            raise ValueError(
                "early_stopping monitors the validation split, but data.val_size is 0; "
                "keep a validation split (--val-size N) or drop early_stopping"
            )
        return value


def read_data_shape(cfg: RunConfig) -> DataShape:
    """The classes and image side of the run's dataset: at data.input_size, else at the
    model's input_size where the config sets that, else at the images' own size."""
    data = cfg.data
    if data.input_size is None and "input_size" in cfg.model.model_fields_set:
        data = data.model_copy(update={"input_size": cfg.model.input_size})
    return data_shape(data)


def fit_to_data(cfg: RunConfig, shape: DataShape | None = None) -> RunConfig:
    """`cfg` with its data's image side written into data.input_size, and the model's classes
    and input size taken from the data where the config leaves them out (a preset on CIFAR-100
    gets 100 outputs; one on 64x64 images takes 64x64). `shape` is the data's when already
    read (`read_data_shape`); otherwise the dataset is opened (no images are decoded)."""
    shape = shape or read_data_shape(cfg)
    name = cfg.data.path or "the downloaded dataset"
    fields = match_data(cfg.model.model_dump(exclude_unset=True), len(shape.classes), shape.input_size, name)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"input_size": shape.input_size}),
                                  "model": validate_spec(fields)})


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (`budgetnet train --recipe NAME`)."""
    folder = resources.files("budgetnet") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_mapping(name: str) -> dict[str, Any]:
    """The raw mapping of a shipped recipe."""
    if name not in list_recipes():
        raise BudgetnetError(f"unknown recipe {name!r}; choose one of: {', '.join(list_recipes())}")
    text = (resources.files("budgetnet") / "recipes" / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def read_yaml_mapping(path: Path, holds: str = "a mapping of sections") -> dict[str, Any]:
    """A YAML file that must hold a mapping (`holds` names it in the error); one-line errors
    for everything else."""
    path = Path(path)
    try:
        if not path.is_file():  # raises, not False, for a name too long for the file system
            raise BudgetnetError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        size = _expanded_size(data)
    except OSError as exc:
        raise BudgetnetError(f"cannot read config file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise BudgetnetError(f"config file {path} is not valid YAML{at}") from None
    except RecursionError:
        raise BudgetnetError(f"config file {path} is nested too deeply (or refers to itself) to be a config") from None
    if size > MAX_YAML_VALUES:
        # Aliases share one object per anchor, so the document itself is small; validation and
        # error messages would walk every copy (nine nested nine-way aliases: 387M values).
        raise BudgetnetError(
            f"config file {path} expands to {size:,} values through its YAML aliases; a config needs far fewer"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BudgetnetError(f"config file {path} must hold {holds}, not {type(data).__name__}")
    return data


MAX_YAML_VALUES = 100_000


def _expanded_size(data: Any) -> int:
    """How many values `data` holds once every alias is expanded; linear in the distinct objects."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        if id(value) not in sizes:
            items = [x for kv in value.items() for x in kv] if isinstance(value, dict) else value
            sizes[id(value)] = 1 + sum(size(x) for x in items)
        return sizes[id(value)]

    return size(data)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` wins; nested mappings merge key by key. A model `preset` replaces the section;
    an override naming another optimizer or schedule keeps only the settings of the base that
    the new one takes (`--optimizer adam` over a recipe's SGD drops its momentum)."""
    merged = settings_kept(base, override.get("name"))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and "preset" not in value:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_TAGGED_SECTIONS = (kinds(OptimConfig), kinds(ScheduleConfig))


def settings_kept(section: dict[str, Any], new_name: Any) -> dict[str, Any]:
    """`section` without the settings the kind `new_name` does not take, when `section` is an
    optimizer or schedule section of another kind (about to be renamed `new_name`); otherwise
    all of it."""
    for by_name in _TAGGED_SECTIONS:
        settings = {key for kind in by_name.values() for key in kind.model_fields}
        renamed = isinstance(new_name, str) and section.get("name", new_name) != new_name
        if renamed and new_name in by_name and set(section) <= settings:
            return {key: value for key, value in section.items() if key in by_name[new_name].model_fields}
    return dict(section)


def build_config(mapping: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a run-config mapping; one-line BudgetnetError naming the bad field."""
    try:
        return RunConfig.model_validate(mapping)
    except ValidationError as exc:
        raise BudgetnetError(f"{source}: {format_validation_error(exc)}") from None


def load_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None, recipe: str | None = None
) -> RunConfig:
    """Recipe <- YAML file <- overrides, validated as one RunConfig.

    With no file, the recipe defaults to the flagship. A file stands on its own (pydantic
    defaults fill what it omits, the model defaults to the flagship preset) unless a recipe is
    named too, in which case the file overrides the recipe. A model section in the file or the
    overrides turns a recipe's `train.shape_table` off: a model named is the model trained.
    """
    mapping = recipe_mapping(recipe or DEFAULT_RECIPE) if path is None or recipe else {}
    layers = [read_yaml_mapping(path)] if path is not None else []
    for layer in [*layers, overrides or {}]:
        train = layer.get("train")
        if "model" in layer and not (isinstance(train, dict) and "shape_table" in train):
            # A model named over a recipe is the model trained: the recipe's shape table is off.
            mapping = deep_merge(mapping, {"train": {"shape_table": None}})
        mapping = deep_merge(mapping, layer)
    return build_config(mapping, source=str(path) if path else "config")


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML, loadable again by `load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
