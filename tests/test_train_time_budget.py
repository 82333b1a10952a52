"""Time-budgeted runs (`train.time_budget_s`, `--time-budget`): the plan, the compressed
schedule, and that planning (throwaway timed steps) leaves no trace in what is trained."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import make_synthetic, write_npz
from test_train_resume import assert_same_history, assert_same_weights, metrics, tiny_config, train_whole_and_cut

from budgetnet.cli import main
from budgetnet.config import TrainConfig
from budgetnet.train import engine
from budgetnet.train.checkpoint import load_checkpoint
from budgetnet.train.distributed import Ranks
from budgetnet.train.schedules import LinearSchedule, ScheduleConfig, lr_factor


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "easy.npz", make_synthetic({"train": 50, "test": 2}, seed=3))


def lrs(cfg: ScheduleConfig, spe: int, epochs: int, total_steps: int | None) -> list[float]:
    total = total_steps or spe * epochs
    return [lr_factor(cfg, step, total, epochs) for step in range(total)]


def test_compressed_schedule_keeps_its_shape_in_fewer_steps() -> None:
    cfg = LinearSchedule(warmup_epochs=1.0, warmup_start_factor=0.1)
    full = lrs(cfg, spe=100, epochs=10, total_steps=None)  # warm-up 100 steps of 1,000
    short = lrs(cfg, spe=100, epochs=10, total_steps=250)  # the same recipe in a quarter
    assert max(full) == max(short) == pytest.approx(1.0)
    assert full.index(max(full)) == 100 and short.index(max(short)) == 25
    for i, lr in enumerate(short):  # short at step i is full at step 4i
        assert lr == pytest.approx(full[4 * i], abs=0.01), i
    assert short[-1] < 0.01


def test_unbinding_budget_trains_exactly_the_unbudgeted_run(tmp_path: Path, data: Path) -> None:
    """The timed throwaway steps are undone: with a budget too large to bind, the run's metrics
    and weights equal those of the run without one."""
    plain = engine.train(tiny_config(data, time_budget_s=None), tmp_path / "plain", quiet=True)
    budgeted = engine.train(tiny_config(data, time_budget_s=1e6), tmp_path / "budgeted", quiet=True)
    assert_same_history(tmp_path / "plain", tmp_path / "budgeted")
    assert_same_weights(tmp_path / "plain", tmp_path / "budgeted")
    s = budgeted.summary
    assert s["planned_steps"] == s["steps_run"] == plain.summary["steps_run"] == 3 * (120 // 16)
    assert s["seconds_per_step"] > 0 and s["calibration_seconds"] >= s["warmup_seconds"] > 0
    assert plain.summary["time_budget_s"] is None and "seconds_per_step" not in plain.summary


def test_binding_budget_cuts_the_plan_mid_epoch(tmp_path: Path, data: Path, monkeypatch) -> None:
    """Steps 'measured' at 1 s: a 5.2 s budget fits int(0.97 * 5.2) = 5 steps of the 3 x 60 planned."""
    monkeypatch.setattr(engine._Trainer, "_time_steps", lambda self: (1.0, 2.0, 4.0))
    cfg = tiny_config(data, time_budget_s=5.2, epochs=3, batch_size=2)  # 120 training images: 60 steps/epoch
    result = engine.train(cfg, tmp_path / "run", quiet=True)
    s = result.summary
    assert (s["planned_steps"], s["steps_run"], s["epochs_run"]) == (5, 5, 1)
    assert (s["seconds_per_step"], s["warmup_seconds"], s["calibration_seconds"]) == (1.0, 2.0, 4.0)
    rows = metrics(tmp_path / "run")
    assert len(rows) == 1 and math.isfinite(float(rows[0]["val_acc"]))
    assert float(rows[0]["lr"]) < 1e-6  # the compressed schedule decayed to zero at the plan's end


def test_a_resumed_budgeted_run_keeps_its_plan(tmp_path: Path, data: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(engine._Trainer, "_time_steps", lambda self: (1.0, 0.5, 1.0))
    cfg = tiny_config(data, time_budget_s=10.4)  # 10 of the 3 x 7 steps: all of epoch 1, 3 of epoch 2
    whole, cut = train_whole_and_cut(cfg, tmp_path)
    assert load_checkpoint(cut / "last.pt").resume.progress.planned_steps == 10
    # Were the plan made again, this "measurement" would allow all 21 steps.
    monkeypatch.setattr(engine._Trainer, "_time_steps", lambda self: (0.01, 0.5, 1.0))
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)
    assert json.loads((cut / "summary.json").read_text())["steps_run"] == 10


def test_a_new_plan_moves_the_schedule_at_once(tmp_path: Path, data: Path) -> None:
    """The lr is a function of (step, planned steps): re-planning changes one integer, and the
    very next step follows the new plan; nothing else needs rebuilding or checkpointing."""
    cfg = tiny_config(data)
    trainer = engine._Trainer(cfg, tmp_path, Ranks(torch.device("cpu")), quiet=True, on_epoch_end=None)
    peak = trainer.optimizer.param_groups[0]["peak_lr"]
    for planned in (21, 10):
        trainer.progress.planned_steps = planned
        trainer._set_lr(8)
        expected = peak * lr_factor(cfg.schedule, 8, planned, cfg.train.epochs)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert lr_factor(cfg.schedule, 8, 21, cfg.train.epochs) != lr_factor(cfg.schedule, 8, 10, cfg.train.epochs)


@pytest.mark.parametrize("off", ["none", "off", "null", 1e9])
def test_a_budget_can_be_lifted(off: object) -> None:
    """`--time-budget none|off` (or any value beyond a year) means no time budget."""
    assert TrainConfig(time_budget_s=off).time_budget_s is None
    assert TrainConfig(time_budget_s=300).time_budget_s == 300


def test_a_slower_pace_than_timed_shrinks_the_plan(tmp_path: Path, data: Path, monkeypatch) -> None:
    """The timed steps claimed 0.1 ms a step, so all 180 steps were planned; the real pace is
    far slower, so the plan shrinks on the way and the schedule still ends at zero."""
    monkeypatch.setattr(engine._Trainer, "_time_steps", lambda self: (1e-4, 0.0, 0.0))
    real_step = engine._Trainer._step

    def slow_step(self, x, y, index):
        time.sleep(0.01)
        return real_step(self, x, y, index)

    monkeypatch.setattr(engine._Trainer, "_step", slow_step)
    cfg = tiny_config(data, time_budget_s=0.5, batch_size=2)  # 3 epochs x 60 steps
    result = engine.train(cfg, tmp_path / "run", quiet=True)
    s = result.summary
    assert s["steps_run"] == s["planned_steps"] < 60 and s["replans"] >= 1
    assert s["train_seconds"] < 1.5  # the unrevised plan would take 180 x 10 ms = 1.8 s at least
    assert float(metrics(tmp_path / "run")[-1]["lr"]) < 1e-6


def test_time_budget_flag_reaches_the_summary(tmp_path: Path, data: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--val-size", "10", "--blocks", "1", "--channels", "8",
                 "--classes", "3", "--batch-size", "8", "--epochs", "2", "--lr", "0.1", "--threads", "1",
                 "--device", "cpu", "--quiet", "--time-budget", "600", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "steps planned for a 600s budget" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["time_budget_s"] == 600 and summary["planned_steps"] == 2 * (140 // 8)


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_bad_time_budget_is_one_line_exit_2(tmp_path: Path, data: Path, capsys, value: str) -> None:
    code = main(["train", "--data", str(data), "--time-budget", value, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "time" in err, err
    assert not (tmp_path / "run").exists()
