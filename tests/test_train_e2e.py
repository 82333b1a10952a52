"""`budgetnet train` end to end: a tiny model for a few epochs on synthetic data (and on a
2,000-image subset of the shared CIFAR-10 zip when it is there), the run directory it leaves,
early stopping, the best checkpoint, and the precision `auto` picks on a CPU.

Everything runs in-process through the real entry point with `--threads 1`: on the shared
2-core machine two threads contending with other processes run several times slower.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_synthetic, write_npz
from PIL import Image

from budgetnet import runtime
from budgetnet.cli import main
from budgetnet.config import load_config, recipe_mapping
from budgetnet.machine import cpu_bf16_units
from budgetnet.train.callbacks import METRIC_COLUMNS
from budgetnet.train.checkpoint import load_checkpoint

SHARED_ZIP = Path(__file__).parents[1] / ".." / "shared" / "data" / "cifar10-train-jpg.zip"
TINY_MODEL = ["--blocks", "1", "--channels", "8", "--classes", "3"]
CPU = ["--threads", "1", "--device", "cpu", "--quiet"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def read_rows(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


@pytest.fixture
def easy_npz(tmp_path: Path) -> Path:
    """3 classes whose mean brightness differs by 60/255: a 1,443-parameter net learns it in
    an epoch. 50 training images per class, 10 test images per class."""
    return write_npz(tmp_path / "easy.npz", make_synthetic({"train": 50, "test": 10}, seed=1))


def test_train_synthetic_run_directory(tmp_path: Path, easy_npz: Path, capsys) -> None:
    out = tmp_path / "run"
    # The recipe's lr is tuned for batch 512 on the flagship net; the 8-channel net at batch 16
    # wants less.
    code, stdout, err = run(capsys, "train", "--data", str(easy_npz), "--val-size", "30", *TINY_MODEL,
                            "--epochs", "2", "--batch-size", "16", "--lr", "0.1", *CPU, "--out", str(out), "--json")
    assert code == 0, err
    printed = json.loads(stdout)
    assert printed["run_dir"] == str(out)

    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "environment.json", "metrics.csv", "last.pt", "best.pt", "curves.png",
            "summary.json"} <= names
    assert not [n for n in names if ".tmp-" in n], "a temporary file was left behind"

    # config.yaml: the resolved config, loadable again, equal to what the flags asked for on
    # top of the flagship recipe (with the images' own size written in), and to what the
    # checkpoints recorded.
    saved = load_config(out / "config.yaml")
    expected = load_config(overrides={
        "data": {"path": str(easy_npz), "val_size": 30, "input_size": 32},
        "model": {"preset": None, "blocks": [1], "channels": [8], "classes": 3},
        "train": {"epochs": 2, "batch_size": 16, "threads": 1, "device": "cpu"},
        "optim": {"lr": 0.1},
    })
    assert saved == expected
    flagship = recipe_mapping("flagship")
    # The recipe's settings, not pydantic's defaults, where no flag overrides them.
    assert saved.optim.nesterov == flagship["optim"]["nesterov"] and saved.train.tta and saved.augment.crop
    assert load_config(out / "config.yaml") == type(saved).model_validate(load_checkpoint(out / "best.pt").config)

    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] == 1
    # The machine a run's seconds belong to: the CPU model, the ISA level torch ran at, its bf16 units.
    assert env["cpu"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_bf16_units"] == cpu_bf16_units()

    columns, rows = read_rows(out / "metrics.csv")
    assert columns == METRIC_COLUMNS
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[c]) for r in rows for c in METRIC_COLUMNS)

    with Image.open(out / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
        img.verify()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] == 1_443 and summary["flops"] > 0
    assert summary["epochs_run"] == 2 and summary["stopped_early"] is False
    assert summary["train_seconds"] > 0 and summary["train_seconds"] <= summary["wall_seconds"]
    assert summary["classes"] == ["cat", "dog", "frog"]
    assert summary["data"]["counts"]["val"] == {"cat": 10, "dog": 10, "frog": 10}
    # Clearly above the 1/3 of chance (it reaches 100% here).
    assert summary["best_val_acc"] >= 0.8 and summary["final_val_acc"] >= 0.8
    assert summary["best_val_acc"] == pytest.approx(max(r["val_acc"] for r in rows), abs=1e-6)
    accs = [r["val_acc"] for r in rows]
    assert summary["best_epoch"] == accs.index(max(accs)) + 1  # chosen on validation
    # precision auto on a CPU: bf16 only where the CPU runs it natively.
    assert summary["precision"] == ("bfloat16" if runtime.cpu_has_native_bf16() else "fp32")

    best = load_checkpoint(out / "best.pt")
    assert best.epoch == summary["best_epoch"] and best.val_acc == summary["best_val_acc"]
    assert best.classes == ["cat", "dog", "frog"] and best.mean == summary["mean"] and best.resume is None
    last = load_checkpoint(out / "last.pt")
    assert last.resume is not None and last.resume.progress.epoch == 2 and len(last.resume.progress.history) == 2


def test_default_run_dir_name_and_human_output(tmp_path: Path, easy_npz: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "train", "--data", str(easy_npz), "--val-size", "30", *TINY_MODEL,
                            "--epochs", "1", "--batch-size", "16", *CPU, "--name", "tiny", "--precision", "fp32")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("tiny-")
    assert stdout.startswith(f"run {Path('runs') / run_dir.name}: 1,443 params, best val acc ")
    assert "epoch 1/1" in err  # one plain progress line per epoch on stderr


def test_early_stopping_and_best_checkpoint_on_validation(tmp_path: Path, easy_npz: Path, capsys) -> None:
    """A slow learning rate: validation accuracy climbs for a few epochs, reaches 100% and so
    cannot improve any more; patience 1 ends the run at the next epoch, and best.pt is the
    epoch of the highest validation accuracy (not the last one)."""
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"blocks": [1], "channels": [8], "classes": 3},
        "data": {"path": str(easy_npz), "val_size": 30},
        "optim": {"name": "sgd", "lr": 1e-3},
        "schedule": {"name": "constant"},
        "train": {"epochs": 8, "batch_size": 16, "precision": "fp32", "threads": 1, "device": "cpu",
                  "early_stopping": {"monitor": "val_acc", "patience": 1}},
    }))
    code, stdout, err = run(capsys, "train", "--config", str(config), "--out", str(out), "--quiet", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    _, rows = read_rows(out / "metrics.csv")
    accs = [r["val_acc"] for r in rows]
    # Patience 1: stop at the first epoch that does not beat every earlier one.
    stop = next(i + 1 for i in range(1, len(accs)) if accs[i] <= max(accs[:i]))
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] == len(rows) == stop < 8
    best_epoch = accs.index(max(accs)) + 1  # the first epoch with the highest validation accuracy
    assert summary["best_epoch"] == best_epoch < summary["epochs_run"]
    assert summary["best_val_acc"] == pytest.approx(max(accs), abs=1e-6)
    assert load_checkpoint(out / "best.pt").epoch == best_epoch
    assert json.loads((out / "summary.json").read_text())["stopped_early"] is True


def test_no_validation_split_keeps_the_latest_epoch(tmp_path: Path, easy_npz: Path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--data", str(easy_npz), "--val-size", "0", *TINY_MODEL,
                            "--epochs", "2", "--batch-size", "32", *CPU, "--precision", "fp32",
                            "--out", str(out), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["best_val_acc"] is None and summary["final_val_acc"] is None
    assert summary["best_epoch"] == 2 and load_checkpoint(out / "best.pt").epoch == 2
    _, rows = read_rows(out / "metrics.csv")
    assert len(rows) == 2 and all(math.isnan(r["val_acc"]) for r in rows)
    with Image.open(out / "curves.png") as img:
        img.verify()


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    # Explicit choices are honoured whatever the CPU.
    assert runtime.autocast_dtype("fp32", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) == torch.bfloat16


def test_cpu_has_native_bf16_matches_the_cpu_probes() -> None:
    probes = [getattr(torch.cpu, name, lambda: False)() for name in
              ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    assert runtime.cpu_has_native_bf16() is any(probes)
    expected = torch.bfloat16 if any(probes) else None
    assert runtime.autocast_dtype("auto", torch.device("cpu")) == expected


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_ZIP.exists(), reason=f"{SHARED_ZIP} is absent")
def test_train_on_shared_zip_subset(tmp_path: Path, capsys) -> None:
    """1,500 training and 500 validation images of the real CIFAR-10, a 105k-parameter
    ResNet-9-shaped net, 4 epochs: clearly above the 10% of chance (about 35%)."""
    config = tmp_path / "real.yaml"
    config.write_text(yaml.safe_dump({
        "name": "realtiny",
        "model": {"blocks": [1, 0, 1], "channels": [16, 32, 64], "stage_kinds": ["conv_pool"] * 3,
                  "stem_width": 16, "head_scale": 0.125},
        "optim": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "onecycle"},
        "train": {"epochs": 4, "batch_size": 50, "precision": "fp32", "threads": 1, "device": "cpu"},
    }))
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--config", str(config), "--data", str(SHARED_ZIP),
                            "--subset", "2000", "--val-size", "500", "--out", str(out), "--quiet", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["data"]["counts"]["train"] == dict.fromkeys(summary["classes"], 150)
    assert summary["data"]["counts"]["val"] == dict.fromkeys(summary["classes"], 50)
    assert summary["params"] == 105_338 and summary["epochs_run"] == 4
    assert summary["best_val_acc"] > 0.25, summary["best_val_acc"]
    _, rows = read_rows(out / "metrics.csv")
    assert len(rows) == 4 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    for name in ("config.yaml", "environment.json", "last.pt", "best.pt", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
