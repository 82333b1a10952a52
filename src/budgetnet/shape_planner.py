"""Time budgets pick the model: the most accurate shape whose schedule fits S seconds here.

A shape table (data: `recipes/shapes/NAME.yaml`, each with how it was made) lists shapes of
one recipe's family, each with the validation accuracy measured after training E epochs with
that recipe. Epochs, not seconds, so the table holds on every machine; what differs between
machines is how many epochs S seconds buy, so the planner times one training step of each
shape here (but those that could not win even at twice the machine's GEMM peak), turns S into
the epochs each shape would train, reads its expected accuracy off its measured curve and takes
the best. On a slow CPU that is a narrow net trained for several
epochs; on a fast machine the widest one.

Between measured points accuracy is interpolated linearly in log(epochs); below the first it
falls linearly to chance at 0 epochs; beyond the last it is held flat (a guess upwards would
favour the shapes measured least).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from budgetnet.config import RunConfig, build_config, deep_merge, require_increasing
from budgetnet.errors import BudgetnetError
from budgetnet.machine import fastest_seconds, gemm_peak_tflops
from budgetnet.models import build_model, format_validation_error, summarize
from budgetnet.models.budget import over_limits
from budgetnet.models.zoo import model_mapping
from budgetnet.runtime import autocast_dtype, use_channels_last
from budgetnet.train.optim import build_optimizer
from budgetnet.train.planner import mean_over_stages, mean_train_flops_per_image

# The engine's time-budget planner keeps 3% of the budget for what a step's time does not show.
_HEADROOM = 0.97


class MeasuredPoint(BaseModel):
    """Validation accuracy (%) after a full schedule of `epochs` epochs."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(gt=0)
    val_acc: float = Field(ge=0, le=100)


class TableShape(BaseModel):
    """One shape of the family: model overrides laid over the recipe's model section."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: dict[str, Any]
    points: list[MeasuredPoint] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _increasing_epochs(cls, value: list[MeasuredPoint]) -> list[MeasuredPoint]:
        require_increasing([p.epochs for p in value], "points must have increasing epochs")
        return value


class ShapeTable(BaseModel):
    """A family of shapes with measured accuracy; `made_by` says how (commands, machine, data)."""

    model_config = ConfigDict(extra="forbid")

    made_by: str = Field(min_length=1)
    shapes: list[TableShape] = Field(min_length=1)


def list_shape_tables() -> list[str]:
    """Names of the shape tables shipped with the package (`train.shape_table: NAME`)."""
    folder = resources.files("budgetnet") / "recipes" / "shapes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_shape_table(name_or_path: str) -> ShapeTable:
    """A shipped table by name, or a YAML file by path; one-line errors for anything else."""
    if name_or_path in list_shape_tables():
        text = (resources.files("budgetnet") / "recipes" / "shapes" / f"{name_or_path}.yaml").read_text()
    elif Path(name_or_path).is_file():
        text = Path(name_or_path).read_text(encoding="utf-8")
    else:
        raise BudgetnetError(
            f"shape table {name_or_path!r} is neither a shipped table ({', '.join(list_shape_tables())}) nor a file"
        )
    try:
        return ShapeTable.model_validate(yaml.safe_load(text))
    except yaml.YAMLError:
        raise BudgetnetError(f"shape table {name_or_path} is not valid YAML") from None
    except ValidationError as exc:
        raise BudgetnetError(f"shape table {name_or_path}: {format_validation_error(exc)}") from None


def expected_accuracy(points: list[MeasuredPoint], epochs: float, chance: float) -> float:
    """Accuracy (%) expected after `epochs` epochs from a shape's measured points (see the module doc)."""
    if epochs <= 0:
        return chance
    first = points[0]
    if epochs <= first.epochs:
        return chance + (first.val_acc - chance) * epochs / first.epochs
    for lo, hi in zip(points, points[1:]):
        if epochs <= hi.epochs:
            t = math.log(epochs / lo.epochs) / math.log(hi.epochs / lo.epochs)
            return lo.val_acc + t * (hi.val_acc - lo.val_acc)
    return points[-1].val_acc


@dataclass(frozen=True)
class ShapeCandidate:
    name: str
    params: int
    flops: int
    seconds_per_step: float
    epochs: float  # the epochs that fit the budget at that pace
    expected_acc: float
    # False: not timed, since even at twice the machine's GEMM peak (seconds_per_step, then a
    # lower bound; epochs and expected_acc upper bounds) it could not beat a shape timed before it.
    timed: bool = True


@dataclass(frozen=True)
class ShapePlan:
    config: RunConfig  # the chosen shape, epochs to fit, the table cleared (a resume does not plan again)
    choice: ShapeCandidate
    candidates: list[ShapeCandidate]
    seconds: float  # spent timing the candidates

    def as_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice.name, "seconds": round(self.seconds, 2),
            "candidates": [c.__dict__ for c in self.candidates],
        }


def measure_step_seconds(cfg: RunConfig, device: torch.device) -> float:
    """Seconds one training step of `cfg` takes on `device`, averaged over a run: forward and
    backward of one micro-batch slice on random images at full size and at each progressive
    stage's size, weighted by the steps each takes, times the slices of a batch, plus one
    optimizer step, each timed after a warm-up of its own. The engine times its real steps
    again before training; this only has to rank the shapes, so one slice is enough."""
    tc = cfg.train
    amp = autocast_dtype(tc.precision, device)
    fmt = torch.channels_last if use_channels_last(tc.channels_last, device) else torch.contiguous_format
    model = build_model(cfg.model).to(device, memory_format=fmt).train()
    optimizer = build_optimizer(model, cfg.optim)
    size = min(tc.micro_batch or tc.batch_size, tc.batch_size)
    slices = math.ceil(tc.batch_size / size)
    y = torch.randint(0, cfg.model.classes, (size,), device=device)

    def timed(fn: Any) -> float:
        fn()  # warm-up: first-call allocations, lazy optimizer state
        return fastest_seconds(fn, device)

    def slice_seconds(pixels: int) -> float:
        x = torch.randn(size, cfg.model.in_channels, pixels, pixels, device=device).contiguous(memory_format=fmt)

        def forward_backward() -> None:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = F.cross_entropy(model(x), y)
            loss.backward()

        return timed(forward_backward)

    # Progressive stages train early steps on smaller images, as cheaper in seconds as in FLOPs.
    sides = {stage.side(cfg.model.input_size) for stage in tc.progressive}
    stages = {side: slice_seconds(side) for side in sides}
    mean_slice_seconds = mean_over_stages(cfg, slice_seconds(cfg.model.input_size), stages)
    optimizer_seconds = timed(optimizer.step)
    return slices * mean_slice_seconds + optimizer_seconds


def epochs_to_train(epochs_that_fit: float) -> int:
    """The whole epochs a planned shape trains: rounded up, since the engine's time-budget plan
    then fits the steps (and schedule) to S."""
    return max(1, math.ceil(epochs_that_fit))


def plan_shape(
    cfg: RunConfig,
    train_images: int,
    device: torch.device,
    step_seconds: Callable[[RunConfig, torch.device], float] = measure_step_seconds,
    *,
    world_size: int = 1,
    peak_tflops: float | None = None,
) -> ShapePlan:
    """The shape of `cfg.train.shape_table` expected to be most accurate after training for
    `cfg.train.time_budget_s` seconds on `device`, within the budget and every other limit, and its
    epochs. `step_seconds(cfg, device)` times a candidate at one process's part of the batch (tests
    pass a model of it); `peak_tflops`, the machine's GEMM peak in the step's dtype, is measured
    when not given.

    Shapes are timed narrowest first, and a wider one is not timed at all when, even stepping at
    twice that peak, it could not be expected to beat the best timed before it: timing is a
    warm-up and three calls at each image size, eight calls of about 8 s each for speedrun_5m on
    a 2-core AVX2 CPU (speedrun_2m's 500-image slice took 3.1 s there, at 2.55x fewer FLOPs),
    spent on a shape that gets under one epoch of a 300 s budget there."""
    tc = cfg.train
    if tc.shape_table is None or tc.time_budget_s is None:
        raise BudgetnetError("planning a shape needs train.shape_table and train.time_budget_s")
    table = load_shape_table(tc.shape_table)
    base = cfg.model_dump(mode="json")
    steps_per_epoch = max(1, train_images // tc.batch_size)
    part = tc.batch_size // world_size
    chance = 100.0 / cfg.model.classes
    started = time.perf_counter()
    if peak_tflops is None:
        peak_tflops = gemm_peak_tflops(device, autocast_dtype(tc.precision, device) or torch.float32)
    shapes = []
    for shape in table.shapes:
        model = {**base["model"], **model_mapping(shape.model)}
        candidate_cfg = build_config(deep_merge(base, {"model": model}), source=f"shape {shape.name}")
        if cfg.allow_over_budget or over_limits(candidate_cfg.model, cfg.limits) is None:
            shapes.append((shape, candidate_cfg, summarize(candidate_cfg.model)))
    if not shapes:
        raise BudgetnetError(f"no shape of table {tc.shape_table} fits the budget of {cfg.budget:,} parameters "
                             "and the other limits given")
    # Epochs that fit are `step_budget / seconds a step`, or fewer where a compute budget binds
    # as well: the tighter wins, as in training.
    step_budget = _HEADROOM * tc.time_budget_s / steps_per_epoch
    candidates: list[tuple[ShapeCandidate, RunConfig]] = []
    for shape, candidate_cfg, cost in sorted(shapes, key=lambda entry: entry[2].flops):
        flops_per_image = mean_train_flops_per_image(candidate_cfg)
        compute_cap = (math.inf if tc.pflop_budget is None
                       else tc.pflop_budget * 1e15 / (3 * flops_per_image * tc.batch_size * steps_per_epoch))
        # Twice the GEMM peak: the flagship's step measured 30-92% of it on the CPUs here (92%:
        # fp32 on an AVX2 EPYC), so the bound holds even for a kernel faster than the 2048^3 matmul.
        fastest = 3 * flops_per_image * part / (2 * peak_tflops * 1e12)
        most_epochs = min(step_budget / fastest, compute_cap)
        ceiling = expected_accuracy(shape.points, most_epochs, chance)
        best = max((c.expected_acc for c, _ in candidates if c.timed), default=None)
        if best is not None and ceiling < best:
            candidate = ShapeCandidate(shape.name, cost.params, cost.flops, fastest, most_epochs, ceiling, timed=False)
        else:
            part_train = candidate_cfg.train.model_copy(update={"batch_size": part})
            seconds = step_seconds(candidate_cfg.model_copy(update={"train": part_train}), device)
            epochs = min(step_budget / seconds, compute_cap)
            candidate = ShapeCandidate(shape.name, cost.params, cost.flops, seconds, epochs,
                                       expected_accuracy(shape.points, epochs, chance))
        candidates.append((candidate, candidate_cfg))
    choice, chosen = max(((c, c_cfg) for c, c_cfg in candidates if c.timed),
                         key=lambda pair: (pair[0].expected_acc, -pair[0].params))
    train = {**chosen.train.model_dump(mode="json"), "epochs": epochs_to_train(choice.epochs), "shape_table": None}
    planned = build_config({**chosen.model_dump(mode="json"), "train": train}, source="planned shape")
    return ShapePlan(planned, choice, [c for c, _ in candidates], time.perf_counter() - started)
