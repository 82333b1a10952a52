"""`budgetnet data info` / `clear-cache`, and the shared data options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_cifar_folder

from budgetnet.cli import main
from budgetnet.cli._data_options import data_overrides
from budgetnet.data import DataConfig


def _info(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["data", "info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_then_served_from_cache(image_zip: Path, capsys: pytest.CaptureFixture
                                          ) -> None:
    first = _info(capsys, "--data", str(image_zip), "--val-size", "3")
    assert first["images"] == 36 and first["classes"] == ["cat", "dog", "frog"]
    assert first["splits"]["train"]["per_class"] == {"cat": 8, "dog": 8, "frog": 8}
    assert first["splits"]["test"]["images"] == 12
    assert first["prepared"]["val"]["images"] == 3 and first["image_size"] == [32, 32]
    assert len(first["mean"]) == 3 and not first["cache"]["from_cache"]
    second = _info(capsys, "--data", str(image_zip), "--val-size", "3")
    assert second["cache"]["from_cache"] and second["mean"] == first["mean"]
    bypass = _info(capsys, "--data", str(image_zip), "--val-size", "3", "--no-cache")
    assert not bypass["cache"]["from_cache"] and not bypass["cache"]["used"]


def test_info_test_only_source_and_human_output(tmp_path: Path, synthetic,
                                                capsys: pytest.CaptureFixture) -> None:
    folder = write_cifar_folder(tmp_path, synthetic, splits=("test",))
    report = _info(capsys, "--data", str(folder))
    assert list(report["splits"]) == ["test"] and report["mean"] is None
    assert main(["data", "info", "--data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "cifar10-python" in out and "frog" in out


def test_bad_option_value_is_one_line(image_zip: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "info", "--data", str(image_zip), "--resize", "squash"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_data_overrides_only_given_options() -> None:
    assert data_overrides() == {}
    given = data_overrides("d", True, "stretch", 40, 0, 3, 100, True)
    assert DataConfig(**given) == DataConfig(path="d", download=True, resize="stretch",
                                             input_size=40, val_size=0, split_seed=3,
                                             subset=100, cache=False)
