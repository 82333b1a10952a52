"""The shape planner's sweep trains every other shape as the shipped table names it (its pools
included), so the planned choice is compared with the shapes the table measured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from conftest import load_benchmark

from budgetnet.config import load_config
from budgetnet.shape_planner import load_shape_table

shape_planner = load_benchmark("shape_planner")


def test_sweep_trains_the_tables_own_shapes(tmp_path, monkeypatch, capsys) -> None:
    table = load_shape_table(load_config().train.shape_table)
    names = [shape.name for shape in table.shapes]
    overrides_by_run: dict[str, dict[str, Any]] = {}

    def fake_trained(run_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
        if run_dir.name == "planned":  # what `budgetnet train --time-budget S` leaves behind
            run_dir.mkdir(parents=True)
            candidates = [{"name": n, "epochs": 4.0, "expected_acc": 80.0} for n in names]
            (run_dir / "shape_plan.json").write_text(json.dumps({"choice": names[0], "candidates": candidates}))
        overrides_by_run[run_dir.name] = overrides
        return {"final_val_acc": 0.8, "images_seen": 180_000, "train_pflop": 0.1, "train_seconds": 300.0, "params": 1}

    monkeypatch.setattr(shape_planner, "trained", fake_trained)
    shape_planner.sweep(argparse.Namespace(runs_dir=str(tmp_path), seconds=300.0, uncapped=False, data="x.zip"))
    assert load_config().model.pool_blur  # the recipe's pools differ from the table's
    for shape in table.shapes[1:]:
        trained = overrides_by_run[f"w{shape.model['channels'][0]}"]
        assert trained["model"] == shape.model and shape.model["pool_blur"] is False
        assert trained["train"]["time_budget_s"] == 300.0
    assert "planned choice vs best of the sweep: +0.00 points" in capsys.readouterr().out
