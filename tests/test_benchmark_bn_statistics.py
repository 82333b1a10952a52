"""benchmarks/bn_statistics.py refuses what it cannot evaluate with one line and exit code 2."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bn_statistics.py"
_SPEC = importlib.util.spec_from_file_location("bn_statistics", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bn_statistics = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bn_statistics)


def test_a_run_without_a_checkpoint_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bn_statistics.py", str(tmp_path / "no-run"), "--data", "data.npz"])
    with pytest.raises(SystemExit) as exc:
        bn_statistics.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no checkpoint at" in err and "Traceback" not in err
