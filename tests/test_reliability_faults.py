"""Reliability against bad files and faults, in-process: damaged, foreign and malicious
checkpoints, non-finite losses and weights, a full disk during a checkpoint write, and an
output directory that cannot be made.

Every training here is a 3-class, 16x16, 5k-parameter model for 2 epochs of 6 steps.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import math
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_noisy_npz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetnet import files as files_module
from budgetnet.cli import main
from budgetnet.config import RunConfig, load_config
from budgetnet.errors import BudgetnetError
from budgetnet.train import engine
from budgetnet.train.checkpoint import load_checkpoint

REFUSED: list[str] = []  # every bad file refused in this module, for the report
COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "nan_skips"]
STEPS_PER_EPOCH = 6


def tiny_config(data: Path, **train: Any) -> RunConfig:
    return load_config(overrides={
        "data": {"path": str(data), "val_size": 24, "input_size": 16},
        "model": {"preset": None, "blocks": [1, 1], "channels": [8, 16], "stem_width": 8, "classes": 3,
                  "input_size": 16},
        # No time budget: the poisoning tests count training forward passes, and planning a
        # budget runs throwaway ones first.
        "train": {"epochs": 2, "batch_size": 16, "precision": "fp32", "threads": 1, "device": "cpu",
                  "checkpoint_every_steps": 2, "time_budget_s": None, **train},
    })


def metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def assert_same_metrics(a: Path, b: Path) -> None:
    ra, rb = metrics(a), metrics(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb):
        for key in COMPARED:
            assert math.isclose(x[key], y[key], rel_tol=1e-5, abs_tol=1e-7), (key, x, y)


def finite_weights(path: Path) -> bool:
    return all(bool(torch.isfinite(t.float()).all()) for t in load_checkpoint(path).model.values())


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("budgetnet: error: "), err
    assert "Traceback" not in err
    return lines[0]


def refuse(path: Path, *expect: str) -> str:
    """load_checkpoint must raise one BudgetnetError naming the file (and saying `expect`)."""
    with pytest.raises(BudgetnetError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for word in expect:
        assert word in message, message
    REFUSED.append(path.name)
    return message


def wrap(payload: bytes) -> bytes:
    """A budgetnet header with a correct checksum around any payload: gets past the checksum."""
    return f"BUDGETNET-CKPT v1 sha256={hashlib.sha256(payload).hexdigest()} len={len(payload)}\n".encode() + payload


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noisy_npz(tmp_path_factory.mktemp("faults-data") / "data.npz", 120, seed=1)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """The uninterrupted run every faulted-and-resumed run is compared with."""
    run = tmp_path_factory.mktemp("faults") / "whole"
    mp = pytest.MonkeyPatch()
    mp.setenv("BUDGETNET_CACHE", str(run.parent / "cache"))
    try:
        engine.train(tiny_config(data), run, quiet=True)
    finally:
        mp.undo()
        torch.set_num_threads(1)
    return run


# --------------------------------------------------------------------------- damaged files

@pytest.fixture
def good(whole: Path) -> bytes:
    return (whole / "last.pt").read_bytes()


def test_truncated_corrupted_and_foreign_checkpoints_are_refused_naming_the_file(
    tmp_path: Path, good: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    header_end = good.index(b"\n") + 1
    cases: dict[str, tuple[bytes, tuple[str, ...]]] = {
        "truncated.pt": (good[: len(good) // 2], ("truncated",)),
        "truncated-header.pt": (good[:30], ("not a budgetnet checkpoint",)),
        "empty.pt": (b"", ("not a budgetnet checkpoint",)),
        "flipped-payload.pt": (good[:-100] + bytes([good[-100] ^ 0x01]) + good[-99:], ("corrupted",)),
        "flipped-digest.pt": (good[:30] + bytes([good[30] ^ 0x02]) + good[31:], ()),
        "longer.pt": (good + b"\0", ("truncated",)),  # a length mismatch either way
        "text.pt": (b"hello, this is a text file\n" * 10, ("not a budgetnet checkpoint",)),
        "png.pt": (b"\x89PNG\r\n\x1a\n" + bytes(200), ("not a budgetnet checkpoint",)),
        "bad-header.pt": (b"BUDGETNET-CKPT v1 sha256 len=x\n" + good[header_end:], ("damaged checkpoint header",)),
        "not-a-dict.pt": (wrap(_torch_bytes([1, 2, 3])), ("unsupported checkpoint format",)),
        "other-version.pt": (wrap(_torch_bytes({"format_version": 99})), ("unsupported checkpoint format",)),
        "garbage-payload.pt": (wrap(os.urandom(300)), ("refused by the safe loader",)),
    }
    for name, (raw, expect) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        refuse(path, *expect)
    # A plain torch.save file (someone else's model) is foreign too.
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "foreign-torch.pt")
    refuse(tmp_path / "foreign-torch.pt", "not a budgetnet checkpoint")
    os.mkdir(tmp_path / "a-directory.pt")
    refuse(tmp_path / "a-directory.pt", "cannot read checkpoint")

    # The CLI says the same in one line, exit 2.
    for name in ("truncated.pt", "flipped-payload.pt", "foreign-torch.pt"):
        assert main(["evaluate", str(tmp_path / name), "--data", "unused.npz"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(tmp_path / name) in line


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_flip_or_truncation_is_refused(tmp_path: Path, good: bytes, data: st.DataObject) -> None:
    raw = bytearray(good)
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] ^= data.draw(st.integers(1, 255), label="mask")
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(raw))
    refuse(path)


class _Touch:
    """Unpickling this runs `touch MARKER` (via os.system), as a hostile checkpoint would."""

    def __init__(self, marker: Path, how: str = "system") -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):  # noqa: ANN204
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "eval":
            return eval, (f"open({str(self.marker)!r}, 'w').close()",)
        return Path.touch, (self.marker,)


def _crafted(marker: Path, how: str, form: str) -> bytes:
    evil = _Touch(marker, how)
    if form == "torch-zip":  # torch.save's own format, the evil object inside its data.pkl
        return wrap(_torch_bytes({"format_version": 1, "model": {"w": torch.zeros(2)}, "config": evil}))
    if form == "torch-legacy":
        buf = io.BytesIO()
        torch.save({"format_version": 1, "x": evil}, buf, _use_new_zipfile_serialization=False)
        return wrap(buf.getvalue())
    return wrap(pickle.dumps({"format_version": 1, "x": evil}, protocol=2))  # a bare pickle


@pytest.mark.parametrize("how", ["system", "eval", "touch"])
@pytest.mark.parametrize("form", ["torch-zip", "torch-legacy", "bare-pickle"])
def test_a_crafted_pickle_with_a_valid_header_is_refused_and_never_runs(
    tmp_path: Path, how: str, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.pt"
    path.write_bytes(_crafted(marker, how, form))
    # The harness itself is sound: plain pickle would run it.
    if form == "bare-pickle":
        shadow = tmp_path / "shadow"
        pickle.loads(pickle.dumps(_Touch(shadow, how)))
        assert shadow.exists()
    refuse(path, "refused by the safe loader")
    assert not marker.exists()

    assert main(["evaluate", str(path), "--data", "unused.npz"]) == 2
    assert str(path) in one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_a_crafted_last_checkpoint_is_refused_on_resume_and_the_run_falls_back(
    tmp_path: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    marker = tmp_path / "pwned"
    (run / "last.pt").write_bytes(_crafted(marker, "system", "torch-zip"))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "refused by the safe loader" in err and "falling back to the previous checkpoint" in err
    assert not marker.exists()
    REFUSED.append("crafted last.pt on resume")


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "missing"])
def test_resume_falls_back_to_previous_when_last_is_damaged_and_still_reproduces_the_run(
    tmp_path: Path, data: Path, whole: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(data)
    run = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop(row: dict[str, float]) -> None:
        raise Stop

    with pytest.raises(Stop):
        engine.train(cfg, run, quiet=True, on_epoch_end=stop)
    # last.pt: end of epoch 1; previous.pt: the mid-epoch checkpoint before it (step 4).
    assert load_checkpoint(run / "previous.pt").resume.progress.step_in_epoch == 4
    last = run / "last.pt"
    raw = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(raw[: len(raw) - 1000])
    elif damage == "flip":
        last.write_bytes(raw[:-500] + bytes([raw[-500] ^ 0x40]) + raw[-499:])
    elif damage == "foreign":
        torch.save({"weights": torch.ones(3)}, last)
    else:
        last.unlink()  # a kill between two renames
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    if damage != "missing":
        warning = [line for line in err.splitlines() if "warning" in line]
        assert len(warning) == 1 and str(last) in warning[0], err
        assert "falling back to the previous checkpoint" in warning[0]
        assert (run / "last.pt.damaged").exists()  # kept aside, so it cannot be rotated onto previous.pt
        REFUSED.append(f"{damage} last.pt on resume")
    assert_same_metrics(whole, run)
    assert finite_weights(run / "last.pt")


def test_resume_with_every_checkpoint_damaged_is_one_line_error(
    tmp_path: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    for name in ("last.pt", "previous.pt"):
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[: len(raw) // 3])
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err.strip().splitlines()[-1]
    assert err.count("warning") == 2 and "previous.pt" in err
    one_error_line("\n".join(line for line in err.splitlines() if "warning" not in line))
    REFUSED.extend(["damaged last.pt + previous.pt"] * 2)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(
    tmp_path: Path, data: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.yaml written, then killed: --resume must start over, not refuse."""
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    for p in run.iterdir():
        if p.name not in ("config.yaml", ".lock"):
            p.unlink()
    (run / ".last.pt.tmp-999999").write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "no checkpoint yet" in capsys.readouterr().err
    assert_same_metrics(whole, run)
    assert not (run / ".last.pt.tmp-999999").exists()
    assert (run / "environment.json").exists()


def test_a_failed_start_leaves_the_run_directory_reusable(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong --data fails before anything is written, so the same --out works next time."""
    run = tmp_path / "run"
    args = ["--input-size", "16", "--blocks", "1,1", "--channels", "8,16", "--stem-width", "8", "--classes", "3",
            "--val-size", "24", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--device", "cpu",
            "--quiet", "--out", str(run)]
    assert main(["train", "--data", str(tmp_path / "typo.npz"), *args]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert main(["train", "--data", str(data), *args]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------------ numerical faults

def test_a_huge_learning_rate_stops_naming_the_step_and_keeps_a_finite_checkpoint(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--input-size", "16", "--blocks", "1,1", "--channels", "8,16",
                 "--stem-width", "8", "--classes", "3", "--val-size", "24", "--epochs", "2", "--batch-size", "16",
                 "--lr", "1e30", "--checkpoint-every", "1", "--threads", "1", "--device", "cpu",
                 "--precision", "fp32", "--quiet", "--out", str(run)])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "non-finite" in line and "by step" in line and "lower the learning rate" in line, line
    assert str(run) in line
    # A checkpoint every step: the one kept is the step before the loss blew up, in epoch 1,
    # so no epoch finished and metrics.csv has no row to be wrong in.
    bad_step = int(re.search(r"global step (\d+)", line).group(1))
    assert 1 < bad_step <= STEPS_PER_EPOCH, line
    assert load_checkpoint(run / "last.pt").resume.progress.global_step == bad_step - 1
    assert finite_weights(run / "last.pt")
    assert not (run / "metrics.csv").exists()


def _poison(monkeypatch: pytest.MonkeyPatch, calls: set[int], kind: str) -> None:
    """Make the model's training forward passes number `calls` (1-based) go bad: `nan` makes
    the loss NaN; `nan-grad` keeps the loss finite but makes every gradient NaN."""
    build = engine.build_model
    counter = [0]

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        counter[0] += 1
        if counter[0] not in calls:
            return output
        if kind == "nan":
            return output * float("nan")
        # sqrt'(0) is inf, times 0 is NaN: the value is untouched, the gradient is NaN.
        return output + 0.0 * torch.sqrt(output - output.detach())

    def poisoned(spec: Any) -> torch.nn.Module:
        model = build(spec)
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(monkeypatch, {9}, "nan")  # epoch 2, step 3; checkpoints every 2 steps
    run = tmp_path / "run"
    with pytest.raises(BudgetnetError) as info:
        engine.train(tiny_config(data), run, quiet=True)
    message = str(info.value)
    assert "loss became non-finite in epoch 2 by step 4 (global step 10)" in message, message
    assert "lower the learning rate" in message and str(run) in message
    state = load_checkpoint(run / "last.pt")
    assert state.resume.progress.global_step == 8  # the last checkpoint before the NaN
    assert finite_weights(run / "last.pt") and finite_weights(run / "previous.pt")


def test_nan_gradients_with_a_finite_loss_never_overwrite_the_last_good_checkpoint(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Step 4's loss is fine but its update turns the weights NaN, right before the checkpoint
    # at step 4: the loss check cannot see it, so the checkpoint itself must.
    _poison(monkeypatch, {4}, "nan-grad")
    run = tmp_path / "run"
    with pytest.raises(BudgetnetError) as info:
        engine.train(tiny_config(data), run, quiet=True)
    message = str(info.value)
    assert "weights became non-finite by global step 4" in message and "lower the learning rate" in message, message
    assert load_checkpoint(run / "last.pt").resume.progress.global_step == 2
    assert finite_weights(run / "last.pt")


def test_on_nan_skip_skips_the_bad_batches_and_counts_them(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(monkeypatch, {2, 5, 9}, "nan")  # two in epoch 1, one in epoch 2
    run = tmp_path / "run"
    result = engine.train(tiny_config(data, on_nan="skip"), run, quiet=True)
    rows = metrics(run)
    assert [r["nan_skips"] for r in rows] == [2, 3]
    assert result.summary["nan_skips"] == 3
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert finite_weights(run / "last.pt") and finite_weights(run / "best.pt")
    assert load_checkpoint(run / "last.pt").resume.progress.nan_skips == 3


# ------------------------------------------------------------------------------ disk faults

def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.parametrize("where", ["fsync", "write", "rotate"])
def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoints(
    tmp_path: Path, data: Path, whole: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    run = tmp_path / "run"
    seen: dict[str, bytes] = {}
    writes = [0]
    fail_at = 4  # the 4th last.pt write: epoch 1, step 6 -> previous.pt and last.pt both exist

    def snapshot() -> None:
        for name in ("last.pt", "previous.pt"):
            seen[name] = (run / name).read_bytes()

    def disk_full() -> OSError:
        snapshot()
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if ".last.pt.tmp-" in _fd_path(fd):
                writes[0] += 1
                if writes[0] == fail_at:
                    raise disk_full()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    elif where == "write":
        class HalfWriter(io.FileIO):
            def write(self, b: Any) -> int:
                super().write(bytes(b)[: len(b) // 2])
                raise disk_full()

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if ".last.pt.tmp-" in str(file):
                writes[0] += 1
                if writes[0] == fail_at:
                    return HalfWriter(file, "wb")
            return open(file, mode, *args, **kwargs)

        monkeypatch.setattr(files_module, "open", fake_open, raising=False)
    else:
        real_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            if str(dst).endswith("previous.pt"):
                writes[0] += 1
                if writes[0] == fail_at - 1:  # rotation n is part of last.pt write n + 1
                    raise disk_full()
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)

    with pytest.raises(BudgetnetError) as info:
        engine.train(tiny_config(data), run, quiet=True)
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and f"could not write {run / 'last.pt'}" in message, message
    assert "No space left on device" in message and "intact" in message
    assert seen, "the fault was never injected"
    for name, raw in seen.items():  # both checkpoints exactly as they were before the write
        assert (run / name).read_bytes() == raw, name
        load_checkpoint(run / name)
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
    # And the run carries on from there as if nothing had happened.
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_metrics(whole, run)


def test_an_output_directory_that_cannot_be_made_is_a_one_line_error(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tests run as root, where chmod does not stop writes: use paths no one can write."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    common = ["train", "--data", str(data), "--input-size", "16", "--blocks", "1", "--channels", "8", "--classes", "3",
              "--val-size", "24", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]
    unwritable = [Path("/proc/budgetnet-run")] if sys.platform == "linux" else []  # even root cannot mkdir there
    for out in (a_file / "run", a_file, *unwritable):
        assert main([*common, "--out", str(out)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(out) in line, line
    assert a_file.read_text() == "x"


def test_a_full_disk_while_writing_the_config_is_a_one_line_error(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if ".config.yaml.tmp-" in _fd_path(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--input-size", "16", "--blocks", "1", "--channels", "8",
                 "--classes", "3", "--val-size", "24", "--epochs", "1", "--batch-size", "16", "--threads", "1",
                 "--quiet", "--out", str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "config.yaml" in line and "No space left on device" in line
    assert {p.name for p in run.iterdir()} <= {".lock"}  # nothing half-made: a retry may reuse --out


def test_zz_report_refused_files() -> None:
    print(f"\nbad checkpoint files refused: {len(REFUSED)}")
    assert len(REFUSED) >= 20
