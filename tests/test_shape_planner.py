"""Time budgets pick the model (`train.shape_table`): the accuracy curves, the choice, and a run
that plans its shape and records it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_synthetic, tiny_run_config, write_npz
from hypothesis import given
from hypothesis import strategies as st

from budgetnet.config import load_config, recipe_mapping
from budgetnet.errors import BudgetnetError
from budgetnet.machine import fastest_seconds, gemm_peak_tflops
from budgetnet.models import count_params, summarize
from budgetnet.shape_planner import (
    MeasuredPoint,
    expected_accuracy,
    list_shape_tables,
    load_shape_table,
    measure_step_seconds,
    plan_shape,
)
from budgetnet.train import engine
from budgetnet.train.checkpoint import Progress
from budgetnet.train.distributed import Ranks
from budgetnet.train.planner import Planner, mean_train_flops_per_image

POINTS = [MeasuredPoint(epochs=2, val_acc=60.0), MeasuredPoint(epochs=8, val_acc=80.0)]


def test_accuracy_curve_goes_through_the_measured_points() -> None:
    assert expected_accuracy(POINTS, 0.0, chance=10.0) == 10.0
    assert expected_accuracy(POINTS, 1.0, chance=10.0) == pytest.approx(35.0)  # linear from chance
    assert expected_accuracy(POINTS, 2.0, chance=10.0) == pytest.approx(60.0)
    assert expected_accuracy(POINTS, 4.0, chance=10.0) == pytest.approx(70.0)  # halfway in log epochs
    assert expected_accuracy(POINTS, 8.0, chance=10.0) == pytest.approx(80.0)
    assert expected_accuracy(POINTS, 100.0, chance=10.0) == pytest.approx(80.0)  # held flat beyond


@given(st.floats(0, 50), st.floats(0, 50))
def test_accuracy_curve_never_falls_with_more_epochs(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert expected_accuracy(POINTS, lo, 10.0) <= expected_accuracy(POINTS, hi, 10.0) + 1e-9


def write_table(path: Path, shapes: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"made_by": "by hand, for a test", "shapes": shapes}))
    return path


NARROW = {"name": "narrow", "model": {"channels": [4]}, "points": [{"epochs": 2, "val_acc": 60}, {"epochs": 8, "val_acc": 70}]}
WIDE = {"name": "wide", "model": {"channels": [32]}, "points": [{"epochs": 2, "val_acc": 50}, {"epochs": 8, "val_acc": 90}]}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "easy.npz", make_synthetic({"train": 70, "test": 2}, seed=3, size=16))


def planned(tmp_path: Path, data: Path, seconds: float, train: dict | None = None, **run: object):
    table = write_table(tmp_path / "table.yaml", [NARROW, WIDE])
    cfg = tiny_run_config(data, train={"shape_table": str(table), "time_budget_s": seconds, **(train or {})})
    if run:
        cfg = cfg.model_copy(update=run)
    # A step of the wide shape "takes" 8x the narrow one's: 1 s vs 0.125 s.
    return plan_shape(cfg, 100, torch.device("cpu"), lambda c, d: 1.0 if c.model.channels == [32] else 0.125)


def test_a_short_budget_picks_the_narrow_shape_a_long_one_the_wide(tmp_path: Path, data: Path) -> None:
    # 100 images at batch 30: 3 steps an epoch.
    short = planned(tmp_path, data, seconds=6.0)  # narrow: 15.5 epochs (70%); wide: 1.9 (~48%)
    assert short.choice.name == "narrow" and short.config.model.channels == [4]
    assert short.choice.epochs == pytest.approx(0.97 * 6.0 / 0.125 / 3)
    assert short.config.train.epochs == 16 and short.config.train.shape_table is None
    long = planned(tmp_path, data, seconds=30.0)  # wide: 9.7 epochs (90%)
    assert long.choice.name == "wide" and long.config.model.channels == [32]
    assert {c.name for c in long.candidates} == {"narrow", "wide"}


def test_a_compute_budget_caps_the_epochs_each_shape_is_expected_at(tmp_path: Path, data: Path) -> None:
    cfg = tiny_run_config(data)
    flops = {w: summarize(cfg.model.model_copy(update={"channels": [w]})).flops for w in (4, 32)}
    # 30 s buy the wide shape 9.7 epochs (90%); a compute budget of 2 of its epochs (3 steps of 30)
    # leaves it 50%, where the narrow shape's cheaper steps still buy it 8 epochs or more (70%).
    pflop = 3 * flops[32] * 30 * 3 * 2 / 1e15
    plan = planned(tmp_path, data, seconds=30.0, train={"pflop_budget": pflop})
    expected = {c.name: c.epochs for c in plan.candidates}
    assert expected["wide"] == pytest.approx(2.0)
    assert expected["narrow"] == pytest.approx(min(0.97 * 30 / 0.125 / 3, 2.0 * flops[32] / flops[4]))
    assert expected["narrow"] >= 8
    assert plan.choice.name == "narrow" and plan.config.train.pflop_budget == pflop


def test_the_compute_cap_counts_progressive_stages_as_training_does(tmp_path: Path, data: Path) -> None:
    # Half the steps on 8 px crops of the 16 px images: cheaper steps, so the same PFLOP pays for
    # more of them, in the plan as in the run it plans.
    stages = {"progressive": [{"size": 8, "until": 0.5}]}
    cfg = tiny_run_config(data, train=stages)
    wide = cfg.model_copy(update={"model": cfg.model.model_copy(update={"channels": [32]})})
    mean = mean_train_flops_per_image(wide)
    assert mean < summarize(wide.model).flops
    pflop = 3 * mean * 30 * 3 * 2 / 1e15 * (1 + 1e-9)  # 2 epochs of 3 steps of 30 at the mean cost
    plan = planned(tmp_path, data, seconds=30.0, train={"pflop_budget": pflop, **stages})
    assert {c.name: c.epochs for c in plan.candidates}["wide"] == pytest.approx(2.0)
    run = wide.model_copy(update={"train": wide.train.model_copy(update={"pflop_budget": pflop, "epochs": 50})})
    planner = Planner(run, 3, Progress(), Ranks(torch.device("cpu")))
    planner.plan(lambda: (0.0, 0.0, 0.0))
    assert planner.progress.planned_steps == 6


def test_a_shape_that_could_not_win_even_at_twice_the_gemm_peak_is_not_timed(tmp_path: Path, data: Path) -> None:
    # Listed widest first; timed narrowest first. 6 s of 3 steps an epoch: at the narrow shape's
    # 0.125 s a step it expects 70%. A peak at which the wide shape's step could at best take
    # 1.94 s (one epoch: halfway from chance to its 50% at two) rules it out untimed; a 100x
    # faster machine does not.
    table = write_table(tmp_path / "table.yaml", [WIDE, NARROW])
    cfg = tiny_run_config(data, train={"shape_table": str(table), "time_budget_s": 6.0})
    wide = cfg.model_copy(update={"model": cfg.model.model_copy(update={"channels": [32]})})
    fastest = 0.97 * 6.0 / 3
    peak = 3 * mean_train_flops_per_image(wide) * 30 / (2 * fastest * 1e12)
    for scale, timed in ((1.0, False), (100.0, True)):
        calls: list[list[int]] = []

        def step_seconds(c, d, calls=calls) -> float:
            calls.append(c.model.channels)
            return 1.0 if c.model.channels == [32] else 0.125

        plan = plan_shape(cfg, 100, torch.device("cpu"), step_seconds, peak_tflops=peak * scale)
        assert calls == ([[4], [32]] if timed else [[4]]) and plan.choice.name == "narrow"
        candidate = {c.name: c for c in plan.candidates}["wide"]
        assert candidate.timed is timed
        if not timed:
            assert candidate.seconds_per_step == pytest.approx(fastest)
            chance = 100 / cfg.model.classes
            assert candidate.epochs == pytest.approx(1.0) and candidate.expected_acc == pytest.approx((chance + 50) / 2)


def test_each_process_times_its_part_of_the_batch(tmp_path: Path, data: Path) -> None:
    table = write_table(tmp_path / "table.yaml", [NARROW])
    cfg = tiny_run_config(data, train={"shape_table": str(table), "time_budget_s": 6.0})
    batches: list[int] = []
    plan_shape(cfg, 100, torch.device("cpu"), lambda c, d: batches.append(c.train.batch_size) or 0.125, world_size=2)
    assert batches == [15]


def test_the_gemm_peak_is_a_positive_rate() -> None:
    assert gemm_peak_tflops(torch.device("cpu"), torch.float32) > 0


def test_shapes_over_the_parameter_budget_are_not_candidates(tmp_path: Path, data: Path) -> None:
    cfg = tiny_run_config(data)
    narrow = count_params(cfg.model.model_copy(update={"channels": [4]}))
    plan = planned(tmp_path, data, seconds=30.0, budget=narrow)
    assert [c.name for c in plan.candidates] == ["narrow"] and plan.choice.name == "narrow"


def test_a_run_with_a_shape_table_plans_its_shape_and_records_it(tmp_path: Path, data: Path) -> None:
    table = write_table(tmp_path / "table.yaml", [NARROW, WIDE])
    cfg = tiny_run_config(data, train={"shape_table": str(table), "time_budget_s": 3.0})
    result = engine.train(cfg, tmp_path / "run", quiet=True)
    plan = json.loads((tmp_path / "run" / "shape_plan.json").read_text())
    assert plan["choice"] in ("narrow", "wide") and len(plan["candidates"]) == 2
    assert all(c["seconds_per_step"] > 0 for c in plan["candidates"])
    saved = load_config(tmp_path / "run" / "config.yaml")
    chosen = {"narrow": [4], "wide": [32]}[plan["choice"]]
    assert saved.model.channels == chosen and saved.train.shape_table is None  # repeats train the same shape
    assert result.summary["params"] == count_params(saved.model)
    engine.train(saved, tmp_path / "run", resume=True, quiet=True)  # resuming does not plan again
    assert json.loads((tmp_path / "run" / "shape_plan.json").read_text()) == plan


def test_a_wider_model_takes_longer_to_step(data: Path) -> None:
    cfg = tiny_run_config(data, train={"batch_size": 64})
    wide = cfg.model_copy(update={"model": cfg.model.model_copy(update={"channels": [64], "blocks": [2]})})
    assert measure_step_seconds(wide, torch.device("cpu")) > measure_step_seconds(cfg, torch.device("cpu")) > 0


def test_step_timing_reads_the_fastest_call_not_a_slowed_one() -> None:
    delays = iter([0.3, 0.0, 0.0])
    assert fastest_seconds(lambda: time.sleep(next(delays)), torch.device("cpu")) < 0.1


def test_step_time_counts_progressive_stages_as_training_takes_them(data: Path) -> None:
    # 90% of the steps at 4 px instead of 32 px: 1/64 of the pixels there, so well under
    # half the full-size seconds however the clock jitters (the compute cap's twin, above).
    sections = {"data": {"input_size": 32}, "model": {"input_size": 32, "channels": [16]}}
    cfg = tiny_run_config(data, **sections, train={"batch_size": 128})
    progressive = tiny_run_config(data, **sections, train={"batch_size": 128, "progressive": [{"until": 0.9, "size": 4}]})
    full = min(measure_step_seconds(cfg, torch.device("cpu")) for _ in range(3))
    assert min(measure_step_seconds(progressive, torch.device("cpu")) for _ in range(3)) < 0.5 * full


def test_bad_tables_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BudgetnetError, match="neither a shipped table"):
        load_shape_table(str(tmp_path / "missing.yaml"))
    bad = write_table(tmp_path / "bad.yaml", [{**NARROW, "points": [{"epochs": 8, "val_acc": 70}, {"epochs": 2, "val_acc": 60}]}])
    with pytest.raises(BudgetnetError, match="increasing epochs"):
        load_shape_table(str(bad))



def test_shipped_tables_fit_the_default_budget_and_the_flagship_names_one() -> None:
    assert recipe_mapping("flagship")["train"]["shape_table"] in list_shape_tables()
    base = load_config()
    for name in list_shape_tables():
        table = load_shape_table(name)
        for shape in table.shapes:
            spec = base.model.model_copy(update=shape.model)
            assert count_params(spec) <= 5_000_000, shape.name


def test_a_shape_table_without_a_time_budget_trains_the_named_model_within_the_budget(tmp_path: Path, data: Path) -> None:
    table = write_table(tmp_path / "table.yaml", [NARROW, WIDE])
    cfg = tiny_run_config(data, train={"shape_table": str(table)})
    over = cfg.model_copy(update={"budget": count_params(cfg.model) - 1})
    with pytest.raises(BudgetnetError, match="budget"):
        engine.train(over, tmp_path / "run", quiet=True)


def test_a_time_budget_trains_the_flagship_shapes_as_measured_with_2x2_max_pools() -> None:
    """The recipe trains anti-aliased pools; its shape table was measured with 2x2 max-pools, and a
    time budget times and trains the shapes as measured, not 3x slower ones on a CPU."""
    recipe = load_config()
    assert recipe.model.pool_blur
    cfg = load_config(overrides={"train": {"time_budget_s": 300.0}})
    timed: list[bool] = []
    plan = plan_shape(cfg, 45_000, torch.device("cpu"), lambda c, d: timed.append(c.model.pool_blur) or 1.0,
                      peak_tflops=1.0)
    assert timed and not any(timed) and not plan.config.model.pool_blur
