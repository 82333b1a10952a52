"""Bad run configs and bad `train` invocations: exit code 2 and exactly one line on stderr
(`budgetnet: error: ...`, naming what is wrong), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import make_synthetic, write_npz

from budgetnet.cli import main
from budgetnet.config import load_config
from budgetnet.errors import BudgetnetError, stderr_line, warn
from budgetnet.files import DirLock

TINY = ["--blocks", "1", "--channels", "8", "--classes", "3", "--threads", "1", "--device", "cpu", "--quiet"]


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "d.npz", make_synthetic({"train": 10, "test": 2}))


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run budgetnet; assert exit 2 with one error line; return that line."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("budgetnet: error: "), err
    assert "Traceback" not in err and out == ""
    return err.strip()


def write_yaml(path: Path, mapping: object) -> Path:
    path.write_text(yaml.safe_dump(mapping))
    return path


def test_unknown_optimizer_flag(capsys, npz: Path, tmp_path: Path) -> None:
    line = fails(capsys, "train", "--data", npz, *TINY, "--optimizer", "foo", "--out", tmp_path / "r")
    assert "optim.name" in line and "'foo'" in line and "sgd" in line
    assert not (tmp_path / "r").exists()


def test_unknown_optimizer_in_yaml(capsys, npz: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {"data": {"path": str(npz)}, "optim": {"name": "lamb"}})
    line = fails(capsys, "train", "--config", cfg)
    assert "c.yaml" in line and "optim.name" in line and "'lamb'" in line


def test_unknown_schedule_and_precision(capsys, npz: Path) -> None:
    assert "schedule.name" in fails(capsys, "train", "--data", npz, *TINY, "--schedule", "exp")
    assert "train.precision" in fails(capsys, "train", "--data", npz, *TINY, "--precision", "fp8")


@pytest.mark.parametrize("lr", ["-0.1", "0"])
def test_non_positive_lr_flag(capsys, npz: Path, lr: str) -> None:
    line = fails(capsys, "train", "--data", npz, *TINY, "--lr", lr)
    assert "optim.lr" in line and "greater than 0" in line


@pytest.mark.parametrize(("stage", "says"), [
    ("{until: 0.5}", "either `size` (pixels) or `scale`"),
    ("{until: 0.5, size: 28, scale: 0.875}", "either `size` (pixels) or `scale`"),
    ("{until: 0.5, scale: 1.2}", "less than 1"),
])
def test_a_progressive_stage_without_exactly_one_side(capsys, npz: Path, tmp_path: Path, stage: str, says: str) -> None:
    line = fails(capsys, "train", "--data", npz, *TINY, "--set", f"train.progressive=[{stage}]", "--out", tmp_path / "r")
    assert "train.progressive[0]" in line and says in line, line
    assert not (tmp_path / "r").exists()


def test_negative_lr_in_yaml(capsys, npz: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {"data": {"path": str(npz)}, "optim": {"lr": -1}})
    assert "optim.lr" in fails(capsys, "train", "--config", cfg)


def test_missing_data_path(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar.zip"
    out = tmp_path / "r"
    line = fails(capsys, "train", "--data", missing, *TINY, "--out", out)
    assert str(missing) in line
    assert not (out / "config.yaml").exists()  # a failed start leaves no half-made run behind


def test_no_data_at_all(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "--data" in fails(capsys, "train", *TINY)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "mapping,key",
    [
        ({"epochs": 3}, "'epochs'"),  # top level: belongs under train
        ({"optim": {"learning_rate": 0.1}}, "'optim.learning_rate'"),
        ({"train": {"early_stopping": {"patiense": 3}}}, "'train.early_stopping.patiense'"),
        ({"augment": {"crop": {"pad": 4}}}, "'augment.crop.pad'"),
        ({"data": {"val-size": 10}}, "'data.val-size'"),
        ({"model": {"blocks": [1], "channels": [8], "widht": 3}}, "'model.widht'"),
    ],
)
def test_unknown_yaml_key(capsys, npz: Path, tmp_path: Path, mapping: dict, key: str) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {**mapping, "data": {"path": str(npz), **mapping.get("data", {})}})
    line = fails(capsys, "train", "--config", cfg)
    assert "unknown key" in line and key in line


def test_over_budget_without_allow(capsys, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    line = fails(capsys, "train", "--data", npz, *TINY, "--budget", "1000", "--out", out)
    assert "1,443" in line and "1,000" in line and "--allow-over-budget" in line
    # The same --out works once the budget allows it: the failed start left nothing behind.
    assert main(["train", "--data", str(npz), *TINY, "--budget", "1000", "--allow-over-budget", "--val-size", "3",
                 "--epochs", "1", "--batch-size", "9", "--out", str(out)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping(capsys, tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert "must hold a mapping" in fails(capsys, "train", "--config", cfg)


def test_yaml_syntax_error_and_missing_file(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {name: sgd\ntrain: [\n")
    assert "not valid YAML" in fails(capsys, "train", "--config", bad)
    assert "does not exist" in fails(capsys, "train", "--config", tmp_path / "absent.yaml")
    # A name longer than the file system allows: stat raises rather than answering False.
    assert "File name too long" in fails(capsys, "train", "--config", "9" * 400)


def test_section_that_is_not_a_mapping(capsys, npz: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {"data": {"path": str(npz)}, "optim": "sgd"})
    assert "optim" in fails(capsys, "train", "--config", cfg)


def test_resume_on_a_directory_that_is_not_a_run(capsys, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    assert "not a budgetnet run directory" in fails(capsys, "train", "--resume", tmp_path / "photos")
    assert "not a budgetnet run directory" in fails(capsys, "train", "--resume", tmp_path / "absent")


def test_resume_takes_no_other_options(capsys, tmp_path: Path) -> None:
    assert "drop the other options" in fails(capsys, "train", "--resume", tmp_path, "--epochs", "3")


def test_resume_of_a_run_in_use(capsys, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(["train", "--data", str(npz), *TINY, "--val-size", "3", "--epochs", "1", "--batch-size", "9",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    with DirLock(out):  # another process training into it
        line = fails(capsys, "train", "--resume", out)
    assert "in use by pid" in line


def test_new_run_into_a_used_directory(capsys, npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "--resume" in fails(capsys, "train", "--data", npz, *TINY, "--out", out)
    assert (out / "notes.txt").read_text() == "mine"


def test_batch_size_larger_than_the_dataset(capsys, npz: Path) -> None:
    line = fails(capsys, "train", "--data", npz, *TINY, "--val-size", "6", "--batch-size", "512")
    assert "batch size 512" in line and "24 training images" in line


def test_unknown_preset_and_bad_model_flag(capsys, npz: Path) -> None:
    assert "unknown preset" in fails(capsys, "train", "--data", npz, "--preset", "resnet1000")
    assert "--blocks" in fails(capsys, "train", "--data", npz, "--blocks", "a,b", "--channels", "8,16")


def test_unknown_recipe(capsys, npz: Path) -> None:
    line = fails(capsys, "train", "--data", npz, "--recipe", "turbo")
    assert "unknown recipe 'turbo'" in line and "flagship" in line


def test_unknown_flag_is_one_line(capsys) -> None:
    assert "--learning-rate" in fails(capsys, "train", "--learning-rate", "0.1")


def test_early_stopping_needs_a_validation_split(capsys, npz: Path) -> None:
    """Without validation there is nothing to monitor: refused rather than stopping blindly
    after `patience` epochs."""
    line = fails(capsys, "train", "--data", npz, *TINY, "--val-size", "0", "--patience", "2")
    assert "early_stopping" in line and "val_size" in line


def test_errors_name_the_field_in_load_config(tmp_path: Path) -> None:
    with pytest.raises(BudgetnetError, match=r"train\.epochs"):
        load_config(overrides={"train": {"epochs": 0}})
    with pytest.raises(BudgetnetError, match=r"budget"):
        load_config(overrides={"budget": "lots"})
    with pytest.raises(BudgetnetError, match=r"name"):
        load_config(overrides={"name": "has spaces/slash"})


class _Writes:
    """A stream that keeps each write: what reaches a shared pipe, call by call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_line_on_stderr_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # Search workers share stderr: a line and its newline written apart interleaved two
    # workers' trial lines into one.
    stream = _Writes()
    monkeypatch.setattr("sys.stderr", stream)
    stderr_line("trial 2: val acc 93.33%")
    warn("a\nproblem")
    assert stream.writes == ["trial 2: val acc 93.33%\n", "budgetnet: warning: a problem\n"]
