"""`budgetnet evaluate`: accuracy, per-class accuracy and the confusion matrix of a trained
run, on the validation split it trained with or on a test split; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_synthetic, rewrite_checkpoint, train_tiny, write_npz
from PIL import Image

from budgetnet.cli import main
from budgetnet.evaluate import EvalResult, evaluate_checkpoint, evaluate_loader, predict_logits

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny run (2 epochs, flagship recipe, which validates with TTA) on an npz holding
    x_test/y_test too, shared by the tests of this module; they copy it before writing."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_npz(root / "easy.npz", make_synthetic({"train": 40, "test": 10}, seed=4))
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUDGETNET_CACHE", str(root / "cache"))
        train_tiny(data, run_dir, "--val-size", "30")
    return run_dir, data


@pytest.fixture
def run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


@pytest.fixture
def data(trained: tuple[Path, Path]) -> Path:
    return trained[1]


def evaluate(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    args = [str(a) for a in argv]
    code = main(["evaluate", *args, *([] if "--device" in args else ["--device", "cpu"])])
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    code, out, err = evaluate(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("budgetnet: error: ") and "Traceback" not in err, err
    return err


def test_human_report_per_class(run: Path, data: Path, capsys) -> None:
    code, out, err = evaluate(capsys, run, "--data", data)
    assert code == 0, err
    assert "on val: accuracy " in out and "30 images" in out
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in out.splitlines() if line.startswith("│")]
    assert [row[:2] for row in rows] == [[str(i), name] for i, name in enumerate(CLASSES)], out
    for i, row in enumerate(rows):
        assert row[2].endswith("%") and 0 <= float(row[2][:-1]) <= 100
        counts = [int(c) for c in row[3:]]
        assert len(counts) == 3 and sum(counts) == 10  # 10 validation images per class
        assert float(row[2][:-1]) == pytest.approx(100 * counts[i] / 10, abs=0.05)
    png = run / "confusion-val.png"
    assert f"confusion matrix saved to {png}" in " ".join(out.split())
    with Image.open(png) as img:
        assert img.format == "PNG"
        img.verify()


def test_json_matches_what_training_validated(run: Path, capsys) -> None:
    """The validation split is re-carved from the run's own settings (the data path too, when
    --data is left out): with TTA, as the flagship recipe validates, the accuracy is exactly
    the best validation accuracy training recorded."""
    code, out, err = evaluate(capsys, run, "--json", "--tta")
    assert code == 0, err
    report = json.loads(out)
    summary = json.loads((run / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["best_val_acc"], abs=1e-9)
    assert report["split"] == "val" and report["tta"] is True and report["images"] == 30
    assert report["epoch"] == summary["best_epoch"] and report["classes"] == CLASSES
    assert list(report["per_class_accuracy"]) == CLASSES
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 30 and (cm.sum(1) == 10).all()
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 30)
    assert [report["per_class_accuracy"][c] for c in CLASSES] == pytest.approx(list(np.diag(cm) / 10))
    assert report["accuracy"] > 0.6  # clearly above the 1/3 of chance
    assert Path(report["confusion_png"]) == run / "confusion-val-tta.png" and Path(report["confusion_png"]).is_file()


def test_last_checkpoint_evaluates_like_best(run: Path, capsys) -> None:
    """RUN/last.pt carries the classes and statistics best.pt does: it evaluates to the final
    validation accuracy training recorded."""
    code, out, err = evaluate(capsys, run / "last.pt", "--json", "--tta")
    assert code == 0, err
    report = json.loads(out)
    summary = json.loads((run / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["final_val_acc"], abs=1e-9)
    assert report["checkpoint"].endswith("last.pt") and report["classes"] == CLASSES


def test_last_checkpoint_of_an_ema_run_evaluates_the_weights_it_validated(data: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """With an EMA of the weights, validation ran the EMA: last.pt evaluates those weights."""
    run = train_tiny(data, tmp_path / "ema", "--val-size", "30", "--set", "train.ema_decay=0.5")
    capsys.readouterr()
    code, out, err = evaluate(capsys, run / "last.pt", "--json", "--tta")
    assert code == 0, err
    final = (run / "metrics.csv").read_text().splitlines()
    val_loss = float(dict(zip(final[0].split(","), final[-1].split(",")))["val_loss"])
    assert json.loads(out)["loss"] == pytest.approx(val_loss, rel=1e-5)


def test_a_checkpoint_of_another_format_version_is_one_line_naming_it(run: Path, capsys) -> None:
    """best.pt and last.pt carry their layout's version; one this budgetnet does not read (a
    later one, or one from before versions) is refused in one line that names it."""
    rewrite_checkpoint(run / "best.pt", lambda payload: {**payload, "format_version": 2})
    line = fails(capsys, run)
    assert str(run / "best.pt") in line and "format version 2" in line and "reads version 1" in line
    rewrite_checkpoint(run / "last.pt", lambda payload: {k: v for k, v in payload.items() if k != "format_version"})
    assert "no format version" in fails(capsys, run / "last.pt")


def test_a_checkpoint_whose_config_holds_every_kinds_settings_still_evaluates(run: Path, capsys) -> None:
    """Run configs once held every optimizer's and schedule's settings in one section each;
    such a checkpoint loads, the settings its kinds do not use dropped."""
    every_optim = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
                   "no_decay_bn_bias": False, "bn_bias_lr_scale": 1.0, "betas": [0.9, 0.999], "eps": 1e-8,
                   "head_lr_scale": 1.0, "stem_bias_fraction": 1.0, "muon_lr": 0.24, "muon_momentum": 0.6}
    every_schedule = {"name": "linear", "warmup_epochs": 0.0, "warmup_start_factor": 0.1, "min_lr_factor": 0.0,
                      "step_epochs": [30.0], "gamma": 0.1, "restart_epochs": 10.0, "restart_mult": 1,
                      "plateau_patience": 5, "plateau_mode": "val_acc", "cyclic_epochs_up": 2.0, "pct_start": 0.25}
    rewrite_checkpoint(run / "best.pt", lambda payload: {
        **payload, "config": {**payload["config"], "optim": every_optim, "schedule": every_schedule}})
    code, out, err = evaluate(capsys, run, "--json")
    assert code == 0, err


def test_test_split_of_an_npz(run: Path, data: Path, capsys) -> None:
    code, out, err = evaluate(capsys, run / "best.pt", "--data", data, "--split", "test", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "test" and report["images"] == 30 and report["checkpoint"] == str(run / "best.pt")
    assert sum(map(sum, report["confusion_matrix"])) == 30
    assert (run / "confusion-test.png").is_file()


def test_tta_changes_only_what_it_should(run: Path, data: Path, capsys) -> None:
    plain = json.loads(evaluate(capsys, run, "--data", data, "--split", "test", "--json")[1])
    tta = json.loads(evaluate(capsys, run, "--data", data, "--split", "test", "--json", "--tta")[1])
    assert plain["tta"] is False and tta["tta"] is True
    assert plain["images"] == tta["images"] and 0 <= tta["accuracy"] <= 1
    assert (run / "confusion-test.png").is_file() and (run / "confusion-test-tta.png").is_file()


def test_test_split_on_a_source_without_one(run: Path, tmp_path: Path, capsys) -> None:
    synthetic = make_synthetic({"train": 4})
    train_only = tmp_path / "train_only.npz"
    np.savez(train_only, x=synthetic.x["train"], y=synthetic.y["train"], classes=np.array(CLASSES))
    line = fails(capsys, run, "--data", train_only, "--split", "test")
    assert "no test split" in line


def test_data_with_other_classes_is_refused(run: Path, tmp_path: Path, capsys) -> None:
    """A dataset whose classes are not the model's would be scored against the wrong labels
    (or crash on labels the model has no output for)."""
    four = write_npz(tmp_path / "four.npz", make_synthetic({"train": 4, "test": 2}, classes=["a", "b", "c", "d"]))
    line = fails(capsys, run, "--data", four, "--split", "test")
    assert "classes" in line and "cat" in line
    reordered = write_npz(tmp_path / "swap.npz", make_synthetic({"train": 4, "test": 2}, classes=["dog", "cat", "frog"]))
    assert "classes" in fails(capsys, run, "--data", reordered, "--split", "test")
    # Unnamed classes (an .npz without `classes`) are label indices: fine while they fit.
    synthetic = make_synthetic({"test": 5})
    unnamed = tmp_path / "unnamed.npz"
    np.savez(unnamed, x_test=synthetic.x["test"], y_test=synthetic.y["test"])
    code, out, err = evaluate(capsys, run, "--data", unnamed, "--split", "test", "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 15 and json.loads(out)["classes"] == CLASSES
    np.savez(unnamed, x_test=synthetic.x["test"], y_test=synthetic.y["test"] + 1)  # labels 1..3
    assert "classes" in fails(capsys, run, "--data", unnamed, "--split", "test")


def test_bad_arguments(run: Path, tmp_path: Path, capsys) -> None:
    assert "--split" in fails(capsys, run, "--split", "train")
    assert "no checkpoint" in fails(capsys, tmp_path / "nothing-here")
    assert "device" in fails(capsys, run, "--device", "tpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a budgetnet checkpoint" in fails(capsys, tmp_path / "junk.pt")


def test_no_validation_split_to_evaluate(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "all"
    train_tiny(data, out, "--val-size", "0", "--batch-size", "32", epochs=1)
    capsys.readouterr()
    assert "--split test" in fails(capsys, out)
    code, report, err = evaluate(capsys, out, "--split", "test", "--json")
    assert code == 0, err
    assert json.loads(report)["images"] == 30


def test_evaluate_checkpoint_api(run: Path, data: Path) -> None:
    result, info = evaluate_checkpoint(run, data_path=str(data), split="val", device="cpu", batch_size=7)
    assert isinstance(result, EvalResult) and info["checkpoint"] == str(run / "best.pt")
    assert result.confusion.sum() == 30 and len(result.per_class_accuracy) == 3
    again, _ = evaluate_checkpoint(run, split="val", device="cpu", batch_size=1000)
    assert torch.equal(result.confusion, again.confusion)  # batching does not change the answer
    assert result.loss == pytest.approx(again.loss, rel=1e-5)


def test_evaluate_loader_and_tta_on_a_toy_model() -> None:
    class Mean(torch.nn.Module):  # logits from the mean brightness: flip- and shift-invariant
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean((1, 2, 3))
            return torch.stack([-m, m], 1)

    x = torch.cat([torch.full((3, 3, 8, 8), -1.0), torch.full((2, 3, 8, 8), 1.0)])
    y = torch.tensor([0, 0, 1, 1, 1])
    result = evaluate_loader(Mean(), [(x[:2], y[:2]), (x[2:], y[2:])], num_classes=2)
    assert result.confusion.tolist() == [[2, 0], [1, 2]] and result.accuracy == pytest.approx(0.8)
    assert result.per_class_accuracy == pytest.approx([1.0, 2 / 3]) and result.classes == ["0", "1"]
    torch.testing.assert_close(predict_logits(Mean(), x, tta=True), Mean()(x))
