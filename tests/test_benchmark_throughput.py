"""The throughput benchmark's arithmetic: the figure it prints as the step's rate, and the
arguments it refuses before spending minutes on the machine's peak."""

from __future__ import annotations

import sys

import pytest
from conftest import load_benchmark

throughput = load_benchmark("throughput")


def test_rate_is_the_fastest_epoch_after_the_first() -> None:
    # Cumulative training seconds: a 9 s warm-up epoch, then epochs of 2.0, 2.5 (a neighbour on
    # the CPU) and 1.6 s.
    metrics = [{"train_seconds": str(t)} for t in (9.0, 11.0, 13.5, 15.1)]
    assert throughput.fastest_epoch_rate(metrics, 2000) == pytest.approx(2000 / 1.6)


@pytest.mark.parametrize("flags", [["--epochs", "1"], ["--baseline-steps", "0"]])
def test_refuses_runs_with_nothing_timed(flags: list[str], monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["throughput.py", *flags])
    with pytest.raises(SystemExit) as exc:
        throughput.main()
    assert exc.value.code == 2 and "--epochs must be at least 2" in capsys.readouterr().err
