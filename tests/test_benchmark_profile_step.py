"""The step profile profiles the engine's step: the recipe's optimizer and micro-batches, each
phase of the step accounted for; a model it does not know is refused in one line."""

from __future__ import annotations

import re
import sys

import pytest
from conftest import load_benchmark

profile_step = load_benchmark("profile_step")


def test_profiles_the_recipes_step_by_phase(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["profile_step.py", "--model", "seed000_1111", "--batch", "6",
                                      "--steps", "1", "--rows", "3"])
    profile_step.main()
    out = capsys.readouterr().out
    assert "batch 6 in slices of 6, optimizer MuonSGD" in out  # the default recipe's optimizer
    phases = re.search(r"step time by phase: forward (\d+)%, backward (\d+)%, optimizer (\d+)%", out)
    assert phases and 90 <= sum(map(int, phases.groups())) <= 101  # the phases are the step


def test_refuses_an_unknown_model(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["profile_step.py", "--model", "resnet_nope"])
    with pytest.raises(SystemExit) as exc:
        profile_step.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--model: unknown preset 'resnet_nope'" in err and "Traceback" not in err
