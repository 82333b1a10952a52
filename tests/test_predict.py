"""`budgetnet predict`: top-k classes of image files, folders and zips, from a run, a
checkpoint or an exported .onnx; unreadable files are warned about one line each, the rest
predicted, and the exit code says whether any failed."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_synthetic, rewrite_checkpoint, train_tiny, write_image_folder, write_npz, zip_folder
from PIL import Image

from budgetnet.cli import main
from budgetnet.deploy import export_model, load_model
from budgetnet.predict import predict_images

WARNING = "budgetnet: warning: "


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on an easy set, exported to ONNX (fp32) in run/export/."""
    root = tmp_path_factory.mktemp("predict")
    data = write_npz(root / "easy.npz", make_synthetic({"train": 40, "test": 2}, seed=4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUDGETNET_CACHE", str(root / "cache"))
        train_tiny(data, root / "run", "--val-size", "30")
        export_model(root / "run")
    return root / "run"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """<class>/<i>.png, 2 per class (other images than training's), one truncated PNG and
    one text file."""
    root = write_image_folder(tmp_path / "images", make_synthetic({"test": 2}, seed=9), splits=("test",)) / "test"
    good = (root / "cat" / "0000.png").read_bytes()
    (root / "cat" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image")
    return root


def predict(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["predict", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


def warned(err: str) -> list[str]:
    lines = err.splitlines()
    assert all(line.startswith(("budgetnet: warning: ", "budgetnet: ")) for line in lines), err
    return [line.removeprefix(WARNING) for line in lines if line.startswith(WARNING)]


def test_folder_with_bad_files_json(trained: Path, folder: Path, capsys) -> None:
    code, out, err = predict(capsys, trained, folder, "--json")
    assert code == 1  # some files failed
    warnings = warned(err)
    assert len(warnings) == 2, err
    assert any("notes.txt is not an image" in w for w in warnings)
    assert any("broken.png" in w for w in warnings)
    assert err.splitlines()[-1] == "budgetnet: 2 of 8 files could not be predicted"
    rows = json.loads(out)
    assert [Path(r["file"]).relative_to(folder).as_posix() for r in rows] == [
        f"{c}/{i:04d}.png" for i, c in enumerate(c for c in CLASSES for _ in range(2))]
    for row in rows:
        assert set(row) == {"file", "labels", "probabilities"}
        assert len(row["labels"]) == 3 and sorted(row["labels"]) == CLASSES
        assert row["probabilities"] == sorted(row["probabilities"], reverse=True)
        assert sum(row["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert row["labels"][0] == Path(row["file"]).parent.name  # the easy set is learned


def test_csv_and_table(trained: Path, folder: Path, capsys) -> None:
    code, out, err = predict(capsys, trained, folder / "dog", folder / "frog", "--csv", "--top-k", "2")
    assert code == 0 and err == ""
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["file", "label_1", "probability_1", "label_2", "probability_2"]
    assert len(rows) == 5 and all(len(r) == 5 for r in rows)
    assert [r[1] for r in rows[1:]] == ["dog", "dog", "frog", "frog"]
    assert all(0 <= float(r[2]) <= 1 and float(r[4]) <= float(r[2]) for r in rows[1:])
    code, out, err = predict(capsys, trained, folder / "frog", "--top-k", "9")  # k is capped at 3 classes
    assert code == 0, err
    assert "top 3" in out and "top 4" not in out
    assert out.count("frog/") == 2 and "%" in out


def test_onnx_and_checkpoint_agree_and_tta(trained: Path, folder: Path) -> None:
    images = [folder / "cat", folder / "frog"]

    def predicted(model_path: Path, **options: object) -> list:
        return [p for p in predict_images(load_model(model_path), images, **options) if p.error is None]

    from_ckpt = predicted(trained / "best.pt")
    from_onnx = predicted(trained / "export" / "model.onnx", batch_size=3)
    assert len(from_onnx) == 4 and [p.labels for p in from_onnx] == [p.labels for p in from_ckpt]
    assert np.allclose([p.probabilities for p in from_onnx], [p.probabilities for p in from_ckpt], atol=1e-5)
    with_tta = predicted(trained, tta=True)
    assert len(with_tta) == 4
    assert not np.allclose([p.probabilities for p in with_tta], [p.probabilities for p in from_onnx], atol=1e-6)


def test_zip_and_resize_rules(trained: Path, folder: Path, tmp_path: Path, capsys) -> None:
    """A zip is read member by member; images of another size follow the model's resize rule
    (none here: they fail, one line each) unless --resize says how to fit them."""
    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(folder / "frog" / "big.png")
    archive = zip_folder(folder, tmp_path / "images.zip")
    code, out, err = predict(capsys, trained / "export" / "model.onnx", archive, "--json")
    assert code == 1
    warnings = warned(err)
    assert len(warnings) == 3 and any("big.png is 48x40" in w and "--resize" in w for w in warnings), err
    files = [r["file"] for r in json.loads(out)]
    assert len(files) == 6 and all(f.startswith(f"{archive}:") for f in files)
    code, out, err = predict(capsys, trained, archive, "--json", "--resize", "center-crop")
    assert code == 1 and len(warned(err)) == 2
    assert f"{archive}:frog/big.png" in [r["file"] for r in json.loads(out)]


def test_last_checkpoint_and_errors(trained: Path, folder: Path, tmp_path: Path, capsys) -> None:
    run = shutil.copytree(trained, tmp_path / "run")
    code, out, err = predict(capsys, run / "last.pt", folder / "dog", "--json")
    assert code == 0, err
    assert [r["labels"][0] for r in json.loads(out)] == ["dog", "dog"]
    code, out, err = predict(capsys, run, folder / "dog", tmp_path / "missing.png", "--json")
    assert code == 1 and len(json.loads(out)) == 2 and "missing.png" in warned(err)[0]
    (tmp_path / "empty").mkdir()
    for argv, says in (([tmp_path / "empty"], "no files found"), ([folder, "--json", "--csv"], "exclude each other"),
                       ([folder, "--resize", "squash"], "--resize")):
        code, out, err = predict(capsys, run, *argv)
        assert code == 2 and err.count("\n") == 1 and says in err, err
    (run / "summary.json").unlink()
    (run / "best.pt").unlink()
    code, out, err = predict(capsys, run / "last.pt", folder / "dog")  # last.pt records classes and statistics
    assert code == 0, err
    rewrite_checkpoint(run / "last.pt", lambda payload: {k: v for k, v in payload.items()
                                                          if k not in ("classes", "mean", "std")})
    code, out, err = predict(capsys, run / "last.pt", folder)
    assert code == 2 and "does not record the class names" in err and err.count("\n") == 1
