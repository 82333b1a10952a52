"""CIFAR-100 in its official python layout: fine labels by default, coarse on request, the two
never confused (not by the reader, not by the cache), class names from `meta`, the archive,
the MD5-checked download, models that take their 100 (or 20) outputs from the data, and
one-line errors for wrong --labels and broken files. Every file here is synthetic."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from budgetnet.cli import main
from budgetnet.data import DataConfig, open_source, prepare_data
from budgetnet.data import sources as sources_mod
from budgetnet.data.sources import CIFAR100_FOLDER
from budgetnet.errors import BudgetnetError

FINE = [f"fine_{i:02d}" for i in range(100)]
COARSE = [f"coarse_{i:02d}" for i in range(20)]


def coarse_of(fine: np.ndarray) -> np.ndarray:
    """A fine -> coarse map (5 fine classes each) that is no simple function of the index."""
    return (fine * 7) % 20


def images_of(fine: np.ndarray) -> np.ndarray:
    """32x32 images whose pixels all equal 2 x the fine label: the label can be read back."""
    return np.broadcast_to((2 * fine).astype(np.uint8)[:, None, None, None], (len(fine), 32, 32, 3)).copy()


def write_cifar100(root: Path, per_class: dict[str, int] | None = None, **damage: object) -> Path:
    """<root>/cifar-100-python/{train,test,meta} as the official files hold them: `data` (N, 3072)
    uint8, `fine_labels`, `coarse_labels`; meta's `fine_label_names`, `coarse_label_names`.
    `damage` replaces or (value None) drops keys: e.g. meta_fine_label_names=None."""
    folder = root / CIFAR100_FOLDER
    folder.mkdir(parents=True)
    for split, n in (per_class or {"train": 2, "test": 1}).items():
        fine = np.repeat(np.arange(100), n)
        x = images_of(fine)
        batch = {"filenames": [f"{i}.png" for i in range(len(fine))], "batch_label": f"{split} batch",
                 "fine_labels": fine.tolist(), "coarse_labels": coarse_of(fine).tolist(),
                 "data": x.transpose(0, 3, 1, 2).reshape(len(x), -1)}
        (folder / split).write_bytes(pickle.dumps(_damaged(batch, split, damage), protocol=2))
    meta = {"fine_label_names": FINE, "coarse_label_names": COARSE}
    (folder / "meta").write_bytes(pickle.dumps(_damaged(meta, "meta", damage), protocol=2))
    return folder


def _damaged(content: dict, name: str, damage: dict[str, object]) -> dict:
    for key, value in damage.items():
        target, _, field = key.partition("_")
        if target == name:
            if value is None:
                content.pop(field)
            else:
                content[field] = value
    return content


def archive_of(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR100_FOLDER)
    return path


@pytest.fixture
def cifar100(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "c100")


@pytest.mark.parametrize("as_archive", [False, True], ids=["folder", "archive"])
def test_fine_and_coarse_labels_cannot_be_confused(tmp_path: Path, cifar100: Path, as_archive: bool) -> None:
    path = archive_of(cifar100, tmp_path / "cifar-100-python.tar.gz") if as_archive else cifar100
    fine = open_source(path)  # fine by default
    assert fine.label_set == "fine" and fine.classes == FINE and fine.splits == ("train", "test")
    assert fine.format == ("cifar100-python-archive" if as_archive else "cifar100-python")
    for split in ("train", "test"):
        arrays = fine.load(split)
        encoded = arrays.x[:, 0, 0, 0].astype(np.int64) // 2  # what each image says its fine class is
        np.testing.assert_array_equal(arrays.y, encoded)
        coarse = open_source(path, labels="coarse").load(split)
        np.testing.assert_array_equal(coarse.y, coarse_of(encoded))
        np.testing.assert_array_equal(coarse.x, arrays.x)
    assert open_source(path, labels="coarse").classes == COARSE
    assert open_source(path.parent, labels="fine").classes == FINE  # the folder holding it works too


def test_the_cache_keeps_fine_and_coarse_apart(cifar100: Path) -> None:
    def prepared(labels: str | None):
        return prepare_data(DataConfig(path=str(cifar100), labels=labels, val_size=0), "cpu", splits=("train",))

    fine = prepared(None)
    coarse = prepared("coarse")  # after fine was cached: must not be served fine's entry
    again = prepared("fine")
    assert not coarse.info["cache"]["from_cache"] and again.info["cache"]["from_cache"]
    assert fine.info["cache"]["paths"]["train"] == again.info["cache"]["paths"]["train"]
    assert fine.info["cache"]["paths"]["train"] != coarse.info["cache"]["paths"]["train"]
    assert (fine.classes, coarse.classes, fine.info["labels"], coarse.info["labels"]) == (FINE, COARSE, "fine", "coarse")
    assert again.train.y.equal(fine.train.y) and coarse.train.y.equal(coarse_of(fine.train.y))
    assert int(fine.train.y.max()) == 99 and int(coarse.train.y.max()) == 19


def test_data_info_says_which_labels(cifar100: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "--data", str(cifar100), "--val-size", "100"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich folds long lines
    assert "(cifar100-python)" in out and "100 classes" in out
    assert "labels fine: 100 classes, named by the meta file's fine_label_names (--labels coarse" in out
    assert main(["data", "info", "--data", str(cifar100), "--labels", "coarse", "--val-size", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == "coarse" and report["classes"] == COARSE and report["splits"]["test"]["images"] == 100


def test_download_checks_the_md5(tmp_path: Path, cifar100: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    archive = archive_of(cifar100, tmp_path / "cifar-100-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(BudgetnetError, match="MD5"):
        open_source(tmp_path / "bad", download="cifar100", url=archive.as_uri(), md5="0" * 32)
    assert list((tmp_path / "bad").iterdir()) == []
    # Through the CLI, with the official URL and MD5 swapped for the local file's.
    local = dataclasses.replace(sources_mod.CIFAR100, url=archive.as_uri(), md5=md5)
    monkeypatch.setitem(sources_mod.CIFAR_KINDS, "cifar100", local)
    dest = tmp_path / "datasets"
    (dest / "cifar-10-batches-py").mkdir(parents=True)  # a CIFAR-10 already there is left alone
    (dest / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    assert main(["data", "info", "--data", str(dest), "--download-cifar100", "--val-size", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == str(dest / CIFAR100_FOLDER) and report["classes"] == FINE
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py", CIFAR100_FOLDER]


def test_a_preset_takes_its_classes_from_the_labels(tmp_path: Path, cifar100: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data", str(cifar100), "--blocks", "1", "--channels", "8", "--epochs", "1", "--batch-size", "50",
              "--val-size", "100", "--optimizer", "sgd", "--lr", "0.05", "--precision", "fp32", "--threads", "1",
              "--device", "cpu", "--quiet", "--time-budget", "none"]
    for labels, classes in (("fine", 100), ("coarse", 20)):
        out = tmp_path / labels
        assert main(["train", *common, "--labels", labels, "--out", str(out)]) == 0, capsys.readouterr().err
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["model"]["classes"] == classes and saved["data"]["labels"] == labels
        summary = json.loads((out / "summary.json").read_text())
        assert len(summary["classes"]) == classes and summary["data"]["labels"] == labels
        assert main(["evaluate", str(out), "--json"]) == 0  # re-reads the same labels
        assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["classes"]) == classes
    assert main(["train", *common, "--classes", "10", "--out", str(tmp_path / "ten")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.classes is 10 but" in err and "has 100 classes" in err


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["data", "info", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("budgetnet: error: ") and "Traceback" not in err
    return err


def test_labels_on_a_dataset_with_one_set_is_an_error(cifar_folder: Path, image_folder: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, "--data", str(cifar_folder), "--labels", "coarse")
    assert "is CIFAR-10, which has one set; drop --labels" in err
    err = _one_line_error(capsys, "--data", str(image_folder), "--labels", "coarse")
    assert "image-folder dataset with one set of labels" in err


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ({"train_fine_labels": None}, "expected uint8 'data' of shape (N, 3072) and N 'fine_labels'"),
        ({"meta_fine_label_names": None}, "has no 'fine_label_names'"),
        ({"meta_fine_label_names": COARSE}, "fine_labels fall outside the 20 classes of meta"),
        ({"test_data": "not an array"}, "is not a CIFAR-100 python file"),
    ],
)
def test_broken_files_are_one_line_errors(tmp_path: Path, damage: dict, needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_cifar100(tmp_path / "c", **damage)
    assert needle in _one_line_error(capsys, "--data", str(folder), "--val-size", "100")


def test_broken_archives_are_one_line_errors(tmp_path: Path, cifar100: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (cifar100 / "meta").unlink()
    no_meta = archive_of(cifar100, tmp_path / "no-meta.tar.gz")
    assert "lacks meta (the class names)" in _one_line_error(capsys, "--data", str(no_meta))
    whole = archive_of(write_cifar100(tmp_path / "whole"), tmp_path / "whole.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "cannot read archive" in _one_line_error(capsys, "--data", str(cut))
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.add(whole, arcname="backup/whole.tar.gz")
    assert "holds neither of cifar-10-batches-py/ and cifar-100-python/" in _one_line_error(capsys, "--data", str(other))
