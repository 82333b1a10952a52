"""Resume equivalence: a run stopped (at an epoch boundary, or by SIGINT in mid-epoch) and
resumed with `budgetnet train --resume` records the same metrics and ends with the same
weights as the same run left alone."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_synthetic, rewrite_checkpoint, write_npz

from budgetnet.cli import main
from budgetnet.config import RunConfig, load_config
from budgetnet.train import engine
from budgetnet.train.checkpoint import load_checkpoint
from budgetnet.train.optim import SGDConfig

TIMING_COLUMNS = {"seconds", "train_seconds"}


class Stop(Exception):
    """Raised from on_epoch_end to cut a run short, as a search pruning a trial does."""


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_history(a: Path, b: Path) -> None:
    rows_a, rows_b = metrics(a), metrics(b)
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for key in ra.keys() - TIMING_COLUMNS:
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-7), (key, ra, rb)


def assert_same_weights(a: Path, b: Path, name: str = "last.pt") -> None:
    sa, sb = load_checkpoint(a / name).model, load_checkpoint(b / name).model
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "easy.npz", make_synthetic({"train": 50, "test": 2}, seed=3))


def tiny_config(data: Path, **train: object) -> RunConfig:
    """The flagship recipe (warm-up + linear decay, crop + alternating flip, label smoothing,
    TTA) with a 1,443-parameter model."""
    return load_config(overrides={
        "data": {"path": str(data), "val_size": 30},
        "model": {"preset": None, "blocks": [1], "channels": [8], "classes": 3},
        "optim": {"lr": 0.1},  # the recipe's is for batch 512 on the flagship net
        "train": {"epochs": 3, "batch_size": 16, "precision": "fp32", "threads": 1, "device": "cpu", **train},
    })


def train_whole_and_cut(cfg: RunConfig, tmp_path: Path, cut_cfg: RunConfig | None = None) -> tuple[Path, Path]:
    """`cfg` trained uninterrupted into tmp_path/whole, and (or `cut_cfg`, the same run with
    other checkpointing) into tmp_path/cut stopped after its first epoch, as a search's pruner
    stops a trial."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    engine.train(cfg, whole, quiet=True)

    def stop_after_first(row: dict[str, float]) -> None:
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        engine.train(cut_cfg or cfg, cut, quiet=True, on_epoch_end=stop_after_first)
    return whole, cut


def test_resume_after_an_epoch_matches_uninterrupted(tmp_path: Path, data: Path, capsys) -> None:
    whole, cut = train_whole_and_cut(tiny_config(data), tmp_path)
    assert len(metrics(cut)) == 1 and not (cut / "summary.json").exists()
    assert load_checkpoint(cut / "last.pt").resume.progress.epoch == 1

    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)
    assert_same_weights(whole, cut, "best.pt")
    summary_whole = json.loads((whole / "summary.json").read_text())
    summary_cut = json.loads((cut / "summary.json").read_text())
    for key in ("epochs_run", "best_epoch", "best_val_acc", "final_train_acc", "params", "stopped_early"):
        assert summary_cut[key] == pytest.approx(summary_whole[key]), key

    # Resuming a finished run trains nothing more.
    capsys.readouterr()
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    assert len(metrics(cut)) == 3
    assert_same_weights(whole, cut)


def test_resume_between_lookahead_syncs_matches_uninterrupted(tmp_path: Path, data: Path, capsys) -> None:
    # One step an epoch: the cut falls after step 1, between the slow weights' start and their
    # first sync at step 2, which needs them from the checkpoint.
    whole, cut = train_whole_and_cut(tiny_config(data, lookahead={"steps": 2, "alpha": 0.5}), tmp_path)
    assert load_checkpoint(cut / "last.pt").resume.optimizer["slow"] is not None
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)


def test_a_checkpoint_from_before_step_schedules_resumes_the_same(tmp_path: Path, data: Path, capsys) -> None:
    """A last.pt written when torch schedulers were checkpointed (optimizer groups without
    peak_lr/horizon, a `scheduler` entry) resumes into the same run: the lr is recomputed from
    the step."""
    cfg = tiny_config(data, epochs=3).model_copy(update={"optim": SGDConfig(lr=0.1, nesterov=True)})
    whole, cut = train_whole_and_cut(cfg, tmp_path)

    def before_step_schedules(payload: dict) -> dict:
        for group in payload["optimizer"]["param_groups"]:
            del group["peak_lr"], group["horizon"]
        return {**payload, "scheduler": {"last_epoch": 7}}

    rewrite_checkpoint(cut / "last.pt", before_step_schedules)
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)


def test_resume_inside_a_progressive_crop_stage_crops_as_the_uninterrupted_run(tmp_path: Path, data: Path,
                                                                                 capsys) -> None:
    """The crops of a step depend on (seed, step) alone: a run stopped after its first epoch
    and resumed in the middle of its crop stage trains the same windows, so the same weights."""
    cfg = tiny_config(data, progressive=[{"until": 0.8, "size": 24, "mode": "crop"}])
    whole, cut = train_whole_and_cut(cfg, tmp_path)
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)


def test_sigint_mid_epoch_then_resume_matches_uninterrupted(
    tmp_path: Path, data: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT at step 10 of epoch 2 (of 15): the run checkpoints and exits 130; the resumed
    run skips the 10 batches already trained. EMA weights, mid-epoch checkpoints and data
    selection are on, so their state must survive the stop too: the resumed epoch draws its
    batches from the images selected when it began, not from the losses recorded since."""
    extra = {"batch_size": 8, "ema_decay": 0.9, "checkpoint_every_steps": 4, "data_selection": {}}
    cfg = tiny_config(data, **extra)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    engine.train(cfg, whole, quiet=True)

    config = tmp_path / "cut.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    calls: list[int] = []
    original_step = engine.ProgressReporter.step

    def step_then_interrupt(self: engine.ProgressReporter, done: int, loss: float, acc: float) -> None:
        original_step(self, done, loss, acc)
        calls.append(done)
        if len(calls) == 2:  # the 10th step of the second epoch
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(engine.ProgressReporter, "step", step_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)
    code = main(["train", "--config", str(config), "--out", str(cut), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130, err
    assert f"interrupted by SIGINT; resume with: budgetnet train --resume {cut}" in err
    progress = load_checkpoint(cut / "last.pt").resume.progress
    assert (progress.epoch, progress.step_in_epoch) == (1, 10)
    assert len(metrics(cut)) == 1
    assert signal.getsignal(signal.SIGINT) is handler  # the guard put the old handler back

    monkeypatch.setattr(engine.ProgressReporter, "step", original_step)
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    resumes = json.loads((cut / "environment.json").read_text())["resumes"]  # where its seconds were spent
    assert [(r["epoch"], r["step_in_epoch"]) for r in resumes] == [(1, 10)]
    assert resumes[0]["train_seconds"] == pytest.approx(progress.train_seconds, abs=1e-3) and resumes[0]["cpu_capability"]
    (cut / "environment.json").unlink()  # a lost record does not stop a resume
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0, capsys.readouterr().err
    assert len(json.loads((cut / "environment.json").read_text())["resumes"]) == 1
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)
    assert_same_weights(whole, cut, "best.pt")  # the EMA weights, as validated


def test_resume_falls_back_to_previous_checkpoint_when_last_is_damaged(
    tmp_path: Path, data: Path, capsys
) -> None:
    cfg = tiny_config(data, epochs=2)
    mid_epoch_checkpoints = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_every_steps": 3})})
    whole, cut = train_whole_and_cut(cfg, tmp_path, mid_epoch_checkpoints)
    # last.pt is the end of epoch 1, previous.pt the mid-epoch checkpoint before it.
    raw = (cut / "last.pt").read_bytes()
    (cut / "last.pt").write_bytes(raw[: len(raw) // 2])  # a kill during a copy, a full disk...
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    out, err = capsys.readouterr()
    # The warning goes to stderr: stdout stays clean for --json.
    assert "truncated" in err and "falling back to the previous checkpoint" in err
    assert out.startswith("run ") and "warning" not in out
    assert len(metrics(cut)) == 2
    assert_same_history(whole, cut)
