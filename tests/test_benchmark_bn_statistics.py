"""benchmarks/bn_statistics.py refuses what it cannot evaluate with one line and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

bn_statistics = load_benchmark("bn_statistics")


def test_a_run_without_a_checkpoint_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bn_statistics.py", str(tmp_path / "no-run"), "--data", "data.npz"])
    with pytest.raises(SystemExit) as exc:
        bn_statistics.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no checkpoint at" in err and "Traceback" not in err
