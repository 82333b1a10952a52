"""The throughput benchmark's arithmetic: the figure it prints as the step's rate, and the
arguments it refuses before spending minutes on the machine's peak."""

from __future__ import annotations

import sys

import pytest
from conftest import load_benchmark

from budgetnet.config import load_config

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


def test_refuses_a_seeds_loop_longer_than_the_images(monkeypatch, capsys) -> None:
    # 3 batches of 1,000 from 2,000 images: the loop's DataLoader would run dry mid-benchmark.
    argv = ["throughput.py", "--batch", "1000", "--images", "2000", "--baseline-steps", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        throughput.main()
    assert exc.value.code == 2 and "--images must hold --baseline-steps + 1 batches" in capsys.readouterr().err


def test_refuses_an_unknown_model_before_the_peak(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--models", "default,resnet_nope"])
    with pytest.raises(SystemExit) as exc:
        throughput.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--models: unknown preset 'resnet_nope'" in err and "Traceback" not in err


def test_default_is_the_recipes_model_timed_at_full_size(tmp_path) -> None:
    # `default` must be the model `budgetnet train` builds (anti-aliased pools included), and
    # every timed step full size: the rate is multiplied by the 32 px FLOPs per image.
    spec = throughput.model_spec("default")
    assert spec == load_config().model and spec.pool_blur
    cfg = throughput.bench_config(spec, str(tmp_path / "data.zip"), 2000, 500, 4, compile=False)
    assert cfg.model == spec and cfg.train.progressive == [] and load_config().train.progressive
    assert (cfg.train.batch_size, cfg.train.micro_batch, cfg.train.epochs) == (500, 500, 4)
    plain = throughput.bench_config(throughput.model_spec("speedrun_2m"), "x.zip", 2000, 500, 4, compile=False)
    assert not plain.model.pool_blur and plain.train.progressive == []
