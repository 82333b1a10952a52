"""Experiment tracking: `--log tensorboard` on train, on search trials and on repeat members
writes TensorBoard event files whose scalars are the run's metrics, with the config; without
the tensorboard package it is one line, before anything is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_noisy_npz

from budgetnet.cli import main
from budgetnet.search import SearchSpace, run_search
from budgetnet.train.callbacks import read_metrics
from budgetnet.train.tracking import TENSORBOARD_DIR

TINY = ["--input-size", "16", "--val-size", "60", "--blocks", "1", "--channels", "8", "--classes", "3", "--epochs", "2",
        "--batch-size", "30", "--lr", "0.1", "--precision", "fp32", "--threads", "1", "--device", "cpu", "--quiet",
        "--time-budget", "1e6"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_noisy_npz(tmp_path / "data.npz", 240, seed=0)


# tensorboard comes with budgetnet[tracking], which scripts/setup.sh installs.
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (pip install 'budgetnet[tracking]')")


def events(log_dir: Path) -> Any:
    """The log's EventAccumulator, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert any(log_dir.glob("events.out.tfevents.*")), f"no event file in {log_dir}"
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


@needs_tensorboard
def test_train_logs_scalars_and_config(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--out", str(out), "--log", "tensorboard"]) == 0, capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["log"] == ["tensorboard"]
    acc = events(out / TENSORBOARD_DIR)
    rows = read_metrics(out / "metrics.csv")
    for column, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("train_acc", "accuracy/train"),
                        ("val_acc", "accuracy/val"), ("lr", "lr"), ("train_seconds", "time/train_seconds")):
        logged = acc.Scalars(tag)
        assert [e.step for e in logged] == [1, 2], tag
        assert [e.value for e in logged] == pytest.approx([r[column] for r in rows], rel=1e-4), tag
    throughput = acc.Scalars("throughput/images_per_s")
    assert len(throughput) == 2 and all(e.value > 0 for e in throughput)
    steps = json.loads((out / "summary.json").read_text())["steps_run"]
    assert throughput[0].value == pytest.approx(steps / 2 * 30 / rows[0]["train_seconds"], rel=1e-3)
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "blocks:" in config and "tensorboard" in config


@needs_tensorboard
def test_search_trials_and_repeat_members_log_too(data: Path, tmp_path: Path, capsys) -> None:
    space = SearchSpace.model_validate({
        "base": {"model": {"blocks": [1], "channels": [8], "input_size": 16, "classes": 3},
                 "data": {"input_size": 16, "val_size": 60, "path": str(data)},
                 "train": {"epochs": 1, "batch_size": 60, "device": "cpu", "threads": 1, "precision": "fp32",
                           "tta": False}},
        "budget": "20k", "params": {"optim.lr": {"choices": [0.1]}},
    })
    result = run_search(space, out=tmp_path / "search", trials=1, log=["tensorboard"])
    events(tmp_path / "search" / result.rows[0]["run_dir"] / TENSORBOARD_DIR)

    out = tmp_path / "rep"
    assert main(["repeat", "--seeds", "0,1", "--data", str(data), *TINY, "--out", str(out), "--log", "tensorboard"]) == 0
    for seed in (0, 1):
        assert [e.step for e in events(out / f"seed-{seed}" / TENSORBOARD_DIR).Scalars("accuracy/val")] == [1, 2]
    capsys.readouterr()


def test_missing_tensorboard_is_one_line_before_anything_is_written(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--out", str(out), "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("budgetnet: error: ") and err.count("\n") == 1 and "budgetnet[tracking]" in err, err
    assert not [p for p in out.iterdir() if p.name != ".lock"]
    search_out = tmp_path / "search"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"base": {"data": {"path": str(data), "input_size": 16, "val_size": 60}},
                                     "params": {"optim.lr": {"choices": [0.1]}}}))
    assert main(["search", "--space", str(space), "--trials", "1", "--out", str(search_out), "--log", "tensorboard"]) == 2
    assert "budgetnet[tracking]" in capsys.readouterr().err and not (search_out / "trials").exists()
    # An unknown tracker is a config error.
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "x"), "--log", "wandb"]) == 2
    assert "train.log" in capsys.readouterr().err
