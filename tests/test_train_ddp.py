"""Data-parallel training on CPUs (gloo): `budgetnet train --nproc 2` with a global batch of B
trains what one process trains with batch B.

What holds, and is checked: the same steps, images and compute; the same gradients, hence the
same weights (to float rounding), as one process that forwards the batch in two slices of B/2
(`train.micro_batch`), since each of two processes normalizes its half with its own batch-norm
statistics; the same training loss and accuracy per epoch as that run. The batch-norm running
statistics differ (rank 0's are of its halves only), so validation accuracy is close to one
process's, not equal. The run's checkpoints evaluate in one process to the accuracy the run
recorded, a killed run resumes with two processes to the numbers of one never killed, and
resuming with another count is a one-line error.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_run_config, write_noisy_npz
from test_train_resume import assert_same_history, assert_same_weights, metrics

from budgetnet.cli import main
from budgetnet.config import RunConfig, dump_config, load_config
from budgetnet.files import LOCK_NAME
from budgetnet.train import engine
from budgetnet.train.bookkeeping import EpochBooks
from budgetnet.train.checkpoint import load_checkpoint

BATCH = 30  # 240 training images: 8 steps an epoch, two epochs
KILLED = 9  # exit code of a rank killed in the test


def ddp_config(data: Path, **train: object) -> RunConfig:
    # With data selection: the second epoch's batches come from the losses the ranks gathered.
    return tiny_run_config(data, train={"batch_size": BATCH, "checkpoint_every_steps": 3, "data_selection": {},
                                        **train})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with the dataset, its config and `ddp`: that config trained by `budgetnet train
    --nproc 2` (one run for the module: starting processes is the slow part)."""
    root = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BUDGETNET_CACHE", str(root / "cache"))
        data = write_noisy_npz(root / "noisy.npz", 300, seed=0)
        (root / "config.yaml").write_text(dump_config(ddp_config(data)))
        with redirect_stderr(io.StringIO()) as relayed:  # the launcher relays the ranks' stderr to sys.stderr
            assert main(["train", "--config", str(root / "config.yaml"), "--out", str(root / "ddp"), "--nproc", "2",
                         "--quiet"]) == 0
        (root / "ddp.stderr").write_text(relayed.getvalue())
        yield root


def one_process(runs: Path, out: Path, **train: object) -> Path:
    engine.train(ddp_config(runs / "noisy.npz", **train), out, quiet=True)
    return out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_two_processes_train_what_one_process_trains(runs: Path, tmp_path: Path) -> None:
    ddp = runs / "ddp"
    halves = one_process(runs, tmp_path / "halves", micro_batch=BATCH // 2)
    whole = one_process(runs, tmp_path / "whole")
    s, h, w = summary(ddp), summary(halves), summary(whole)
    assert s["processes"] == 2 and h["processes"] == 1
    for key in ("steps_run", "planned_steps", "images_seen", "train_pflop", "epochs_run"):
        assert s[key] == h[key] == w[key], key
    trained, reference = load_checkpoint(ddp / "last.pt"), load_checkpoint(halves / "last.pt")
    assert trained.resume is not None and trained.resume.progress.processes == 2
    weights = [k for k in reference.model if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(weights) > 5
    for key in weights:
        torch.testing.assert_close(trained.model[key], reference.model[key], rtol=1e-4, atol=1e-5, msg=key)
    for row, same in zip(metrics(ddp), metrics(halves), strict=True):
        for key in ("train_loss", "train_acc", "lr", "train_pflop"):
            assert float(row[key]) == pytest.approx(float(same[key]), rel=1e-4), (key, row, same)
    # 60 validation images: within 3 of them of one process with the whole batch.
    assert abs(s["final_val_acc"] - w["final_val_acc"]) <= 3 / 60 + 1e-9


def test_rank_0_alone_reports_progress(runs: Path) -> None:
    relayed = (runs / "ddp.stderr").read_text().splitlines()
    assert [line.split("  ")[0] for line in relayed if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"], relayed


def test_its_checkpoints_evaluate_in_one_process(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ddp = runs / "ddp"
    capsys.readouterr()
    assert main(["evaluate", str(ddp), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # Validation was shared out among the ranks and summed: the whole split, rank 0's weights.
    assert report["images"] == 60
    assert report["accuracy"] == pytest.approx(summary(ddp)["best_val_acc"], abs=1e-9)


def _train_rank(rank: int, store: str, config: str, out: str, kill_after: int) -> None:
    """Rank `rank` of 2 (gloo, started from a file store) training `config` into `out`, dying
    as if killed (no checkpoint of its own, no clean-up) right after global step `kill_after`."""
    stepped = EpochBooks.stepped

    def stepped_then_killed(books: EpochBooks, *args: object) -> None:
        stepped(books, *args)  # type: ignore[arg-type]
        if books.progress.global_step == kill_after:
            os._exit(KILLED)

    EpochBooks.stepped = stepped_then_killed  # type: ignore[method-assign]
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    engine.train(load_config(Path(config)), Path(out), quiet=True)


def test_a_killed_run_resumes_with_its_processes(runs: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    # Killed at step 11 of 16, two steps after its last checkpoint (every 3 steps, mid-epoch 2).
    ranks = mp.start_processes(_train_rank, args=(str(tmp_path / "store"), str(runs / "config.yaml"), str(cut), 11),
                               nprocs=2, join=False, start_method="spawn")
    for process in ranks.processes:
        process.join(timeout=900)
    assert [p.exitcode for p in ranks.processes] == [KILLED, KILLED]
    last = load_checkpoint(cut / "last.pt").resume
    assert last is not None and last.progress.global_step == 9 and last.progress.processes == 2
    assert main(["train", "--resume", str(cut), "--nproc", "2", "--quiet"]) == 0
    assert_same_history(cut, runs / "ddp")
    assert_same_weights(cut, runs / "ddp")
    assert_same_weights(cut, runs / "ddp", "best.pt")


def test_resuming_with_another_process_count_is_one_line(runs: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ddp = runs / "ddp"
    before = {p.name: p.stat().st_mtime_ns for p in ddp.iterdir() if p.name != LOCK_NAME}
    capfd.readouterr()
    for more in ([], ["--nproc", "3"]):  # in this process; refused before torchrun starts
        assert main(["train", "--resume", str(ddp), *more]) == 2
        err = capfd.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{ddp} was trained by 2 processes" in err, err
        assert f"cannot resume with {3 if more else 1}; resume it with --nproc 2" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in ddp.iterdir() if p.name in before} == before


def test_an_error_inside_the_ranks_is_one_line(runs: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """The ranks check the limits (the launcher does not): their error is one line, exit 2, with
    neither torchrun's failure report nor a run folder left behind."""
    capfd.readouterr()
    out = tmp_path / "over"
    assert main(["train", "--config", str(runs / "config.yaml"), "--out", str(out), "--nproc", "2",
                 "--max-flops", "1000", "--quiet"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("budgetnet: error: ") and "FLOPs" in err, err
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # as one process leaves it


def test_missing_data_fails_before_the_ranks_start(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    assert main(["train", "--data", str(tmp_path / "absent.zip"), "--out", str(tmp_path / "run"),
                 "--nproc", "2"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and "absent.zip" in err and "torchrun" not in err, err
    assert not (tmp_path / "run").exists()
